// Attention kernels: chunked causal prefill, batched decode over gathered
// (paged) KV, merging of partial states, and the attention-score
// accumulation the cache policies need as a by-product.
//
// Conventions, for every backend:
//  - Shapes are row-major. Hq query heads, Hkv KV heads, g = Hq / Hkv; query
//    head h reads KV head h / g. D = head_dim.
//  - Logits are scale * (rope(q) . rope(k)); scale 0 means 1/sqrt(D).
//  - lse (log-sum-exp) is the natural log of sum_j exp(logit_j) over the keys
//    a call saw; -inf for an empty key set, whose output is all zeros.
//  - Outputs never alias inputs (checked: overlapping buffers are
//    InvalidArgument).
#ifndef KVC_KERNELS_ATTENTION_H_
#define KVC_KERNELS_ATTENTION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/types.h"

namespace kvc::kernels {

// Score accumulation for the cache policies (kernel 5), computed from the
// final softmax probabilities P_i(j) = exp(logit_ij - lse_i) of the same
// call. For each gathered entry j and its KV head, the probabilities of the
// g query heads of the group are first reduced (`group_reduce`), then:
//  kEma (cascading cache): s_j <- beta^q * s_j + sum_i (1-beta) beta^(q-1-i) P_i(j)
//       over the q contributing queries i (in order). A key a query cannot
//       see (causal) contributes P = 0, so a token new in the chunk starts
//       from the sum over the queries at or after it (pass s_j = 0 for it).
//  kSum (H2O accumulated attention, SnapKV window votes): s_j += sum_i P_i(j).
// Contributing queries are i in [first_query, num_q) (SnapKV: the last w).
enum class ScoreMode : uint8_t { kNone = 0, kEma = 1, kSum = 2 };
enum class GroupReduce : uint8_t { kMax = 0, kSum = 1 };
struct ScoreAccum {
  ScoreMode mode = ScoreMode::kNone;
  GroupReduce group_reduce = GroupReduce::kMax;
  float beta = 0.999f;  // kEma only, in (0, 1)
  int64_t first_query = 0;
  // Updated in place, indexed by pool slot: scores[h * kv.num_slots() + slot]
  // ([Hkv][num_slots], the layout of CascadeState::scores). REQUIRES: no
  // (slot, KV head) pair is gathered twice in one call.
  float* scores = nullptr;
  // Normaliser of P: [num_q][Hq] for prefill, [batch][Hq] for decode. nullptr
  // = this call's own lse. Pass the merged lse when this call saw only part
  // of the keys (e.g. the cache part, merged with the chunk part).
  const float* lse = nullptr;
};
// Scores only: a Prefill/Decode call with out == nullptr, an accumulation
// mode and accum.lse given computes no attention output, only the score
// update (the second pass over keys once the merged lse is known); V is not
// read, and `lse` is still written when given.

// Kernel 1: one chunk of queries of one sequence against gathered keys,
// flash-style (online softmax over key tiles; the score matrix is never
// materialised).
//
// Masking: with causal = true the last num_q entries of every gathered list
// are the chunk's own tokens in order, and query i sees entry j of a list of
// length n iff j <= n - num_q + i (everything before the chunk is visible).
// With causal = false every query sees every entry.
struct PrefillArgs {
  const float* q = nullptr;          // [num_q][Hq][D], before RoPE
  const int32_t* q_positions = nullptr;  // [num_q]; required iff rope.style != kNone
  int64_t num_q = 0;
  int32_t num_q_heads = 0;
  KvPool kv;
  // One list (shared) or Hkv lists (per_kv_head), i.e. a batch of one.
  KvGather gather;
  bool causal = true;
  float scale = 0.0f;
  Rope rope;
  float* out = nullptr;  // [num_q][Hq][D]
  float* lse = nullptr;  // [num_q][Hq], optional
  ScoreAccum accum;
};
absl::Status Prefill(const ExecContext& ctx, const PrefillArgs& args);

// Kernel 2: one query per sequence (decode) over each sequence's gathered
// list of pool slots; page size 1 or larger. Also returns the per-head lse
// so partial results over disjoint key sets can be merged (MergeStates).
struct DecodeArgs {
  const float* q = nullptr;              // [batch][Hq][D], before RoPE
  const int32_t* q_positions = nullptr;  // [batch]; required iff rope.style != kNone
  int32_t batch = 0;
  int32_t num_q_heads = 0;
  KvPool kv;
  KvGather gather;  // batch lists, or batch * Hkv lists when per_kv_head
  float scale = 0.0f;
  Rope rope;
  float* out = nullptr;  // [batch][Hq][D]
  float* lse = nullptr;  // [batch][Hq], optional
  ScoreAccum accum;      // num_q = 1 per sequence
};
absl::Status Decode(const ExecContext& ctx, const DecodeArgs& args);

// Kernel 3: exact merge of partial attention states over disjoint key sets.
// Row r of state s is (v[s][r][:], lse[s][r]); the merge is
//   lse = log sum_s exp(lse_s),  out = sum_s exp(lse_s - lse) * v_s.
// A state with lse = -inf is empty and contributes nothing; if every state
// is empty the row is zeros with lse -inf.
struct MergeStatesArgs {
  const float* v = nullptr;    // [num_states][num_rows][head_dim]
  const float* lse = nullptr;  // [num_states][num_rows]
  int32_t num_states = 0;
  int64_t num_rows = 0;  // e.g. tokens * heads
  int32_t head_dim = 0;
  float* out = nullptr;      // [num_rows][head_dim]
  float* out_lse = nullptr;  // [num_rows], optional
};
absl::Status MergeStates(const ExecContext& ctx, const MergeStatesArgs& args);

}  // namespace kvc::kernels

#endif  // KVC_KERNELS_ATTENTION_H_
