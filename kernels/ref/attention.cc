// Reference Prefill and Decode (kernels/attention.h): for every (KV head,
// gathered list) the keys are loaded and rotated once, then each query head
// of the group computes its logits, softmax, weighted sum of V and lse in
// double, and the group's probabilities feed the score accumulation.
// Decode is the same computation with one non-causal query per sequence.
// A scores-only call (out == nullptr, accum.lse given) skips V and the
// output but still writes lse when asked for.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/ref/ref_kernels.h"
#include "kernels/ref/ref_util.h"

namespace kvc::kernels::ref {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// The queries of one call that read one gathered list. Row (i, h) of q, out,
// lse and norm_lse is at index i * num_q_heads + h (times D for q and out).
struct QueryRows {
  const float* q = nullptr;              // [num_q][Hq][D], before RoPE
  const int32_t* q_positions = nullptr;  // [num_q]; unused when rope is kNone
  int64_t num_q = 0;
  int32_t num_q_heads = 0;
  bool causal = false;
  float* out = nullptr;             // [num_q][Hq][D]; null = scores only
  float* lse = nullptr;             // [num_q][Hq] or null
  const float* norm_lse = nullptr;  // accum.lse rows or null (= own lse)
};

// Attention of the g query heads of `kv_head` over the list
// gather.indices[begin, end), plus the score update for those entries.
void AttendList(const KvPool& kv, const KvGather& gather, int64_t begin, int64_t end,
                int32_t kv_head, const Rope& rope, double scale, const QueryRows& rows,
                const ScoreAccum& accum) {
  const int32_t d_head = kv.head_dim;
  const int32_t group = rows.num_q_heads / kv.num_kv_heads;
  const int64_t n = end - begin;

  // Keys after RoPE and values, in double: [n][D] each.
  std::vector<double> keys(static_cast<size_t>(n) * d_head);
  std::vector<double> values(static_cast<size_t>(n) * d_head);
  std::vector<float> row(d_head);
  const bool rotate_keys = rope.style != RopeStyle::kNone && gather.positions != nullptr;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t slot = gather.indices[begin + j];
    LoadKeyRow(kv, slot, kv_head, kv.k, row.data());
    if (rotate_keys) {
      ApplyRope(rope, gather.positions[begin + j], d_head, row.data(), &keys[j * d_head]);
    } else {
      for (int32_t d = 0; d < d_head; ++d) keys[j * d_head + d] = row[d];
    }
    if (rows.out == nullptr) continue;
    LoadKeyRow(kv, slot, kv_head, kv.v, row.data());
    for (int32_t d = 0; d < d_head; ++d) values[j * d_head + d] = row[d];
  }

  // Running scores of the list's entries for this KV head, folded in double.
  const bool accumulate = accum.mode != ScoreMode::kNone;
  std::vector<double> scores;
  if (accumulate) {
    scores.resize(n);
    for (int64_t j = 0; j < n; ++j) {
      scores[j] = accum.scores[kv_head * kv.num_slots() + gather.indices[begin + j]];
    }
  }

  std::vector<double> q_rot(d_head), logits(n), acc(d_head), reduced(n);
  for (int64_t i = 0; i < rows.num_q; ++i) {
    // Entries 0 .. visible-1 are seen by query i (attention.h, Masking).
    const int64_t visible = rows.causal ? std::clamp<int64_t>(n - rows.num_q + i + 1, 0, n) : n;
    const bool contributes = accumulate && i >= accum.first_query;
    if (contributes) std::fill(reduced.begin(), reduced.end(), 0.0);

    for (int32_t r = 0; r < group; ++r) {
      const int32_t h = kv_head * group + r;
      const int64_t row_index = i * rows.num_q_heads + h;
      const float* q = rows.q + row_index * d_head;
      ApplyRope(rope, rope.style == RopeStyle::kNone ? 0 : rows.q_positions[i], d_head, q,
                q_rot.data());

      double max_logit = kNegInf;
      for (int64_t j = 0; j < visible; ++j) {
        double dot = 0.0;
        for (int32_t d = 0; d < d_head; ++d) dot += q_rot[d] * keys[j * d_head + d];
        logits[j] = scale * dot;
        max_logit = std::max(max_logit, logits[j]);
      }
      double sum = 0.0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = 0; j < visible; ++j) {
        const double w = std::exp(logits[j] - max_logit);
        sum += w;
        if (rows.out == nullptr) continue;
        for (int32_t d = 0; d < d_head; ++d) acc[d] += w * values[j * d_head + d];
      }
      const double lse = visible > 0 ? max_logit + std::log(sum) : kNegInf;
      if (rows.out != nullptr) {
        float* out = rows.out + row_index * d_head;
        for (int32_t d = 0; d < d_head; ++d) {
          out[d] = visible > 0 ? static_cast<float>(acc[d] / sum) : 0.0f;
        }
      }
      if (rows.lse != nullptr) rows.lse[row_index] = static_cast<float>(lse);

      if (!contributes) continue;
      // P_i(j) = exp(logit - normaliser); an empty normaliser (-inf) means no
      // key was seen anywhere, so every P is 0.
      const double norm = rows.norm_lse != nullptr ? rows.norm_lse[row_index] : lse;
      if (norm == kNegInf) continue;
      for (int64_t j = 0; j < visible; ++j) {
        const double p = std::exp(logits[j] - norm);
        reduced[j] =
            accum.group_reduce == GroupReduce::kMax ? std::max(reduced[j], p) : reduced[j] + p;
      }
    }

    if (!contributes) continue;
    // Folding query by query in order gives attention.h's closed forms:
    // kEma: beta^q s + sum_i (1-beta) beta^(q-1-i) P_i; kSum: s + sum_i P_i.
    const double beta = accum.beta;
    for (int64_t j = 0; j < n; ++j) {
      scores[j] = accum.mode == ScoreMode::kEma ? beta * scores[j] + (1.0 - beta) * reduced[j]
                                                : scores[j] + reduced[j];
    }
  }

  if (accumulate) {
    for (int64_t j = 0; j < n; ++j) {
      accum.scores[kv_head * kv.num_slots() + gather.indices[begin + j]] =
          static_cast<float>(scores[j]);
    }
  }
}

}  // namespace

absl::Status Prefill(const ExecContext& ctx, const PrefillArgs& args) {
  const double scale = DefaultScale(args.scale, args.kv.head_dim);
  const QueryRows rows{args.q,      args.q_positions, args.num_q, args.num_q_heads,
                       args.causal, args.out,         args.lse,   args.accum.lse};
  for (int32_t kv_head = 0; kv_head < args.kv.num_kv_heads; ++kv_head) {
    const int32_t list = args.gather.per_kv_head ? kv_head : 0;
    AttendList(args.kv, args.gather, args.gather.indptr[list], args.gather.indptr[list + 1],
               kv_head, args.rope, scale, rows, args.accum);
  }
  return absl::OkStatus();
}

absl::Status Decode(const ExecContext& ctx, const DecodeArgs& args) {
  const double scale = DefaultScale(args.scale, args.kv.head_dim);
  const int32_t hq = args.num_q_heads, d_head = args.kv.head_dim;
  for (int32_t b = 0; b < args.batch; ++b) {
    const int64_t row0 = static_cast<int64_t>(b) * hq;
    QueryRows rows;
    rows.q = args.q + row0 * d_head;
    rows.q_positions = args.q_positions != nullptr ? args.q_positions + b : nullptr;
    rows.num_q = 1;
    rows.num_q_heads = hq;
    rows.causal = false;
    rows.out = args.out != nullptr ? args.out + row0 * d_head : nullptr;
    rows.lse = args.lse != nullptr ? args.lse + row0 : nullptr;
    rows.norm_lse = args.accum.lse != nullptr ? args.accum.lse + row0 : nullptr;
    for (int32_t kv_head = 0; kv_head < args.kv.num_kv_heads; ++kv_head) {
      const int64_t list =
          args.gather.per_kv_head ? static_cast<int64_t>(b) * args.kv.num_kv_heads + kv_head : b;
      AttendList(args.kv, args.gather, args.gather.indptr[list], args.gather.indptr[list + 1],
                 kv_head, args.rope, scale, rows, args.accum);
    }
  }
  return absl::OkStatus();
}

}  // namespace kvc::kernels::ref
