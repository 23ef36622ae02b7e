// LESS with trained kernels (worker/cache/less.h, LessOptions::kernels):
// layer l combines with its own phi and folds with its own psi. Checked
// against an fp64 brute force that folds what the inner policy alone
// evicted with layer l's psi and combines with layer l's phi; the maps
// differ between layers and between phi and psi (an MLP and a linear map,
// exp and elu + 1), so a shared or swapped map fails it.
//
// Tolerances as tests/cache_policy_less_test.cc: 2e-5 by norm for outputs,
// 1e-5 relative for z, 1e-5 absolute for lse.
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/less.h"
#include "tests/kernel_test_util.h"
#include "tests/model_test_util.h"
#include "tests/temp_dir.h"
#include "worker/cache/less.h"
#include "worker/cache/less_kernels.h"
#include "worker/cache/policy_factory.h"

namespace kvc::cache {
namespace {

using kernels::FeatureActivation;
using kernels::testing::DecodeToFloat;
using kernels::testing::RandomFloats;
using kernels::testing::RelErrorByNorm;

constexpr int32_t kLayers = 2, kHq = 4, kHkv = 2, kD = 16, kGroup = kHq / kHkv, kRank = 6;

model::ModelConfig Config() {
  return testing::ModelShape(kHq * kD, 96, kLayers, kHq, kHkv, 50);
}

kernels::FeatureMapWeights Map(int32_t hidden, FeatureActivation act, float sq, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, 0.3f);
  kernels::FeatureMapWeights w;
  w.in_dim = kD;
  w.hidden = hidden;
  w.out_dim = kRank;
  w.w1.resize(static_cast<size_t>(hidden) * kD);
  w.b1.resize(hidden);
  w.w2.resize(static_cast<size_t>(kRank) * (hidden > 0 ? hidden : kD));
  w.b2.resize(kRank);
  for (auto* v : {&w.w1, &w.b1, &w.w2, &w.b2}) {
    for (float& x : *v) x = n(rng);
  }
  w.activation = act;
  w.sq_norm_coeff = sq;
  return w;
}

LessKernels Kernels() {
  LessKernels k;
  k.dim = kHq * kD;
  k.n_layers = kLayers;
  k.n_kv_heads = kHkv;
  k.head_dim = kD;
  k.rank = kRank;
  k.layers.push_back(
      {Map(8, FeatureActivation::kExp, 0.05f, 1), Map(0, FeatureActivation::kExp, 0.1f, 2)});
  k.layers.push_back({Map(0, FeatureActivation::kEluPlusOne, 0.0f, 3),
                      Map(5, FeatureActivation::kEluPlusOne, 0.0f, 4)});
  return k;
}

TEST(LessTrainedTest, EachLayerUsesItsOwnPhiAndPsi) {
  testing::TempDir dir;
  const LessKernels kern = Kernels();
  const std::string path = dir.path() + "/k.bin";
  ASSERT_TRUE(WriteLessKernels(kern, path).ok());
  const std::string inner = "cascading:sinks=2,subcaches=2,window=12";
  for (const kernels::Backend backend : {kernels::Backend::kReference, kernels::Backend::kCpu}) {
    SCOPED_TRACE(kernels::BackendName(backend));
    const kernels::ExecContext ctx{backend};
    auto less_or =
        MakePolicy(Config(), "less:inner=cascading,sinks=2,subcaches=2,window=12,kernels=" + path);
    ASSERT_TRUE(less_or.ok()) << less_or.status();
    const Less& less = dynamic_cast<const Less&>(**less_or);
    auto alone_or = MakePolicy(Config(), inner);
    ASSERT_TRUE(alone_or.ok());
    CachePolicy& alone = **alone_or;
    // fp64 state per layer: H [Hkv][R][D], z [Hkv][R].
    std::vector<std::vector<double>> H(kLayers, std::vector<double>(kHkv * kRank * kD, 0.0)),
        Z(kLayers, std::vector<double>(kHkv * kRank, 0.0));
    int64_t position = 0, folded = 0;
    std::vector<int64_t> sizes = {7, 12, 5, 9};
    sizes.resize(30, 1);
    for (size_t step = 0; step < sizes.size(); ++step) {
      const int64_t n = sizes[step];
      for (int32_t l = 0; l < kLayers; ++l) {
        const uint64_t seed = 100 * step + 10 * l;
        const std::vector<float> q = RandomFloats(n * kHq * kD, seed),
                                 k = RandomFloats(n * kHkv * kD, seed + 1),
                                 v = RandomFloats(n * kHkv * kD, seed + 2);
        std::vector<float> out(n * kHq * kD), lse(n * kHq), sparse(n * kHq * kD),
            sparse_lse(n * kHq);
        ASSERT_TRUE(
            (**less_or)
                .Attend(ctx, {l, n, position, q.data(), k.data(), v.data(), out.data(), lse.data()})
                .ok());
        ASSERT_TRUE(alone
                        .Attend(ctx, {l, n, position, q.data(), k.data(), v.data(), sparse.data(),
                                      sparse_lse.data()})
                        .ok());
        const kernels::FeatureMap phi = kern.layers[l].phi.View(), psi = kern.layers[l].psi.View();
        std::vector<float> want(out.size());
        for (int64_t t = 0; t < n; ++t) {
          for (int32_t qh = 0; qh < kHq; ++qh) {
            const size_t row = t * kHq + qh;
            const int32_t h = qh / kGroup;
            const std::vector<double> f = kernels::EvaluateFeatureMap(phi, &q[row * kD]);
            double fz = 0;
            for (int32_t r = 0; r < kRank; ++r) fz += f[r] * Z[l][h * kRank + r];
            const double e = std::exp(static_cast<double>(sparse_lse[row]));
            for (int32_t d = 0; d < kD; ++d) {
              double fh = 0;
              for (int32_t r = 0; r < kRank; ++r) fh += f[r] * H[l][(h * kRank + r) * kD + d];
              want[row * kD + d] = static_cast<float>((fh + e * sparse[row * kD + d]) / (fz + e));
            }
            EXPECT_NEAR(lse[row], fz > 0 ? std::log(fz + e) : sparse_lse[row], 1e-5);
          }
        }
        EXPECT_LE(RelErrorByNorm(out, want), 2e-5) << "layer " << l << " at " << position;
        const Evictions* ev = alone.last_evictions();
        ASSERT_NE(ev, nullptr);
        const size_t elems = static_cast<size_t>(kHkv) * ev->stride * kD;
        const std::vector<float> ek = DecodeToFloat(ev->dtype, ev->k.data(), elems),
                                 evv = DecodeToFloat(ev->dtype, ev->v.data(), elems);
        for (int32_t h = 0; h < kHkv; ++h) {
          for (int32_t i = 0; i < ev->count[h]; ++i) {
            const size_t row = (static_cast<size_t>(h) * ev->stride + i) * kD;
            const std::vector<double> f = kernels::EvaluateFeatureMap(psi, &ek[row]);
            for (int32_t r = 0; r < kRank; ++r) {
              Z[l][h * kRank + r] += f[r];
              for (int32_t d = 0; d < kD; ++d)
                H[l][(h * kRank + r) * kD + d] += f[r] * evv[row + d];
            }
            ++folded;
          }
        }
        for (size_t i = 0; i < Z[l].size(); ++i) {
          EXPECT_NEAR(less.state_z(l)[i], Z[l][i], 1e-5 * (1 + Z[l][i])) << "layer " << l;
        }
      }
      position += n;
    }
    EXPECT_GT(folded, 50);
  }
}

}  // namespace
}  // namespace kvc::cache
