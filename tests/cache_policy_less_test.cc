// LESS on top of an eviction policy (worker/cache/less.h), driven through
// Attend with random q, k, v on a two-layer GQA shape (Hq = 4, Hkv = 2,
// D = 16). A second instance of the inner policy runs alone in lockstep (same
// calls, lse requested): its outputs and lse are the sparse part, and its
// eviction reports are what LESS must have folded. Also here: the lse every
// policy now reports (AttendArgs::lse) and the eviction reports themselves.
//
// Tolerances: against the fp64 brute force, 2e-5 by norm for outputs and
// 1e-5 relative for H and z (fp32 state and fp32 feature maps on the
// optimised path, some 100 folded tokens); lse 1e-5 absolute (fp32 of
// values ~1-10). "Equals the inner policy" is bitwise.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/less.h"
#include "kernels/ref/ref_util.h"
#include "tests/kernel_test_util.h"
#include "tests/model_test_util.h"
#include "worker/cache/full_attention.h"
#include "worker/cache/h2o.h"
#include "worker/cache/less.h"
#include "worker/cache/policy_factory.h"
#include "worker/model/checkpoint.h"

namespace kvc::cache {
namespace {

using kernels::testing::DecodeToFloat;
using kernels::testing::RandomFloats;
using kernels::testing::RelErrorByNorm;
using kernels::testing::RoundTrip;

constexpr int32_t kLayers = 2, kHq = 4, kHkv = 2, kD = 16, kGroup = kHq / kHkv, kRank = 8;

model::ModelConfig Config() {
  return testing::ModelShape(kHq * kD, 96, kLayers, kHq, kHkv, 50);
}

// One Attend call: layer, chunk, random inputs.
struct Call {
  int32_t layer = 0;
  int64_t n = 0, first_position = 0;
  std::vector<float> q, k, v;  // [n][Hq][D], [n][Hkv][D] x 2
  model::AttendArgs Args(float* out, float* lse) const {
    return {layer, n, first_position, q.data(), k.data(), v.data(), out, lse};
  }
};

// A prompt in chunks, then decode steps; every chunk through every layer.
std::vector<Call> Calls(std::vector<int64_t> sizes, uint64_t seed) {
  std::vector<Call> calls;
  int64_t position = 0;
  for (size_t s = 0; s < sizes.size(); ++s) {
    for (int32_t l = 0; l < kLayers; ++l) {
      const uint64_t base = seed + 1000 * s + 10 * l;
      const int64_t n = sizes[s];
      calls.push_back({l, n, position, RandomFloats(n * kHq * kD, base),
                       RandomFloats(n * kHkv * kD, base + 1),
                       RandomFloats(n * kHkv * kD, base + 2)});
    }
    position += sizes[s];
  }
  return calls;
}

std::vector<int64_t> Sizes() {
  std::vector<int64_t> sizes = {7, 12, 5, 9};
  sizes.resize(40, 1);
  return sizes;
}

std::unique_ptr<CachePolicy> Make(const std::string& spec) {
  auto p = MakePolicy(Config(), spec);
  EXPECT_TRUE(p.ok()) << spec << ": " << p.status();
  return p.ok() ? std::move(*p) : nullptr;
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

// The fixed map of kernels/less.h in fp64: elu(W x) + 1 (as exp below 0).
std::vector<double> Phi(const kernels::FeatureMapWeights& w, const float* x) {
  std::vector<double> y(w.out_dim);
  for (int32_t r = 0; r < w.out_dim; ++r) {
    double acc = w.b2[r];
    for (int32_t c = 0; c < w.in_dim; ++c)
      acc += static_cast<double>(w.w2[r * w.in_dim + c]) * x[c];
    y[r] = acc > 0 ? acc + 1 : std::exp(acc);
  }
  return y;
}

// H [Hkv][R][D] and z [Hkv][R] of one layer, folded in fp64.
struct BruteState {
  std::vector<double> h = std::vector<double>(kHkv * kRank * kD, 0.0),
                      z = std::vector<double>(kHkv * kRank, 0.0);
  void Fold(const kernels::FeatureMapWeights& w, const Evictions& ev) {
    const size_t elems = static_cast<size_t>(kHkv) * ev.stride * kD;
    const std::vector<float> k = DecodeToFloat(ev.dtype, ev.k.data(), elems);
    const std::vector<float> v = DecodeToFloat(ev.dtype, ev.v.data(), elems);
    for (int32_t h = 0; h < kHkv; ++h) {
      for (int32_t i = 0; i < ev.count[h]; ++i) {
        const size_t row = (static_cast<size_t>(h) * ev.stride + i) * kD;
        const std::vector<double> psi = Phi(w, &k[row]);
        for (int32_t r = 0; r < kRank; ++r) {
          z[h * kRank + r] += psi[r];
          for (int32_t d = 0; d < kD; ++d) this->h[(h * kRank + r) * kD + d] += psi[r] * v[row + d];
        }
      }
    }
  }
};

const kernels::Backend kBackends[] = {kernels::Backend::kReference, kernels::Backend::kCpu};
const char* const kInners[] = {"cascading:sinks=2,subcaches=2,window=12",
                               "streaming:sinks=2,window=10", "h2o:heavy=6,recent=6",
                               "h2o:heavy=5,recent=7,positions=compact,kv=bf16"};

// (a) A KV head whose inner policy has evicted nothing yet gives exactly the
// inner policy's output and lse (LessCombine's empty-state rule).
TEST(LessTest, EqualsTheInnerPolicyBitwiseUntilItEvicts) {
  for (const kernels::Backend backend : kBackends) {
    for (const std::string inner : kInners) {
      SCOPED_TRACE(::testing::Message() << kernels::BackendName(backend) << " " << inner);
      const kernels::ExecContext ctx{backend};
      auto less = Make("less:inner=" + inner.substr(0, inner.find(':')) + "," +
                       inner.substr(inner.find(':') + 1));
      auto alone = Make(inner);
      ASSERT_NE(less, nullptr);
      std::vector<std::vector<int64_t>> evicted(kLayers, std::vector<int64_t>(kHkv, 0));
      int64_t compared = 0, differed = 0;
      for (const Call& c : Calls(Sizes(), 1)) {
        const Result got = Attend(ctx, *less, c), want = Attend(ctx, *alone, c);
        for (int64_t t = 0; t < c.n; ++t) {
          for (int32_t qh = 0; qh < kHq; ++qh) {
            const size_t row = t * kHq + qh;
            const bool same =
                std::memcmp(&got.out[row * kD], &want.out[row * kD], kD * sizeof(float)) == 0 &&
                std::memcmp(&got.lse[row], &want.lse[row], sizeof(float)) == 0;
            if (evicted[c.layer][qh / kGroup] == 0) {
              EXPECT_TRUE(same) << "layer " << c.layer << " position " << c.first_position + t
                                << " head " << qh;
              ++compared;
            } else {
              differed += !same;
            }
          }
        }
        const Evictions* ev = alone->last_evictions();
        ASSERT_NE(ev, nullptr);
        ASSERT_EQ(ev->layer, c.layer);
        for (int32_t h = 0; h < kHkv; ++h) evicted[c.layer][h] += ev->count[h];
      }
      EXPECT_GT(compared, 0);
      EXPECT_GT(differed, 0);  // once tokens are folded the state shows
    }
  }
}

// (b) With evictions: out = [phi(q) H + e^lse out_sparse] / [phi(q) z + e^lse]
// with H, z folded in fp64 from what the inner policy alone evicted, and the
// combined lse = log(phi(q) z + e^lse).
TEST(LessTest, MatchesBruteForceOverTheInnerPolicysEvictions) {
  for (const kernels::Backend backend : kBackends) {
    for (const std::string inner : kInners) {
      SCOPED_TRACE(::testing::Message() << kernels::BackendName(backend) << " " << inner);
      const kernels::ExecContext ctx{backend};
      auto less_or =
          MakePolicy(Config(), "less:rank=8,seed=3,inner=" + inner.substr(0, inner.find(':')) +
                                   "," + inner.substr(inner.find(':') + 1));
      ASSERT_TRUE(less_or.ok()) << less_or.status();
      const Less& less = dynamic_cast<const Less&>(**less_or);
      auto alone = Make(inner);
      const kernels::FeatureMapWeights& w = less.feature_map();
      const kernels::FeatureMapWeights fixed = kernels::RandomFeatureMap(kD, kRank, 3);
      ASSERT_EQ(w.w2, fixed.w2);
      std::vector<BruteState> state(kLayers);
      int64_t folded = 0;
      for (const Call& c : Calls(Sizes(), 2)) {
        const Result got = Attend(ctx, **less_or, c), sparse = Attend(ctx, *alone, c);
        std::vector<float> want(got.out.size()), want_lse(got.lse.size());
        const BruteState& s = state[c.layer];
        for (int64_t t = 0; t < c.n; ++t) {
          for (int32_t qh = 0; qh < kHq; ++qh) {
            const size_t row = t * kHq + qh;
            const int32_t h = qh / kGroup;
            const std::vector<double> phi = Phi(w, &c.q[row * kD]);
            double phi_z = 0;
            for (int32_t r = 0; r < kRank; ++r) phi_z += phi[r] * s.z[h * kRank + r];
            const double e = std::exp(static_cast<double>(sparse.lse[row]));
            for (int32_t d = 0; d < kD; ++d) {
              double phi_h = 0;
              for (int32_t r = 0; r < kRank; ++r) phi_h += phi[r] * s.h[(h * kRank + r) * kD + d];
              want[row * kD + d] =
                  static_cast<float>((phi_h + e * sparse.out[row * kD + d]) / (phi_z + e));
            }
            want_lse[row] = static_cast<float>(std::log(phi_z + e));
            EXPECT_NEAR(got.lse[row], want_lse[row], 1e-5) << "row " << row;
          }
        }
        EXPECT_LE(RelErrorByNorm(got.out, want), 2e-5)
            << "layer " << c.layer << " at " << c.first_position;
        const Evictions* ev = alone->last_evictions();
        ASSERT_NE(ev, nullptr);
        state[c.layer].Fold(w, *ev);
        for (int32_t h = 0; h < kHkv; ++h) folded += ev->count[h];
        for (size_t i = 0; i < s.z.size(); ++i) {
          EXPECT_NEAR(less.state_z(c.layer)[i], s.z[i], 1e-5 * (1 + s.z[i]));
        }
        for (size_t i = 0; i < s.h.size(); ++i) {
          EXPECT_NEAR(less.state_h(c.layer)[i], s.h[i], 1e-5 * (1 + std::abs(s.h[i])));
        }
      }
      EXPECT_GT(folded, 100);
      EXPECT_EQ(less.folded_tokens(), folded);
    }
  }
}

// (c) The state is allocated once: the bytes beside the inner policy's never
// change, and z (a sum of strictly positive features) only increases.
TEST(LessTest, StateNeverGrowsAndZOnlyIncreases) {
  const kernels::ExecContext ctx{kernels::Backend::kCpu};
  for (const std::string inner :
       {"cascading:sinks=2,subcaches=2,window=12", "h2o:heavy=6,recent=6"}) {
    SCOPED_TRACE(inner);
    auto made = MakePolicy(Config(), "less:inner=" + inner.substr(0, inner.find(':')) + "," +
                                         inner.substr(inner.find(':') + 1));
    ASSERT_TRUE(made.ok()) << made.status();
    const Less& less = dynamic_cast<const Less&>(**made);
    const size_t state_bytes = kLayers * kHkv * kRank * (kD + 1) * sizeof(float);
    std::vector<std::vector<float>> last_z(kLayers, std::vector<float>(kHkv * kRank, 0.0f));
    for (const Call& c : Calls(Sizes(), 3)) {
      Attend(ctx, **made, c);
      EXPECT_EQ(less.stats().resident_bytes, less.inner().stats().resident_bytes + state_bytes);
      EXPECT_EQ(less.state_h(c.layer).size(), static_cast<size_t>(kHkv * kRank * kD));
      const std::vector<float>& z = less.state_z(c.layer);
      ASSERT_EQ(z.size(), last_z[c.layer].size());
      for (size_t i = 0; i < z.size(); ++i) EXPECT_GE(z[i], last_z[c.layer][i]);
      last_z[c.layer] = z;
    }
    for (const auto& z : last_z) EXPECT_GT(*std::min_element(z.begin(), z.end()), 0.0f);
    EXPECT_EQ(less.bytes_per_token(), less.inner().bytes_per_token());
    EXPECT_EQ(less.max_resident_tokens(), less.inner().max_resident_tokens());
    EXPECT_EQ(less.stats().resident_tokens, less.inner().stats().resident_tokens);
  }
}

// (d) Rank and seed fix the result: two runs agree bitwise; another seed
// (another feature map) changes it.
TEST(LessTest, DeterministicForAFixedRankAndSeed) {
  const kernels::ExecContext ctx{kernels::Backend::kCpu};
  const std::vector<Call> calls = Calls(Sizes(), 4);
  auto run = [&](const std::string& spec) {
    auto p = Make(spec);
    std::vector<float> all;
    for (const Call& c : calls) {
      const Result r = Attend(ctx, *p, c);
      all.insert(all.end(), r.out.begin(), r.out.end());
    }
    return all;
  };
  const std::vector<float> a = run("less:inner=h2o,budget=12,rank=4,seed=7");
  EXPECT_EQ(a, run("less:inner=h2o,budget=12,rank=4,seed=7"));
  EXPECT_NE(a, run("less:inner=h2o,budget=12,rank=4,seed=8"));
  EXPECT_NE(a, run("less:inner=h2o,budget=12,rank=5,seed=7"));
}

// The eviction reports LESS folds: every token that leaves a head's hot set
// is reported once, with its key and value as given (in the KV dtype), and
// H2O's report is exactly what left kept_positions.
TEST(LessTest, EvictionReportsAreTheTokensThatLeft) {
  const kernels::ExecContext ctx{kernels::Backend::kCpu};
  for (const std::string spec :
       {"cascading:sinks=2,subcaches=3,window=12", "h2o:heavy=6,recent=6,kv=bf16"}) {
    SCOPED_TRACE(spec);
    auto p = Make(spec);
    const kernels::DType dtype =
        spec.find("bf16") != std::string::npos ? kernels::DType::kBF16 : kernels::DType::kF32;
    std::map<std::pair<int32_t, int32_t>, std::vector<float>> keys,
        values;  // (layer, position) -> [Hkv][D]
    std::vector<std::vector<std::set<int32_t>>> gone(kLayers, std::vector<std::set<int32_t>>(kHkv));
    std::vector<std::vector<std::set<int32_t>>> held(kLayers, std::vector<std::set<int32_t>>(kHkv));
    for (const Call& c : Calls(Sizes(), 5)) {
      const std::vector<float> k = RoundTrip(dtype, c.k), v = RoundTrip(dtype, c.v);
      for (int64_t i = 0; i < c.n; ++i) {
        const int32_t pos = static_cast<int32_t>(c.first_position + i);
        keys[{c.layer, pos}].assign(&k[i * kHkv * kD], &k[(i + 1) * kHkv * kD]);
        values[{c.layer, pos}].assign(&v[i * kHkv * kD], &v[(i + 1) * kHkv * kD]);
        for (int32_t h = 0; h < kHkv; ++h) held[c.layer][h].insert(pos);
      }
      Attend(ctx, *p, c);
      const Evictions* ev = p->last_evictions();
      ASSERT_NE(ev, nullptr);
      ASSERT_EQ(ev->layer, c.layer);
      ASSERT_EQ(ev->dtype, dtype);
      const size_t elems = static_cast<size_t>(kHkv) * ev->stride * kD;
      const std::vector<float> ek = DecodeToFloat(dtype, ev->k.data(), elems);
      const std::vector<float> evv = DecodeToFloat(dtype, ev->v.data(), elems);
      for (int32_t h = 0; h < kHkv; ++h) {
        for (int32_t i = 0; i < ev->count[h]; ++i) {
          const size_t row = static_cast<size_t>(h) * ev->stride + i;
          const int32_t pos = ev->positions[row];
          EXPECT_TRUE(gone[c.layer][h].insert(pos).second)
              << "position " << pos << " evicted twice";
          EXPECT_EQ(held[c.layer][h].erase(pos), 1u) << "position " << pos << " was not held";
          const float* want_k = &keys[{c.layer, pos}][h * kD];
          const float* want_v = &values[{c.layer, pos}][h * kD];
          EXPECT_TRUE(std::equal(want_k, want_k + kD, &ek[row * kD])) << "key of position " << pos;
          EXPECT_TRUE(std::equal(want_v, want_v + kD, &evv[row * kD]))
              << "value of position " << pos;
        }
        if (auto* h2o = dynamic_cast<H2O*>(p.get())) {
          const std::vector<int32_t>& kept = h2o->kept_positions(c.layer, h);
          EXPECT_EQ(std::set<int32_t>(kept.begin(), kept.end()), held[c.layer][h]);
        }
      }
    }
    EXPECT_GT(gone[0][0].size(), 30u);
  }
}

// Brute-force lse of causal attention at original positions, for query
// rows of the last call over everything of `calls` so far on that layer.
std::vector<float> FullLse(const std::vector<Call>& calls, size_t upto) {
  const Call& c = calls[upto];
  std::vector<std::vector<float>> k;  // per position: [Hkv][D]
  for (size_t i = 0; i <= upto; ++i) {
    if (calls[i].layer != c.layer) continue;
    for (int64_t t = 0; t < calls[i].n; ++t)
      k.emplace_back(&calls[i].k[t * kHkv * kD], &calls[i].k[(t + 1) * kHkv * kD]);
  }
  const kernels::Rope rope{kernels::RopeStyle::kInterleaved, 10000.0f};
  std::vector<float> lse(c.n * kHq);
  for (int64_t t = 0; t < c.n; ++t) {
    const int32_t qpos = static_cast<int32_t>(c.first_position + t);
    for (int32_t qh = 0; qh < kHq; ++qh) {
      std::vector<double> q(kD), key(kD), logits;
      kernels::ref::ApplyRope(rope, qpos, kD, &c.q[(t * kHq + qh) * kD], q.data());
      for (int32_t j = 0; j <= qpos; ++j) {
        kernels::ref::ApplyRope(rope, j, kD, &k[j][(qh / kGroup) * kD], key.data());
        double dot = 0;
        for (int32_t d = 0; d < kD; ++d) dot += q[d] * key[d];
        logits.push_back(dot / std::sqrt(static_cast<double>(kD)));
      }
      const double top = *std::max_element(logits.begin(), logits.end());
      double sum = 0;
      for (double l : logits) sum += std::exp(l - top);
      lse[t * kHq + qh] = static_cast<float>(top + std::log(sum));
    }
  }
  return lse;
}

// AttendArgs::lse: full attention reports the brute-force lse; every policy
// whose budget covers the context reports the same (1e-5), and asking for
// the lse does not change the output (bitwise).
TEST(LessTest, EveryPolicyReportsTheLseOfWhatItAttended) {
  const std::vector<Call> calls = Calls({7, 12, 5, 9, 1, 1, 1, 1, 1}, 6);  // 38 tokens
  for (const kernels::Backend backend : kBackends) {
    const kernels::ExecContext ctx{backend};
    FullAttention full(Config(), kernels::DType::kF32);
    std::vector<std::vector<float>> want;
    for (size_t i = 0; i < calls.size(); ++i) {
      const Result r = Attend(ctx, full, calls[i]);
      EXPECT_LE(kernels::testing::MaxAbsDiff(r.lse, FullLse(calls, i)), 1e-5) << "call " << i;
      want.push_back(r.lse);
    }
    for (const std::string spec :
         {"full", "streaming:sinks=4,window=36", "cascading:sinks=4,subcaches=4,window=36",
          "tokenselect:init=4,k=20,local=16", "h2o:heavy=20,recent=20", "snapkv:budget=40,window=8",
          "less:inner=cascading,sinks=4,subcaches=4,window=36",
          "less:inner=h2o,heavy=20,recent=20"}) {
      SCOPED_TRACE(::testing::Message() << kernels::BackendName(backend) << " " << spec);
      auto with = Make(spec), without = Make(spec);
      for (size_t i = 0; i < calls.size(); ++i) {
        const Result r = Attend(ctx, *with, calls[i]);
        std::vector<float> out(r.out.size());
        ASSERT_TRUE(without->Attend(ctx, calls[i].Args(out.data(), nullptr)).ok());
        EXPECT_EQ(r.out, out) << "call " << i;
        EXPECT_LE(kernels::testing::MaxAbsDiff(r.lse, want[i]), 1e-5) << "call " << i;
      }
    }
  }
}

// (e) The factory: less wraps the named inner policy and passes it every
// key but its own; what is wrong is named.
TEST(LessTest, FactoryBuildsTheInnerPolicyAndNamesErrors) {
  auto p = Make("less:inner=h2o,budget=64");
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->name(), "less(h2o(heavy=32,recent=32))");
  EXPECT_EQ(p->max_resident_tokens(), 64);
  auto s = Make("less:inner=streaming,budget=20,kv=bf16,rank=4");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->name(), "less(streaming(S=4,W=16))");
  EXPECT_EQ(s->bytes_per_token(), Make("streaming:budget=20,kv=bf16")->bytes_per_token());
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"less", "less needs inner=cascading|h2o|streaming"},
      {"less:rank=8", "less needs inner="},
      {"less:inner=full", "inner=full is not one of cascading|h2o|streaming"},
      {"less:inner=less", "inner=less is not one of"},
      {"less:inner=h2o,rank=0", "rank 0 not in [1, 256]"},
      {"less:inner=h2o,rank=x", "rank=x is not an integer"},
      {"less:inner=h2o,seed=-1", "seed -1 < 0"},
      {"less:inner=h2o,window=8", "unknown key \"window\""},
      {"less:inner=cascading,beta=2", "beta 2"},
      {"less:inner=h2o,kv=f64", "kv=f64 is not one of f32|bf16|f16"},
  };
  for (const auto& [spec, want] : cases) {
    auto made = MakePolicy(Config(), spec);
    ASSERT_FALSE(made.ok()) << spec;
    EXPECT_EQ(made.status().code(), absl::StatusCode::kInvalidArgument) << spec;
    EXPECT_NE(made.status().message().find(want), std::string::npos)
        << spec << ": " << made.status();
  }
}

}  // namespace
}  // namespace kvc::cache
