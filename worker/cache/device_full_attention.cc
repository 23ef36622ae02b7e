#include "worker/cache/device_full_attention.h"

#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/attention.h"
#include "worker/cache/attend.h"

namespace kvc::cache {

namespace k = ::kvc::kernels;

DeviceFullAttention::DeviceFullAttention(const model::ModelConfig& config, int64_t capacity)
    : config_(config),
      capacity_(capacity),
      row_bytes_(static_cast<size_t>(config.n_kv_heads) * config.head_dim() * sizeof(float)) {}

absl::StatusOr<std::unique_ptr<DeviceFullAttention>> DeviceFullAttention::Create(const model::ModelConfig& config,
                                                                                 int64_t max_tokens) {
  if (max_tokens < 1 || max_tokens > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("full(device): capacity ", max_tokens, " not in [1, 2^31)"));
  }
  KVC_RETURN_IF_ERROR(k::CudaAvailable());
  auto p = std::unique_ptr<DeviceFullAttention>(new DeviceFullAttention(config, max_tokens));
  const size_t bytes = p->row_bytes_ * max_tokens;
  p->layers_.resize(config.n_layers);
  for (Layer& l : p->layers_) {
    KVC_ASSIGN_OR_RETURN(l.k, k::DeviceBuffer::Allocate(bytes));
    KVC_ASSIGN_OR_RETURN(l.v, k::DeviceBuffer::Allocate(bytes));
  }
  std::vector<int32_t> iota(max_tokens);
  std::iota(iota.begin(), iota.end(), 0);
  KVC_ASSIGN_OR_RETURN(p->iota_, k::DeviceBuffer::Allocate(iota.size() * sizeof(int32_t)));
  KVC_RETURN_IF_ERROR(p->iota_.CopyFromHost(iota.data(), iota.size() * sizeof(int32_t)));
  KVC_ASSIGN_OR_RETURN(p->indptr_, k::DeviceBuffer::Allocate(2 * sizeof(int32_t)));
  return p;
}

absl::Status DeviceFullAttention::Attend(const k::ExecContext& ctx, const model::AttendArgs& a) {
  KVC_RETURN_IF_ERROR(CheckAttendArgs(config_, a));
  if (ctx.backend != k::Backend::kCuda) {
    return absl::InvalidArgumentError("full(device): Attend needs the CUDA backend and device pointers");
  }
  Layer& layer = layers_[a.layer];
  if (a.first_position != layer.length) {
    return absl::InvalidArgumentError(absl::StrCat("full(device): chunk at position ", a.first_position,
                                                   " does not follow the ", layer.length, " tokens held"));
  }
  const int64_t n = a.num_tokens, total = layer.length + n;
  if (total > capacity_) {
    return absl::ResourceExhaustedError(absl::StrCat("full(device): ", total, " tokens exceed the capacity of ",
                                                     capacity_, " per layer"));
  }
  KVC_RETURN_IF_ERROR(k::CopyDeviceToDevice(layer.k.as<uint8_t>() + layer.length * row_bytes_, a.k, n * row_bytes_));
  KVC_RETURN_IF_ERROR(k::CopyDeviceToDevice(layer.v.as<uint8_t>() + layer.length * row_bytes_, a.v, n * row_bytes_));
  const int32_t indptr[2] = {0, static_cast<int32_t>(total)};
  KVC_RETURN_IF_ERROR(indptr_.CopyFromHost(indptr, sizeof(indptr)));

  const int32_t* iota = iota_.as<int32_t>();
  k::PrefillArgs p;
  p.q = a.q;
  p.q_positions = iota + layer.length;
  p.num_q = n;
  p.num_q_heads = config_.n_heads;
  p.kv = k::KvPool::Contiguous(layer.k.data(), layer.v.data(), k::DType::kF32, capacity_, config_.n_kv_heads,
                               config_.head_dim());
  p.gather = k::KvGather{indptr_.as<int32_t>(), iota, iota, false};
  p.causal = true;
  p.rope = ModelRope(config_);
  p.out = a.out;
  p.lse = a.lse;
  KVC_RETURN_IF_ERROR(PrefillOrDecode(ctx, p));
  layer.length = total;

  if (a.layer == 0) stats_.attended_last_step = 0;
  const int64_t pairs = n * (total - n) + n * (n + 1) / 2;
  stats_.attended_last_step += pairs;
  stats_.attended_total += pairs;
  return absl::OkStatus();
}

PolicyStats DeviceFullAttention::stats() const {
  PolicyStats s = stats_;
  s.tokens_seen = layers_.empty() ? 0 : layers_.back().length;
  s.resident_tokens = s.tokens_seen;
  s.resident_bytes = static_cast<size_t>(s.tokens_seen) * bytes_per_token();
  return s;
}

}  // namespace kvc::cache
