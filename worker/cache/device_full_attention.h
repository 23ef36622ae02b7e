// Full attention with every token's KV in device memory: the cache of the
// CUDA model runtime (model::Transformer with a kCuda context hands it
// device pointers, device_resident()). Keys are stored fp32 before RoPE,
// slot t = token t, so the gather list and the positions are one device
// array 0, 1, 2, ... Capacity is fixed at Create (tokens per layer); a chunk
// beyond it is ResourceExhausted, before anything is written. Every other
// policy keeps its KV in host memory and runs on the CPU; the runtime
// stages its q, k, v and output through host memory for them.
//
// Not thread-safe; one object per sequence, whose positions start at 0.
#ifndef KVC_WORKER_CACHE_DEVICE_FULL_ATTENTION_H_
#define KVC_WORKER_CACHE_DEVICE_FULL_ATTENTION_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/device.h"
#include "worker/cache/policy.h"
#include "worker/model/checkpoint.h"

namespace kvc::cache {

class DeviceFullAttention : public CachePolicy {
 public:
  // Unavailable without a CUDA device (kernels::CudaAvailable()).
  static absl::StatusOr<std::unique_ptr<DeviceFullAttention>> Create(const model::ModelConfig& config,
                                                                     int64_t max_tokens);

  // REQUIRES: ctx.backend == kCuda and device pointers in `args`.
  absl::Status Attend(const kernels::ExecContext& ctx, const model::AttendArgs& args) override;
  bool device_resident() const override { return true; }
  std::string name() const override { return "full(device)"; }
  PolicyStats stats() const override;
  size_t bytes_per_token() const override { return row_bytes_ * 2 * layers_.size(); }
  int64_t capacity() const { return capacity_; }

 private:
  struct Layer {
    kernels::DeviceBuffer k, v;  // [capacity][Hkv][D] fp32
    int64_t length = 0;
  };
  DeviceFullAttention(const model::ModelConfig& config, int64_t capacity);

  model::ModelConfig config_;
  int64_t capacity_;
  size_t row_bytes_;  // Hkv * D * 4
  std::vector<Layer> layers_;
  kernels::DeviceBuffer iota_;    // [capacity] int32: slots and positions
  kernels::DeviceBuffer indptr_;  // [2] int32
  PolicyStats stats_;
};

}  // namespace kvc::cache

#endif  // KVC_WORKER_CACHE_DEVICE_FULL_ATTENTION_H_
