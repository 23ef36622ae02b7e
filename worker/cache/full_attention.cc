#include "worker/cache/full_attention.h"

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

absl::Status FullAttention::Attend(const kernels::ExecContext& ctx, const model::AttendArgs& a) {
  KVC_RETURN_IF_ERROR(CheckAttendArgs(config_, a));
  int64_t& len = length_[a.layer];
  if (len > 0 && a.first_position <= positions_[len - 1]) {
    return absl::InvalidArgumentError(absl::StrCat("full attention: chunk at position ", a.first_position,
                                                   " does not follow position ", positions_[len - 1]));
  }
  const int64_t total = len + a.num_tokens;
  LayerKv& kv = layers_[a.layer];
  KVC_RETURN_IF_ERROR(kv.Reserve(total));
  kv.WriteRange(len, a.num_tokens, a.k, a.v);
  while (static_cast<int64_t>(slots_.size()) < total) slots_.push_back(static_cast<int32_t>(slots_.size()));
  if (static_cast<int64_t>(positions_.size()) < total) positions_.resize(total);
  for (int64_t i = 0; i < a.num_tokens; ++i) positions_[len + i] = static_cast<int32_t>(a.first_position + i);
  len = total;

  KVC_RETURN_IF_ERROR(AttendCausal(ctx, config_, a, kv.Pool(), slots_.data(), positions_.data(), total));
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
