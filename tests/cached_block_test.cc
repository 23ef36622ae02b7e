#include "cachesvc/cached_block.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/test_blocks.h"

namespace kvc {
namespace {

using ::testing::HasSubstr;
using testing::BlockSpec;
using testing::MakeBlockProto;

TEST(BlockKeyTest, EncodeDecodeRoundTrips) {
  BlockKey k = testing::MakeKey(BlockSpec{.tenant = "acme", .model = "llama", .layer = 31, .seed = 7});
  auto d = BlockKey::Decode(k.Encode());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, k);
  EXPECT_FALSE(BlockKey::Decode("garbage").ok());
  EXPECT_FALSE(BlockKey::Decode(k.Encode() + "x").ok());
}

TEST(ChainHashTest, EqualPrefixesGiveEqualChains) {
  const int32_t a[] = {1, 2, 3}, b[] = {1, 2, 4};
  EXPECT_EQ(ChainHash({}, a), ChainHash({}, a));
  EXPECT_NE(ChainHash({}, a), ChainHash({}, b));
  EXPECT_NE(ChainHash(ChainHash({}, a), a), ChainHash({}, a));
}

TEST(CachedBlockTest, ValidBlockRoundTripsThroughWire) {
  auto p = MakeBlockProto(BlockSpec{});
  auto b = CachedBlock::FromProto(p, Limits{});
  ASSERT_TRUE(b.ok()) << b.status();
  auto back = CachedBlock::FromWire((*b)->wire());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ((*back)->key(), (*b)->key());
  EXPECT_EQ((*back)->checksum(), p.checksum());
}

TEST(CachedBlockTest, ShapeMismatchIsNamed) {
  auto p = MakeBlockProto(BlockSpec{});
  p.set_head_dim(9);
  auto b = CachedBlock::FromProto(p, Limits{});
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(b.status().message(), HasSubstr("does not match shape"));
}

TEST(CachedBlockTest, UnknownDtypeIsRefused) {
  auto p = MakeBlockProto(BlockSpec{});
  p.set_dtype(static_cast<kvcache::v1::DType>(42));
  EXPECT_THAT(CachedBlock::FromProto(p, Limits{}).status().message(), HasSubstr("dtype 42"));
}

TEST(CachedBlockTest, OversizedBlockIsResourceExhausted) {
  auto p = MakeBlockProto(BlockSpec{});
  Limits l;
  l.max_block_bytes = 100;
  auto b = CachedBlock::FromProto(p, l);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(b.status().message(), HasSubstr("max_block_bytes"));
}

TEST(CachedBlockTest, BadChecksumIsRefused) {
  auto p = MakeBlockProto(BlockSpec{});
  p.set_checksum(p.checksum() ^ 1);
  EXPECT_THAT(CachedBlock::FromProto(p, Limits{}).status().message(), HasSubstr("checksum"));
}

TEST(CachedBlockTest, CorruptWireIsDataLoss) {
  auto b = testing::MakeBlock(BlockSpec{});
  std::string wire = b->wire();
  wire[wire.size() / 2] ^= 0x5a;
  EXPECT_EQ(CachedBlock::FromWire(wire).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(CachedBlock::FromWire("\xff\xff\xff").status().code(), absl::StatusCode::kDataLoss);
}

TEST(CachedBlockTest, KeyStringsAreChecked) {
  auto p = MakeBlockProto(BlockSpec{});
  p.mutable_key()->set_tenant("");
  EXPECT_THAT(CachedBlock::FromProto(p, Limits{}).status().message(), HasSubstr("tenant is empty"));
  p = MakeBlockProto(BlockSpec{});
  p.mutable_key()->set_model(std::string(500, 'm'));
  EXPECT_THAT(CachedBlock::FromProto(p, Limits{}).status().message(), HasSubstr("max_key_string_bytes"));
}

}  // namespace
}  // namespace kvc
