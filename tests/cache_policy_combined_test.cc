// The combined policy (worker/cache/combined.h) against brute force, driven
// through Attend with random q, k, v on a two-layer GQA shape (Hq = 4,
// Hkv = 2, D = 16), and inside the real runtime on a random model:
//  - without selection, LESS and refresh it is the cascading policy (the
//    same hot sets, outputs to fp32 reassociation);
//  - every sparse step equals the formula of combined.h computed here in
//    fp64 from the hot sets before the call and the selection it used: the
//    union at right-aligned compact positions, plus the LESS weights
//    phi(q) . psi(k) of every other evicted token;
//  - the LESS state is the fold of exactly the evicted, unselected tokens,
//    whatever selections came and went;
//  - a full step equals full attention, and re-selects the top-k
//    candidates by that step's probabilities;
//  - the selection cache's theta, the covering budget, and factory errors.
//
// Tolerances: 2e-5 by norm against fp64 (fp32 feature maps and LESS state
// on the optimised path, fp32 attention); the state 1e-5 relative (fp32 sums
// of ~100 folds and unfolds); "equals full attention" 1e-5 by norm over a
// layer's outputs (one kernel pass vs another over the same keys).
#include <algorithm>
#include <cmath>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/less.h"
#include "kernels/ref/ref_util.h"
#include "tests/kernel_test_util.h"
#include "tests/model_test_util.h"
#include "worker/cache/cascading.h"
#include "worker/cache/combined.h"
#include "worker/cache/full_attention.h"
#include "worker/cache/policy_factory.h"
#include "worker/model/checkpoint.h"
#include "worker/model/transformer.h"

namespace kvc::cache {
namespace {

using kernels::testing::RandomFloats;
using kernels::testing::RelErrorByNorm;

constexpr int32_t kLayers = 2, kHq = 4, kHkv = 2, kD = 16, kGroup = kHq / kHkv;

model::ModelConfig Config() {
  return testing::ModelShape(kHq * kD, 96, kLayers, kHq, kHkv, 50);
}

struct Call {
  int32_t layer = 0;
  int64_t n = 0, first_position = 0;
  std::vector<float> q, k, v;
  model::AttendArgs Args(float* out, float* lse) const {
    return {layer, n, first_position, q.data(), k.data(), v.data(), out, lse};
  }
};

// A prompt in chunks (7, 12, 5, 9 tokens), then decode steps.
std::vector<Call> Calls(int64_t decode_steps, uint64_t seed) {
  std::vector<int64_t> sizes = {7, 12, 5, 9};
  sizes.resize(4 + decode_steps, 1);
  std::vector<Call> calls;
  int64_t position = 0;
  for (size_t s = 0; s < sizes.size(); ++s) {
    for (int32_t l = 0; l < kLayers; ++l) {
      const uint64_t base = seed + 1000 * s + 10 * l;
      const int64_t n = sizes[s];
      calls.push_back({l, n, position, RandomFloats(n * kHq * kD, base), RandomFloats(n * kHkv * kD, base + 1),
                       RandomFloats(n * kHkv * kD, base + 2)});
    }
    position += sizes[s];
  }
  return calls;
}

std::unique_ptr<Combined> MakeCombined(const std::string& spec) {
  auto p = MakePolicy(Config(), spec);
  EXPECT_TRUE(p.ok()) << spec << ": " << p.status();
  if (!p.ok()) return nullptr;
  return std::unique_ptr<Combined>(dynamic_cast<Combined*>(p->release()));
}

struct Result {
  std::vector<float> out, lse;
};
Result Attend(const kernels::ExecContext& ctx, CachePolicy& p, const Call& c) {
  Result r{std::vector<float>(c.n * kHq * kD), std::vector<float>(c.n * kHq)};
  const absl::Status s = p.Attend(ctx, c.Args(r.out.data(), r.lse.data()));
  EXPECT_TRUE(s.ok()) << s;
  return r;
}

// Every token's pre-RoPE key and value so far, per layer: [t][Hkv][D].
struct History {
  std::vector<std::vector<float>> k = std::vector<std::vector<float>>(kLayers),
                                  v = std::vector<std::vector<float>>(kLayers);
  void Add(const Call& c) {
    k[c.layer].insert(k[c.layer].end(), c.k.begin(), c.k.end());
    v[c.layer].insert(v[c.layer].end(), c.v.begin(), c.v.end());
  }
  const float* K(int32_t layer, int64_t t, int32_t h) const { return &k[layer][(t * kHkv + h) * kD]; }
  const float* V(int32_t layer, int64_t t, int32_t h) const { return &v[layer][(t * kHkv + h) * kD]; }
};

double Dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

std::vector<double> Rotated(const float* x, int64_t position) {
  std::vector<double> r(kD);
  kernels::ref::ApplyRope(kernels::Rope{kernels::RopeStyle::kInterleaved, 10000.0f}, static_cast<int32_t>(position),
                          kD, x, r.data());
  return r;
}

// combined.h's formula for call `c`, given each head's hot set before the
// call (original positions), the selection the call used, and whether
// LESS is on; `h` holds every token up to and including the chunk.
std::vector<float> Expected(const Call& c, const History& hist, const std::vector<std::vector<int32_t>>& hot,
                            const std::vector<int32_t>& selection, const kernels::FeatureMapWeights* less) {
  const int64_t past = c.first_position;
  std::vector<std::vector<int32_t>> attended(kHkv), folded(kHkv);
  size_t longest = 0;
  for (int32_t h = 0; h < kHkv; ++h) {
    const std::set<int32_t> held(hot[h].begin(), hot[h].end());
    std::set<int32_t> u = held;
    for (int64_t t = 0; t < past; ++t) {
      if (held.count(t)) continue;
      if (std::binary_search(selection.begin(), selection.end(), static_cast<int32_t>(t))) {
        u.insert(static_cast<int32_t>(t));
      } else {
        folded[h].push_back(static_cast<int32_t>(t));
      }
    }
    attended[h].assign(u.begin(), u.end());
    longest = std::max(longest, u.size());
  }
  std::vector<float> out;
  const double scale = 1.0 / std::sqrt(static_cast<double>(kD));
  for (int64_t i = 0; i < c.n; ++i) {
    for (int32_t qh = 0; qh < kHq; ++qh) {
      const int32_t h = qh / kGroup;
      const float* qv = &c.q[(i * kHq + qh) * kD];
      const std::vector<double> q = Rotated(qv, longest + i);
      std::vector<std::pair<double, const float*>> terms;  // (weight, value)
      const int64_t offset = static_cast<int64_t>(longest - attended[h].size());
      for (size_t j = 0; j < attended[h].size(); ++j) {
        const int32_t t = attended[h][j];
        terms.push_back({std::exp(scale * Dot(q, Rotated(hist.K(c.layer, t, h), offset + j))), hist.V(c.layer, t, h)});
      }
      for (int64_t j = 0; j <= i; ++j) {
        terms.push_back({std::exp(scale * Dot(q, Rotated(hist.K(c.layer, past + j, h), longest + j))),
                         hist.V(c.layer, past + j, h)});
      }
      if (less != nullptr) {
        const std::vector<double> fq = kernels::EvaluateFeatureMap(less->View(), qv);
        for (const int32_t t : folded[h]) {
          terms.push_back({Dot(fq, kernels::EvaluateFeatureMap(less->View(), hist.K(c.layer, t, h))),
                           hist.V(c.layer, t, h)});
        }
      }
      double den = 0;
      std::vector<double> num(kD, 0.0);
      for (const auto& [w, v] : terms) {
        den += w;
        for (int32_t d = 0; d < kD; ++d) num[d] += w * v[d];
      }
      for (int32_t d = 0; d < kD; ++d) out.push_back(static_cast<float>(num[d] / den));
    }
  }
  return out;
}

std::vector<std::vector<int32_t>> HotSets(const Combined& p, int32_t layer) {
  std::vector<std::vector<int32_t>> hot;
  for (int32_t h = 0; h < kHkv; ++h) hot.push_back(p.hot_set(layer, h));
  return hot;
}

const kernels::Backend kBackends[] = {kernels::Backend::kReference, kernels::Backend::kCpu};

// The cascading policy attends [cache | chunk] in one pass where this one
// merges the hot set's state with the chunk's: the same sums reassociated,
// 1e-6 by norm (measured ~1e-7); the cache contents must be identical.
TEST(CombinedTest, WithoutSelectionLessAndRefreshIsCascading) {
  const std::vector<Call> calls = Calls(40, 1);
  for (const kernels::Backend backend : kBackends) {
    const kernels::ExecContext ctx{backend};
    auto combined = MakeCombined("combined:sinks=2,subcaches=2,window=8,k=0,less=off,refresh=off");
    auto cascading = *MakePolicy(Config(), "cascading:sinks=2,subcaches=2,window=8");
    for (const Call& c : calls) {
      const Result a = Attend(ctx, *combined, c), b = Attend(ctx, *cascading, c);
      ASSERT_LT(RelErrorByNorm(a.out, b.out), 1e-6) << "layer " << c.layer << " at " << c.first_position;
      ASSERT_LT(RelErrorByNorm(a.lse, b.lse), 1e-6);
    }
    const auto& cas = dynamic_cast<const Cascading&>(*cascading);
    for (int32_t l = 0; l < kLayers; ++l) {
      const kernels::CascadeState &x = combined->cascade(l), &y = cas.state(l);
      const int32_t slots = x.config.total_slots();
      EXPECT_TRUE(std::equal(x.positions, x.positions + slots * kHkv, y.positions));
      EXPECT_LT(RelErrorByNorm(std::vector<float>(x.scores, x.scores + slots * kHkv),
                               std::vector<float>(y.scores, y.scores + slots * kHkv)),
                1e-5);
    }
    EXPECT_EQ(combined->stats().attended_total, cascading->stats().attended_total);
  }
}

// theta = 1: a new TokenSelect selection on every call that has evicted
// tokens to choose from, so the selection after each call is the one it used.
TEST(CombinedTest, SparseStepsEqualTheFormula) {
  const std::vector<Call> calls = Calls(40, 2);
  for (const kernels::Backend backend : kBackends) {
    for (const bool less : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "backend " << static_cast<int>(backend) << " less " << less);
      const kernels::ExecContext ctx{backend};
      auto p = MakeCombined(absl::StrCat("combined:sinks=2,subcaches=2,window=8,k=5,theta=1,refresh=off,less=",
                                         less ? "on" : "off"));
      History hist;
      for (const Call& c : calls) {
        const std::vector<std::vector<int32_t>> hot = HotSets(*p, c.layer);
        hist.Add(c);
        const Result r = Attend(ctx, *p, c);
        const std::vector<float> want =
            Expected(c, hist, hot, p->selection(c.layer), less ? &p->feature_map() : nullptr);
        ASSERT_LT(RelErrorByNorm(r.out, want), 2e-5) << "layer " << c.layer << " at " << c.first_position;
      }
      EXPECT_EQ(p->selection(0).size(), 5u);
      EXPECT_GT(p->selections(), 70);
      EXPECT_EQ(p->selection_hits(), 0);
      // Per step: the hot set (10), the selected tokens a head evicted, the token.
      EXPECT_LE(p->stats().attended_last_step, kLayers * (10 + 5 + 1));
      EXPECT_GE(p->stats().attended_last_step, kLayers * (10 + 1));
    }
  }
}

// After selections came and went (theta = 0 keeps some, drops others),
// each head's state is the fold of the tokens it evicted that are not
// selected, and nothing else.
TEST(CombinedTest, LessStateHoldsExactlyTheUnselectedEvictedTokens) {
  const std::vector<Call> calls = Calls(60, 3);
  for (const kernels::Backend backend : kBackends) {
    const kernels::ExecContext ctx{backend};
    auto p = MakeCombined("combined:sinks=2,subcaches=2,window=8,k=6,theta=0,refresh=off,rank=8");
    History hist;
    for (const Call& c : calls) {
      hist.Add(c);
      Attend(ctx, *p, c);
    }
    EXPECT_GT(p->selections(), 2 * kLayers);
    EXPECT_GT(p->selection_hits(), 0);
    const kernels::FeatureMapWeights& map = p->feature_map();
    const int32_t r = map.out_dim;
    const int64_t total = static_cast<int64_t>(hist.k[0].size()) / (kHkv * kD);
    for (int32_t l = 0; l < kLayers; ++l) {
      const std::vector<int32_t>& sel = p->selection(l);
      std::vector<double> h_want(kHkv * r * kD, 0.0), z_want(kHkv * r, 0.0);
      for (int32_t h = 0; h < kHkv; ++h) {
        const std::vector<int32_t> hot = p->hot_set(l, h);
        int64_t count = 0;
        for (int64_t t = 0; t < total; ++t) {
          if (std::count(hot.begin(), hot.end(), t) || std::binary_search(sel.begin(), sel.end(), t)) continue;
          ++count;
          const std::vector<double> psi = kernels::EvaluateFeatureMap(map.View(), hist.K(l, t, h));
          for (int32_t i = 0; i < r; ++i) {
            z_want[h * r + i] += psi[i];
            for (int32_t d = 0; d < kD; ++d) h_want[(h * r + i) * kD + d] += psi[i] * hist.V(l, t, h)[d];
          }
        }
        EXPECT_EQ(p->folded(l)[h], count) << "layer " << l << " head " << h;
      }
      EXPECT_LT(RelErrorByNorm(p->state_h(l), std::vector<float>(h_want.begin(), h_want.end())), 1e-5);
      EXPECT_LT(RelErrorByNorm(p->state_z(l), std::vector<float>(z_want.begin(), z_want.end())), 1e-5);
    }
  }
}

// Fixed stride 1: every decode step once tokens have been evicted is a full
// step, which re-selects the k candidates with the highest probability
// (max over every query head; pooling off) and whose output is full
// attention (at original positions), or with refresh_output=hot the
// formula over the hot set and that new selection.
TEST(CombinedTest, FullStepsReselectAndAttendEverythingOrTheRebuiltSet) {
  const std::vector<Call> calls = Calls(30, 4);
  for (const kernels::Backend backend : kBackends) {
    for (const bool hot_output : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "backend " << static_cast<int>(backend) << " hot " << hot_output);
      const kernels::ExecContext ctx{backend};
      auto p = MakeCombined(absl::StrCat("combined:sinks=2,subcaches=2,window=8,k=4,refresh=fixed,stride=1,",
                                         "refresh_pool=1,refresh_output=", hot_output ? "hot" : "full"));
      FullAttention full(Config(), kernels::DType::kF32);
      History hist;
      int64_t checked = 0;
      for (const Call& c : calls) {
        const std::vector<std::vector<int32_t>> hot = HotSets(*p, c.layer);
        hist.Add(c);
        const Result got = Attend(ctx, *p, c), want = Attend(ctx, full, c);
        if (c.n != 1) continue;
        ++checked;
        if (hot_output) {
          const std::vector<float> formula = Expected(c, hist, hot, p->selection(c.layer), &p->feature_map());
          EXPECT_LT(RelErrorByNorm(got.out, formula), 2e-5) << "layer " << c.layer << " at " << c.first_position;
        } else {
          EXPECT_LT(RelErrorByNorm(got.out, want.out), 1e-5) << "layer " << c.layer << " at " << c.first_position;
        }
        // The probabilities of this query over the past, max over query heads.
        const int64_t past = c.first_position;
        std::vector<std::pair<double, int32_t>> ranked;
        for (int64_t t = 0; t < past; ++t) {
          bool candidate = false;
          for (int32_t h = 0; h < kHkv; ++h) candidate |= !std::count(hot[h].begin(), hot[h].end(), t);
          if (!candidate) continue;
          double best = 0;
          for (int32_t qh = 0; qh < kHq; ++qh) {
            const int32_t h = qh / kGroup;
            const std::vector<double> q = Rotated(&c.q[qh * kD], past);
            double sum = 0;
            for (int64_t u = 0; u <= past; ++u) sum += std::exp(Dot(q, Rotated(hist.K(c.layer, u, h), u)) / 4.0);
            best = std::max(best, std::exp(Dot(q, Rotated(hist.K(c.layer, t, h), t)) / 4.0) / sum);
          }
          ranked.push_back({-best, static_cast<int32_t>(t)});
        }
        std::sort(ranked.begin(), ranked.end());
        std::vector<int32_t> top;
        for (size_t i = 0; i < std::min<size_t>(4, ranked.size()); ++i) top.push_back(ranked[i].second);
        std::sort(top.begin(), top.end());
        EXPECT_EQ(p->selection(c.layer), top) << "layer " << c.layer << " at " << c.first_position;
      }
      EXPECT_EQ(checked, 2 * 30);
      EXPECT_EQ(p->full_steps(), 2 * 30);
      if (!hot_output) {
        EXPECT_EQ(p->stats().attended_last_step, full.stats().attended_last_step);
      }
    }
  }
}

// theta = -1 keeps each layer's first selection; theta = 1 reselects on
// every call with evicted tokens.
TEST(CombinedTest, SelectionCacheHonoursTheta) {
  const std::vector<Call> calls = Calls(20, 5);
  for (const float theta : {-1.0f, 1.0f}) {
    auto p = MakeCombined(absl::StrCat("combined:sinks=2,subcaches=2,window=8,k=3,refresh=off,theta=", theta));
    for (const Call& c : calls) Attend(kernels::ExecContext{kernels::Backend::kCpu}, *p, c);
    const int64_t calls_with_evictions = p->selections() + p->selection_hits();
    EXPECT_EQ(calls_with_evictions, kLayers * (2 + 20));  // the last two prompt chunks, then every step
    EXPECT_EQ(p->selections(), theta < 0 ? kLayers : calls_with_evictions);
  }
}

// A budget covering the context: nothing is evicted, every output equals
// full attention through the real runtime (with LESS and refresh on).
TEST(CombinedTest, CoveringBudgetEqualsFullAttentionInTheRuntime) {
  model::ModelConfig config = Config();
  auto ckpt = *model::Checkpoint::Random(config, 21, 0.2f);
  model::TransformerOptions o;
  o.max_chunk = 16;
  auto model = *model::Transformer::Create(ckpt.get(), o);
  std::vector<int32_t> tokens(60);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 7 + 3) % config.vocab_size);
  auto run = [&](CachePolicy& policy) {
    std::vector<float> all(config.vocab_size), logits(config.vocab_size);
    EXPECT_TRUE(model->Forward(absl::MakeConstSpan(tokens).first(40), 0, policy, all.data()).ok());
    for (size_t t = 40; t < tokens.size(); ++t) {
      EXPECT_TRUE(model->Forward(absl::MakeConstSpan(&tokens[t], 1), t, policy, logits.data()).ok());
      all.insert(all.end(), logits.begin(), logits.end());
    }
    return all;
  };
  FullAttention full(config, kernels::DType::kF32);
  const std::vector<float> want = run(full);
  for (const std::string spec : {"combined:sinks=4,subcaches=4,window=56", "combined:budget=128,map=elu,refresh=fixed,stride=1"}) {
    auto p = MakePolicy(config, spec);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_LE(RelErrorByNorm(run(**p), want), 2e-6) << spec;
    EXPECT_EQ((*p)->stats().attended_total, full.stats().attended_total) << spec;
  }
}

TEST(CombinedTest, FactoryErrorsNameTheProblem) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"combined:k=-1", "k -1 < 0"},
      {"combined:refresh=sometimes", "refresh=sometimes is not one of similarity|fixed|off"},
      {"combined:map=relu", "map=relu is not one of elu|exp"},
      {"combined:subcaches=4,window=7", "multiple of the 4 sub-caches"},
      {"combined:theta=2", "theta 2 not in [-1, 1]"},
      {"combined:stride=0", "stride 0 must be >= 1"},
      {"combined:rank=0", "rank 0 not in [1, 256]"},
      {"combined:pool=2", "pool kernel 2"},
      {"combined:inner=h2o", "unknown key \"inner\""},
  };
  for (const auto& [spec, want] : cases) {
    auto p = MakePolicy(Config(), spec);
    ASSERT_FALSE(p.ok()) << spec;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << spec;
    EXPECT_NE(p.status().message().find(want), std::string::npos) << spec << ": " << p.status();
  }
  // budget=B: half hot (sinks + whole sub-caches), the rest selected.
  auto p = MakePolicy(Config(), "combined:budget=256");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ((*p)->name(), "combined(S=4,C=4,W=124,k=128,less=exp/8,refresh=sim0.9/10)");
  EXPECT_EQ((*p)->max_resident_tokens(), 256);
}

}  // namespace
}  // namespace kvc::cache
