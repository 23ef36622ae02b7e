// Reference QueryFingerprint and TokenSelect (kernel 4): the specification
// in plain loops. Arithmetic, which the optimised paths follow per candidate
// (they may round differently, never order differently):
//  - logit_h(t) = (float)(scale * sum_d (double)qbar_h[d] * (double)k_t[d]);
//  - lse_h = (float)(m + log sum_t exp((double)logit_h(t) - m)) over the
//    eligible candidates, m their largest logit (-inf when there are none);
//  - score(t) = (float) sum over h in head order of
//    exp((double)logit_h(t) - (double)lse_h), in double;
//  - pooled(t) = max of score(u) over candidates |u - t| <= pool_kernel / 2;
//  - selection: the k eligible candidates first in the order of
//    ScoreOrderKey (higher first; equal keys: lower position first).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/ref/ref_kernels.h"
#include "kernels/ref/ref_util.h"

namespace kvc::kernels::ref {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// An unsigned key ordered like the float scores: a larger key is a larger
// score. Both zeros map to one key so that they tie; NaN maps below every
// number. (kernels/cpu/isa/token_select_topk.cc uses the same mapping.)
uint32_t ScoreOrderKey(float score) {
  if (score != score) return 0;
  if (score == 0.0f) score = 0.0f;
  uint32_t bits;
  std::memcpy(&bits, &score, sizeof bits);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

struct Extent {
  int64_t num_candidates, select_begin, select_end;
  int32_t radius;  // pooling half-width, 0 = no pooling
};

Extent ExtentOf(const TokenSelectArgs& args) {
  Extent x;
  x.num_candidates = args.num_candidates;
  x.select_begin = args.select_begin;
  x.select_end = args.select_end < 0 ? args.num_candidates : args.select_end;
  x.radius = args.pool_kernel > 1 ? args.pool_kernel / 2 : 0;
  return x;
}

// logits[h * n + t] for every candidate t in [0, n), n = num_candidates.
std::vector<float> Logits(const TokenSelectArgs& args) {
  const KvPool& pool = args.pool;
  const int64_t n = args.num_candidates;
  const int32_t hq = args.num_q_heads, d = pool.head_dim;
  const int32_t group = hq / pool.num_kv_heads;
  const double scale = DefaultScale(args.scale, d);
  std::vector<float> logits(static_cast<size_t>(hq) * n);
  std::vector<float> key(d);
  for (int64_t t = 0; t < n; ++t) {
    const int64_t slot = args.candidates != nullptr ? args.candidates[t] : t;
    for (int32_t h = 0; h < hq; ++h) {
      if (h % group == 0) LoadKeyRow(pool, slot, h / group, pool.k, key.data());
      const float* q = args.qbar + static_cast<int64_t>(h) * d;
      double dot = 0;
      for (int32_t i = 0; i < d; ++i) dot += static_cast<double>(q[i]) * key[i];
      logits[h * n + t] = static_cast<float>(scale * dot);
    }
  }
  return logits;
}

// lse[h] over the eligible candidates [x.select_begin, x.select_end).
std::vector<float> EligibleLse(const std::vector<float>& logits, int32_t num_heads,
                               const Extent& x) {
  std::vector<float> lse(num_heads);
  const int64_t n = x.num_candidates;
  for (int32_t h = 0; h < num_heads; ++h) {
    const float* row = logits.data() + h * n;
    double m = kNegInf;
    for (int64_t t = x.select_begin; t < x.select_end; ++t) m = std::max<double>(m, row[t]);
    if (m == kNegInf) {
      lse[h] = -std::numeric_limits<float>::infinity();
      continue;
    }
    double sum = 0;
    for (int64_t t = x.select_begin; t < x.select_end; ++t) sum += std::exp(row[t] - m);
    lse[h] = static_cast<float>(m + std::log(sum));
  }
  return lse;
}

}  // namespace

absl::Status QueryFingerprint(const ExecContext& ctx, const FingerprintArgs& args) {
  const int32_t hq = args.num_q_heads, d = args.head_dim;
  std::vector<double> sum(static_cast<size_t>(hq) * d, 0.0), rotated(d);
  for (int64_t i = 0; i < args.num_q; ++i) {
    const int32_t position = static_cast<int32_t>(args.base_position + i);
    for (int32_t h = 0; h < hq; ++h) {
      ApplyRope(args.rope, position, d, args.q + (i * hq + h) * d, rotated.data());
      for (int32_t j = 0; j < d; ++j) sum[h * d + j] += rotated[j];
    }
  }
  for (size_t j = 0; j < sum.size(); ++j) {
    args.qbar[j] = static_cast<float>(sum[j] / static_cast<double>(args.num_q));
  }
  return absl::OkStatus();
}

absl::Status TokenSelectLse(const ExecContext& ctx, const TokenSelectArgs& args, float* lse_out) {
  const std::vector<float> lse = EligibleLse(Logits(args), args.num_q_heads, ExtentOf(args));
  std::copy(lse.begin(), lse.end(), lse_out);
  return absl::OkStatus();
}

absl::Status TokenSelect(const ExecContext& ctx, const TokenSelectArgs& args) {
  const Extent x = ExtentOf(args);
  const int64_t n = x.num_candidates;
  const int32_t hq = args.num_q_heads;
  if (args.k < 1 || args.k > x.select_end - x.select_begin) {
    return absl::InvalidArgumentError("TokenSelect: k must be in [1, eligible candidates]");
  }
  const std::vector<float> logits = Logits(args);
  const std::vector<float> lse = args.global_lse != nullptr
                                     ? std::vector<float>(args.global_lse, args.global_lse + hq)
                                     : EligibleLse(logits, hq, x);

  std::vector<float> score(n);
  for (int64_t t = 0; t < n; ++t) {
    double s = 0;
    for (int32_t h = 0; h < hq; ++h) {
      s += std::exp(static_cast<double>(logits[h * n + t]) - static_cast<double>(lse[h]));
    }
    score[t] = static_cast<float>(s);
  }

  std::vector<float> pooled(score);
  for (int64_t t = 0; t < n; ++t) {
    const int64_t lo = std::max<int64_t>(0, t - x.radius);
    const int64_t hi = std::min<int64_t>(n - 1, t + x.radius);
    for (int64_t u = lo; u <= hi; ++u) pooled[t] = std::max(pooled[t], score[u]);
  }

  std::vector<int64_t> order;
  for (int64_t t = x.select_begin; t < x.select_end; ++t) order.push_back(t);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    const uint32_t ka = ScoreOrderKey(pooled[a]), kb = ScoreOrderKey(pooled[b]);
    return ka != kb ? ka > kb : a < b;
  });
  order.resize(args.k);
  std::sort(order.begin(), order.end());
  for (int64_t i = 0; i < args.k; ++i) {
    args.selected[i] = static_cast<int32_t>(order[i]);
    if (args.selected_scores != nullptr) args.selected_scores[i] = pooled[order[i]];
  }
  if (args.scores != nullptr) std::copy(pooled.begin(), pooled.end(), args.scores);
  return absl::OkStatus();
}

}  // namespace kvc::kernels::ref
