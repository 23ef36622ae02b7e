// Quest, reference path (kernels/quest.h): keys rotated in double, page
// min / max rounded to fp32 once (rounding is monotone, so the fp32 min of
// the rounded keys and the rounded double min are the same number); bounds
// summed in double from the fp32 metadata and the double-rotated query,
// rounded to fp32 scores; selection by a full sort with the tie rule.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/ref/ref_kernels.h"
#include "kernels/ref/ref_util.h"

namespace kvc::kernels::ref {
namespace {

// kernels/ref/token_select.cc's order: a larger key is a larger score, both
// zeros tie, NaN below every number.
uint32_t ScoreOrderKey(float score) {
  if (score != score) return 0;
  if (score == 0.0f) score = 0.0f;
  uint32_t bits;
  std::memcpy(&bits, &score, sizeof bits);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

}  // namespace

absl::Status QuestUpdatePages(const ExecContext& ctx, const QuestUpdateArgs& args) {
  const KvPool& pool = args.pool;
  const QuestMeta& m = args.meta;
  const int32_t D = pool.head_dim, hkv = pool.num_kv_heads;
  const int64_t ps = m.page_size;
  const int64_t first_page = args.first_new / ps;
  const int64_t end_page = (args.num_tokens + ps - 1) / ps;
  std::vector<float> row(D);
  std::vector<double> rotated(D), lo(D), hi(D);
  for (int64_t p = first_page; p < end_page; ++p) {
    const int64_t begin = p * ps, end = std::min(begin + ps, args.num_tokens);
    for (int32_t h = 0; h < hkv; ++h) {
      std::fill(lo.begin(), lo.end(), std::numeric_limits<double>::infinity());
      std::fill(hi.begin(), hi.end(), -std::numeric_limits<double>::infinity());
      for (int64_t s = begin; s < end; ++s) {
        LoadKeyRow(pool, s, h, pool.k, row.data());
        ApplyRope(args.rope, static_cast<int32_t>(s), D, row.data(), rotated.data());
        for (int32_t d = 0; d < D; ++d) {
          lo[d] = std::min(lo[d], rotated[d]);
          hi[d] = std::max(hi[d], rotated[d]);
        }
      }
      const int64_t off = (p * hkv + h) * D;
      for (int32_t d = 0; d < D; ++d) {
        m.min[off + d] = static_cast<float>(lo[d]);
        m.max[off + d] = static_cast<float>(hi[d]);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status QuestSelect(const ExecContext& ctx, const QuestSelectArgs& args) {
  const QuestMeta& m = args.meta;
  const int32_t D = m.head_dim, hkv = m.num_kv_heads, hq = args.num_q_heads;
  const int32_t group = hq / hkv;
  const int64_t n = args.num_pages;
  // The query of every head, rotated to its position.
  std::vector<double> q(static_cast<size_t>(hq) * D);
  for (int32_t h = 0; h < hq; ++h) {
    ApplyRope(args.rope, args.q_position, D, args.q + static_cast<int64_t>(h) * D, q.data() + h * D);
  }
  std::vector<int64_t> order(n);
  for (int32_t kv = 0; kv < hkv; ++kv) {
    float* scores = args.scores + kv * n;
    for (int64_t p = 0; p < n; ++p) {
      const float* lo = m.min + (p * hkv + kv) * D;
      const float* hi = m.max + (p * hkv + kv) * D;
      double best = -std::numeric_limits<double>::infinity();
      for (int32_t g = 0; g < group; ++g) {
        const double* qh = q.data() + static_cast<size_t>(kv * group + g) * D;
        double bound = 0.0;
        for (int32_t d = 0; d < D; ++d) bound += std::max(qh[d] * lo[d], qh[d] * hi[d]);
        best = std::max(best, bound);
      }
      scores[p] = static_cast<float>(best);
    }
    for (int64_t p = 0; p < n; ++p) order[p] = p;
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      const uint32_t ka = ScoreOrderKey(scores[a]), kb = ScoreOrderKey(scores[b]);
      return ka != kb ? ka > kb : a < b;
    });
    int32_t* selected = args.selected + kv * args.k;
    for (int64_t i = 0; i < args.k; ++i) selected[i] = static_cast<int32_t>(order[i]);
    std::sort(selected, selected + args.k);
  }
  return absl::OkStatus();
}

}  // namespace kvc::kernels::ref
