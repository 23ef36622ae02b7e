// Full attention: every token's KV stays resident and every query attends
// every earlier token at its original position. The baseline every other
// policy is measured against.
#ifndef KVC_WORKER_CACHE_FULL_ATTENTION_H_
#define KVC_WORKER_CACHE_FULL_ATTENTION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "worker/cache/layer_kv.h"
#include "worker/cache/policy.h"
#include "worker/model/checkpoint.h"

namespace kvc::cache {

class FullAttention : public CachePolicy {
 public:
  FullAttention(const model::ModelConfig& config, kernels::DType kv_dtype);

  absl::Status Attend(const kernels::ExecContext& ctx, const model::AttendArgs& args) override;
  bool loads_prefix() const override { return true; }
  absl::Status Load(int32_t layer, int64_t first_position, int64_t n, const float* k, const float* v) override;
  // An empty fp32 layer takes the buffers as its KV (no copy).
  absl::Status AdoptPrefix(int32_t layer, int64_t n, MappedBuffer k, MappedBuffer v) override;
  std::string kv_origin() const override { return "dense"; }
  std::string name() const override { return "full"; }
  PolicyStats stats() const override;
  size_t bytes_per_token() const override { return layers_.front().slot_bytes() * layers_.size(); }

 private:
  // Stores n tokens' rows after the layer's last one.
  absl::Status Append(int32_t layer, int64_t first_position, int64_t n, const float* k, const float* v);

  model::ModelConfig config_;
  std::vector<LayerKv> layers_;
  std::vector<int64_t> length_;     // tokens stored, per layer
  std::vector<int32_t> slots_;      // 0, 1, 2, ... (the gather list)
  std::vector<int32_t> positions_;  // original position of each slot
  PolicyStats stats_;
};

}  // namespace kvc::cache

#endif  // KVC_WORKER_CACHE_FULL_ATTENTION_H_
