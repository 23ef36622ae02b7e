// The cache policies inside the real runtime (a random model; the same
// invariants on stories15M are in model_test.cc): a budget that covers the
// context equals full attention; StreamingLLM keeps the sinks and the last
// W tokens; the factory names what is wrong with a spec. H2O and SnapKV
// against brute force: cache_policy_h2o_snapkv_test.cc.
//
// Tolerance for "equals full attention": a policy splits the keys into the
// cache part and the chunk part and merges the two states (MergeStates),
// where full attention runs one pass; that reassociates fp32 sums, ~1e-7
// relative per layer. 2e-6 by norm over the logits.
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "tests/kernel_test_util.h"
#include "tests/model_test_util.h"
#include "worker/cache/cascading.h"
#include "worker/cache/full_attention.h"
#include "worker/cache/policy_factory.h"
#include "worker/cache/token_select.h"
#include "worker/model/checkpoint.h"
#include "worker/model/transformer.h"

namespace kvc::cache {
namespace {

using kernels::testing::RelErrorByNorm;

model::ModelConfig SmallConfig() {
  return testing::ModelShape(64, 96, 2, 4, 2, 50);
}

struct Fixture {
  std::unique_ptr<model::Checkpoint> ckpt;
  std::unique_ptr<model::Transformer> model;
  explicit Fixture(int32_t max_chunk = 16) {
    ckpt = *model::Checkpoint::Random(SmallConfig(), 21, 0.2f);
    model::TransformerOptions o;
    o.max_chunk = max_chunk;
    model = *model::Transformer::Create(ckpt.get(), o);
  }
  // Prefill of `prompt` tokens then one-token decode steps; the logits of
  // every step after the prompt, concatenated.
  std::vector<float> Run(CachePolicy& policy, const std::vector<int32_t>& tokens, int64_t prompt) {
    const int32_t v = SmallConfig().vocab_size;
    std::vector<float> all(v), logits(v);
    EXPECT_TRUE(model->Forward(absl::MakeConstSpan(tokens).first(prompt), 0, policy, all.data()).ok());
    for (size_t t = prompt; t < tokens.size(); ++t) {
      const absl::Status s = model->Forward(absl::MakeConstSpan(&tokens[t], 1), t, policy, logits.data());
      EXPECT_TRUE(s.ok()) << s;
      all.insert(all.end(), logits.begin(), logits.end());
    }
    return all;
  }
};

std::vector<int32_t> Tokens(int n, uint64_t seed) { return testing::RandomTokens(n, SmallConfig().vocab_size, seed); }

std::unique_ptr<CachePolicy> Make(const std::string& spec) {
  auto p = MakePolicy(SmallConfig(), spec);
  EXPECT_TRUE(p.ok()) << spec << ": " << p.status();
  return p.ok() ? std::move(*p) : nullptr;
}

TEST(CachePolicyTest, CoveringBudgetEqualsFullAttention) {
  Fixture f;
  const std::vector<int32_t> tokens = Tokens(60, 1);
  FullAttention full(SmallConfig(), kernels::DType::kF32);
  const std::vector<float> want = f.Run(full, tokens, 40);
  // S + W >= 60: nothing is ever evicted, cache positions = original ones.
  for (const std::string spec : {"streaming:sinks=4,window=56", "cascading:sinks=4,subcaches=4,window=56",
                                 "cascading:sinks=0,subcaches=2,window=64,positions=original",
                                 "tokenselect:init=4,k=40,local=16", "h2o:heavy=40,recent=24",
                                 "h2o:heavy=32,recent=32,reduce=max,positions=compact",
                                 "snapkv:budget=64,window=16", "snapkv:budget=60,positions=compact"}) {
    SCOPED_TRACE(spec);
    auto policy = Make(spec);
    ASSERT_NE(policy, nullptr);
    EXPECT_LE(RelErrorByNorm(f.Run(*policy, tokens, 40), want), 2e-6);
    EXPECT_EQ(policy->stats().resident_tokens, 60);
    EXPECT_EQ(policy->stats().tokens_seen, 60);
    EXPECT_EQ(policy->stats().attended_total, full.stats().attended_total);
  }
}

TEST(CachePolicyTest, StreamingKeepsSinksAndTheLastWindow) {
  Fixture f;
  const std::vector<int32_t> tokens = Tokens(100, 2);
  CascadingOptions o;
  o.num_sinks = 4;
  o.num_subcaches = 1;
  o.window = 16;
  auto policy = *Cascading::Create(SmallConfig(), o);
  f.Run(*policy, tokens, 37);
  EXPECT_EQ(policy->stats().resident_tokens, 20);
  for (int32_t layer = 0; layer < 2; ++layer) {
    const kernels::CascadeState& st = policy->state(layer);
    for (int32_t h = 0; h < 2; ++h) {
      std::set<int32_t> held;
      for (int32_t s = 0; s < st.config.total_slots(); ++s) held.insert(st.positions[h * st.config.total_slots() + s]);
      std::set<int32_t> want = {0, 1, 2, 3};
      for (int32_t p = 84; p < 100; ++p) want.insert(p);
      EXPECT_EQ(held, want) << "layer " << layer << " head " << h;
    }
  }
  // Past the budget the policy attends S + W keys per decode step.
  EXPECT_EQ(policy->stats().attended_last_step, 2 * (20 + 1));
}

TEST(CachePolicyTest, SmallBudgetsDifferFromFullAttention) {
  Fixture f;
  const std::vector<int32_t> tokens = Tokens(80, 3);
  FullAttention full(SmallConfig(), kernels::DType::kF32);
  const std::vector<float> want = f.Run(full, tokens, 50);
  auto cascading = Make("cascading:sinks=2,subcaches=2,window=8");
  const std::vector<float> got = f.Run(*cascading, tokens, 50);
  EXPECT_GT(RelErrorByNorm(got, want), 1e-3);
  EXPECT_EQ(cascading->stats().resident_tokens, 10);
  EXPECT_LT(cascading->stats().resident_bytes, full.stats().resident_bytes / 4);
}

// Past the budget TokenSelect attends n_init + k + n_local + the chunk per
// query; theta = 1 reselects every chunk, theta = -1 reuses the first
// selection of each layer.
TEST(CachePolicyTest, TokenSelectAttendsItsBudgetAndHonoursTheta) {
  Fixture f;
  const std::vector<int32_t> tokens = Tokens(90, 4);
  for (const float theta : {1.0f, -1.0f}) {
    TokenSelectOptions o;
    o.n_init = 2;
    o.k = 8;
    o.n_local = 6;
    o.theta = theta;
    auto policy = *TokenSelectPolicy::Create(SmallConfig(), o);
    f.Run(*policy, tokens, 40);  // 40-token prompt in chunks of 16, then 50 decode steps
    EXPECT_EQ(policy->stats().attended_last_step, 2 * (16 + 1));
    // Chunks with more than the budget (16 tokens) before them: the third
    // prompt chunk (at 32), then 50 decode steps; per layer.
    const int64_t chunks = 2 * (1 + 50);
    if (theta == 1.0f) {
      EXPECT_EQ(policy->selections(), chunks);
      EXPECT_EQ(policy->cache_hits(), 0);
    } else {
      EXPECT_EQ(policy->selections(), 2);
      EXPECT_EQ(policy->cache_hits(), chunks - 2);
    }
    EXPECT_EQ(policy->stats().resident_tokens, 90);
  }
}

TEST(CachePolicyTest, FactoryErrorsNameTheProblem) {
  const model::ModelConfig c = SmallConfig();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"nope", "unknown policy \"nope\""},
      {"full:window=3", "unknown key \"window\""},
      {"streaming:window=abc", "window=abc is not an integer"},
      {"cascading:subcaches=3,window=8", "multiple of the 3 sub-caches"},
      {"cascading:beta=1.5", "beta 1.5"},
      {"full:kv=f64", "kv=f64 is not one of f32|bf16|f16"},
      {"streaming:window", "is not key=value"},
      {"streaming:sinks=1,sinks=2", "sinks given twice"},
      {"tokenselect:pool=2", "pool kernel 2"},
      {"tokenselect:k=0", "k 0 >= 1"},
      {"h2o:reduce=mean", "reduce=mean is not one of sum|max"},
      {"h2o:heavy=-1", "heavy -1 and recent"},
      {"h2o:budget=64,positions=cache", "positions=cache is not one of original|compact"},
      {"h2o:window=8", "unknown key \"window\""},
      {"snapkv:kernel=4", "pool kernel 4"},
      {"snapkv:budget=32,window=40", "window 40 not in [1, budget 32]"},
      {"snapkv:recent=8", "unknown key \"recent\""},
  };
  for (const auto& [spec, want] : cases) {
    auto p = MakePolicy(c, spec);
    ASSERT_FALSE(p.ok()) << spec;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << spec;
    EXPECT_NE(p.status().message().find(want), std::string::npos) << spec << ": " << p.status();
  }
}

}  // namespace
}  // namespace kvc::cache
