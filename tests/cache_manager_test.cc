// The cache manager: sequences share one byte budget; a chunk that does not
// fit is refused before anything is allocated, naming the sequence and the
// numbers, and neither that sequence nor the others lose anything.
#include "worker/cache/cache_manager.h"

#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "tests/model_test_util.h"
#include "worker/model/checkpoint.h"
#include "worker/model/transformer.h"

namespace kvc::cache {
namespace {

model::ModelConfig SmallConfig() {
  return testing::ModelShape(64, 96, 2, 4, 2, 50);
}

// Per token, full attention with f32 KV holds 2 layers x (k + v) x 2 heads
// x 16 dims x 4 bytes = 512 bytes.
constexpr size_t kFullTokenBytes = 512;

TEST(CacheManagerTest, SequencesShareTheBudgetAndOverflowIsRefused) {
  auto ckpt = *model::Checkpoint::Random(SmallConfig(), 3, 0.2f);
  model::TransformerOptions o;
  o.max_chunk = 8;
  auto model = *model::Transformer::Create(ckpt.get(), o);
  CacheManager manager(SmallConfig(), 40 * kFullTokenBytes);
  model::AttentionCache* a = *manager.Open(1, "full");
  model::AttentionCache* b = *manager.Open(2, "streaming:sinks=2,window=6");
  EXPECT_EQ(manager.Open(1, "full").status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(manager.Open(3, "nope").status().code(), absl::StatusCode::kInvalidArgument);

  std::vector<int32_t> tokens(24, 7);
  std::vector<float> logits(SmallConfig().vocab_size);
  ASSERT_TRUE(model->Forward(tokens, 0, *a, logits.data()).ok());
  EXPECT_EQ(manager.used_bytes(), 24 * kFullTokenBytes);
  // The streaming sequence holds at most 8 tokens, whatever it reads.
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(model->Forward(tokens, i * 24, *b, logits.data()).ok());
  const size_t b_bytes = manager.policy(2)->stats().resident_bytes;
  EXPECT_EQ(manager.used_bytes(), 24 * kFullTokenBytes + b_bytes);

  // 16 more tokens for the full sequence do not fit: refused, nothing changed.
  const std::vector<int32_t> more(16, 9);
  const absl::Status s = model->Forward(more, 24, *a, logits.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("sequence 1"), std::string::npos) << s;
  EXPECT_EQ(manager.policy(1)->stats().tokens_seen, 24);
  EXPECT_EQ(manager.used_bytes(), 24 * kFullTokenBytes + b_bytes);
  // A smaller chunk still fits, and the sequence goes on where it was.
  ASSERT_TRUE(model->Forward(absl::MakeConstSpan(more).first(4), 24, *a, logits.data()).ok());
  EXPECT_EQ(manager.policy(1)->stats().tokens_seen, 28);

  // Closing frees the share.
  ASSERT_TRUE(manager.Close(1).ok());
  EXPECT_EQ(manager.used_bytes(), b_bytes);
  EXPECT_EQ(manager.Close(1).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager.policy(1), nullptr);
}

}  // namespace
}  // namespace kvc::cache
