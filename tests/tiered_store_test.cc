// TieredStore: the composition of the host and RocksDB tiers.
#include "cachesvc/tiered_store.h"

#include <atomic>
#include <thread>

#include <gtest/gtest.h>

#include "tests/server_fixture.h"
#include "tests/test_blocks.h"

namespace kvc {
namespace {

using testing::MakeBlock;
using testing::SpecOfSize;

constexpr uint64_t kBlock = 64 << 10;  // k+v bytes of the test blocks

class TieredStoreTest : public ::testing::Test {
 protected:
  // A host tier of `host_blocks` test blocks over `shards` shards.
  std::unique_ptr<TieredStore> Open(uint64_t host_blocks, uint32_t shards = 1) {
    TieredStoreOptions o;
    o.clock = &clock_;
    o.host.capacity_bytes = host_blocks * MakeBlock(SpecOfSize(kBlock, 1))->charge() + 1024;
    o.host.num_shards = shards;
    o.disk.path = dir_.path() + "/rocksdb";
    o.disk.capacity_bytes = 1ull << 30;
    auto s = TieredStore::Open(std::move(o));
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }

  testing::TempDir dir_;
  FakeClock clock_;
};

TEST_F(TieredStoreTest, EvictedBlocksAreWrittenBackAndPromotedOnRead) {
  auto store = Open(4);
  for (uint64_t i = 0; i < 20; ++i) ASSERT_TRUE(store->Put(MakeBlock(SpecOfSize(kBlock, i)), false).ok());
  StoreStats s = store->Stats();
  EXPECT_EQ(s.host.blocks, 4u);
  EXPECT_EQ(s.writebacks, 16u);
  EXPECT_EQ(s.disk.blocks, 16u);
  const BlockKey first = testing::MakeKey(SpecOfSize(kBlock, 0));
  EXPECT_EQ(store->Locate(first), Tier::kDisk);
  auto got = store->Get(first);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->tier, Tier::kDisk);
  EXPECT_EQ(got->block->wire(), MakeBlock(SpecOfSize(kBlock, 0))->wire());
  EXPECT_EQ(store->Locate(first), Tier::kHost) << "a disk hit is promoted";
  EXPECT_EQ(store->Stats().disk.blocks, 17u) << "the promotion evicted one more block to disk";
  EXPECT_LE(store->Stats().host.bytes, store->Stats().host.budget_bytes);
}

TEST_F(TieredStoreTest, BlockTheHostRefusesGoesToDisk) {
  auto store = Open(1, 1);
  BlockPtr big = MakeBlock(SpecOfSize(4 * kBlock, 7));  // larger than the whole host tier
  ASSERT_TRUE(store->Put(big, false).ok());
  EXPECT_EQ(store->Locate(big->key()), Tier::kDisk);
  auto got = store->Get(big->key());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->block->wire(), big->wire());
}

TEST_F(TieredStoreTest, WriteThroughIsOnDiskBeforePutReturns) {
  auto store = Open(8);
  BlockPtr b = MakeBlock(SpecOfSize(kBlock, 3));
  ASSERT_TRUE(store->Put(b, true).ok());
  EXPECT_EQ(store->Stats().disk.blocks, 1u);
  EXPECT_EQ(store->Locate(b->key()), Tier::kHost);
}

TEST_F(TieredStoreTest, FlushHostToDiskKeepsHostOnlyBlocksAcrossReopen) {
  {
    auto store = Open(8);
    for (uint64_t i = 0; i < 6; ++i) ASSERT_TRUE(store->Put(MakeBlock(SpecOfSize(kBlock, i)), false).ok());
    EXPECT_EQ(store->Stats().disk.blocks, 0u);
    ASSERT_TRUE(store->FlushHostToDisk().ok());
  }
  auto store = Open(8);
  for (uint64_t i = 0; i < 6; ++i) {
    EXPECT_EQ(store->Locate(testing::MakeKey(SpecOfSize(kBlock, i))), Tier::kDisk) << i;
  }
}

TEST_F(TieredStoreTest, PinPromotesADiskOnlyBlockAndHoldsIt) {
  auto store = Open(2);
  for (uint64_t i = 0; i < 6; ++i) ASSERT_TRUE(store->Put(MakeBlock(SpecOfSize(kBlock, i)), false).ok());
  const BlockKey k0 = testing::MakeKey(SpecOfSize(kBlock, 0));
  ASSERT_EQ(store->Locate(k0), Tier::kDisk);
  auto grant = store->Pin(std::vector<BlockKey>{k0}, absl::Seconds(30));
  ASSERT_TRUE(grant.ok()) << grant.status();
  EXPECT_EQ(store->Locate(k0), Tier::kHost);
  for (uint64_t i = 10; i < 20; ++i) ASSERT_TRUE(store->Put(MakeBlock(SpecOfSize(kBlock, i)), false).ok());
  EXPECT_EQ(store->Locate(k0), Tier::kHost) << "pinned";
  EXPECT_EQ(store->Unpin(grant->lease_id).value(), 1u);
  EXPECT_EQ(store->Stats().pinned_blocks, 0u);
  EXPECT_EQ(store->Unpin(grant->lease_id).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(TieredStoreTest, PinOfAnUncachedKeyLeavesNoLease) {
  auto store = Open(2);
  ASSERT_TRUE(store->Put(MakeBlock(SpecOfSize(kBlock, 1)), false).ok());
  std::vector<BlockKey> keys = {testing::MakeKey(SpecOfSize(kBlock, 1)), testing::MakeKey(SpecOfSize(kBlock, 2))};
  auto grant = store->Pin(keys, absl::Seconds(30));
  EXPECT_EQ(grant.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Stats().pinned_blocks, 0u);
}

// Regression guard for the write-back window: a block erased while its
// write-back is in flight must not come back from disk.
TEST_F(TieredStoreTest, EraseRacingWriteBackNeverResurrectsABlock) {
  auto store = Open(2, 1);
  constexpr uint64_t kBlocks = 2000;
  std::atomic<uint64_t> put_done{0};
  std::thread writer([&] {
    for (uint64_t i = 0; i < kBlocks; ++i) {
      ASSERT_TRUE(store->Put(MakeBlock(SpecOfSize(8 << 10, i)), false).ok());
      put_done.store(i + 1);
    }
  });
  std::thread eraser([&] {
    for (uint64_t i = 0; i < kBlocks; ++i) {
      while (put_done.load() <= i) std::this_thread::yield();
      ASSERT_TRUE(store->Erase(testing::MakeKey(SpecOfSize(8 << 10, i))).ok());
    }
  });
  writer.join();
  eraser.join();
  for (uint64_t i = 0; i < kBlocks; ++i) {
    ASSERT_EQ(store->Locate(testing::MakeKey(SpecOfSize(8 << 10, i))), Tier::kNone) << "block " << i << " came back";
  }
  EXPECT_EQ(store->Stats().disk.blocks, 0u);
}

}  // namespace
}  // namespace kvc
