// SnapKV (Li et al., "SnapKV: LLM Knows What You are Looking for Before
// Generation"; ALGORITHMS.md, baselines) as a policy: full attention over
// the prompt, then one compression per layer when the prompt ends, after
// which nothing is evicted (generated tokens are all kept).
//
// When the prompt ends: the first single-token Attend of a layer that has a
// prefix (the first decode step), or an explicit Compress(). If the prompt's
// last prefill chunk happens to be a single token, that token already
// counts as the first decode step (compression runs on the prefix before
// it; the token is then kept as a generated one).
//
// Compression of a prefix of L > B tokens: the last w queries of the prompt
// (their pre-RoPE q is kept while the prompt runs) attend the whole prefix
// again (causal, the positions they had) in a call that sums, per KV head,
// the softmax probabilities each prefix token receives from them
// (ScoreAccum kSum, group reduced by sum). Over the tokens before the
// window the votes are max-pooled along positions (kernel `pool_kernel`,
// clipped at the ends) and each KV head keeps its top B - w (equal scores:
// the older token) plus the w window tokens. L <= B keeps everything.
//
// Positions: original (keys keep the positions they had), or compact (the
// j-th kept key at j, new tokens after them).
//
// Not thread-safe; one object per sequence.
#ifndef KVC_WORKER_CACHE_SNAPKV_H_
#define KVC_WORKER_CACHE_SNAPKV_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/cache/headwise_kv.h"
#include "worker/cache/policy.h"
#include "worker/model/checkpoint.h"

namespace kvc::cache {

struct SnapKvOptions {
  int32_t budget = 256;     // B: prompt tokens kept per layer and KV head
  int32_t window = 64;      // w: observation window, 1 <= w <= B
  int32_t pool_kernel = 5;  // max pooling of the votes (0 or 1 = off, else odd)
  bool compact_positions = false;
  kernels::DType kv_dtype = kernels::DType::kF32;
  absl::Status Validate() const;
};

class SnapKv : public CachePolicy {
 public:
  static absl::StatusOr<std::unique_ptr<SnapKv>> Create(const model::ModelConfig& config,
                                                        const SnapKvOptions& options);

  absl::Status Attend(const kernels::ExecContext& ctx, const model::AttendArgs& args) override;
  std::string name() const override;
  PolicyStats stats() const override;
  size_t bytes_per_token() const override {
    return (layers_.front().kv.slot_bytes() + 4u * config_.n_kv_heads) * layers_.size();
  }

  // Ends the prompt of every layer whose prompt has not ended: compresses
  // what it holds (see above). Later calls do nothing.
  absl::Status Compress(const kernels::ExecContext& ctx);
  bool compressed(int32_t layer) const { return layers_[layer].compressed; }
  // Layers whose compression evicted tokens.
  int64_t compressions() const { return compressions_; }
  // Original positions head `kv_head` of `layer` keeps, ascending.
  const std::vector<int32_t>& kept_positions(int32_t layer, int32_t kv_head) const {
    return layers_[layer].kv.positions(kv_head);
  }

 private:
  struct Layer {
    HeadwiseKv kv;
    std::vector<float> window_q;  // [<= w][Hq][D]: the last prompt queries, before RoPE
    bool compressed = false;
    int64_t seen = 0;
    int64_t next_position = 0;
  };
  SnapKv(const model::ModelConfig& config, const SnapKvOptions& options);
  absl::Status CompressLayer(const kernels::ExecContext& ctx, int32_t layer);
  // Keeps the last w rows of queries of `layer`, given the chunk's.
  void KeepWindowQueries(Layer& layer, const float* q, int64_t n) const;

  model::ModelConfig config_;
  SnapKvOptions options_;
  std::vector<Layer> layers_;
  int64_t compressions_ = 0;
  // Scratch.
  std::vector<float> scores_, pooled_, out_;
  std::vector<int32_t> query_positions_, keep_, order_;
  PolicyStats stats_;
};

}  // namespace kvc::cache

#endif  // KVC_WORKER_CACHE_SNAPKV_H_
