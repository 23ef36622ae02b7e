// The model runtime against an independent statement of the model
// (tests/naive_llama.h: one token at a time, fp64, its own RoPE and KV) on
// random models of several shapes, with full attention.
//
// Tolerance: the runtime computes in fp32 (fp32 FMA dot products of <= 96
// terms, fp32 softmax); logits of these small random models are O(1) and
// agree with the fp64 statement to ~1e-6 relative by norm; 1e-4 leaves
// ample margin while still catching any wrong index, RoPE pair or scale.
// bf16 weights round every weight to 8 bits of mantissa: 2e-2.
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "tests/kernel_test_util.h"
#include "tests/model_test_util.h"
#include "tests/naive_llama.h"
#include "worker/cache/full_attention.h"
#include "worker/model/checkpoint.h"
#include "worker/model/transformer.h"

namespace kvc::model {
namespace {

using kernels::testing::RelErrorByNorm;

using testing::ModelShape;

using testing::RandomTokens;

struct Runtime {
  std::unique_ptr<Checkpoint> ckpt;
  std::unique_ptr<Transformer> model;
};
Runtime Make(const ModelConfig& c, uint64_t seed, TransformerOptions options = {}) {
  Runtime r;
  r.ckpt = *Checkpoint::Random(c, seed, 0.2f);
  auto t = Transformer::Create(r.ckpt.get(), options);
  EXPECT_TRUE(t.ok()) << t.status();
  r.model = std::move(*t);
  return r;
}

std::vector<float> Naive(const Checkpoint& ckpt, const std::vector<int32_t>& tokens) {
  testing::NaiveLlama naive(ckpt);
  std::vector<float> all;
  for (int32_t t : tokens) {
    const std::vector<float> l = naive.Step(t);
    all.insert(all.end(), l.begin(), l.end());
  }
  return all;
}

TEST(TransformerTest, ChunkedPrefillMatchesIndependentModel) {
  // MHA, GQA 2 and GQA 3 (odd head counts), head dims 16, 48 and 24.
  for (const ModelConfig& c : {ModelShape(64, 96, 2, 4, 2, 50), ModelShape(288, 768, 1, 6, 6, 300),
                               ModelShape(72, 40, 3, 3, 1, 33)}) {
    SCOPED_TRACE(c.ToString());
    // Chunks of 1 run the fused decode GEMVs (wq|wk|wv, w1|w3); larger
    // ones the batch kernels, with and without packed weights.
    for (const int chunk : {1, 5, 64}) {
      for (const bool pack : {true, false}) {
        TransformerOptions o;
        o.max_chunk = chunk;
        o.pack_weights = pack;
        Runtime r = Make(c, 11, o);
        const std::vector<int32_t> tokens = RandomTokens(37, c.vocab_size, 3);
        cache::FullAttention cache(c, kernels::DType::kF32);
        std::vector<float> logits(tokens.size() * c.vocab_size);
        ASSERT_TRUE(r.model->Forward(tokens, 0, cache, logits.data(), /*all_logits=*/true).ok());
        EXPECT_LE(RelErrorByNorm(logits, Naive(*r.ckpt, tokens)), 1e-4) << "chunk " << chunk << " pack " << pack;
        EXPECT_EQ(cache.stats().tokens_seen, 37);
      }
    }
  }
}

TEST(TransformerTest, DecodeStepsAndBatchesMatchPrefill) {
  const ModelConfig c = ModelShape(64, 96, 2, 4, 2, 50);
  Runtime r = Make(c, 5);
  const std::vector<int32_t> a = RandomTokens(20, c.vocab_size, 1), b = RandomTokens(20, c.vocab_size, 2);
  const std::vector<float> want_a = Naive(*r.ckpt, a), want_b = Naive(*r.ckpt, b);
  // Prompt of 12 tokens each, then 8 batched decode steps of both sequences
  // at different positions (b starts 3 tokens later).
  cache::FullAttention ca(c, kernels::DType::kF32), cb(c, kernels::DType::kF32);
  std::vector<float> logits(2 * c.vocab_size);
  ASSERT_TRUE(r.model->Forward(absl::MakeConstSpan(a).first(12), 0, ca, logits.data()).ok());
  // No logits for the first part of b's prompt: the classifier is skipped.
  ASSERT_TRUE(r.model->Forward(absl::MakeConstSpan(b).first(9), 0, cb, nullptr).ok());
  ASSERT_TRUE(r.model->Forward(absl::MakeConstSpan(b).subspan(9, 3), 9, cb, logits.data()).ok());
  const std::vector<float> last_b(want_b.begin() + 11 * c.vocab_size, want_b.begin() + 12 * c.vocab_size);
  EXPECT_LE(RelErrorByNorm(absl::MakeConstSpan(logits).first(c.vocab_size), last_b), 1e-4);
  for (int step = 12; step < 20; ++step) {
    AttentionCache* caches[2] = {&ca, &cb};
    const int32_t tokens[2] = {a[step], b[step]};
    const int64_t positions[2] = {step, step};
    ASSERT_TRUE(r.model->DecodeBatch(tokens, positions, caches, logits.data()).ok());
    const auto row = [&](const std::vector<float>& w) {
      return std::vector<float>(w.begin() + step * c.vocab_size, w.begin() + (step + 1) * c.vocab_size);
    };
    EXPECT_LE(RelErrorByNorm(absl::MakeConstSpan(logits).first(c.vocab_size), row(want_a)), 1e-4) << step;
    EXPECT_LE(RelErrorByNorm(absl::MakeConstSpan(logits).subspan(c.vocab_size), row(want_b)), 1e-4) << step;
  }
}

TEST(TransformerTest, Bf16WeightsAndKvStayClose) {
  const ModelConfig c = ModelShape(64, 96, 2, 4, 2, 50);
  TransformerOptions o;
  o.weights = kernels::DType::kBF16;
  Runtime r = Make(c, 9, o);
  const std::vector<int32_t> tokens = RandomTokens(30, c.vocab_size, 4);
  cache::FullAttention cache(c, kernels::DType::kBF16);
  std::vector<float> logits(tokens.size() * c.vocab_size);
  ASSERT_TRUE(r.model->Forward(tokens, 0, cache, logits.data(), true).ok());
  EXPECT_LE(RelErrorByNorm(logits, Naive(*r.ckpt, tokens)), 2e-2);
}

TEST(TransformerTest, BadInputsAreErrors) {
  const ModelConfig c = ModelShape(64, 96, 2, 4, 2, 50);
  Runtime r = Make(c, 1);
  cache::FullAttention cache(c, kernels::DType::kF32);
  std::vector<float> logits(c.vocab_size);
  const std::vector<int32_t> bad = {1, 50};
  absl::Status s = r.model->Forward(bad, 0, cache, logits.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("token 1 is 50"), std::string::npos) << s;
  EXPECT_EQ(r.model->Forward({}, 0, cache, logits.data()).code(), absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> ok = {1, 2, 3};
  ASSERT_TRUE(r.model->Forward(ok, 0, cache, logits.data()).ok());
  // Full attention needs positions after the ones it holds.
  s = r.model->Forward(ok, 1, cache, logits.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  AttentionCache* same[2] = {&cache, &cache};
  const int32_t two[2] = {1, 2};
  const int64_t pos[2] = {3, 3};
  EXPECT_EQ(r.model->DecodeBatch(two, pos, same, logits.data()).code(), absl::StatusCode::kInvalidArgument);
  TransformerOptions cuda;
  cuda.ctx.backend = kernels::Backend::kCuda;
  EXPECT_FALSE(Transformer::Create(r.ckpt.get(), cuda).ok());
}

}  // namespace
}  // namespace kvc::model
