// The runtime on the real stories15M checkpoint (fetched by
// scripts/setup.sh): it agrees with the independent fp64 statement of the
// model (tests/naive_llama.h) on a prompt; its greedy continuations and the
// perplexity of a fixed text under full attention are pinned; the bf16
// weight path stays close; and the policies with a covering budget equal
// full attention on the real model.
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/kernel_test_util.h"
#include "tests/naive_llama.h"
#include "worker/cache/full_attention.h"
#include "worker/cache/policy_factory.h"
#include "worker/eval/perplexity.h"
#include "worker/model/checkpoint.h"
#include "worker/model/sampler.h"
#include "worker/model/tokenizer.h"
#include "worker/model/transformer.h"

namespace kvc::model {
namespace {

using kernels::testing::RelErrorByNorm;

constexpr char kSetupHint[] = "the stories15M files come from scripts/setup.sh: run it first";

// Greedy continuations under full attention. The first is the well-known
// output of llama2.c's run.c for stories15M at temperature 0.
constexpr char kOnceUponATime[] =
    ", there was a little girl named Lily. She loved to play outside in the sunshine. One day, she saw a big, "
    "red ball in the sky. It was the sun!";
constexpr char kPark[] =
    " They liked to play on the swings and the slide. They also liked to look for bugs and flowers.\nOne day, "
    "they saw a big";
constexpr double kStoryPerplexity = 2.12005;  // full attention, stride 7

struct Stories {
  std::unique_ptr<Checkpoint> ckpt;
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<Transformer> model;
};

Stories Load(kernels::DType weights = kernels::DType::kF32) {
  Stories s;
  auto ckpt = Checkpoint::Load(absl::StrCat(KVC_MODEL_DIR, "/model.bin"));
  EXPECT_TRUE(ckpt.ok()) << ckpt.status() << "; " << kSetupHint;
  if (!ckpt.ok()) return s;
  s.ckpt = std::move(*ckpt);
  auto tok = Tokenizer::Load(absl::StrCat(KVC_MODEL_DIR, "/tokenizer.bin"), s.ckpt->config().vocab_size);
  EXPECT_TRUE(tok.ok()) << tok.status() << "; " << kSetupHint;
  if (!tok.ok()) return s;
  s.tok = std::make_unique<Tokenizer>(std::move(*tok));
  TransformerOptions o;
  o.weights = weights;
  s.model = *Transformer::Create(s.ckpt.get(), o);
  return s;
}

std::string Greedy(Stories& s, const std::string& prompt, int steps, const std::string& policy_spec = "full") {
  auto policy = *cache::MakePolicy(s.ckpt->config(), policy_spec);
  const std::vector<int32_t> ids = s.tok->Encode(prompt, true, false);
  std::vector<float> logits(s.ckpt->config().vocab_size);
  EXPECT_TRUE(s.model->Forward(ids, 0, *policy, logits.data()).ok());
  std::string out;
  int32_t prev = ids.back();
  for (int i = 0; i < steps; ++i) {
    const int32_t next = ArgMax(logits);
    out += s.tok->Decode(prev, next);
    prev = next;
    EXPECT_TRUE(s.model->Forward(absl::MakeConstSpan(&next, 1), ids.size() + i, *policy, logits.data()).ok());
  }
  return out;
}

TEST(ModelTest, ConfigIsStories15M) {
  Stories s = Load();
  ASSERT_NE(s.model, nullptr);
  EXPECT_EQ(s.ckpt->config().ToString(), "dim=288 hidden=768 layers=6 heads=6 kv_heads=6 vocab=32000 seq_len=256 shared-classifier");
}

TEST(ModelTest, AgreesWithIndependentStatement) {
  Stories s = Load();
  ASSERT_NE(s.model, nullptr);
  const std::vector<int32_t> ids = s.tok->Encode("Once upon a time, there was a little dog named Max.", true, false);
  testing::NaiveLlama naive(*s.ckpt);
  std::vector<float> want;
  for (int32_t t : ids) {
    const std::vector<float> l = naive.Step(t);
    want.insert(want.end(), l.begin(), l.end());
  }
  cache::FullAttention full(s.ckpt->config(), kernels::DType::kF32);
  std::vector<float> got(want.size());
  ASSERT_TRUE(s.model->Forward(ids, 0, full, got.data(), true).ok());
  // fp32 against fp64 over 6 layers: ~1e-6 by norm measured.
  EXPECT_LE(RelErrorByNorm(got, want), 1e-5);
}

TEST(ModelTest, GreedyContinuationsArePinned) {
  Stories s = Load();
  ASSERT_NE(s.model, nullptr);
  EXPECT_EQ(Greedy(s, "Once upon a time", 40), kOnceUponATime);
  EXPECT_EQ(Greedy(s, "Tom and his sister went to the park.", 30), kPark);
}

TEST(ModelTest, PerplexityOfAFixedTextIsPinned) {
  Stories s = Load();
  ASSERT_NE(s.model, nullptr);
  const std::vector<int32_t> ids = s.tok->Encode(
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun. One day, "
      "she saw a big red ball in the park. She ran to get it, but a boy took it first. Lily was sad. The boy "
      "saw that she was sad, so he gave her the ball. Lily smiled and said thank you. They played together "
      "all day and became good friends.",
      true, false);
  cache::FullAttention full(s.ckpt->config(), kernels::DType::kF32);
  eval::PerplexityOptions o;
  o.stride = 7;
  auto r = eval::StreamingPerplexity(*s.model, full, ids, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NEAR(r->perplexity, kStoryPerplexity, 1e-3);
}

TEST(ModelTest, Bf16WeightsStayClose) {
  Stories f32 = Load(), bf16 = Load(kernels::DType::kBF16);
  ASSERT_NE(bf16.model, nullptr);
  const std::vector<int32_t> ids = f32.tok->Encode("Once upon a time, there was a little dog named Max.", true, false);
  std::vector<float> want(ids.size() * 32000), got(want.size());
  cache::FullAttention a(f32.ckpt->config(), kernels::DType::kF32), b(f32.ckpt->config(), kernels::DType::kBF16);
  ASSERT_TRUE(f32.model->Forward(ids, 0, a, want.data(), true).ok());
  ASSERT_TRUE(bf16.model->Forward(ids, 0, b, got.data(), true).ok());
  EXPECT_LE(RelErrorByNorm(got, want), 1e-2);  // 2.1e-3 measured
  EXPECT_EQ(Greedy(bf16, "Once upon a time", 40), kOnceUponATime);
}

TEST(ModelTest, CoveringBudgetsEqualFullAttentionOnTheRealModel) {
  Stories s = Load();
  ASSERT_NE(s.model, nullptr);
  const std::string want = Greedy(s, "Once upon a time", 60);
  for (const std::string spec : {"streaming:sinks=4,window=252", "cascading:sinks=4,subcaches=4,window=252",
                                 "tokenselect:init=4,k=200,local=64", "h2o:heavy=128,recent=128",
                                 "snapkv:budget=256", "less:inner=cascading,sinks=4,subcaches=4,window=252",
                                 "refreshkv:budget=256", "refreshkv:budget=16,mode=fixed,stride=1,positions=compact",
                                 "combined:sinks=4,subcaches=4,window=252,map=exp",
                                 "combined:budget=32,refresh=fixed,stride=1"}) {
    EXPECT_EQ(Greedy(s, "Once upon a time", 60, spec), want) << spec;
  }
}

// Full attention is exact, so how a long input is chunked must not change
// its logits beyond fp32 reassociation, also past the trained 256
// positions where the model's outputs are meaningless: 600 tokens read in
// passes of 600, 256, 64 and 7 tokens, every position compared.
TEST(ModelTest, ChunkingDoesNotChangeFullAttention) {
  Stories s = Load();
  ASSERT_NE(s.model, nullptr);
  std::vector<int32_t> tokens;
  while (tokens.size() < 600) {
    const std::vector<int32_t> t = s.tok->Encode("Once upon a time, there was a little girl named Lily. She liked to "
                                                 "play in the park with her dog. ", tokens.empty(), false);
    tokens.insert(tokens.end(), t.begin(), t.end());
  }
  tokens.resize(600);
  const int32_t vocab = s.ckpt->config().vocab_size;
  auto run = [&](int64_t stride) {
    cache::FullAttention full(s.ckpt->config(), kernels::DType::kF32);
    std::vector<float> logits(tokens.size() * vocab);
    for (size_t b = 0; b < tokens.size(); b += stride) {
      const size_t n = std::min<size_t>(stride, tokens.size() - b);
      EXPECT_TRUE(s.model->Forward(absl::MakeConstSpan(tokens).subspan(b, n), b, full, logits.data() + b * vocab,
                                   true).ok());
    }
    return logits;
  };
  const std::vector<float> want = run(600);
  for (const int64_t stride : {256, 64, 7}) {
    const std::vector<float> got = run(stride);
    double worst = 0;
    int64_t at = -1;
    for (size_t t = 0; t < tokens.size(); ++t) {
      const std::vector<float> a(got.begin() + t * vocab, got.begin() + (t + 1) * vocab),
          b(want.begin() + t * vocab, want.begin() + (t + 1) * vocab);
      const double e = RelErrorByNorm(a, b);
      if (e > worst) worst = e, at = static_cast<int64_t>(t);
    }
    EXPECT_LT(worst, 1e-4) << "stride " << stride << ": worst at position " << at;
  }
}

}  // namespace
}  // namespace kvc::model
