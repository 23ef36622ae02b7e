// Quest (Tang et al., 2024; ALGORITHMS.md, baselines) as a policy: every
// token's KV stays in the pool (host memory here, like TokenSelect's: with
// the cache service the pool is what the service holds), with Quest's page
// metadata beside it (kernels/quest.h: per page of `page_size` tokens and KV
// head, the channel-wise min / max of the keys rotated to their positions).
//
// Prefill chunks (more than one token) attend densely and causally, as in
// the paper, where Quest accelerates decode only. Each decode step, per
// layer, splits the context [0, t] (the new token t included) into pages;
// the last page, which holds the new token and the most recent ones, is
// always attended, and per KV head the budget_pages() - 1 other pages with
// the highest bound sum_d max(q_d m_d, q_d M_d) (the group's query heads
// reduced by max) join it. Selection is per KV head, as Quest selects per
// attention head, so heads attend different pages. A decode step therefore
// attends at most `budget` tokens per head, the new one included; while the
// context has no more than budget_pages() pages, everything is attended and
// the step equals full attention exactly.
//
// Positions: original (Quest's; the j-th token stays at j), or compact (the
// attended keys at 0..count-1, the query at count-1), which keeps a model
// inside the positions it was trained on. Selection always scores keys and
// the query at original positions.
//
// Not thread-safe; one object per sequence.
#ifndef KVC_WORKER_CACHE_QUEST_H_
#define KVC_WORKER_CACHE_QUEST_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/quest.h"
#include "worker/cache/layer_kv.h"
#include "worker/cache/policy.h"
#include "worker/model/checkpoint.h"

namespace kvc::cache {

struct QuestOptions {
  int32_t page_size = 16;  // tokens per Quest page (the paper's 16)
  int32_t budget = 256;    // tokens attended per decode step and KV head, >= page_size
  bool compact_positions = false;
  kernels::DType kv_dtype = kernels::DType::kF32;
  absl::Status Validate() const;
  // Pages attended per decode step: budget / page_size (rounded down).
  int64_t budget_pages() const { return budget / page_size; }
};

class Quest : public CachePolicy {
 public:
  static absl::StatusOr<std::unique_ptr<Quest>> Create(const model::ModelConfig& config,
                                                       const QuestOptions& options);

  absl::Status Attend(const kernels::ExecContext& ctx, const model::AttendArgs& args) override;
  std::string name() const override;
  // resident_bytes: every token's keys and values plus the page metadata
  // (2 x Hkv x D fp32 per page and layer).
  PolicyStats stats() const override;
  // A token's KV and its share of a page's metadata (rounded up): a chunk
  // that opens a page can exceed its reservation by less than one page of
  // metadata per layer, settled after the chunk.
  size_t bytes_per_token() const override;

  // The pages attended by KV head `kv_head` in the last Attend call of
  // `layer` (ascending; the last one holds the query's own token), or empty
  // when that call attended everything (a prefill chunk, or a context of at
  // most budget_pages() pages).
  const std::vector<int32_t>& selected_pages(int32_t layer, int32_t kv_head) const {
    return layers_[layer].selected[kv_head];
  }

 private:
  struct Layer {
    LayerKv kv;
    int64_t length = 0;  // tokens held (slot s = position s)
    std::vector<float> meta_min, meta_max;  // [pages][Hkv][D]
    std::vector<std::vector<int32_t>> selected;  // [Hkv][pages] of the last call
  };
  Quest(const model::ModelConfig& config, const QuestOptions& options);
  size_t page_meta_bytes() const;

  model::ModelConfig config_;
  QuestOptions options_;
  std::vector<Layer> layers_;
  // Scratch.
  std::vector<float> scores_;
  std::vector<int32_t> picked_, slots_, positions_, indptr_;
  PolicyStats stats_;
};

}  // namespace kvc::cache

#endif  // KVC_WORKER_CACHE_QUEST_H_
