// TokenSelect (kernel 4) and QueryFingerprint on every CPU path: the
// reference, each optimised ISA build this machine runs, and Backend::kCpu
// through the public API. The oracle is a brute-force fp64 computation of
// the summed per-head softmax in this file.
//
// Tolerances: on one path a candidate's arithmetic does not depend on where
// it is stored or which shard scores it, so those comparisons are exact.
// Against the fp64 oracle or between paths, scores differ by fp32 rounding
// of the logits (|logit| of a few units, D <= 128 terms), of exp and of the
// head sum: up to 2.4e-7 relative measured, so kScoreTol leaves an 8x margin.
// Selections are compared exactly: the random data has no near-ties, and the
// crafted ties are exact (identical keys or pooled plateaus).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/internal/backend.h"
#include "kernels/thread_pool.h"
#include "kernels/token_select.h"
#include "tests/kernel_test_util.h"
#include "tests/token_select_test_util.h"

namespace kvc::kernels {
namespace {

using testing::RandomFloats;
using testing::RelErrorByNorm;
using namespace testing;  // NOLINT: the TokenSelect test helpers

TEST(TokenSelectTest, PagedDotProductEqualsDenseGather) {
  const int32_t hq = 8, hkv = 2, dim = 64;
  const int64_t n = 700;
  const std::vector<float> values = RandomFloats(n * hkv * dim, 1);
  const Keys dense = ContiguousKeys(values, DType::kBF16, n, hkv, dim);
  const Problem dense_problem{hq, &dense, RandomFloats(hq * dim, 2), 0, -1, 10, 0, false};
  const Expected want = BruteForce(dense_problem);
  for (const KvLayout layout : {KvLayout::kHND, KvLayout::kNHD}) {
    const Keys paged = MakeKeys(values, DType::kBF16, n, hkv, dim, layout, 16, 3);
    Problem paged_problem = dense_problem;
    paged_problem.keys = &paged;
    paged_problem.use_slots = true;
    for (const Path& path : AllPaths()) {
      SCOPED_TRACE(path.name);
      const Selection d = RunSelect(path, dense_problem), p = RunSelect(path, paged_problem);
      EXPECT_EQ(p.scores, d.scores);  // same arithmetic per candidate: exact
      EXPECT_EQ(p.selected, d.selected);
      EXPECT_LE(RelErrorByNorm(d.scores, want.pooled), kScoreTol);
      EXPECT_EQ(d.selected, want.selected);
    }
  }
}

TEST(TokenSelectTest, SelectionEqualsBruteForceWithExactTies) {
  const int32_t hq = 8, hkv = 2, dim = 48;
  const int64_t n = 300;
  const std::vector<float> qbar = RandomFloats(hq * dim, 11);
  std::vector<float> values = RandomFloats(n * hkv * dim, 12);
  // Six identical strong keys: their scores tie exactly and top the list.
  const std::vector<int32_t> copies = {40, 41, 90, 150, 151, 260};
  for (const int32_t t : copies) SetStrongKey(qbar, hq, hkv, dim, t, 0.5f, &values);
  const Keys keys = MakeKeys(values, DType::kBF16, n, hkv, dim, KvLayout::kHND, 16, 13);
  for (const Path& path : AllPaths()) {
    SCOPED_TRACE(path.name);
    // k = 4 cuts through the tie: the four lowest positions win.
    const Problem tie{hq, &keys, qbar, 16, n - 32, 4, 0};
    EXPECT_EQ(RunSelect(path, tie).selected, (std::vector<int32_t>{40, 41, 90, 150}));
    EXPECT_EQ(BruteForce(tie).selected, (std::vector<int32_t>{40, 41, 90, 150}));
    for (const int32_t pool_kernel : {0, 3}) {
      for (const int64_t k : {1, 5, 23, 120}) {
        const Problem p{hq, &keys, qbar, 16, n - 32, k, pool_kernel};
        const Selection got = RunSelect(path, p);
        const Expected want = BruteForce(p);
        EXPECT_EQ(got.selected, want.selected) << "pool " << pool_kernel << " k " << k;
        EXPECT_LE(RelErrorByNorm(got.scores, want.pooled), kScoreTol);
        for (int64_t i = 0; i < k; ++i) {
          EXPECT_EQ(got.selected_scores[i], got.scores[got.selected[i]]);
        }
      }
    }
  }
}

TEST(TokenSelectTest, ShiftingOneHeadsLogitsKeepsTheSelection) {
  // The last key dim is 1 for every key, so qbar_h's last component adds a
  // constant to head h's logits only.
  const int32_t hq = 6, hkv = 3, dim = 48;
  const int64_t n = 400;
  std::vector<float> values = RandomFloats(n * hkv * dim, 21);
  for (int64_t row = 0; row < n * hkv; ++row) values[row * dim + dim - 1] = 1.0f;
  const Keys keys = MakeKeys(values, DType::kF32, n, hkv, dim, KvLayout::kHND, 16, 22);
  std::vector<float> qbar = RandomFloats(hq * dim, 23);
  for (int32_t h = 0; h < hq; ++h) qbar[h * dim + dim - 1] = 0.0f;
  std::vector<float> shifted = qbar;
  shifted[3 * dim + dim - 1] = 5.0f * std::sqrt(static_cast<float>(dim));  // logit + 5
  for (const Path& path : AllPaths()) {
    SCOPED_TRACE(path.name);
    for (const int32_t pool_kernel : {0, 5}) {
      const Problem base{hq, &keys, qbar, 8, n - 8, 30, pool_kernel};
      Problem moved = base;
      moved.qbar = shifted;
      const Selection a = RunSelect(path, base), b = RunSelect(path, moved);
      EXPECT_EQ(a.selected, b.selected);
      EXPECT_LE(RelErrorByNorm(b.scores, a.scores), kScoreTol);
    }
  }
}

TEST(TokenSelectTest, ShardedSelectionEqualsSinglePool) {
  const int32_t hq = 8, hkv = 2, dim = 64;
  const int64_t n = 1200, b = 40, e = n - 100, k = 37;  // > 2 CPU chunks of 512
  const std::vector<float> qbar = RandomFloats(hq * dim, 31);
  std::vector<float> values = RandomFloats(n * hkv * dim, 32);
  for (const int32_t t : {300, 301, 700}) SetStrongKey(qbar, hq, hkv, dim, t, 0.5f, &values);
  const Keys keys = MakeKeys(values, DType::kBF16, n, hkv, dim, KvLayout::kHND, 16, 33);
  std::mt19937_64 rng(34);
  for (const Path& path : AllPaths()) {
    for (const int32_t pool_kernel : {0, 5}) {
      const Problem whole{hq, &keys, qbar, b, e, k, pool_kernel};
      const Selection single = RunSelect(path, whole);
      const int32_t r = pool_kernel / 2;
      for (int split = 0; split < 4; ++split) {
        SCOPED_TRACE(path.name + " pool " + std::to_string(pool_kernel) + " split " +
                     std::to_string(split));
        // Eligible [b, e) cut at `split` random points (split 0: one shard).
        std::vector<int64_t> cuts = {b, e};
        for (int i = 0; i < split; ++i) cuts.push_back(b + 1 + rng() % (e - b - 1));
        std::sort(cuts.begin(), cuts.end());
        cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
        const int shards = static_cast<int>(cuts.size()) - 1;
        std::vector<float> shard_lse(shards * hq);
        std::vector<TokenSelectArgs> args(shards);
        for (int s = 0; s < shards; ++s) {
          // The shard's list: its eligible range plus r halo candidates a side.
          const int64_t lo = std::max<int64_t>(0, cuts[s] - r);
          const int64_t hi = std::min<int64_t>(n, cuts[s + 1] + r);
          args[s] = whole.Args();
          args[s].candidates = keys.slots.data() + lo;
          args[s].num_candidates = hi - lo;
          args[s].select_begin = cuts[s] - lo;
          args[s].select_end = cuts[s + 1] - lo;
          args[s].k = std::min<int64_t>(k, cuts[s + 1] - cuts[s]);
          ASSERT_TRUE(path.Lse(args[s], shard_lse.data() + s * hq).ok());
        }
        std::vector<float> global_lse(hq);
        CombineLse(shard_lse, hq, global_lse.data());
        std::vector<CandidateSet> offers(shards);
        for (int s = 0; s < shards; ++s) {
          std::vector<int32_t> sel(args[s].k);
          std::vector<float> sel_scores(args[s].k);
          args[s].global_lse = global_lse.data();
          args[s].selected = sel.data();
          args[s].selected_scores = sel_scores.data();
          ASSERT_TRUE(path.Select(args[s]).ok());
          const int64_t lo = std::max<int64_t>(0, cuts[s] - r);
          for (const int32_t i : sel) offers[s].index.push_back(lo + i);
          offers[s].score = sel_scores;
        }
        // With the same lse a candidate scores bitwise the same in a shard
        // (at any offset) as in the whole list.
        const Selection whole_global = RunSelect(path, whole, global_lse.data());
        for (int s = 0; s < shards; ++s) {
          for (size_t i = 0; i < offers[s].index.size(); ++i) {
            EXPECT_EQ(offers[s].score[i], whole_global.scores[offers[s].index[i]]);
          }
        }
        const CandidateSet merged = MergeTopK(offers, k);
        EXPECT_EQ(merged.index,
                  std::vector<int64_t>(single.selected.begin(), single.selected.end()));
        if (shards == 1) {
          EXPECT_EQ(merged.score, single.selected_scores);  // the same lse: bitwise
        } else {
          // The global lse is rounded to fp32 once more than a single pool's:
          // up to an ulp of |lse| < 16 (1e-6), scaling a head's scores by as
          // much (4e-7 measured).
          EXPECT_LE(RelErrorByNorm(merged.score, single.selected_scores), 1e-5);
        }
      }
    }
  }
}

TEST(TokenSelectTest, DegenerateSelections) {
  const int32_t hq = 4, hkv = 2, dim = 32;
  const int64_t n = 77;
  const Keys keys = ContiguousKeys(RandomFloats(n * hkv * dim, 41), DType::kF32, n, hkv, dim);
  const Keys equal =
      ContiguousKeys(std::vector<float>(n * hkv * dim, 0.5f), DType::kF32, n, hkv, dim);
  const std::vector<float> qbar = RandomFloats(hq * dim, 42);
  for (const Path& path : AllPaths()) {
    SCOPED_TRACE(path.name);
    for (const int32_t pool_kernel : {0, 3}) {
      // k = the eligible count: everything eligible, nothing else.
      const Problem all{hq, &keys, qbar, 5, n - 9, n - 14, pool_kernel, false};
      EXPECT_EQ(RunSelect(path, all).selected, Range(5, n - 9));
      // Equal scores everywhere: the lowest eligible positions.
      const Problem tied{hq, &equal, qbar, 5, n - 9, 20, pool_kernel, false};
      EXPECT_EQ(RunSelect(path, tied).selected, Range(5, 25));
    }
    // No eligible candidates: the lse is -inf.
    std::vector<float> lse(hq, 0.0f);
    const Problem none{hq, &keys, qbar, 30, 30, 1, 0, false};
    ASSERT_TRUE(path.Lse(none.Args(), lse.data()).ok());
    for (const float x : lse) EXPECT_EQ(x, -std::numeric_limits<float>::infinity());
  }
}

TEST(TokenSelectTest, PoolingWidensPeaks) {
  // Zero keys everywhere (every head's logits 0: one shared base score)
  // except peaks at 50, 120 and the last candidate.
  const int32_t hq = 4, hkv = 1, dim = 32;
  const int64_t n = 200;
  const std::vector<float> qbar = RandomFloats(hq * dim, 51);
  std::vector<float> values(n * hkv * dim, 0.0f);
  for (const int32_t t : {50, 120, 199}) SetStrongKey(qbar, hq, hkv, dim, t, 0.2f, &values);
  const Keys keys = MakeKeys(values, DType::kBF16, n, hkv, dim, KvLayout::kHND, 16, 52);
  for (const Path& path : AllPaths()) {
    SCOPED_TRACE(path.name);
    const Selection plain = RunSelect(path, {hq, &keys, qbar, 0, -1, 3, 1});
    EXPECT_EQ(plain.selected, (std::vector<int32_t>{50, 120, 199}));
    const float base = plain.scores[0], peak = plain.scores[50];
    ASSERT_GT(peak, base);
    EXPECT_EQ(plain.scores[120], peak);
    EXPECT_EQ(plain.scores[199], peak);
    const Selection pooled = RunSelect(path, {hq, &keys, qbar, 0, -1, 7, 5});
    for (int64_t t = 0; t < n; ++t) {
      const bool near = std::abs(t - 50) <= 2 || std::abs(t - 120) <= 2 || t >= 197;
      EXPECT_EQ(pooled.scores[t], near ? peak : base) << "t " << t;
    }
    // Thirteen positions share the top pooled scores; ties go to the lowest.
    EXPECT_EQ(pooled.selected, (std::vector<int32_t>{48, 49, 50, 51, 52, 118, 119}));
  }
}

TEST(TokenSelectTest, SelectionCacheThresholds) {
  const std::vector<float> q = {1, 0, 0, 0};
  const std::vector<float> opposite = {-1, 0, 0, 0};
  // cos = 0.95 and 0.85 to q.
  const std::vector<float> near = {0.95f, std::sqrt(1 - 0.95f * 0.95f), 0, 0};
  const std::vector<float> far = {0.85f, 0, std::sqrt(1 - 0.85f * 0.85f), 0};

  SelectionCache always_reselect(1.0f);
  EXPECT_FALSE(always_reselect.ShouldReuse(q));
  always_reselect.Store(q, {1, 2});
  EXPECT_FALSE(always_reselect.ShouldReuse(q));  // even the same fingerprint

  SelectionCache always_reuse(-1.0f);
  EXPECT_FALSE(always_reuse.ShouldReuse(q));  // nothing stored yet
  always_reuse.Store(q, {3});
  EXPECT_TRUE(always_reuse.ShouldReuse(opposite));
  EXPECT_EQ(always_reuse.selection(), std::vector<int32_t>{3});
  always_reuse.Clear();
  EXPECT_FALSE(always_reuse.ShouldReuse(q));

  SelectionCache cache(0.9f);
  cache.Store(q, {4, 5});
  EXPECT_TRUE(cache.ShouldReuse(q));
  EXPECT_TRUE(cache.ShouldReuse(near));
  EXPECT_FALSE(cache.ShouldReuse(far));
  EXPECT_FALSE(cache.ShouldReuse(opposite));
}

TEST(TokenSelectTest, FullBudgetAttentionEqualsFullAttention) {
  // n_init + k + n_local >= N: the selection is every candidate, and the
  // attended set [0, n_init) U I U [N - n_local, N) with compact positions
  // is full attention.
  const int32_t hq = 8, hkv = 2, dim = 64, num_q = 4;
  const int64_t n = 96, n_init = 8, n_local = 16;
  const Rope rope{RopeStyle::kHalf, 10000.0f};
  const std::vector<float> k_values = RandomFloats(n * hkv * dim, 81);
  const Keys keys = MakeKeys(k_values, DType::kF32, n, hkv, dim, KvLayout::kHND, 16, 82);
  // Values at the same slots as the keys.
  std::vector<float> v_stored(keys.bytes.size() / 4);
  const std::vector<float> v_values = RandomFloats(n * hkv * dim, 83);
  const KvPool pool_shape = keys.Pool();
  for (int64_t t = 0; t < n; ++t) {
    for (int32_t h = 0; h < hkv; ++h) {
      std::copy_n(v_values.begin() + (t * hkv + h) * dim, dim,
                  v_stored.begin() + pool_shape.Offset(keys.slots[t], h));
    }
  }
  KvPool pool = keys.Pool();
  pool.v = v_stored.data();
  const ExecContext ref{Backend::kReference};
  const std::vector<float> q = RandomFloats(num_q * hq * dim, 84);

  std::vector<float> qbar(hq * dim);
  FingerprintArgs fa{q.data(), num_q, hq, dim, rope, static_cast<int32_t>(n_local), qbar.data()};
  ASSERT_TRUE(QueryFingerprint(ref, fa).ok());
  std::vector<int32_t> selected(n - n_init - n_local);
  TokenSelectArgs sa;
  sa.qbar = qbar.data();
  sa.num_q_heads = hq;
  sa.pool = pool;
  sa.candidates = keys.slots.data() + n_init;
  sa.num_candidates = n - n_init - n_local;
  sa.k = n - n_init - n_local;
  sa.selected = selected.data();
  ASSERT_TRUE(TokenSelect(ref, sa).ok());

  // Decode of the last query over `slots` of `kv` with compact positions.
  auto attend = [&](const KvPool& kv, const std::vector<int32_t>& slots) {
    const std::vector<int32_t> indptr = {0, static_cast<int32_t>(slots.size())};
    const std::vector<int32_t> positions = Range(0, static_cast<int64_t>(slots.size()));
    const int32_t q_position = static_cast<int32_t>(slots.size());
    std::vector<float> out(hq * dim);
    DecodeArgs da;
    da.q = q.data() + (num_q - 1) * hq * dim;
    da.q_positions = &q_position;
    da.batch = 1;
    da.num_q_heads = hq;
    da.kv = kv;
    da.gather = {indptr.data(), slots.data(), positions.data(), false};
    da.rope = rope;
    da.out = out.data();
    const absl::Status st = Decode(ref, da);
    EXPECT_TRUE(st.ok()) << st;
    return out;
  };
  std::vector<int32_t> attended = Range(0, n_init);
  for (const int32_t i : selected) attended.push_back(static_cast<int32_t>(n_init + i));
  for (int64_t t = n - n_local; t < n; ++t) attended.push_back(static_cast<int32_t>(t));
  ASSERT_EQ(attended, Range(0, n));
  std::vector<int32_t> attended_slots;
  for (const int32_t t : attended) attended_slots.push_back(keys.slots[t]);
  // Full attention: the same tokens in a contiguous pool. The reference
  // does the same arithmetic on the same numbers in the same order.
  const KvPool dense =
      KvPool::Contiguous(k_values.data(), v_values.data(), DType::kF32, n, hkv, dim);
  EXPECT_LE(RelErrorByNorm(attend(pool, attended_slots), attend(dense, Range(0, n))), 1e-7);
}

// Every path rotates and sums in fp64 and rounds once to fp32 (6e-8
// relative), so 1e-7 holds even at large positions.
TEST(QueryFingerprintTest, MeanOfRotatedQueries) {
  const int32_t hq = 6, dim = 48, num_q = 7;
  const std::vector<float> q = RandomFloats(num_q * hq * dim, 91);
  // Without RoPE: the plain mean, computed here in fp64.
  std::vector<float> mean(hq * dim);
  for (int32_t j = 0; j < hq * dim; ++j) {
    double s = 0;
    for (int32_t i = 0; i < num_q; ++i) s += q[i * hq * dim + j];
    mean[j] = static_cast<float>(s / num_q);
  }
  // pair 0 of a 2-dim head turns by exactly `position` radians.
  const std::vector<float> unit = {1.0f, 0.0f};
  const std::vector<float> turned = {std::cos(3.0f), std::sin(3.0f)};
  std::vector<float> want_rope;
  for (const Path& path : AllPaths()) {
    SCOPED_TRACE(path.name);
    std::vector<float> qbar(hq * dim);
    ASSERT_TRUE(path.Fingerprint({q.data(), num_q, hq, dim, Rope{}, 0, qbar.data()}).ok());
    EXPECT_LE(RelErrorByNorm(qbar, mean), 1e-7);

    std::vector<float> one(2);
    for (const RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kHalf}) {
      ASSERT_TRUE(
          path.Fingerprint({unit.data(), 1, 1, 2, Rope{style, 10000.0f}, 3, one.data()}).ok());
      EXPECT_LE(RelErrorByNorm(one, turned), 1e-7);
      // At large positions every path computes angles and cos/sin in fp64.
      ASSERT_TRUE(
          path.Fingerprint({q.data(), num_q, hq, dim, Rope{style, 500000.0f}, 100000, qbar.data()})
              .ok());
      if (want_rope.size() < 2 * qbar.size())
        want_rope.insert(want_rope.end(), qbar.begin(), qbar.end());
      const size_t at = style == RopeStyle::kInterleaved ? 0 : qbar.size();
      EXPECT_LE(RelErrorByNorm(qbar, {want_rope.data() + at, qbar.size()}), 1e-7);
    }
  }
}

}  // namespace
}  // namespace kvc::kernels
