// RefreshKV (worker/cache/refresh_kv.h) against the invariants of
// ALGORITHMS.md §4:
//  - driven through Attend with random q, k, v on a one-layer GQA shape
//    (Hq = 4, Hkv = 2, D = 16) beside a plain double-precision statement in
//    this file: every full step and prefill chunk equals full attention; the
//    rebuilt partial cache is the pooled top-K of the last query's attention
//    in ascending score order; each partial step attends exactly that cache
//    plus the new token, and evicts exactly its lowest-scored entry; the
//    scheduler takes the steps the rule says;
//  - the attention cost of fixed mode is T*L/S + T*(K+1) pairs;
//  - inside the runtime (a random two-layer model), K >= |Cf| and stride 1
//    (fixed) equal full attention;
//  - the factory names what is wrong with a spec.
//
// Tolerances: outputs 1e-5 by norm (fp32 kernels against fp64, a few dozen
// keys), as cache_policy_h2o_snapkv_test.cc; "equals full attention" in the
// runtime 2e-6 by norm over the logits, as cache_policy_test.cc. Exact
// partial caches assume no two distinct pooled scores lie within fp32
// rounding of each other, which holds for these seeds (exact ties from the
// max pooling are frequent and follow the stated tie rule).
#include <algorithm>
#include <cmath>
#include <deque>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ref/ref_util.h"
#include "tests/kernel_test_util.h"
#include "tests/model_test_util.h"
#include "worker/cache/full_attention.h"
#include "worker/cache/policy_factory.h"
#include "worker/cache/refresh_kv.h"
#include "worker/model/checkpoint.h"
#include "worker/model/transformer.h"

namespace kvc::cache {
namespace {

using kernels::testing::RandomFloats;
using kernels::testing::RelErrorByNorm;

constexpr int32_t kHq = 4, kHkv = 2, kD = 16, kGroup = kHq / kHkv;

model::ModelConfig Config(int32_t layers = 1) {
  return testing::ModelShape(kHq * kD, 96, layers, kHq, kHkv, 50);
}

// A chunk whose queries are base + eps * noise (eps small: the scheduler's
// cosine stays high), keys and values random.
struct Chunk {
  int64_t n = 0, first_position = 0;
  std::vector<float> q, k, v, out;  // [n][Hq][D], [n][Hkv][D] x 2, [n][Hq][D]
  Chunk(int64_t tokens, int64_t first, uint64_t seed, const std::vector<float>& base, float eps)
      : n(tokens),
        first_position(first),
        q(RandomFloats(tokens * kHq * kD, seed)),
        k(RandomFloats(tokens * kHkv * kD, seed + 1)),
        v(RandomFloats(tokens * kHkv * kD, seed + 2)),
        out(tokens * kHq * kD) {
    for (size_t i = 0; i < q.size(); ++i) q[i] = base[i % base.size()] + eps * q[i];
  }
  model::AttendArgs Args() {
    return {0, n, first_position, q.data(), k.data(), v.data(), out.data()};
  }
};

struct Token {
  int32_t position = 0;
  std::vector<float> k, v;  // [Hkv][D]
};

// One query ([Hq][D] before RoPE, rotated to qpos) over per-head lists of
// token indices, key j of head h rotated to key_pos[h][j]. Writes out
// ([Hq][D]) and, per head and list entry, the probability reduced over the
// group by max.
void RefAttendOne(const float* q, int32_t qpos, const std::vector<Token>& tokens,
                  const std::vector<std::vector<int32_t>>& lists,
                  const std::vector<std::vector<int32_t>>& key_pos, float* out,
                  std::vector<std::vector<double>>* probs) {
  const kernels::Rope rope{kernels::RopeStyle::kInterleaved, 10000.0f};
  probs->assign(kHkv, {});
  for (int32_t h = 0; h < kHkv; ++h) {
    const int64_t m = static_cast<int64_t>(lists[h].size());
    std::vector<std::vector<double>> keys(m, std::vector<double>(kD));
    for (int64_t j = 0; j < m; ++j) {
      kernels::ref::ApplyRope(rope, key_pos[h][j], kD, &tokens[lists[h][j]].k[h * kD],
                              keys[j].data());
    }
    std::vector<double>& reduced = (*probs)[h];
    reduced.assign(m, 0.0);
    for (int32_t g = 0; g < kGroup; ++g) {
      const int32_t qh = h * kGroup + g;
      std::vector<double> rq(kD), logit(m);
      kernels::ref::ApplyRope(rope, qpos, kD, q + qh * kD, rq.data());
      double top = -INFINITY, sum = 0;
      for (int64_t j = 0; j < m; ++j) {
        logit[j] =
            std::inner_product(rq.begin(), rq.end(), keys[j].begin(), 0.0) / std::sqrt(double{kD});
        top = std::max(top, logit[j]);
      }
      for (int64_t j = 0; j < m; ++j) sum += std::exp(logit[j] - top);
      std::vector<double> o(kD, 0.0);
      for (int64_t j = 0; j < m; ++j) {
        const double p = std::exp(logit[j] - top) / sum;
        for (int32_t d = 0; d < kD; ++d) o[d] += p * tokens[lists[h][j]].v[h * kD + d];
        reduced[j] = std::max(reduced[j], p);
      }
      for (int32_t d = 0; d < kD; ++d) out[qh * kD + d] = static_cast<float>(o[d]);
    }
  }
}

// RefreshKV as ALGORITHMS.md §4 states it, for one layer.
class RefRefreshKv {
 public:
  explicit RefRefreshKv(const RefreshKvOptions& o) : o_(o), hot_(kHkv) {}

  // Attends the chunk; writes the reference output to `want` and full
  // attention to `full`. Returns whether this was a full step (or prefill).
  bool Attend(const Chunk& c, float* want, float* full) {
    for (int64_t i = 0; i < c.n; ++i) {
      Token t{static_cast<int32_t>(c.first_position + i), {}, {}};
      t.k.assign(c.k.begin() + i * kHkv * kD, c.k.begin() + (i + 1) * kHkv * kD);
      t.v.assign(c.v.begin() + i * kHkv * kD, c.v.begin() + (i + 1) * kHkv * kD);
      tokens_.push_back(std::move(t));
    }
    const int64_t total = static_cast<int64_t>(tokens_.size()), past = total - c.n;
    // Full causal attention of every query of the chunk.
    std::vector<std::vector<double>> probs;
    for (int64_t i = 0; i < c.n; ++i) {
      std::vector<std::vector<int32_t>> lists(kHkv), pos(kHkv);
      for (int32_t h = 0; h < kHkv; ++h) {
        for (int32_t j = 0; j <= past + i; ++j) {
          lists[h].push_back(j);
          pos[h].push_back(o_.compact_positions ? j : tokens_[j].position);
        }
      }
      const int32_t qpos =
          o_.compact_positions ? static_cast<int32_t>(past + i) : tokens_[past + i].position;
      RefAttendOne(&c.q[i * kHq * kD], qpos, tokens_, lists, pos, full + i * kHq * kD, &probs);
    }
    const std::vector<float> mean = Mean(&c.q[(c.n - 1) * kHq * kD]);
    if (c.n > 1 || FullStep(mean)) {
      std::copy_n(full, c.n * kHq * kD, want);
      Rebuild(probs);
      reference_ = mean;
      since_ = 0;
      return true;
    }
    // Partial: Cp in token order plus the new token.
    std::vector<std::vector<int32_t>> lists(kHkv), pos(kHkv);
    for (int32_t h = 0; h < kHkv; ++h) {
      lists[h].assign(hot_[h].begin(), hot_[h].end());
      std::sort(lists[h].begin(), lists[h].end());
      lists[h].push_back(static_cast<int32_t>(past));
      for (size_t j = 0; j < lists[h].size(); ++j) {
        pos[h].push_back(o_.compact_positions ? static_cast<int32_t>(j)
                                              : tokens_[lists[h][j]].position);
      }
    }
    const int32_t qpos =
        o_.compact_positions ? static_cast<int32_t>(hot_[0].size()) : tokens_[past].position;
    RefAttendOne(c.q.data(), qpos, tokens_, lists, pos, want, &probs);
    for (std::deque<int32_t>& hot : hot_) {
      hot.push_back(static_cast<int32_t>(past));
      if (static_cast<int64_t>(hot.size()) > o_.k) hot.pop_front();
    }
    return false;
  }

  std::vector<int32_t> Hot(int32_t h) const {
    std::vector<int32_t> p;
    for (int32_t t : hot_[h]) p.push_back(tokens_[t].position);
    return p;
  }
  int64_t checks_kept() const { return checks_kept_; }
  int64_t checks_refreshed() const { return checks_refreshed_; }

 private:
  static std::vector<float> Mean(const float* q) {
    std::vector<float> m(kD, 0.0f);
    for (int32_t h = 0; h < kHq; ++h) {
      for (int32_t d = 0; d < kD; ++d) m[d] += q[h * kD + d] / kHq;
    }
    return m;
  }
  bool FullStep(const std::vector<float>& mean) {
    if (++since_ % o_.stride != 0) return false;
    if (o_.mode == RefreshMode::kFixed || reference_.empty()) return true;
    double dot = 0, a = 0, b = 0;
    for (int32_t d = 0; d < kD; ++d) {
      dot += double{mean[d]} * reference_[d];
      a += double{mean[d]} * mean[d];
      b += double{reference_[d]} * reference_[d];
    }
    const bool keep = dot / std::sqrt(a * b) > o_.threshold;
    ++(keep ? checks_kept_ : checks_refreshed_);
    return !keep;
  }
  // Cp from the last query's probabilities over every token: pooled, top K
  // by (score desc, older first), listed least preferred first.
  void Rebuild(const std::vector<std::vector<double>>& probs) {
    const int64_t total = static_cast<int64_t>(tokens_.size()), half = o_.pool_kernel / 2;
    for (int32_t h = 0; h < kHkv; ++h) {
      std::vector<double> pooled(total, 0.0);
      for (int64_t t = 0; t < total; ++t) {
        for (int64_t u = std::max<int64_t>(0, t - half);
             u <= std::min<int64_t>(total - 1, t + half); ++u) {
          pooled[t] = std::max(pooled[t], probs[h][u]);
        }
      }
      std::vector<int32_t> order(total);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int32_t x, int32_t y) { return pooled[x] > pooled[y]; });
      order.resize(std::min<int64_t>(o_.k, total));
      hot_[h].assign(order.rbegin(), order.rend());
    }
  }

  RefreshKvOptions o_;
  std::vector<Token> tokens_;
  std::vector<std::deque<int32_t>> hot_;
  std::vector<float> reference_;
  int64_t since_ = 0, checks_kept_ = 0, checks_refreshed_ = 0;
};

const kernels::Backend kBackends[] = {kernels::Backend::kReference, kernels::Backend::kCpu};

TEST(RefreshKvTest, FullStepsAreFullAttentionAndPartialStepsEvictTheLowestScored) {
  struct Variant {
    RefreshMode mode;
    int32_t stride, pool;
    bool compact;
  };
  for (const kernels::Backend backend : kBackends) {
    for (const Variant var :
         {Variant{RefreshMode::kFixed, 3, 7, false}, Variant{RefreshMode::kSimilarity, 2, 3, true},
          Variant{RefreshMode::kSimilarity, 3, 7, false}}) {
      SCOPED_TRACE(::testing::Message()
                   << kernels::BackendName(backend) << " mode " << static_cast<int>(var.mode)
                   << " S " << var.stride << " pool " << var.pool << " compact " << var.compact);
      RefreshKvOptions o;
      o.k = 6;
      o.stride = var.stride;
      o.mode = var.mode;
      o.pool_kernel = var.pool;
      o.compact_positions = var.compact;
      auto policy = *RefreshKv::Create(Config(), o);
      RefRefreshKv ref(o);
      const kernels::ExecContext ctx{backend};
      const std::vector<float> base = RandomFloats(kHq * kD, 5);
      // Two prefill chunks, decode steps, a prefill chunk after them, decode.
      std::vector<int64_t> sizes = {11, 5};
      sizes.resize(2 + 24, 1);
      sizes.push_back(4);
      sizes.resize(sizes.size() + 8, 1);
      int64_t position = 0, full_steps = 0, partial_steps = 0, partial_differs = 0;
      for (size_t step = 0; step < sizes.size(); ++step) {
        // Every fifth step a query far from the others (the cosine check fails).
        Chunk c(sizes[step], position, 100 + 7 * step, base, step % 5 == 4 ? 4.0f : 0.15f);
        const int64_t full_before = policy->full_steps();
        ASSERT_TRUE(policy->Attend(ctx, c.Args()).ok());
        std::vector<float> want(c.out.size()), full(c.out.size());
        const bool refreshed = ref.Attend(c, want.data(), full.data());
        EXPECT_LE(RelErrorByNorm(c.out, want), 1e-5) << "step " << step;
        if (refreshed) {
          EXPECT_LE(RelErrorByNorm(c.out, full), 1e-5) << "step " << step;
        }
        if (c.n == 1) {
          EXPECT_EQ(policy->full_steps() - full_before, refreshed ? 1 : 0) << "step " << step;
          ++(refreshed ? full_steps : partial_steps);
          if (!refreshed && RelErrorByNorm(c.out, full) > 1e-3) ++partial_differs;
        }
        position += c.n;
        for (int32_t h = 0; h < kHkv; ++h) {
          ASSERT_EQ(policy->partial_cache(0, h), ref.Hot(h)) << "step " << step << " head " << h;
        }
      }
      EXPECT_EQ(policy->full_steps(), full_steps);
      EXPECT_EQ(policy->partial_steps(), partial_steps);
      EXPECT_GT(full_steps, 0);
      EXPECT_GT(partial_differs, 0);  // K = 6 of 52 tokens: partial steps are not full attention
      if (var.mode == RefreshMode::kSimilarity) {
        EXPECT_GT(ref.checks_kept(), 0);
        EXPECT_GT(ref.checks_refreshed(), 0);
      }
      EXPECT_EQ(policy->stats().resident_tokens, position);
      EXPECT_EQ(policy->stats().tokens_seen, position);
    }
  }
}

// Fixed stride S, K: after a prompt of L0 tokens, T decode steps cost, per
// layer, L0 + t on the full steps t = S, 2S, ... and K + 1 on the others:
// T * L / S + T * K up to the new token, L the context at the full steps.
TEST(RefreshKvTest, FixedModeAttentionCostIsTLOverSPlusTK) {
  constexpr int64_t kPrompt = 20, kSteps = 30, kStride = 5, kK = 6;
  RefreshKvOptions o;
  o.k = kK;
  o.stride = kStride;
  o.mode = RefreshMode::kFixed;
  auto policy = *RefreshKv::Create(Config(), o);
  const kernels::ExecContext ctx;
  const std::vector<float> base = RandomFloats(kHq * kD, 9);
  Chunk prompt(kPrompt, 0, 1, base, 1.0f);
  ASSERT_TRUE(policy->Attend(ctx, prompt.Args()).ok());
  const int64_t prefill = policy->stats().attended_total;
  EXPECT_EQ(prefill, kPrompt * (kPrompt + 1) / 2);
  int64_t full_context = 0;
  for (int64_t t = 1; t <= kSteps; ++t) {
    Chunk c(1, kPrompt + t - 1, 10 + t, base, 1.0f);
    ASSERT_TRUE(policy->Attend(ctx, c.Args()).ok());
    const bool full = t % kStride == 0;
    if (full) full_context += kPrompt + t;
    EXPECT_EQ(policy->stats().attended_last_step, full ? kPrompt + t : kK + 1) << "step " << t;
  }
  constexpr int64_t kFull = kSteps / kStride;
  EXPECT_EQ(policy->full_steps(), kFull);
  EXPECT_EQ(policy->partial_steps(), kSteps - kFull);
  EXPECT_EQ(policy->stats().attended_total - prefill, full_context + (kSteps - kFull) * (kK + 1));
  // The paper's form with L the mean context of the full steps.
  const double mean_l = static_cast<double>(full_context) / kFull;
  EXPECT_DOUBLE_EQ(kSteps * mean_l / kStride + kSteps * kK + (kSteps - kFull) - kFull * kK,
                   static_cast<double>(policy->stats().attended_total - prefill));
  EXPECT_EQ(policy->stats().resident_tokens, kPrompt + kSteps);
}

// Chunks must move forward; an Attend that goes back is refused.
TEST(RefreshKvTest, RefusesAChunkThatDoesNotFollow) {
  auto policy = *RefreshKv::Create(Config(), RefreshKvOptions{});
  const kernels::ExecContext ctx;
  const std::vector<float> base = RandomFloats(kHq * kD, 3);
  Chunk a(4, 0, 1, base, 1.0f), b(1, 2, 2, base, 1.0f);
  ASSERT_TRUE(policy->Attend(ctx, a.Args()).ok());
  EXPECT_EQ(policy->Attend(ctx, b.Args()).code(), absl::StatusCode::kInvalidArgument);
}

// Inside the runtime: a random two-layer model, a 40-token prompt in chunks
// of 16, then 20 decode steps.
TEST(RefreshKvTest, CoveringBudgetOrStrideOneEqualsFullAttention) {
  const model::ModelConfig config = Config(2);
  auto ckpt = *model::Checkpoint::Random(config, 21, 0.2f);
  model::TransformerOptions mo;
  mo.max_chunk = 16;
  auto model = *model::Transformer::Create(ckpt.get(), mo);
  std::mt19937_64 rng(1);
  std::vector<int32_t> tokens(60);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % config.vocab_size);
  const auto run = [&](CachePolicy& policy) {
    std::vector<float> all(config.vocab_size), logits(config.vocab_size);
    EXPECT_TRUE(model->Forward(absl::MakeConstSpan(tokens).first(40), 0, policy, all.data()).ok());
    for (size_t t = 40; t < tokens.size(); ++t) {
      EXPECT_TRUE(
          model->Forward(absl::MakeConstSpan(&tokens[t], 1), t, policy, logits.data()).ok());
      all.insert(all.end(), logits.begin(), logits.end());
    }
    return all;
  };
  FullAttention full(config, kernels::DType::kF32);
  const std::vector<float> want = run(full);
  for (const std::string spec :
       {"refreshkv:budget=60", "refreshkv:k=64,stride=2,threshold=1,positions=compact",
        "refreshkv:k=60,mode=fixed,stride=3,pool=0", "refreshkv:k=4,mode=fixed,stride=1",
        "refreshkv:k=2,mode=fixed,stride=1,positions=compact"}) {
    SCOPED_TRACE(spec);
    auto policy = MakePolicy(config, spec);
    ASSERT_TRUE(policy.ok()) << policy.status();
    EXPECT_LE(RelErrorByNorm(run(**policy), want), 2e-6);
    EXPECT_EQ((*policy)->stats().resident_tokens, 60);
    EXPECT_EQ((*policy)->stats().tokens_seen, 60);
    EXPECT_EQ((*policy)->stats().attended_total, full.stats().attended_total);
  }
}

TEST(RefreshKvTest, FactoryReadsTheSpecAndNamesTheProblem) {
  const model::ModelConfig c = Config(2);
  auto p = MakePolicy(c, "refreshkv:budget=64,positions=compact");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->name(), "refreshkv(hot=64,S=10,sim=0.9,pool=7,compact)");
  p = MakePolicy(c, "refreshkv:budget=64,k=32,mode=fixed,stride=4,pool=0,kv=bf16");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->name(), "refreshkv(hot=32,S=4,fixed,pool=0)");
  // bf16 keys and values, a position and a Cp entry per KV head, per layer.
  EXPECT_EQ((*p)->bytes_per_token(), 2u * (2u * kHkv * kD * 2u + 4u + 4u * kHkv));
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"refreshkv:k=0", "k 0 must be >= 1"},
      {"refreshkv:budget=x", "budget=x is not an integer"},
      {"refreshkv:stride=0", "stride 0 must be >= 1"},
      {"refreshkv:threshold=1.5", "threshold 1.5 not in [-1, 1]"},
      {"refreshkv:mode=sometimes", "mode=sometimes is not one of similarity|fixed"},
      {"refreshkv:pool=4", "pool kernel 4"},
      {"refreshkv:positions=cache", "positions=cache is not one of original|compact"},
      {"refreshkv:window=8", "unknown key \"window\""},
      {"refreshkv:kv=f64", "kv=f64 is not one of f32|bf16|f16"},
  };
  for (const auto& [spec, want] : cases) {
    auto bad = MakePolicy(c, spec);
    ASSERT_FALSE(bad.ok()) << spec;
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << spec;
    EXPECT_NE(bad.status().message().find(want), std::string::npos) << spec << ": " << bad.status();
  }
}

}  // namespace
}  // namespace kvc::cache
