// H2O (Zhang et al., "Heavy-Hitter Oracle"; ALGORITHMS.md, baselines, and
// the eviction policy of LESS §3) as a policy: per layer and KV head, keep
// the `recent` most recent tokens and the `heavy` others with the highest
// accumulated attention; budget B = heavy + recent tokens per head.
//
// Each chunk (prefill stride or one decode token) attends [kept | chunk
// (causal)] in one kernel call that also adds, for every kept token and
// every token of the chunk, the softmax probability each query of the
// chunk gives it (ScoreAccum kSum; the group's query heads reduced by sum,
// as the paper sums over heads, or max). Then each head evicts down to B:
// the last `recent` by position stay, and of the others the `heavy` with
// the highest accumulated score; equal scores keep the older token (lower
// position), so the rule is deterministic. A chunk's tokens are attended
// by the chunk's later queries before any of them can be evicted.
//
// Positions: original (H2O's; keys never move), or compact (the j-th kept
// key at j, the chunk after them), which keeps the model inside the
// positions it was trained on.
//
// Not thread-safe; one object per sequence.
#ifndef KVC_WORKER_CACHE_H2O_H_
#define KVC_WORKER_CACHE_H2O_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/attention.h"
#include "worker/cache/headwise_kv.h"
#include "worker/cache/policy.h"
#include "worker/model/checkpoint.h"

namespace kvc::cache {

struct H2OOptions {
  int32_t heavy = 128;   // h: kept by accumulated attention, per layer and KV head
  int32_t recent = 128;  // r: the last r tokens, always kept
  kernels::GroupReduce group_reduce = kernels::GroupReduce::kSum;
  bool compact_positions = false;
  kernels::DType kv_dtype = kernels::DType::kF32;
  absl::Status Validate() const;
  int64_t budget() const { return static_cast<int64_t>(heavy) + recent; }
};

class H2O : public CachePolicy {
 public:
  static absl::StatusOr<std::unique_ptr<H2O>> Create(const model::ModelConfig& config,
                                                     const H2OOptions& options);

  absl::Status Attend(const kernels::ExecContext& ctx, const model::AttendArgs& args) override;
  std::string name() const override;
  PolicyStats stats() const override;
  int64_t max_resident_tokens() const override { return options_.heavy + options_.recent; }
  size_t bytes_per_token() const override {
    return (layers_.front().kv.slot_bytes() + 8u * config_.n_kv_heads) * layers_.size();
  }

  // What head `kv_head` of `layer` keeps after the last call: original
  // positions (ascending) and accumulated scores, entry for entry.
  const std::vector<int32_t>& kept_positions(int32_t layer, int32_t kv_head) const {
    return layers_[layer].kv.positions(kv_head);
  }
  std::vector<float> kept_scores(int32_t layer, int32_t kv_head) const;
  // The rows the last Attend call evicted, per head (each head evicts the
  // same number; none while the layer holds no more than the budget).
  const Evictions* last_evictions() const override { return &evictions_; }

 private:
  struct Layer {
    HeadwiseKv kv;
    std::vector<float> scores;  // [Hkv][kv.size()]
    int64_t seen = 0;           // tokens attended so far
    int64_t next_position = 0;  // the lowest position the next chunk may start at
  };
  H2O(const model::ModelConfig& config, const H2OOptions& options);
  // Per head, the entries of [0, total) to keep (B of them, ascending), by
  // the scores of call_scores_, into keep_.
  void ChooseKept(int64_t total);
  // Copies the entries of [0, total) that keep_ drops into evictions_.
  void ReportEvictions(const Layer& layer, int64_t total);

  model::ModelConfig config_;
  H2OOptions options_;
  std::vector<Layer> layers_;
  // Scratch.
  std::vector<float> call_scores_;  // [Hkv][kept + chunk]
  std::vector<int32_t> query_positions_, keep_, order_;
  Evictions evictions_;
  PolicyStats stats_;
};

}  // namespace kvc::cache

#endif  // KVC_WORKER_CACHE_H2O_H_
