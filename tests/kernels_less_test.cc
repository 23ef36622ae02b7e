// LESS (kernel 7) against ALGORITHMS.md §3's faithfulness tests: an empty
// state leaves sparse attention untouched; the recurrent form (attend the
// cache, combine, fold what leaves) equals the parallel masked form computed
// here in fp64; the state does not depend on the order tokens are folded in;
// denominators stay positive for large inputs; and every optimised path
// matches the reference. Each runs with the fixed map (hidden = 0) and an
// MLP map (hidden > 0) with random weights.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/less.h"
#include "tests/kernel_test_util.h"

namespace kvc::kernels {
namespace {

using testing::Encode;
using testing::RandomFloats;
using testing::RelErrorByNorm;

using Path = testing::KernelPath;
using testing::kReferencePath;

// hidden = 0: the fixed map; -1: positive random features (kExp);
// otherwise a GELU MLP with random weights.
FeatureMapWeights MakeMap(int32_t dim, int32_t rank, int32_t hidden, uint64_t seed) {
  if (hidden == 0) return RandomFeatureMap(dim, rank, seed);
  if (hidden == -1) return PositiveRandomFeatureMap(dim, rank, seed);
  FeatureMapWeights f;
  f.in_dim = dim;
  f.hidden = hidden;
  f.out_dim = rank;
  f.w1 = RandomFloats(static_cast<size_t>(hidden) * dim, seed, 1.0f / std::sqrt(dim));
  f.b1 = RandomFloats(hidden, seed + 1, 0.1f);
  f.w2 = RandomFloats(static_cast<size_t>(rank) * hidden, seed + 2, 1.0f / std::sqrt(hidden));
  f.b2 = RandomFloats(rank, seed + 3, 0.1f);
  return f;
}

// The feature map in fp64, written from less.h's formula.
std::vector<double> Features(const FeatureMapWeights& f, const float* x) {
  std::vector<double> g(x, x + f.in_dim);
  if (f.hidden > 0) {
    std::vector<double> pre(f.hidden);
    for (int32_t j = 0; j < f.hidden; ++j) {
      double a = f.b1[j];
      for (int32_t d = 0; d < f.in_dim; ++d)
        a += static_cast<double>(f.w1[j * f.in_dim + d]) * x[d];
      pre[j] =
          0.5 * a *
          (1.0 + std::tanh(0.7978845608028654 /* sqrt(2 / pi) */ * (a + 0.044715 * a * a * a)));
    }
    g = pre;
  }
  double sq = 0;
  for (int32_t d = 0; d < f.in_dim; ++d) sq += static_cast<double>(x[d]) * x[d];
  std::vector<double> out(f.out_dim);
  for (int32_t r = 0; r < f.out_dim; ++r) {
    double y = f.b2[r] - f.sq_norm_coeff * sq;
    for (size_t c = 0; c < g.size(); ++c) y += static_cast<double>(f.w2[r * g.size() + c]) * g[c];
    out[r] = f.activation == FeatureActivation::kExp ? std::exp(y) : (y > 0 ? y + 1.0 : std::exp(y));
  }
  return out;
}

// A LESS state owning its (zero-initialised) buffers.
struct State {
  State(int32_t heads, int32_t rank, int32_t dim)
      : h(static_cast<size_t>(heads) * rank * dim), z(static_cast<size_t>(heads) * rank) {
    view = {heads, rank, dim, h.data(), z.data()};
  }
  State(const State&) = delete;
  std::vector<float> h, z;
  LessState view;
};

void Fold(const Path& path, State& s, const FeatureMapWeights& psi, DType dtype,
          const std::vector<uint8_t>& k, const std::vector<uint8_t>& v, int64_t max_tokens,
          const int32_t* count, bool subtract = false) {
  const LessFoldArgs a{s.view, psi.View(), dtype, k.data(), v.data(), max_tokens, count, subtract};
  const absl::Status st =
      path.table == nullptr ? LessFold(path.ctx, a) : path.table->less_fold(path.ctx, a);
  ASSERT_TRUE(st.ok()) << path.name << ": " << st;
}

std::vector<float> Combine(const Path& path, const State& s, const FeatureMapWeights& phi,
                           const std::vector<float>& q, const std::vector<float>& sparse_out,
                           const std::vector<float>& sparse_lse, int32_t num_q_heads) {
  std::vector<float> out(sparse_out.size(), 7.0f);
  const LessCombineArgs a{s.view,
                          phi.View(),
                          q.data(),
                          sparse_out.data(),
                          sparse_lse.data(),
                          static_cast<int64_t>(sparse_lse.size()) / num_q_heads,
                          num_q_heads,
                          out.data()};
  const absl::Status st =
      path.table == nullptr ? LessCombine(path.ctx, a) : path.table->less_combine(path.ctx, a);
  EXPECT_TRUE(st.ok()) << path.name << ": " << st;
  return out;
}

// With nothing folded (z = 0) the sparse output comes back bit for bit, for
// finite and empty (lse = -inf) sparse states alike.
TEST(LessTest, EmptyStateIsSparseAttentionExactly) {
  constexpr int32_t kHq = 4, kHkv = 2, kD = 24, kR = 8, kTokens = 3;
  for (const int32_t hidden : {0, 16}) {
    const FeatureMapWeights phi = MakeMap(kD, kR, hidden, 1);
    const std::vector<float> q = RandomFloats(kTokens * kHq * kD, 2);
    const std::vector<float> sparse = RandomFloats(kTokens * kHq * kD, 3);
    std::vector<float> lse = RandomFloats(kTokens * kHq, 4, 3.0f);
    lse[1] = -std::numeric_limits<float>::infinity();
    for (const Path& path : testing::AllKernelPaths()) {
      State s(kHkv, kR, kD);
      EXPECT_EQ(Combine(path, s, phi, q, sparse, lse, kHq), sparse) << path.name;
    }
  }
}

// The recurrent form equals the parallel masked form. A Lambda policy keeps
// the first kSinks tokens and the last kRecent; decoding token t attends
// that cache with Decode (reference), combines with the state, and the
// token that leaves before step t + 1 is folded. Query t must then see
//   [sum_{s in cache} e^{l_s} v_s + phi(q) sum_{s evicted} psi(k_s)^T v_s] / [same with 1 and
//   psi(k_s)]
// which the test computes directly in fp64. Tolerance 1e-6 by norm: the
// sparse part arrives as fp32 (out, lse) and the feature maps and the
// combination are fp32 on the optimised paths, a few ulps (measured
// 3e-8..6e-8); a wrong mask, a missed or doubled fold or a mis-grouped head
// is off by orders of magnitude more.
TEST(LessTest, RecurrentFormEqualsParallelMaskedForm) {
  constexpr int32_t kHq = 4, kHkv = 2, kD = 16, kR = 8, kT = 40, kSinks = 4, kRecent = 6;
  const int32_t group = kHq / kHkv;
  const std::vector<float> k = RandomFloats(kT * kHkv * kD, 10);
  const std::vector<float> v = RandomFloats(kT * kHkv * kD, 11);
  const std::vector<float> q = RandomFloats(kT * kHq * kD, 12);
  const std::vector<uint8_t> k_bytes = Encode(DType::kF32, k), v_bytes = Encode(DType::kF32, v);
  const KvPool pool = KvPool::Contiguous(k.data(), v.data(), DType::kF32, kT, kHkv, kD);
  for (const int32_t hidden : {0, 20}) {
    const FeatureMapWeights phi = MakeMap(kD, kR, hidden, 13), psi = MakeMap(kD, kR, hidden, 14);
    // The parallel form: query t over its cache plus everything evicted so far.
    std::vector<float> want;
    for (int32_t t = 0; t < kT; ++t) {
      for (int32_t qh = 0; qh < kHq; ++qh) {
        const int32_t kvh = qh / group;
        const float* qv = &q[(t * kHq + qh) * kD];
        const std::vector<double> fq = Features(phi, qv);
        std::vector<double> num(kD, 0.0);
        double den = 0.0;
        for (int32_t s = 0; s <= t; ++s) {
          const float* ks = &k[(s * kHkv + kvh) * kD];
          const float* vs = &v[(s * kHkv + kvh) * kD];
          double w;
          if (s < kSinks || s > t - kRecent) {
            double logit = 0.0;
            for (int32_t d = 0; d < kD; ++d) logit += static_cast<double>(qv[d]) * ks[d];
            w = std::exp(logit / std::sqrt(static_cast<double>(kD)));
          } else {
            const std::vector<double> fk = Features(psi, ks);
            w = 0.0;
            for (int32_t r = 0; r < kR; ++r) w += fq[r] * fk[r];
          }
          den += w;
          for (int32_t d = 0; d < kD; ++d) num[d] += w * vs[d];
        }
        for (int32_t d = 0; d < kD; ++d) want.push_back(static_cast<float>(num[d] / den));
      }
    }
    for (const Path& path : testing::AllKernelPaths()) {
      SCOPED_TRACE(::testing::Message() << path.name << " hidden " << hidden);
      State state(kHkv, kR, kD);
      std::vector<float> got;
      for (int32_t t = 0; t < kT; ++t) {
        // Token t - kRecent left the window when token t arrived.
        const int32_t leaving = t - kRecent;
        if (leaving >= kSinks) {
          const size_t row = static_cast<size_t>(kHkv) * kD * 4;  // [Hkv][1][D] fp32
          const std::vector<uint8_t> lk(k_bytes.begin() + leaving * row,
                                        k_bytes.begin() + (leaving + 1) * row);
          const std::vector<uint8_t> lv(v_bytes.begin() + leaving * row,
                                        v_bytes.begin() + (leaving + 1) * row);
          const std::vector<int32_t> count(kHkv, 1);
          Fold(path, state, psi, DType::kF32, lk, lv, 1, count.data());
        }
        std::vector<int32_t> indptr{0}, indices;
        for (int32_t s = 0; s <= t; ++s) {
          if (s < kSinks || s > t - kRecent) indices.push_back(s);
        }
        indptr.push_back(static_cast<int32_t>(indices.size()));
        const std::vector<float> qt(q.begin() + t * kHq * kD, q.begin() + (t + 1) * kHq * kD);
        std::vector<float> sparse_out(kHq * kD), sparse_lse(kHq);
        DecodeArgs d;
        d.q = qt.data();
        d.batch = 1;
        d.num_q_heads = kHq;
        d.kv = pool;
        d.gather = KvGather{indptr.data(), indices.data(), nullptr, false};
        d.out = sparse_out.data();
        d.lse = sparse_lse.data();
        const absl::Status st = Decode(ExecContext{Backend::kReference}, d);
        ASSERT_TRUE(st.ok()) << st;
        const std::vector<float> a = Combine(path, state, phi, qt, sparse_out, sparse_lse, kHq);
        got.insert(got.end(), a.begin(), a.end());
      }
      EXPECT_LT(RelErrorByNorm(got, want), 1e-6);
    }
  }
}

// H and z are sums, so folding a set of tokens at once or in reverse order
// over many calls (per-head counts, rows past each count filled with NaN,
// which must not be read) gives the same state. Tolerance 1e-6 by norm: each
// call adds one fp32 rounding of the state (about 6e-8 relative), over 41
// calls (measured about 1.2e-7).
TEST(LessTest, StateDoesNotDependOnFoldOrder) {
  constexpr int32_t kHkv = 2, kD = 40, kR = 8, kN = 200, kStep = 5;
  const std::vector<float> k = RandomFloats(kHkv * kN * kD, 20),
                           v = RandomFloats(kHkv * kN * kD, 21);
  for (const int32_t hidden : {0, 24}) {
    const FeatureMapWeights psi = MakeMap(kD, kR, hidden, 22);
    for (const DType dtype : {DType::kF32, DType::kBF16}) {
      for (const Path& path : testing::AllKernelPaths()) {
        SCOPED_TRACE(::testing::Message()
                     << path.name << " hidden " << hidden << " " << DTypeName(dtype));
        State once(kHkv, kR, kD), reversed(kHkv, kR, kD);
        Fold(path, once, psi, dtype, Encode(dtype, k), Encode(dtype, v), kN, nullptr);
        // Calls of kStep rows per head, newest tokens first, head 1 one
        // call behind head 0 (count 0 in the first call, so 41 calls).
        for (int32_t call = 0; call <= kN / kStep; ++call) {
          std::vector<float> ck(kHkv * kStep * kD, NAN), cv(ck.size(), NAN);
          std::vector<int32_t> count(kHkv, 0);
          for (int32_t h = 0; h < kHkv; ++h) {
            const int32_t block = call - h;  // this head's block of kStep tokens, from the end
            if (block < 0 || block >= kN / kStep) continue;
            count[h] = kStep;
            for (int32_t i = 0; i < kStep; ++i) {
              const int32_t token = kN - 1 - (block * kStep + i);
              std::copy_n(&k[(h * kN + token) * kD], kD, &ck[(h * kStep + i) * kD]);
              std::copy_n(&v[(h * kN + token) * kD], kD, &cv[(h * kStep + i) * kD]);
            }
          }
          Fold(path, reversed, psi, dtype, Encode(dtype, ck), Encode(dtype, cv), kStep,
               count.data());
        }
        EXPECT_LT(RelErrorByNorm(reversed.h, once.h), 1e-6);
        EXPECT_LT(RelErrorByNorm(reversed.z, once.z), 1e-6);
        EXPECT_GT(*std::min_element(once.z.begin(), once.z.end()), 0.0f);
      }
    }
  }
}

// Unfolding (subtract) removes exactly what a fold of the same rows added:
// fold A, fold B, unfold B equals fold A alone, on every path, up to the
// fp32 rounding of the state per call (three calls; tolerance 1e-6 by norm
// of the state, measured below 2e-7). Unfolding every row of a head brings
// it back to (near) zero.
TEST(LessTest, UnfoldCancelsFold) {
  constexpr int32_t kHkv = 2, kD = 24, kR = 8, kN = 30;
  const std::vector<float> ka = RandomFloats(kHkv * kN * kD, 40), va = RandomFloats(kHkv * kN * kD, 41);
  const std::vector<float> kb = RandomFloats(kHkv * kN * kD, 42), vb = RandomFloats(kHkv * kN * kD, 43);
  for (const int32_t hidden : {0, -1, 16}) {
    const FeatureMapWeights psi = MakeMap(kD, kR, hidden, 44);
    for (const Path& path : testing::AllKernelPaths()) {
      SCOPED_TRACE(::testing::Message() << path.name << " hidden " << hidden);
      State want(kHkv, kR, kD), got(kHkv, kR, kD);
      Fold(path, want, psi, DType::kF32, Encode(DType::kF32, ka), Encode(DType::kF32, va), kN, nullptr);
      Fold(path, got, psi, DType::kF32, Encode(DType::kF32, ka), Encode(DType::kF32, va), kN, nullptr);
      Fold(path, got, psi, DType::kF32, Encode(DType::kF32, kb), Encode(DType::kF32, vb), kN, nullptr);
      Fold(path, got, psi, DType::kF32, Encode(DType::kF32, kb), Encode(DType::kF32, vb), kN, nullptr,
           /*subtract=*/true);
      EXPECT_LT(RelErrorByNorm(got.h, want.h), 1e-6);
      EXPECT_LT(RelErrorByNorm(got.z, want.z), 1e-6);
      Fold(path, got, psi, DType::kF32, Encode(DType::kF32, ka), Encode(DType::kF32, va), kN, nullptr,
           /*subtract=*/true);
      float zmax = 0.0f, wmax = 0.0f;
      for (size_t i = 0; i < got.z.size(); ++i) {
        zmax = std::max(zmax, std::fabs(got.z[i]));
        wmax = std::max(wmax, std::fabs(want.z[i]));
      }
      EXPECT_LT(zmax, 1e-6f * wmax);
    }
  }
}

// Denominators stay positive: with keys and queries scaled up to 1000x the
// feature maps saturate (phi(q).z can underflow to 0 and is clamped), yet
// every output is finite and, being a convex combination of values (psi >= 0
// weights for the folded part, softmax for the sparse part), no larger than
// the largest |v| (up to fp32 rounding, 1e-5).
TEST(LessTest, LargeInputsGiveFiniteBoundedOutputs) {
  constexpr int32_t kHq = 4, kHkv = 2, kD = 16, kR = 8, kFolded = 50, kCached = 10;
  const std::vector<float> v = RandomFloats(kHkv * (kFolded + kCached) * kD, 30);
  float max_v = 0.0f;
  for (float x : v) max_v = std::max(max_v, std::fabs(x));
  for (const int32_t hidden : {0, 16}) {
    const FeatureMapWeights phi = MakeMap(kD, kR, hidden, 31), psi = MakeMap(kD, kR, hidden, 32);
    for (const float scale : {1.0f, 10.0f, 100.0f, 1000.0f}) {
      const std::vector<float> k = RandomFloats(kHkv * (kFolded + kCached) * kD, 33, scale);
      const std::vector<float> q = RandomFloats(2 * kHq * kD, 34, scale);
      // k, v are [Hkv][kFolded + kCached][D] (the fold layout). The first
      // query's sparse part, over each head's last kCached tokens, is
      // computed here in fp64; the second query's sparse set is empty
      // (lse = -inf).
      std::vector<float> sparse_out(2 * kHq * kD, 0.0f), sparse_lse(2 * kHq);
      for (int32_t qh = 0; qh < kHq; ++qh) {
        const int32_t h = qh / (kHq / kHkv);
        double m = -INFINITY;
        std::vector<double> logit(kCached);
        for (int32_t j = 0; j < kCached; ++j) {
          double l = 0.0;
          for (int32_t d = 0; d < kD; ++d) {
            l += static_cast<double>(q[qh * kD + d]) *
                 k[(h * (kFolded + kCached) + kFolded + j) * kD + d];
          }
          logit[j] = l / std::sqrt(static_cast<double>(kD));
          m = std::max(m, logit[j]);
        }
        double sum = 0.0;
        std::vector<double> acc(kD, 0.0);
        for (int32_t j = 0; j < kCached; ++j) {
          const double w = std::exp(logit[j] - m);
          sum += w;
          for (int32_t d = 0; d < kD; ++d)
            acc[d] += w * v[(h * (kFolded + kCached) + kFolded + j) * kD + d];
        }
        for (int32_t d = 0; d < kD; ++d) sparse_out[qh * kD + d] = static_cast<float>(acc[d] / sum);
        sparse_lse[qh] = static_cast<float>(m + std::log(sum));
        sparse_lse[kHq + qh] = -INFINITY;
      }
      for (const Path& path : testing::AllKernelPaths()) {
        SCOPED_TRACE(::testing::Message()
                     << path.name << " hidden " << hidden << " scale " << scale);
        State state(kHkv, kR, kD);
        // Fold the first kFolded tokens of each head (max_tokens spans the
        // cached ones too; count limits the fold).
        const std::vector<int32_t> count(kHkv, kFolded);
        Fold(path, state, psi, DType::kF32, Encode(DType::kF32, k), Encode(DType::kF32, v),
             kFolded + kCached, count.data());
        const std::vector<float> out = Combine(path, state, phi, q, sparse_out, sparse_lse, kHq);
        for (float x : out) {
          ASSERT_TRUE(std::isfinite(x));
          ASSERT_LE(std::fabs(x), max_v * (1.0f + 1e-5f));
        }
      }
    }
  }
}

// Every optimised path against the reference: fold twice (per-head counts,
// one head left empty so its rows take the exact-copy branch), then combine
// with GQA, for each stored dtype and both kinds of map. Tolerance 1e-6 by
// norm: the optimised feature maps and combination are fp32 where the
// reference is fp64 (measured: at most 9e-8 for H, 5e-8 for z and outputs).
// Positive random features: f(q) . f(k) with one map for both estimates
// exp(q . k / sqrt(D)) without bias; over 400 independent maps of rank 64
// the mean is within 5% (the estimator's spread is a few percent here).
TEST(LessTest, PositiveRandomFeaturesEstimateTheSoftmaxKernel) {
  constexpr int32_t kD = 48, kR = 64;
  // Small norms: the relative variance of one feature grows like
  // exp(|q + k|^2 / sqrt(D)), here e^1.2.
  const std::vector<float> q = RandomFloats(kD, 1, 0.3f), k = RandomFloats(kD, 2, 0.3f);
  double dot = 0;
  for (int32_t d = 0; d < kD; ++d) dot += static_cast<double>(q[d]) * k[d];
  const double want = std::exp(dot / std::sqrt(static_cast<double>(kD)));
  double mean = 0;
  constexpr int kMaps = 400;
  for (int m = 0; m < kMaps; ++m) {
    const FeatureMapWeights f = PositiveRandomFeatureMap(kD, kR, 1000 + m);
    const std::vector<double> fq = Features(f, q.data()), fk = Features(f, k.data());
    double e = 0;
    for (int32_t r = 0; r < kR; ++r) {
      ASSERT_GT(fq[r], 0.0);
      e += fq[r] * fk[r];
    }
    mean += e / kMaps;
  }
  EXPECT_NEAR(mean / want, 1.0, 0.05) << "mean " << mean << " want " << want;
}

TEST(LessTest, OptimisedPathsMatchReference) {
  constexpr int32_t kHq = 6, kHkv = 3, kD = 40, kR = 8, kMax = 70, kTokens = 5;
  const int32_t counts[2][kHkv] = {{70, 33, 0}, {12, 70, 0}};
  for (const int32_t hidden : {0, 24, -1}) {
    const FeatureMapWeights phi = MakeMap(kD, kR, hidden, 40), psi = MakeMap(kD, kR, hidden, 41);
    for (const DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      const std::vector<float> q = RandomFloats(kTokens * kHq * kD, 42);
      const std::vector<float> sparse = RandomFloats(kTokens * kHq * kD, 43);
      const std::vector<float> lse = RandomFloats(kTokens * kHq, 44, 3.0f);
      State want(kHkv, kR, kD);
      std::vector<std::vector<uint8_t>> ks, vs;
      for (int call = 0; call < 2; ++call) {
        ks.push_back(Encode(dtype, RandomFloats(kHkv * kMax * kD, 45 + call)));
        vs.push_back(Encode(dtype, RandomFloats(kHkv * kMax * kD, 47 + call)));
        Fold(kReferencePath, want, psi, dtype, ks[call], vs[call], kMax, counts[call]);
      }
      const std::vector<float> want_out = Combine(kReferencePath, want, phi, q, sparse, lse, kHq);
      for (const Path& path : testing::OptimisedKernelPaths()) {
        SCOPED_TRACE(::testing::Message()
                     << path.name << " hidden " << hidden << " " << DTypeName(dtype));
        State got(kHkv, kR, kD);
        for (int call = 0; call < 2; ++call)
          Fold(path, got, psi, dtype, ks[call], vs[call], kMax, counts[call]);
        // exp turns the fp32 pre-activation's absolute error (terms of a
        // few units, and the |x|^2 shift) into relative error: 1.25e-6
        // measured for the positive map, so 4e-6 there.
        const double tol = hidden == -1 ? 4e-6 : 1e-6;
        EXPECT_LT(RelErrorByNorm(got.h, want.h), tol);
        EXPECT_LT(RelErrorByNorm(got.z, want.z), tol);
        const std::vector<float> out = Combine(path, got, phi, q, sparse, lse, kHq);
        EXPECT_LT(RelErrorByNorm(out, want_out), tol);
        // KV head 2 is empty: its query heads (4, 5) return the sparse rows exactly.
        for (int32_t t = 0; t < kTokens; ++t) {
          for (int32_t qh = 4; qh < kHq; ++qh) {
            const int64_t row = (t * kHq + qh) * kD;
            EXPECT_TRUE(
                std::equal(out.begin() + row, out.begin() + row + kD, sparse.begin() + row));
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvc::kernels
