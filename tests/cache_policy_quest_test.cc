// The Quest policy (worker/cache/quest.h):
//  - a budget that covers the context equals full attention exactly (same
//    kernels on the same keys), in the runtime on a random model and on
//    stories15M;
//  - driven through Attend with random q, k, v on a one-layer GQA shape,
//    every decode step attends exactly the pages a brute-force statement of
//    Quest picks (page min / max of the rotated keys in double, bound per
//    query head, group max, top pages with the lower index winning ties,
//    plus the last page), and its output equals attention over those tokens
//    computed here in double;
//  - the factory parses quest specs and names what is wrong with bad ones.
//
// Tolerances: outputs 1e-5 by norm (fp32 kernels against fp64 over a few
// dozen keys). Exact page sets assume no two candidate pages' bounds are
// within fp32 rounding of each other, which holds for these seeds.
#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/ref/ref_util.h"
#include "tests/kernel_test_util.h"
#include "tests/model_test_util.h"
#include "worker/cache/full_attention.h"
#include "worker/cache/policy_factory.h"
#include "worker/cache/quest.h"
#include "worker/model/checkpoint.h"
#include "worker/model/transformer.h"

namespace kvc::cache {
namespace {

using kernels::testing::RandomFloats;
using kernels::testing::RelErrorByNorm;

// ---- In the runtime ----------------------------------------------------------

model::ModelConfig SmallConfig() {
  return testing::ModelShape(64, 96, 2, 4, 2, 50);
}

// Prefill of `prompt` tokens then one-token decode steps; the logits of
// every step, concatenated.
std::vector<float> RunSteps(model::Transformer& model, int32_t vocab, CachePolicy& policy,
                       const std::vector<int32_t>& tokens, int64_t prompt) {
  std::vector<float> all(vocab), logits(vocab);
  EXPECT_TRUE(model.Forward(absl::MakeConstSpan(tokens).first(prompt), 0, policy, all.data()).ok());
  for (size_t t = prompt; t < tokens.size(); ++t) {
    const absl::Status s = model.Forward(absl::MakeConstSpan(&tokens[t], 1), t, policy, logits.data());
    EXPECT_TRUE(s.ok()) << s;
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

using testing::RandomTokens;

std::unique_ptr<CachePolicy> Make(const model::ModelConfig& config, const std::string& spec) {
  auto p = MakePolicy(config, spec);
  EXPECT_TRUE(p.ok()) << spec << ": " << p.status();
  return p.ok() ? std::move(*p) : nullptr;
}

// Covering budgets on `ckpt`: logits equal full attention's bit for bit,
// the same work is counted, and the metadata is charged beside the KV.
void ExpectCoveringBudgetsEqualFull(const model::Checkpoint& ckpt, int n, int64_t prompt,
                                    const std::vector<std::string>& specs) {
  model::TransformerOptions o;
  o.max_chunk = 16;
  auto model = model::Transformer::Create(&ckpt, o);
  ASSERT_TRUE(model.ok()) << model.status();
  const model::ModelConfig& c = ckpt.config();
  const std::vector<int32_t> tokens = RandomTokens(n, c.vocab_size, 3);
  FullAttention full(c, kernels::DType::kF32);
  const std::vector<float> want = RunSteps(**model, c.vocab_size, full, tokens, prompt);
  for (const std::string& spec : specs) {
    SCOPED_TRACE(spec);
    auto policy = Make(c, spec);
    ASSERT_NE(policy, nullptr);
    EXPECT_EQ(RunSteps(**model, c.vocab_size, *policy, tokens, prompt), want);
    const PolicyStats s = policy->stats();
    EXPECT_EQ(s.tokens_seen, n);
    EXPECT_EQ(s.resident_tokens, n);
    EXPECT_EQ(s.attended_total, full.stats().attended_total);
    EXPECT_EQ(s.attended_last_step, full.stats().attended_last_step);
    EXPECT_GT(s.resident_bytes, full.stats().resident_bytes);  // + page metadata
  }
}

TEST(QuestPolicyTest, CoveringBudgetEqualsFullAttentionExactly) {
  auto ckpt = model::Checkpoint::Random(SmallConfig(), 21, 0.2f);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  // 60 tokens: 4 pages of 16, 8 of 8 (budget 64 covers them).
  ExpectCoveringBudgetsEqualFull(**ckpt, 60, 40,
                                 {"quest:budget=64", "quest:page=8,budget=64", "quest:budget=70,positions=compact",
                                  "quest:page=16,budget=256,kv=f32"});
}

TEST(QuestPolicyTest, CoveringBudgetEqualsFullAttentionOnStories15M) {
  auto ckpt = model::Checkpoint::Load(absl::StrCat(KVC_MODEL_DIR, "/model.bin"));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status() << "; the stories15M files come from scripts/setup.sh";
  ExpectCoveringBudgetsEqualFull(**ckpt, 72, 50, {"quest:budget=80", "quest:page=4,budget=72"});
}

TEST(QuestPolicyTest, SmallBudgetAttendsItsPagesAndDiffers) {
  auto ckpt = model::Checkpoint::Random(SmallConfig(), 21, 0.2f);
  ASSERT_TRUE(ckpt.ok());
  auto model = model::Transformer::Create(ckpt->get(), model::TransformerOptions{});
  ASSERT_TRUE(model.ok());
  const std::vector<int32_t> tokens = RandomTokens(60, 50, 4);
  FullAttention full(SmallConfig(), kernels::DType::kF32);
  const std::vector<float> want = RunSteps(**model, 50, full, tokens, 40);
  auto policy = Make(SmallConfig(), "quest:page=8,budget=24");
  ASSERT_NE(policy, nullptr);
  EXPECT_GT(RelErrorByNorm(RunSteps(**model, 50, *policy, tokens, 40), want), 1e-4);
  // The last step (token 59, pages of 8: the last holds 56..59): two
  // selected pages of 8 and the last page's 4 tokens, per layer.
  EXPECT_EQ(policy->stats().attended_last_step, 2 * (2 * 8 + 4));
  EXPECT_EQ(policy->stats().resident_tokens, 60);
}

// ---- Against brute force ---------------------------------------------------------

constexpr int32_t kHq = 4, kHkv = 2, kD = 16, kGroup = kHq / kHkv;

model::ModelConfig OneLayer() {
  model::ModelConfig c = SmallConfig();
  c.n_layers = 1;
  return c;
}

// Brute-force Quest for the query `q` ([Hq][D], at position t) over keys
// [0, t] (keys: [t + 1][Hkv][D]): per KV head, the picked pages then the
// last, ascending.
std::vector<std::vector<int32_t>> BruteForcePages(const std::vector<float>& keys, const float* q, int64_t t,
                                                  int64_t page, int64_t budget_pages) {
  const kernels::Rope rope{kernels::RopeStyle::kInterleaved, 10000.0f};
  const int64_t pages = (t + 1 + page - 1) / page, last = pages - 1;
  std::vector<std::vector<int32_t>> out(kHkv);
  for (int32_t h = 0; h < kHkv; ++h) {
    if (pages <= budget_pages) continue;  // everything attended
    std::vector<double> bound(last, -INFINITY);
    for (int64_t p = 0; p < last; ++p) {
      std::vector<double> lo(kD, INFINITY), hi(kD, -INFINITY), rk(kD);
      for (int64_t s = p * page; s < (p + 1) * page; ++s) {
        kernels::ref::ApplyRope(rope, static_cast<int32_t>(s), kD, &keys[(s * kHkv + h) * kD], rk.data());
        for (int32_t d = 0; d < kD; ++d) {
          lo[d] = std::min(lo[d], static_cast<double>(static_cast<float>(rk[d])));
          hi[d] = std::max(hi[d], static_cast<double>(static_cast<float>(rk[d])));
        }
      }
      for (int32_t g = 0; g < kGroup; ++g) {
        std::vector<double> rq(kD);
        kernels::ref::ApplyRope(rope, static_cast<int32_t>(t), kD, q + (h * kGroup + g) * kD, rq.data());
        double b = 0;
        for (int32_t d = 0; d < kD; ++d) b += std::max(rq[d] * lo[d], rq[d] * hi[d]);
        bound[p] = std::max(bound[p], b);
      }
    }
    std::vector<int32_t> order(last);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return bound[a] > bound[b]; });
    order.resize(budget_pages - 1);
    std::sort(order.begin(), order.end());
    order.push_back(static_cast<int32_t>(last));
    out[h] = order;
  }
  return out;
}

// Attention of one query ([Hq][D] at position t) over the tokens of `pages`
// per KV head (all of [0, t] when empty), in double. Keys and the query at
// original positions, or compact ones.
std::vector<float> RefAttend(const std::vector<float>& keys, const std::vector<float>& values, const float* q,
                             int64_t t, int64_t page, const std::vector<std::vector<int32_t>>& pages,
                             bool compact) {
  const kernels::Rope rope{kernels::RopeStyle::kInterleaved, 10000.0f};
  std::vector<float> out(kHq * kD);
  for (int32_t h = 0; h < kHkv; ++h) {
    std::vector<int64_t> tokens;
    if (pages[h].empty()) {
      for (int64_t s = 0; s <= t; ++s) tokens.push_back(s);
    } else {
      for (int32_t p : pages[h]) {
        for (int64_t s = p * page; s < std::min<int64_t>((p + 1) * page, t + 1); ++s) tokens.push_back(s);
      }
    }
    const int64_t m = static_cast<int64_t>(tokens.size());
    for (int32_t g = 0; g < kGroup; ++g) {
      const int32_t qh = h * kGroup + g;
      std::vector<double> rq(kD), logit(m);
      kernels::ref::ApplyRope(rope, static_cast<int32_t>(compact ? m - 1 : t), kD, q + qh * kD, rq.data());
      double top = -INFINITY, sum = 0;
      for (int64_t j = 0; j < m; ++j) {
        std::vector<double> rk(kD);
        kernels::ref::ApplyRope(rope, static_cast<int32_t>(compact ? j : tokens[j]), kD,
                                &keys[(tokens[j] * kHkv + h) * kD], rk.data());
        logit[j] = std::inner_product(rq.begin(), rq.end(), rk.begin(), 0.0) / std::sqrt(double{kD});
        top = std::max(top, logit[j]);
      }
      for (int64_t j = 0; j < m; ++j) sum += std::exp(logit[j] - top);
      for (int32_t d = 0; d < kD; ++d) {
        double o = 0;
        for (int64_t j = 0; j < m; ++j) o += std::exp(logit[j] - top) / sum * values[(tokens[j] * kHkv + h) * kD + d];
        out[qh * kD + d] = static_cast<float>(o);
      }
    }
  }
  return out;
}

TEST(QuestPolicyTest, DecodeAttendsTheBruteForceSelection) {
  for (const bool compact : {false, true}) {
    for (const auto& [page, budget] : std::vector<std::pair<int32_t, int32_t>>{{8, 48}, {16, 40}, {5, 5}}) {
      SCOPED_TRACE(absl::StrCat("page ", page, " budget ", budget, compact ? " compact" : ""));
      QuestOptions o;
      o.page_size = page;
      o.budget = budget;
      o.compact_positions = compact;
      auto policy = Quest::Create(OneLayer(), o);
      ASSERT_TRUE(policy.ok()) << policy.status();
      constexpr int64_t kPrompt = 37, kTotal = 150;
      const std::vector<float> keys = RandomFloats(kTotal * kHkv * kD, 11);
      const std::vector<float> values = RandomFloats(kTotal * kHkv * kD, 12);
      const std::vector<float> queries = RandomFloats(kTotal * kHq * kD, 13, 2.0f);
      std::vector<float> out(kPrompt * kHq * kD);
      // Prefill: dense.
      model::AttendArgs a{0, kPrompt, 0, queries.data(), keys.data(), values.data(), out.data()};
      ASSERT_TRUE((*policy)->Attend(kernels::ExecContext{}, a).ok());
      for (int32_t h = 0; h < kHkv; ++h) EXPECT_TRUE((*policy)->selected_pages(0, h).empty());
      int selective_steps = 0;
      for (int64_t t = kPrompt; t < kTotal; ++t) {
        SCOPED_TRACE(absl::StrCat("step ", t));
        const float* q = &queries[t * kHq * kD];
        std::vector<float> got(kHq * kD);
        a = model::AttendArgs{0, 1, t, q, &keys[t * kHkv * kD], &values[t * kHkv * kD], got.data()};
        ASSERT_TRUE((*policy)->Attend(kernels::ExecContext{}, a).ok());
        const std::vector<std::vector<int32_t>> want = BruteForcePages(keys, q, t, page, o.budget_pages());
        int64_t attended = 0;
        for (int32_t h = 0; h < kHkv; ++h) {
          ASSERT_EQ((*policy)->selected_pages(0, h), want[h]) << "kv head " << h;
          attended = 0;
          for (int32_t p : want[h]) attended += std::min<int64_t>((p + 1) * page, t + 1) - p * page;
        }
        if (want[0].empty()) {
          attended = t + 1;
        } else {
          ++selective_steps;
          EXPECT_LE(attended, budget);
        }
        EXPECT_EQ((*policy)->stats().attended_last_step, attended);
        EXPECT_LE(RelErrorByNorm(got, RefAttend(keys, values, q, t, page, want, compact)), 1e-5);
      }
      EXPECT_GT(selective_steps, 90);
      const PolicyStats s = (*policy)->stats();
      EXPECT_EQ(s.resident_tokens, kTotal);
      const int64_t pages = (kTotal + page - 1) / page;
      EXPECT_EQ(s.resident_bytes, static_cast<size_t>(kTotal) * 2 * kHkv * kD * 4 + pages * 2 * kHkv * kD * 4);
    }
  }
}

// ---- Factory ---------------------------------------------------------------------

TEST(QuestPolicyTest, FactoryParsesSpecsAndNamesErrors) {
  const model::ModelConfig c = SmallConfig();
  auto made = MakePolicy(c, "quest:page=8,budget=64,positions=compact,kv=bf16");
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_EQ((*made)->name(), "quest(page=8,budget=64,compact)");
  made = MakePolicy(c, "quest");
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_EQ((*made)->name(), "quest(page=16,budget=256)");
  const std::vector<std::string> names = PolicyNames();
  EXPECT_NE(std::find(names.begin(), names.end(), "quest"), names.end());

  const std::vector<std::pair<std::string, std::string>> bad = {
      {"quest:budget=8", "budget 8 must be at least one page (16 tokens)"},
      {"quest:page=0", "page 0 must be >= 1"},
      {"quest:budget=lots", "budget=lots is not an integer"},
      {"quest:pages=4", "unknown key \"pages\""},
      {"quest:positions=cache", "positions=cache is not one of original|compact"},
      {"quest:kv=f64", "kv=f64"},
      {"quest:budget", "\"budget\" is not key=value"},
  };
  for (const auto& [spec, message] : bad) {
    const auto p = MakePolicy(c, spec);
    ASSERT_FALSE(p.ok()) << spec;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << spec;
    EXPECT_NE(p.status().message().find(message), absl::string_view::npos)
        << spec << ": " << p.status().message() << " should say " << message;
  }
}

}  // namespace
}  // namespace kvc::cache
