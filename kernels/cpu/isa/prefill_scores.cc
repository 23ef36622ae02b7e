// Prefill score accumulation, parallel over (KV head, key tile): a tile's
// running scores are folded over the contributing queries in order, so no
// two threads touch one score and the fold order is the reference's.
#include "kernels/cpu/isa/prefill_scores.h"

#include <algorithm>
#include <limits>

#include "kernels/cpu/isa/prefill_tiles.h"

namespace kvc::kernels::KVC_CPU_NS {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct ScoreScratch {
  bool Allocate(int max_rows, int padded) {
    kt = AllocateFloats(static_cast<size_t>(kKeyTile) * padded);
    key = AllocateFloats(static_cast<size_t>(KeyTileScratch(padded, padded)));
    s = AllocateFloats(static_cast<size_t>(max_rows) * kKeyTile);
    return kt && key && s;
  }
  AlignedFloats kt, key, s;
};

struct ScorePlan {
  const PrefillArgs* args;
  const AttentionSetup* setup;
  const float* norm_lse;
  int64_t q_tile;
};

template <class Tag>
void ScoreKeyTile(const ScorePlan& plan, int32_t kv_head, int64_t j0, ScoreScratch& sc) {
  const PrefillArgs& a = *plan.args;
  const AttentionSetup& setup = *plan.setup;
  const ScoreAccum& accum = a.accum;
  const int g = setup.group, padded = setup.padded_dim;
  const int32_t list = a.gather.per_kv_head ? kv_head : 0;
  const int64_t begin = a.gather.indptr[list];
  const int64_t n = a.gather.indptr[list + 1] - begin;
  if (j0 >= n) return;
  const int count = static_cast<int>(std::min<int64_t>(kKeyTile, n - j0));
  const KvRows kv_rows(a.kv);
  const ListSource src{a.kv.k,
                       nullptr,
                       kv_rows,
                       kv_head * kv_rows.head_stride,
                       a.gather.indices + begin,
                       setup.rotate_keys ? a.gather.positions + begin : nullptr};
  LoadKeyTile<Tag>(src, j0, count, setup, sc.kt.get(), sc.key.get());

  float* scores = accum.scores + int64_t{kv_head} * a.kv.num_slots();
  double s[kKeyTile];
  for (int c = 0; c < count; ++c) s[c] = scores[src.indices[j0 + c]];
  const bool ema = accum.mode == ScoreMode::kEma;
  const bool max_reduce = accum.group_reduce == GroupReduce::kMax;
  const double beta = accum.beta, one_minus_beta = 1.0 - beta;

  // Entry j0 + c is visible to query i iff c < shift + i - j0 (causal).
  const int64_t shift = a.causal ? n - a.num_q + 1 : n;
  int64_t first_seeing = a.causal ? std::max(accum.first_query, j0 - shift + 1) : accum.first_query;
  first_seeing = std::min(first_seeing, a.num_q);
  // Queries that see none of the tile add P = 0: only the decay.
  for (int64_t i = accum.first_query; i < first_seeing && ema; ++i) {
    for (int c = 0; c < count; ++c) s[c] = beta * s[c] + one_minus_beta * 0.0;
  }

  const v16i lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const v16f neg_inf = Splat(kNegInf);
  for (int64_t ib = first_seeing; ib < a.num_q; ib += plan.q_tile) {
    const int64_t nq = std::min(plan.q_tile, a.num_q - ib);
    const float* q = setup.q.get() + (kv_head * a.num_q + ib) * g * padded;
    ScoreTile(q, static_cast<int>(nq * g), padded, sc.kt.get(), setup.head_dim, sc.s.get());
    for (int64_t i = ib; i < ib + nq; ++i) {
      const int visible =
          a.causal ? static_cast<int>(std::clamp<int64_t>(shift + i - j0, 0, count)) : count;
      v16f reduced[kKeyVecs] = {};
      for (int r = 0; r < g; ++r) {
        const int64_t h = int64_t{kv_head} * g + r;
        const float norm = plan.norm_lse[i * a.num_q_heads + h];
        if (norm == kNegInf) continue;  // no key seen anywhere: P = 0
        const float* srow = sc.s.get() + ((i - ib) * g + r) * kKeyTile;
        const v16f nv = Splat(norm);
        for (int v = 0; v < kKeyVecs; ++v) {
          const v16i in_range = (lane + v * kLanes) < visible;
          const v16f p = Exp((in_range ? Load(srow + v * kLanes) : neg_inf) - nv);
          reduced[v] = max_reduce ? Max(reduced[v], p) : reduced[v] + p;
        }
      }
      float red[kKeyTile];
      for (int v = 0; v < kKeyVecs; ++v) Store(red + v * kLanes, reduced[v]);
      if (ema) {
        for (int c = 0; c < count; ++c) s[c] = beta * s[c] + one_minus_beta * red[c];
      } else {
        for (int c = 0; c < count; ++c) s[c] += red[c];
      }
    }
  }
  for (int c = 0; c < count; ++c) scores[src.indices[j0 + c]] = static_cast<float>(s[c]);
}

template <class Tag>
absl::Status RunScores(ThreadPool& pool, const ScorePlan& plan) {
  const PrefillArgs& a = *plan.args;
  const int64_t num_lists = a.gather.per_kv_head ? a.kv.num_kv_heads : 1;
  int64_t longest = 0;
  for (int64_t l = 0; l < num_lists; ++l) {
    longest = std::max<int64_t>(longest, a.gather.indptr[l + 1] - a.gather.indptr[l]);
  }
  const int64_t tiles = (longest + kKeyTile - 1) / kKeyTile;
  const int max_rows = static_cast<int>(std::min(plan.q_tile, a.num_q)) * plan.setup->group;
  const bool ok = ForEachTask<ScoreScratch>(
      pool, a.kv.num_kv_heads * tiles,
      [&](ScoreScratch& sc) { return sc.Allocate(max_rows, plan.setup->padded_dim); },
      [&](int64_t t, ScoreScratch& sc) {
        ScoreKeyTile<Tag>(plan, static_cast<int32_t>(t / tiles), (t % tiles) * kKeyTile, sc);
      });
  if (!ok) return absl::ResourceExhaustedError("Prefill: cannot allocate score scratch");
  return absl::OkStatus();
}

}  // namespace

absl::Status PrefillScores(ThreadPool& pool, const PrefillArgs& args, const AttentionSetup& setup,
                           const float* norm_lse) {
  if (args.accum.first_query >= args.num_q) {
    return absl::OkStatus();  // no contributing query: nothing changes
  }
  ScorePlan plan{&args, &setup, norm_lse, std::max(1, kMaxTileRows / setup.group)};
  return VisitKvType(args.kv.dtype, [&](auto tag) { return RunScores<decltype(tag)>(pool, plan); });
}

}  // namespace kvc::kernels::KVC_CPU_NS
