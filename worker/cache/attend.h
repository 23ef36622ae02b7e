// Helpers every policy uses to run the attention kernels over what it
// keeps.
#ifndef KVC_WORKER_CACHE_ATTEND_H_
#define KVC_WORKER_CACHE_ATTEND_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/attention.h"
#include "kernels/types.h"
#include "worker/model/checkpoint.h"
#include "worker/model/transformer.h"

namespace kvc::cache {

// InvalidArgument naming what is wrong with `a` for a model of `config`.
absl::Status CheckAttendArgs(const model::ModelConfig& config, const model::AttendArgs& a);

// InvalidArgument "<policy>: ..." for a KV dtype other than f32, bf16 or
// f16, and for a pooling kernel other than 0, 1 or odd.
absl::Status CheckKvDtype(const char* policy, kernels::DType dtype);
absl::Status CheckPoolKernel(const char* policy, int32_t kernel);

// kernels::Prefill, or kernels::Decode when there is a single query (the
// same attention and score update: one query sees its whole list either
// way; Decode is the faster kernel for it).
absl::Status PrefillOrDecode(const kernels::ExecContext& ctx, const kernels::PrefillArgs& p);

// The model's RoPE (interleaved pairs, llama2.c).
kernels::Rope ModelRope(const model::ModelConfig& config);

// Causal attention of the chunk's queries over one gathered list of `count`
// slots of `pool` whose last a.num_tokens entries are the chunk's own
// tokens in order; keys rotated to `positions` ([count]) and query i to
// query_positions[i] (nullptr: a.first_position + i). Writes a.out, and
// a.lse when non-null. Decode for a single query, Prefill otherwise.
absl::Status AttendCausal(const kernels::ExecContext& ctx, const model::ModelConfig& config,
                          const model::AttendArgs& a, const kernels::KvPool& pool, const int32_t* slots,
                          const int32_t* positions, int64_t count, const int32_t* query_positions = nullptr);

// Attention of `num_q` queries (q: [num_q][Hq][D] before RoPE, query i at
// query_positions[i]) over `gather` on `pool`, causal: every list ends with
// the queries' own tokens in order. Folds the probabilities into `accum`
// (kNone: no scores). out: [num_q][Hq][D]; lse: [num_q][Hq], optional.
// Decode for a single query, Prefill otherwise.
absl::Status AttendGather(const kernels::ExecContext& ctx, const model::ModelConfig& config, const float* q,
                          int64_t num_q, const kernels::KvPool& pool, const kernels::KvGather& gather,
                          const int32_t* query_positions, const kernels::ScoreAccum& accum, float* out,
                          float* lse = nullptr);

}  // namespace kvc::cache

#endif  // KVC_WORKER_CACHE_ATTEND_H_
