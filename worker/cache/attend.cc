#include "worker/cache/attend.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/attention.h"

namespace kvc::cache {

absl::Status CheckAttendArgs(const model::ModelConfig& config, const model::AttendArgs& a) {
  if (a.layer < 0 || a.layer >= config.n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("attend: layer ", a.layer, " is outside [0, ", config.n_layers, ")"));
  }
  if (a.num_tokens < 1) return absl::InvalidArgumentError(absl::StrCat("attend: num_tokens ", a.num_tokens, " < 1"));
  if (a.first_position < 0 || a.first_position + a.num_tokens > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("attend: positions [", a.first_position, ", ",
                                                   a.first_position + a.num_tokens, ") are out of range"));
  }
  if (a.q == nullptr || a.k == nullptr || a.v == nullptr || a.out == nullptr) {
    return absl::InvalidArgumentError("attend: q, k, v and out must be non-null");
  }
  return absl::OkStatus();
}

absl::Status CheckKvDtype(const char* policy, kernels::DType dtype) {
  if (dtype != kernels::DType::kF32 && dtype != kernels::DType::kBF16 && dtype != kernels::DType::kF16) {
    return absl::InvalidArgumentError(absl::StrCat(policy, ": unknown KV dtype ", static_cast<int>(dtype)));
  }
  return absl::OkStatus();
}

absl::Status CheckPoolKernel(const char* policy, int32_t kernel) {
  if (kernel < 0 || (kernel > 1 && kernel % 2 == 0)) {
    return absl::InvalidArgumentError(absl::StrCat(policy, ": pool kernel ", kernel, " must be 0, 1 or odd"));
  }
  return absl::OkStatus();
}

absl::Status PrefillOrDecode(const kernels::ExecContext& ctx, const kernels::PrefillArgs& p) {
  if (p.num_q != 1) return kernels::Prefill(ctx, p);
  kernels::DecodeArgs d;
  d.q = p.q;
  d.q_positions = p.q_positions;
  d.batch = 1;
  d.num_q_heads = p.num_q_heads;
  d.kv = p.kv;
  d.gather = p.gather;
  d.scale = p.scale;
  d.rope = p.rope;
  d.out = p.out;
  d.lse = p.lse;
  d.accum = p.accum;
  return kernels::Decode(ctx, d);
}

kernels::Rope ModelRope(const model::ModelConfig& config) {
  return kernels::Rope{kernels::RopeStyle::kInterleaved, config.rope_theta};
}

absl::Status AttendCausal(const kernels::ExecContext& ctx, const model::ModelConfig& config,
                          const model::AttendArgs& a, const kernels::KvPool& pool, const int32_t* slots,
                          const int32_t* positions, int64_t count, const int32_t* query_positions) {
  const int32_t indptr[2] = {0, static_cast<int32_t>(count)};
  kernels::KvGather gather{indptr, slots, positions, false};
  std::vector<int32_t> own_positions;
  if (query_positions == nullptr) {
    own_positions.resize(a.num_tokens);
    for (int64_t i = 0; i < a.num_tokens; ++i) own_positions[i] = static_cast<int32_t>(a.first_position + i);
    query_positions = own_positions.data();
  }
  if (a.num_tokens == 1) {
    kernels::DecodeArgs d;
    d.q = a.q;
    d.q_positions = query_positions;
    d.batch = 1;
    d.num_q_heads = config.n_heads;
    d.kv = pool;
    d.gather = gather;
    d.rope = ModelRope(config);
    d.out = a.out;
    d.lse = a.lse;
    return kernels::Decode(ctx, d);
  }
  kernels::PrefillArgs p;
  p.q = a.q;
  p.q_positions = query_positions;
  p.num_q = a.num_tokens;
  p.num_q_heads = config.n_heads;
  p.kv = pool;
  p.gather = gather;
  p.causal = true;
  p.rope = ModelRope(config);
  p.out = a.out;
  p.lse = a.lse;
  return kernels::Prefill(ctx, p);
}

absl::Status AttendGather(const kernels::ExecContext& ctx, const model::ModelConfig& config, const float* q,
                          int64_t num_q, const kernels::KvPool& pool, const kernels::KvGather& gather,
                          const int32_t* query_positions, const kernels::ScoreAccum& accum, float* out,
                          float* lse) {
  if (num_q == 1) {
    kernels::DecodeArgs d;
    d.q = q;
    d.q_positions = query_positions;
    d.batch = 1;
    d.num_q_heads = config.n_heads;
    d.kv = pool;
    d.gather = gather;
    d.rope = ModelRope(config);
    d.out = out;
    d.lse = lse;
    d.accum = accum;
    return kernels::Decode(ctx, d);
  }
  kernels::PrefillArgs p;
  p.q = q;
  p.q_positions = query_positions;
  p.num_q = num_q;
  p.num_q_heads = config.n_heads;
  p.kv = pool;
  p.gather = gather;
  p.causal = true;
  p.rope = ModelRope(config);
  p.out = out;
  p.lse = lse;
  p.accum = accum;
  return kernels::Prefill(ctx, p);
}

}  // namespace kvc::cache
