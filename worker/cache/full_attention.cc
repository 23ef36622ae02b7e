#include "worker/cache/full_attention.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/attention.h"
#include "worker/cache/attend.h"

namespace kvc::cache {

FullAttention::FullAttention(const model::ModelConfig& config, kernels::DType kv_dtype)
    : config_(config), length_(config.n_layers, 0) {
  layers_.reserve(config.n_layers);
  for (int32_t l = 0; l < config.n_layers; ++l) layers_.emplace_back(config.n_kv_heads, config.head_dim(), kv_dtype);
}

absl::Status FullAttention::Append(int32_t layer, int64_t first_position, int64_t n, const float* k, const float* v) {
  int64_t& len = length_[layer];
  if (len > 0 && first_position <= positions_[len - 1]) {
    return absl::InvalidArgumentError(absl::StrCat("full attention: chunk at position ", first_position,
                                                   " does not follow position ", positions_[len - 1]));
  }
  const int64_t total = len + n;
  LayerKv& kv = layers_[layer];
  KVC_RETURN_IF_ERROR(kv.Reserve(total));
  kv.WriteRange(len, n, k, v);
  while (static_cast<int64_t>(slots_.size()) < total) slots_.push_back(static_cast<int32_t>(slots_.size()));
  if (static_cast<int64_t>(positions_.size()) < total) positions_.resize(total);
  for (int64_t i = 0; i < n; ++i) positions_[len + i] = static_cast<int32_t>(first_position + i);
  len = total;
  return absl::OkStatus();
}

absl::Status FullAttention::Load(int32_t layer, int64_t first_position, int64_t n, const float* k, const float* v) {
  if (layer < 0 || layer >= config_.n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("full attention: load into layer ", layer, " of ", config_.n_layers));
  }
  if (n <= 0 || k == nullptr || v == nullptr || first_position < 0 || first_position + n > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("full attention: load of ", n, " tokens at position ", first_position, " (or null rows)"));
  }
  return Append(layer, first_position, n, k, v);
}

absl::Status FullAttention::AdoptPrefix(int32_t layer, int64_t n, MappedBuffer k, MappedBuffer v) {
  if (layer < 0 || layer >= config_.n_layers || n <= 0 || length_[layer] != 0 ||
      layers_[layer].dtype() != kernels::DType::kF32) {
    return CachePolicy::AdoptPrefix(layer, n, std::move(k), std::move(v));
  }
  KVC_RETURN_IF_ERROR(layers_[layer].Adopt(std::move(k), std::move(v), n));
  length_[layer] = n;
  while (static_cast<int64_t>(slots_.size()) < n) slots_.push_back(static_cast<int32_t>(slots_.size()));
  if (static_cast<int64_t>(positions_.size()) < n) positions_.resize(n);
  for (int64_t i = 0; i < n; ++i) positions_[i] = static_cast<int32_t>(i);
  return absl::OkStatus();
}

absl::Status FullAttention::Attend(const kernels::ExecContext& ctx, const model::AttendArgs& a) {
  KVC_RETURN_IF_ERROR(CheckAttendArgs(config_, a));
  KVC_RETURN_IF_ERROR(Append(a.layer, a.first_position, a.num_tokens, a.k, a.v));
  const int64_t total = length_[a.layer];
  KVC_RETURN_IF_ERROR(AttendCausal(ctx, config_, a, layers_[a.layer].Pool(), slots_.data(), positions_.data(), total));
  if (a.layer == 0) stats_.attended_last_step = 0;
  const int64_t pairs = a.num_tokens * (total - a.num_tokens) + a.num_tokens * (a.num_tokens + 1) / 2;
  stats_.attended_last_step += pairs;
  stats_.attended_total += pairs;
  return absl::OkStatus();
}

PolicyStats FullAttention::stats() const {
  PolicyStats s = stats_;
  s.tokens_seen = length_.empty() ? 0 : length_.back();
  s.resident_tokens = s.tokens_seen;
  s.resident_bytes = 0;
  for (int32_t l = 0; l < config_.n_layers; ++l) s.resident_bytes += length_[l] * layers_[l].slot_bytes();
  return s;
}

}  // namespace kvc::cache
