// The cascading KV cache (ALGORITHMS.md §1) as a policy: per layer, sinks
// plus C ring-buffer sub-caches that accept exponentially fewer tokens the
// older they are, scored by an EMA of the attention they receive. Each
// chunk (prefill stride, or one decode token) attends [sinks | cache |
// chunk (causal)] at cache-relative positions (or original ones), then is
// pushed into the cache. The chunk's keys and values are written after the
// cascade's slots in the same buffers, so that attention and the score
// update over both are one kernel call (one list per KV head) with the
// call's own lse. With C = 1 this is StreamingLLM (sinks + the last W
// tokens) and no scores are computed.
#ifndef KVC_WORKER_CACHE_CASCADING_H_
#define KVC_WORKER_CACHE_CASCADING_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cascade.h"
#include "worker/cache/policy.h"
#include "worker/model/checkpoint.h"

namespace kvc::cache {

struct CascadingOptions {
  int32_t num_sinks = 4;
  int32_t num_subcaches = 4;
  int32_t window = 256;  // W: slots over all sub-caches (a multiple of num_subcaches)
  float beta = 0.999f;
  bool original_positions = false;
  kernels::DType kv_dtype = kernels::DType::kF32;
  absl::Status Validate() const;
};

// Host storage of one layer's cascade, zeroed, with `state` pointing into
// it (the cascading and combined policies). k and v may grow past the
// cascade's slots (Cascading keeps a chunk there); state.k / state.v must
// then be re-pointed.
struct CascadeStorage {
  void Init(const kernels::CascadeConfig& config, kernels::DType dtype, int32_t num_kv_heads, int32_t head_dim);
  std::vector<uint8_t> k, v;  // [total_slots][Hkv][D]
  std::vector<float> scores;
  std::vector<int32_t> positions, ring_start, ring_count;
  kernels::CascadeState state;
};

// The cascade of `options` (sinks, sub-caches, window / sub-caches slots each).
absl::StatusOr<kernels::CascadeConfig> MakeCascadeConfig(const CascadingOptions& options);

class Cascading : public CachePolicy {
 public:
  // Validate() the options first; a bad option is reported by Create.
  static absl::StatusOr<std::unique_ptr<Cascading>> Create(const model::ModelConfig& config,
                                                           const CascadingOptions& options);

  absl::Status Attend(const kernels::ExecContext& ctx, const model::AttendArgs& args) override;
  std::string name() const override;
  PolicyStats stats() const override;
  size_t bytes_per_token() const override;
  int64_t max_resident_tokens() const override { return cascade_.total_slots(); }
  // The tokens the last Attend call pushed out of its layer's cache.
  const Evictions* last_evictions() const override { return &evictions_; }
  const kernels::CascadeState& state(int32_t layer) const { return layers_[layer].state; }

 private:
  // k, v: [total_slots + chunk][Hkv][D], the cascade's slots, then the
  // chunk being attended, so one gathered list per head covers
  // [cache | chunk] in a single attention call.
  using Layer = CascadeStorage;
  Cascading(const model::ModelConfig& config, const CascadingOptions& options);
  bool scored() const { return options_.num_subcaches > 1; }
  size_t row_bytes() const;  // one slot's keys (or values), every KV head

  model::ModelConfig config_;
  CascadingOptions options_;
  kernels::CascadeConfig cascade_;
  std::vector<Layer> layers_;
  // Per-call scratch.
  std::vector<int32_t> gather_ptr_, gather_idx_, gather_pos_, list_ptr_, list_idx_, list_pos_, chunk_pos_, orig_pos_;
  std::vector<float> call_scores_, chunk_scores_;
  Evictions evictions_;
  PolicyStats stats_;
};

}  // namespace kvc::cache

#endif  // KVC_WORKER_CACHE_CASCADING_H_
