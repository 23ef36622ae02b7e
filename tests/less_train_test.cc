// LESS kernel training (worker/eval/less_samples.h, less_train.h) on a
// small random model: the default target is what it says (full attention
// where the horizon covers everything); the fit lowers its loss; the loss
// it minimises is exactly what the Less policy with the written kernels
// computes on the same q, k, v (so training targets the policy as it runs,
// fold timing included); and the hand-written gradient matches finite
// differences.
#include "worker/eval/less_train.h"

#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/model_test_util.h"
#include "tests/temp_dir.h"
#include "worker/cache/less_kernels.h"
#include "worker/cache/policy_factory.h"
#include "worker/eval/less_samples.h"
#include "worker/model/checkpoint.h"
#include "worker/model/transformer.h"

namespace kvc::eval {
namespace {

constexpr char kInner[] = "cascading:sinks=2,subcaches=2,window=16";

// GQA: each KV head's state serves two query heads.
model::ModelConfig Config() { return testing::ModelShape(64, 96, 2, 4, 2, 50); }

LessSamples Collect(int n_tokens, LessSampleOptions o = {}) {
  auto ckpt = model::Checkpoint::Random(Config(), 5, 0.2f);
  EXPECT_TRUE(ckpt.ok());
  auto model = model::Transformer::Create(ckpt->get(), {});
  EXPECT_TRUE(model.ok()) << model.status();
  std::mt19937_64 rng(9);
  std::vector<int32_t> tokens(n_tokens);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % Config().vocab_size);
  o.stride = 8;
  auto s = CollectLessSamples(**model, tokens, o);
  EXPECT_TRUE(s.ok()) << s.status();
  return std::move(*s);
}

LessSampleOptions CascadeToFull() {
  LessSampleOptions o;
  o.policy = kInner;
  o.reference = "full";
  return o;
}

// The default target, the sparse attention joined with the evicted tokens
// within the horizon: with a sink-free streaming window (whose relative
// positions are the original ones) and a horizon past the stream it is
// full attention; with a horizon inside the window it is the sparse
// attention itself.
TEST(LessTrainTest, JoinedTargetIsFullAttentionWithinTheHorizon) {
  LessSampleOptions o;
  o.policy = "streaming:sinks=0,window=16";
  o.reference = "full";
  const LessSamples full = Collect(96, o);
  o.reference = "";
  o.horizon = 1000;
  const LessSamples joined = Collect(96, o);
  o.horizon = 8;
  const LessSamples none = Collect(96, o);
  for (int32_t l = 0; l < Config().n_layers; ++l) {
    double diff = 0, norm = 0, sparse_diff = 0;
    for (size_t i = 0; i < full.layers[l].target.size(); ++i) {
      diff =
          std::max<double>(diff, std::abs(joined.layers[l].target[i] - full.layers[l].target[i]));
      norm = std::max<double>(norm, std::abs(full.layers[l].target[i]));
      sparse_diff = std::max<double>(
          sparse_diff, std::abs(none.layers[l].target[i] - none.layers[l].sparse_out[i]));
    }
    EXPECT_LE(diff, 1e-5 * norm) << "layer " << l;
    EXPECT_LE(sparse_diff, 1e-6) << "layer " << l;
    // The stream evicts: the sparse part differs from full attention.
    EXPECT_NE(full.layers[l].sparse_out, full.layers[l].target) << "layer " << l;
  }
}

TEST(LessTrainTest, FitLowersTheLossAndThePolicyComputesIt) {
  const LessSamples samples = Collect(160, CascadeToFull());
  LessTrainOptions o;
  o.rank = 4;
  o.steps = 40;
  o.learning_rate = 0.05;
  int64_t last_progress = 0;
  o.progress = [&](int64_t done) { last_progress = done; };
  const LessSamples* train[] = {&samples};
  auto fit = FitLessKernels(train, {}, o);
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_EQ(last_progress, 2 * 40);
  const model::ModelConfig c = Config();
  for (int32_t l = 0; l < c.n_layers; ++l) {
    const LessLayerFit& f = fit->layers[l];
    SCOPED_TRACE(::testing::Message() << "layer " << l << " sparse " << f.sparse_loss << " initial "
                                      << f.initial_loss << " final " << f.final_loss);
    EXPECT_GT(f.rows, 0);
    EXPECT_LT(f.final_loss, 0.9 * f.initial_loss);
    EXPECT_LT(f.final_loss, f.sparse_loss);
    // The returned maps are the fitted fp64 weights rounded to fp32.
    EXPECT_NEAR(LessLayerLoss(samples, l, fit->kernels.layers[l].phi.View(),
                              fit->kernels.layers[l].psi.View()),
                f.final_loss, 1e-6 * f.final_loss);
  }

  // The Less policy with the written kernels, fed the recorded q, k, v
  // chunk by chunk: its squared error against the reference is the fit's
  // loss on the rows LESS changes plus the eviction policy's on the others.
  testing::TempDir dir;
  const std::string path = dir.path() + "/k.bin";
  ASSERT_TRUE(cache::WriteLessKernels(fit->kernels, path).ok());
  auto less = cache::MakePolicy(
      c, std::string("less:inner=cascading,sinks=2,subcaches=2,window=16,kernels=") + path);
  ASSERT_TRUE(less.ok()) << less.status();
  const int32_t hq = c.n_heads, hkv = c.n_kv_heads, d = c.head_dim();
  std::vector<double> got_sq(c.n_layers, 0.0), sparse_sq(c.n_layers, 0.0);
  for (int64_t begin = 0; begin < samples.num_tokens;) {
    int64_t end = begin;
    while (end < samples.num_tokens && samples.chunk_of[end] == samples.chunk_of[begin]) ++end;
    const int64_t n = end - begin;
    for (int32_t l = 0; l < c.n_layers; ++l) {
      const LessLayerSamples& s = samples.layers[l];
      std::vector<float> out(n * hq * d);
      ASSERT_TRUE((**less)
                      .Attend({}, {l, n, begin, &s.q[begin * hq * d], &s.k[begin * hkv * d],
                                   &s.v[begin * hkv * d], out.data(), nullptr})
                      .ok());
      for (int64_t i = 0; i < n * hq * d; ++i) {
        const double y = s.target[begin * hq * d + i];
        got_sq[l] += (out[i] - y) * (out[i] - y);
        sparse_sq[l] +=
            (s.sparse_out[begin * hq * d + i] - y) * (s.sparse_out[begin * hq * d + i] - y);
      }
    }
    begin = end;
  }
  for (int32_t l = 0; l < c.n_layers; ++l) {
    const LessLayerFit& f = fit->layers[l];
    const double want = f.final_loss * f.rows + (sparse_sq[l] - f.sparse_loss * f.rows);
    EXPECT_NEAR(got_sq[l], want, 1e-4 * want) << "layer " << l;
    EXPECT_LT(got_sq[l], sparse_sq[l]) << "layer " << l;
  }
}

TEST(LessTrainTest, GradientMatchesFiniteDifferences) {
  const LessSamples samples = Collect(64, CascadeToFull());
  for (const kernels::FeatureActivation act :
       {kernels::FeatureActivation::kExp, kernels::FeatureActivation::kEluPlusOne}) {
    std::mt19937_64 rng(3);
    std::normal_distribution<float> normal(0.0f, 0.3f);
    auto map = [&](int32_t hidden, float sq) {
      kernels::FeatureMapWeights w;
      w.in_dim = Config().head_dim();
      w.hidden = hidden;
      w.out_dim = 3;
      w.w1.resize(static_cast<size_t>(hidden) * w.in_dim);
      w.b1.resize(hidden);
      w.w2.resize(3 * (hidden > 0 ? hidden : w.in_dim));
      w.b2.resize(3);
      for (auto* v : {&w.w1, &w.b1, &w.w2, &w.b2}) {
        for (float& x : *v) x = normal(rng);
      }
      w.activation = act;
      w.sq_norm_coeff = sq;
      return w;
    };
    kernels::FeatureMapWeights phi = map(5, 0.02f), psi = map(0, 0.05f);
    std::vector<double> grad;
    LessLayerLossAndGradient(samples, 1, phi.View(), psi.View(), &grad);
    // Parameters in the gradient's order.
    std::vector<float*> params;
    for (auto* w : {&phi, &psi}) {
      for (auto* v : {&w->w1, &w->b1, &w->w2, &w->b2}) {
        for (float& x : *v) params.push_back(&x);
      }
    }
    ASSERT_EQ(params.size(), grad.size());
    int checked = 0;
    for (size_t i = 0; i < params.size(); i += 7) {
      float* p = params[i];
      const float keep = *p;
      *p = keep + 1e-2f;
      const double up = LessLayerLoss(samples, 1, phi.View(), psi.View());
      const double h_up = static_cast<double>(*p) - keep;
      *p = keep - 1e-2f;
      const double down = LessLayerLoss(samples, 1, phi.View(), psi.View());
      const double h_down = keep - static_cast<double>(*p);
      *p = keep;
      const double numeric = (up - down) / (h_up + h_down);
      EXPECT_NEAR(grad[i], numeric, 2e-3 * std::abs(numeric) + 1e-7)
          << "parameter " << i << " activation " << static_cast<int>(act);
      ++checked;
    }
    EXPECT_GT(checked, 20);
  }
}

}  // namespace
}  // namespace kvc::eval
