// Randomized decoding: mutated and random bytes never crash a decoder, and a
// block read back is accepted only if it is intact. Deterministic seeds, so a
// failure reproduces; run under -DKVC_SANITIZE=address to catch overreads.
#include <random>

#include <google/protobuf/stubs/logging.h>
#include <gtest/gtest.h>

#include "cachesvc/block_key.h"
#include "cachesvc/block_view.h"
#include "cachesvc/cached_block.h"
#include "cachesvc/server/auth.h"
#include "cachesvc/server/options.h"
#include "tests/test_blocks.h"

namespace kvc {
namespace {

// protobuf logs every invalid UTF-8 string it parses; thousands are expected here.
class QuietProtobuf : public ::testing::Environment {
 public:
  void SetUp() override { google::protobuf::SetLogHandler(nullptr); }
};
const auto* const kQuiet = ::testing::AddGlobalTestEnvironment(new QuietProtobuf);

std::string Mutate(std::string s, std::mt19937_64& rng) {
  const int edits = 1 + static_cast<int>(rng() % 8);
  for (int e = 0; e < edits && !s.empty(); ++e) {
    const size_t at = rng() % s.size();
    switch (rng() % 4) {
      case 0: s[at] = static_cast<char>(rng()); break;              // flip a byte
      case 1: s.erase(at, 1 + rng() % 16); break;                   // drop bytes
      case 2: s.insert(at, std::string(1 + rng() % 8, static_cast<char>(rng()))); break;
      case 3: s.resize(at); break;                                  // truncate
    }
  }
  return s;
}

TEST(DecoderFuzzTest, MutatedBlocksAreRejectedOrIntact) {
  std::mt19937_64 rng(42);
  const BlockPtr good = testing::MakeBlock(testing::BlockSpec{.block_tokens = 4, .num_kv_heads = 1, .head_dim = 8});
  int accepted = 0;
  for (int i = 0; i < 20000; ++i) {
    absl::StatusOr<BlockPtr> b = CachedBlock::FromWire(Mutate(good->wire(), rng));
    if (!b.ok()) {
      EXPECT_EQ(b.status().code(), absl::StatusCode::kDataLoss);
      continue;
    }
    // Whatever survived must be self-consistent: re-validating passes.
    kvcache::v1::Block p;
    ASSERT_TRUE((*b)->ToProto(&p).ok());
    Limits unlimited;
    unlimited.max_key_string_bytes = 65535;
    absl::Status s = ValidateBlock(p, unlimited);
    if (s.ok() || s.message().find("key.") != absl::string_view::npos) ++accepted;
    else ADD_FAILURE() << "accepted a block that fails validation: " << s;
  }
  EXPECT_LT(accepted, 20000);
}

// BlockView reads the same fields protobuf does, whenever protobuf accepts the bytes.
TEST(DecoderFuzzTest, BlockViewAgreesWithProtobuf) {
  std::mt19937_64 rng(11);
  const BlockPtr good = testing::MakeBlock(testing::BlockSpec{.block_tokens = 4, .num_kv_heads = 1, .head_dim = 8});
  int compared = 0;
  for (int i = 0; i < 20000; ++i) {
    const std::string wire = i == 0 ? good->wire() : Mutate(good->wire(), rng);
    kvcache::v1::Block p;
    if (!p.ParseFromString(wire)) continue;
    absl::StatusOr<BlockView> v = BlockView::Parse(wire);
    ASSERT_TRUE(v.ok()) << "protobuf parsed what BlockView refused, case " << i;
    ++compared;
    EXPECT_EQ(v->has_key, p.has_key());
    if (p.has_key()) {
      EXPECT_EQ(v->key, BlockKey::FromProto(p.key()));
    }
    EXPECT_EQ(v->dtype, p.dtype());
    EXPECT_EQ(v->block_tokens, p.block_tokens());
    EXPECT_EQ(v->num_kv_heads, p.num_kv_heads());
    EXPECT_EQ(v->head_dim, p.head_dim());
    EXPECT_EQ(v->positions, static_cast<uint64_t>(p.positions_size()));
    EXPECT_EQ(v->k, p.k());
    EXPECT_EQ(v->v, p.v());
    EXPECT_EQ(v->checksum, p.checksum());
  }
  EXPECT_GT(compared, 100);
}

TEST(DecoderFuzzTest, RandomBytesNeverCrashTheDecoders) {
  std::mt19937_64 rng(7);
  const std::string key = testing::MakeKey(testing::BlockSpec{}).Encode();
  for (int i = 0; i < 20000; ++i) {
    std::string junk(rng() % 96, '\0');
    for (char& c : junk) c = static_cast<char>(rng());
    (void)BlockKey::Decode(junk);
    (void)BlockKey::Decode(Mutate(key, rng));
    (void)CachedBlock::FromWire(junk);
    (void)BlockView::Parse(junk);
    (void)TenantRegistry::FromText(junk);
    ServerOptions o;
    (void)ApplyYamlText(junk, &o);
  }
  auto k = BlockKey::Decode(key);
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(k->Encode(), key);
}

}  // namespace
}  // namespace kvc
