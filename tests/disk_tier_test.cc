#include "cachesvc/disk_tier.h"

#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rocksdb/db.h"
#include "tests/temp_dir.h"
#include "tests/test_blocks.h"

namespace kvc {
namespace {

using ::kvc::testing::MakeBlock;
using ::kvc::testing::MakeKey;
using ::kvc::testing::SpecOfSize;
using ::testing::HasSubstr;

constexpr uint64_t kBlockKv = 64 * 1024;

BlockPtr Block(uint64_t seed, std::string tenant = "t1", uint64_t kv_bytes = kBlockKv) {
  return MakeBlock(SpecOfSize(kv_bytes, seed, std::move(tenant)));
}
BlockKey Key(uint64_t seed, std::string tenant = "t1") {
  return MakeKey(SpecOfSize(kBlockKv, seed, std::move(tenant)));
}

class DiskTierTest : public ::testing::Test {
 protected:
  testing::TempDir tmp_;

  DiskTierOptions Options(uint64_t capacity = 64ull << 20) const {
    DiskTierOptions o;
    o.path = dir_ + "/db";
    o.capacity_bytes = capacity;
    o.block_cache_bytes = 1 << 20;
    // Small memtables, so tests flush and read back from real blob files.
    o.write_buffer_bytes = 1 << 20;
    o.blob_file_bytes = 1 << 20;
    return o;
  }

  std::unique_ptr<DiskTier> OpenTier(const DiskTierOptions& o) {
    absl::StatusOr<std::unique_ptr<DiskTier>> t = DiskTier::Open(o);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? std::move(t).value() : nullptr;
  }

  // Opens the tier's database directly (the tier must be closed) and calls
  // fn(db, blocks, meta): the way an operator's tool would reach the bytes.
  template <typename Fn>
  void WithRawDb(Fn fn) {
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
        {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
        {kBlocksColumnFamily, rocksdb::ColumnFamilyOptions()},
        {kMetaColumnFamily, rocksdb::ColumnFamilyOptions()},
    };
    std::vector<rocksdb::ColumnFamilyHandle*> h;
    rocksdb::DB* db = nullptr;
    rocksdb::Status s = rocksdb::DB::Open(rocksdb::DBOptions(), dir_ + "/db", cfs, &h, &db);
    ASSERT_TRUE(s.ok()) << s.ToString();
    fn(db, h[1], h[2]);
    for (auto* cf : h) ASSERT_TRUE(db->DestroyColumnFamilyHandle(cf).ok());
    ASSERT_TRUE(db->Close().ok());
    delete db;
  }

  const std::string dir_ = tmp_.path();
};

TEST_F(DiskTierTest, PutGetEraseReplace) {
  auto tier = OpenTier(Options());
  ASSERT_NE(tier, nullptr);
  BlockPtr a = Block(1);
  ASSERT_TRUE(tier->Put(a, {}).ok());
  EXPECT_TRUE(tier->Contains(a->key()));
  absl::StatusOr<BlockPtr> got = tier->Get(a->key());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)->wire(), a->wire());
  EXPECT_EQ((*got)->key(), a->key());

  EXPECT_TRUE(absl::IsNotFound(tier->Get(Key(2)).status()));
  EXPECT_FALSE(tier->Contains(Key(2)));

  TierUsage u = tier->Usage();
  EXPECT_EQ(u.bytes, a->charge());
  EXPECT_EQ(u.blocks, 1u);
  EXPECT_EQ(u.hits, 1u);
  EXPECT_EQ(u.misses, 1u);
  EXPECT_EQ(tier->TenantBytes("t1"), a->charge());
  EXPECT_EQ(tier->TenantBytes("nobody"), 0u);

  // Same key (same seed), twice the payload: the replacement is charged, the
  // old copy is not.
  BlockPtr a2 = Block(1, "t1", 2 * kBlockKv);
  ASSERT_EQ(a2->key(), a->key());
  ASSERT_TRUE(tier->Put(a2, {.sync = true}).ok());
  EXPECT_EQ(tier->Usage().bytes, a2->charge());
  EXPECT_EQ(tier->Usage().blocks, 1u);
  got = tier->Get(a->key());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)->wire(), a2->wire());

  absl::StatusOr<bool> erased = tier->Erase(a->key());
  ASSERT_TRUE(erased.ok());
  EXPECT_TRUE(*erased);
  erased = tier->Erase(a->key());
  ASSERT_TRUE(erased.ok());
  EXPECT_FALSE(*erased);
  EXPECT_FALSE(tier->Contains(a->key()));
  EXPECT_EQ(tier->Usage().bytes, 0u);
  EXPECT_EQ(tier->TenantBytes("t1"), 0u);
  EXPECT_TRUE(tier->Flush().ok());
}

TEST_F(DiskTierTest, OptionsAreValidated) {
  DiskTierOptions o = Options();
  o.path.clear();
  EXPECT_TRUE(absl::IsInvalidArgument(DiskTier::Open(o).status()));
  o = Options(0);
  EXPECT_TRUE(absl::IsInvalidArgument(DiskTier::Open(o).status()));
  o = Options();
  o.clock = nullptr;
  EXPECT_TRUE(absl::IsInvalidArgument(DiskTier::Open(o).status()));
}

TEST_F(DiskTierTest, SecondOpenOfOneDirectoryIsUnavailable) {
  auto tier = OpenTier(Options());
  ASSERT_NE(tier, nullptr);
  absl::StatusOr<std::unique_ptr<DiskTier>> second = DiskTier::Open(Options());
  EXPECT_TRUE(absl::IsUnavailable(second.status())) << second.status();
}

TEST_F(DiskTierTest, OversizedBlockIsRefusedWithSizes) {
  BlockPtr b = Block(1);
  auto tier = OpenTier(Options(b->charge() - 1));
  ASSERT_NE(tier, nullptr);
  absl::Status s = tier->Put(b, {});
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat(b->charge())));
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat(b->charge() - 1)));
  EXPECT_FALSE(tier->Contains(b->key()));
  EXPECT_EQ(tier->Usage().bytes, 0u);
}

TEST_F(DiskTierTest, BlockOverTenantQuotaIsRefusedNamingTenantAndQuota) {
  BlockPtr b = Block(1, "greedy");
  const uint64_t quota = b->charge() / 2;
  DiskTierOptions o = Options();
  o.tenant_quota = [quota](absl::string_view t) { return t == "greedy" ? quota : 0; };
  auto tier = OpenTier(o);
  ASSERT_NE(tier, nullptr);
  ASSERT_TRUE(tier->Put(Block(2, "other"), {}).ok());
  absl::Status s = tier->Put(b, {});
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("greedy"));
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat(quota)));
  EXPECT_TRUE(tier->Contains(Key(2, "other")));
  EXPECT_EQ(tier->Usage().evictions, 0u);
}

TEST_F(DiskTierTest, EvictsOldestFirstAndReplacementRefreshesAge) {
  const uint64_t charge = Block(0)->charge();
  auto tier = OpenTier(Options(4 * charge));
  ASSERT_NE(tier, nullptr);
  for (uint64_t i = 0; i < 6; ++i) ASSERT_TRUE(tier->Put(Block(i), {}).ok());
  for (uint64_t i = 0; i < 6; ++i) EXPECT_EQ(tier->Contains(Key(i)), i >= 2) << i;
  EXPECT_EQ(tier->Usage().evictions, 2u);
  EXPECT_EQ(tier->Usage().bytes, 4 * charge);

  // Re-putting 2 makes it the newest; 3 is now the oldest.
  ASSERT_TRUE(tier->Put(Block(2), {}).ok());
  ASSERT_TRUE(tier->Put(Block(6), {}).ok());
  EXPECT_TRUE(tier->Contains(Key(2)));
  EXPECT_FALSE(tier->Contains(Key(3)));
  EXPECT_TRUE(tier->Contains(Key(4)));
  EXPECT_EQ(tier->Usage().evictions, 3u);
}

// A model of the budget: oldest-first eviction by insertion (or replacement)
// order. The tier must agree with it exactly after every operation.
TEST_F(DiskTierTest, BudgetHoldsUnderRandomPutsAndMatchesOldestFirstModel) {
  const uint64_t capacity = 1 << 20;
  auto tier = OpenTier(Options(capacity));
  ASSERT_NE(tier, nullptr);
  std::mt19937_64 rng(42);
  auto block_of = [](uint64_t seed) { return Block(seed, "t1", 16 * 1024 * (1 + seed % 8)); };

  std::map<uint64_t, uint64_t> model_order;              // model seq -> block seed
  absl::flat_hash_map<uint64_t, uint64_t> model_seq;     // block seed -> model seq
  absl::flat_hash_map<uint64_t, uint64_t> model_charge;  // block seed -> charge
  uint64_t model_bytes = 0, next = 0, evicted = 0;
  auto model_remove = [&](uint64_t seed) {
    model_order.erase(model_seq[seed]);
    model_bytes -= model_charge[seed];
    model_seq.erase(seed);
    model_charge.erase(seed);
  };

  for (int op = 0; op < 300; ++op) {
    const uint64_t seed = rng() % 40;
    BlockPtr b = block_of(seed);
    if (rng() % 5 == 0) {
      absl::StatusOr<bool> erased = tier->Erase(b->key());
      ASSERT_TRUE(erased.ok()) << erased.status();
      EXPECT_EQ(*erased, model_seq.contains(seed));
      if (model_seq.contains(seed)) model_remove(seed);
    } else {
      ASSERT_TRUE(tier->Put(b, {}).ok());
      if (model_seq.contains(seed)) model_remove(seed);
      while (model_bytes + b->charge() > capacity) {
        model_remove(model_order.begin()->second);
        ++evicted;
      }
      model_order[next] = seed;
      model_seq[seed] = next++;
      model_charge[seed] = b->charge();
      model_bytes += b->charge();
    }
    TierUsage u = tier->Usage();
    ASSERT_LE(u.bytes, capacity);
    ASSERT_EQ(u.bytes, model_bytes) << "op " << op;
    ASSERT_EQ(u.blocks, model_seq.size());
    ASSERT_EQ(u.evictions, evicted);
    for (uint64_t s = 0; s < 40; ++s) {
      ASSERT_EQ(tier->Contains(Key(s)), model_seq.contains(s)) << "seed " << s << " op " << op;
    }
  }
  for (const auto& [seed, seq] : model_seq) {
    absl::StatusOr<BlockPtr> got = tier->Get(Key(seed));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ((*got)->wire(), block_of(seed)->wire());
  }
}

TEST_F(DiskTierTest, TenantQuotaEvictsOnlyThatTenantsBlocks) {
  // Charges differ by tenant name length; blocks of one tenant here are equal.
  const uint64_t charge = Block(0, "a")->charge();
  ASSERT_EQ(Block(4, "a")->charge(), charge);
  DiskTierOptions o = Options();
  o.tenant_quota = [charge](absl::string_view t) -> uint64_t { return t == "a" ? 3 * charge : 0; };
  auto tier = OpenTier(o);
  ASSERT_NE(tier, nullptr);
  // b's blocks are older than all of a's: a global-oldest policy would take them.
  for (uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(tier->Put(Block(i, "b"), {}).ok());
  for (uint64_t i = 0; i < 5; ++i) {
    ASSERT_TRUE(tier->Put(Block(i, "a"), {}).ok());
    ASSERT_LE(tier->TenantBytes("a"), 3 * charge);
  }
  for (uint64_t i = 0; i < 3; ++i) EXPECT_TRUE(tier->Contains(Key(i, "b"))) << i;
  for (uint64_t i = 0; i < 5; ++i) EXPECT_EQ(tier->Contains(Key(i, "a")), i >= 2) << i;
  EXPECT_EQ(tier->TenantBytes("a"), 3 * charge);
  EXPECT_EQ(tier->TenantBytes("b"), 3 * Block(0, "b")->charge());
  EXPECT_EQ(tier->Usage().evictions, 2u);
}

TEST_F(DiskTierTest, RestartFindsEveryBlockWithExactAccounting) {
  std::vector<BlockPtr> kept;
  TierUsage before;
  {
    auto tier = OpenTier(Options());
    ASSERT_NE(tier, nullptr);
    for (uint64_t i = 0; i < 10; ++i) {
      ASSERT_TRUE(tier->Put(Block(i, i % 2 ? "odd" : "even"), {}).ok());
    }
    ASSERT_TRUE(tier->Erase(Key(3, "odd")).ok());
    ASSERT_TRUE(tier->Erase(Key(4, "even")).ok());
    // Replace 0 with a bigger block: it becomes the newest.
    ASSERT_TRUE(tier->Put(Block(0, "even", 2 * kBlockKv), {}).ok());
    for (uint64_t i : {1, 2, 5, 6, 7, 8, 9}) kept.push_back(Block(i, i % 2 ? "odd" : "even"));
    kept.push_back(Block(0, "even", 2 * kBlockKv));
    before = tier->Usage();
    EXPECT_EQ(before.blocks, kept.size());
  }
  uint64_t want_bytes = 0;
  absl::flat_hash_map<std::string, uint64_t> want_tenant_bytes;
  for (const BlockPtr& b : kept) {
    want_bytes += b->charge();
    want_tenant_bytes[b->key().tenant] += b->charge();
  }
  ASSERT_EQ(before.bytes, want_bytes);

  // Reopen with the budget exactly full, so the next Put must evict.
  auto tier = OpenTier(Options(want_bytes));
  ASSERT_NE(tier, nullptr);
  TierUsage after = tier->Usage();
  EXPECT_EQ(after.bytes, want_bytes);
  EXPECT_EQ(after.blocks, kept.size());
  EXPECT_EQ(after.corrupt, 0u);
  EXPECT_EQ(after.evictions, 0u);
  EXPECT_EQ(tier->TenantBytes("odd"), want_tenant_bytes["odd"]);
  EXPECT_EQ(tier->TenantBytes("even"), want_tenant_bytes["even"]);
  for (const BlockPtr& b : kept) {
    EXPECT_TRUE(tier->Contains(b->key()));
    absl::StatusOr<BlockPtr> got = tier->Get(b->key());
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ((*got)->wire(), b->wire());
  }
  EXPECT_FALSE(tier->Contains(Key(3, "odd")));
  EXPECT_FALSE(tier->Contains(Key(4, "even")));

  // Insertion order survived the restart: 1 (odd) is oldest, then 2 (even);
  // 0 was refreshed and is the newest. (3 and 4 were erased; putting them
  // back charges exactly what 1 and 2 free.)
  ASSERT_EQ(Block(3, "odd")->charge(), Block(1, "odd")->charge());
  ASSERT_EQ(Block(4, "even")->charge(), Block(2, "even")->charge());
  ASSERT_TRUE(tier->Put(Block(3, "odd"), {}).ok());
  EXPECT_FALSE(tier->Contains(Key(1, "odd")));
  EXPECT_TRUE(tier->Contains(Key(2, "even")));
  ASSERT_TRUE(tier->Put(Block(4, "even"), {}).ok());
  EXPECT_FALSE(tier->Contains(Key(2, "even")));
  EXPECT_TRUE(tier->Contains(Key(0, "even")));
  EXPECT_TRUE(tier->Contains(Key(5, "odd")));
  EXPECT_EQ(tier->Usage().evictions, 2u);
}

// Operators size volumes assuming payloads sit in blob files (written once,
// not rewritten by compaction); this catches the options silently not applying.
TEST_F(DiskTierTest, PayloadsAreStoredInBlobFiles) {
  {
    auto tier = OpenTier(Options());
    ASSERT_NE(tier, nullptr);
    for (uint64_t i = 0; i < 40; ++i) ASSERT_TRUE(tier->Put(Block(i), {}).ok());
  }
  int blob_files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_ + "/db")) {
    if (e.path().extension() == ".blob") ++blob_files;
  }
  EXPECT_GT(blob_files, 0);
  auto tier = OpenTier(Options());
  ASSERT_NE(tier, nullptr);
  for (uint64_t i = 0; i < 40; ++i) ASSERT_TRUE(tier->Get(Key(i)).ok()) << i;
}

TEST_F(DiskTierTest, ReopenWithSmallerBudgetEvictsOldest) {
  const uint64_t charge = Block(0)->charge();
  {
    auto tier = OpenTier(Options());
    ASSERT_NE(tier, nullptr);
    for (uint64_t i = 0; i < 6; ++i) ASSERT_TRUE(tier->Put(Block(i), {}).ok());
  }
  auto tier = OpenTier(Options(4 * charge));
  ASSERT_NE(tier, nullptr);
  EXPECT_EQ(tier->Usage().bytes, 4 * charge);
  EXPECT_EQ(tier->Usage().evictions, 2u);
  for (uint64_t i = 0; i < 6; ++i) EXPECT_EQ(tier->Contains(Key(i)), i >= 2) << i;
}

// How a stored value is damaged, by a test that writes the database directly.
enum class Damage { kFlipPayloadBytes, kGarbageValue, kDataMissing };

class DiskTierCorruptionTest : public DiskTierTest, public ::testing::WithParamInterface<Damage> {};

TEST_P(DiskTierCorruptionTest, CorruptBlockIsDroppedCountedAndNeverServed) {
  {
    auto tier = OpenTier(Options());
    ASSERT_NE(tier, nullptr);
    for (uint64_t i = 0; i < 5; ++i) ASSERT_TRUE(tier->Put(Block(i), {}).ok());
  }
  const std::string victim = Key(2).Encode();
  WithRawDb(
      [&](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* blocks, rocksdb::ColumnFamilyHandle*) {
        std::string value;
        ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), blocks, victim, &value).ok());
        rocksdb::Status s;
        switch (GetParam()) {
          case Damage::kFlipPayloadBytes:
            // The tail of the value is V's payload: flipping it keeps the message
            // parseable, so only the checksum can tell.
            for (size_t i = value.size() - 64; i < value.size() - 32; ++i) value[i] ^= 0x5a;
            s = db->Put(rocksdb::WriteOptions(), blocks, victim, value);
            break;
          case Damage::kGarbageValue:
            s = db->Put(rocksdb::WriteOptions(), blocks, victim, std::string(5000, '\xff'));
            break;
          case Damage::kDataMissing:
            s = db->Delete(rocksdb::WriteOptions(), blocks, victim);
            break;
        }
        ASSERT_TRUE(s.ok()) << s.ToString();
      });

  auto tier = OpenTier(Options());
  ASSERT_NE(tier, nullptr);
  // The meta record is intact, so the block is indexed until it is read.
  EXPECT_TRUE(tier->Contains(Key(2)));
  absl::StatusOr<BlockPtr> got = tier->Get(Key(2));
  EXPECT_TRUE(absl::IsDataLoss(got.status())) << got.status();
  EXPECT_EQ(tier->Usage().corrupt, 1u);
  EXPECT_FALSE(tier->Contains(Key(2)));
  EXPECT_TRUE(absl::IsNotFound(tier->Get(Key(2)).status()));
  EXPECT_EQ(tier->Usage().blocks, 4u);
  EXPECT_EQ(tier->Usage().bytes, 4 * Block(0)->charge());
  for (uint64_t i : {0, 1, 3, 4}) {
    absl::StatusOr<BlockPtr> ok = tier->Get(Key(i));
    ASSERT_TRUE(ok.ok()) << ok.status();
    EXPECT_EQ((*ok)->wire(), Block(i)->wire());
  }
  // The drop is durable: data and meta are both gone after a restart.
  tier.reset();
  tier = OpenTier(Options());
  ASSERT_NE(tier, nullptr);
  EXPECT_FALSE(tier->Contains(Key(2)));
  EXPECT_EQ(tier->Usage().blocks, 4u);
}

TEST_P(DiskTierCorruptionTest, ForEachSkipsAndDropsCorruptBlock) {
  {
    auto tier = OpenTier(Options());
    ASSERT_NE(tier, nullptr);
    for (uint64_t i = 0; i < 5; ++i) ASSERT_TRUE(tier->Put(Block(i), {}).ok());
  }
  WithRawDb(
      [&](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* blocks, rocksdb::ColumnFamilyHandle*) {
        const std::string victim = Key(3).Encode();
        if (GetParam() == Damage::kDataMissing) {
          ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), blocks, victim).ok());
          return;
        }
        std::string value;
        ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), blocks, victim, &value).ok());
        if (GetParam() == Damage::kGarbageValue) {
          value.assign(value.size(), '\xff');
        } else {
          value[value.size() / 2] ^= 1;
        }
        ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), blocks, victim, value).ok());
      });
  auto tier = OpenTier(Options());
  ASSERT_NE(tier, nullptr);
  absl::flat_hash_set<uint64_t> seen;
  ASSERT_TRUE(tier->ForEach([&](const BlockPtr& b) {
                    for (uint64_t i = 0; i < 5; ++i) {
                      if (b->key() == Key(i)) {
                        EXPECT_EQ(b->wire(), Block(i)->wire());
                        seen.insert(i);
                      }
                    }
                  })
                  .ok());
  EXPECT_EQ(seen, (absl::flat_hash_set<uint64_t>{0, 1, 2, 4}));
  EXPECT_EQ(tier->Usage().corrupt, 1u);
  EXPECT_FALSE(tier->Contains(Key(3)));
}

INSTANTIATE_TEST_SUITE_P(Damages, DiskTierCorruptionTest,
                         ::testing::Values(Damage::kFlipPayloadBytes, Damage::kGarbageValue,
                                           Damage::kDataMissing),
                         [](const ::testing::TestParamInfo<Damage>& info) -> std::string {
                           switch (info.param) {
                             case Damage::kFlipPayloadBytes:
                               return "FlipPayloadBytes";
                             case Damage::kGarbageValue:
                               return "GarbageValue";
                             case Damage::kDataMissing:
                               return "DataMissing";
                           }
                           return "Unknown";
                         });

TEST_F(DiskTierTest, UndecodableMetaRecordIsDroppedAtOpen) {
  {
    auto tier = OpenTier(Options());
    ASSERT_NE(tier, nullptr);
    for (uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(tier->Put(Block(i), {}).ok());
  }
  WithRawDb([&](rocksdb::DB* db, rocksdb::ColumnFamilyHandle*, rocksdb::ColumnFamilyHandle* meta) {
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), meta, Key(1).Encode(), "short").ok());
  });
  auto tier = OpenTier(Options());
  ASSERT_NE(tier, nullptr);
  EXPECT_EQ(tier->Usage().corrupt, 1u);
  EXPECT_EQ(tier->Usage().blocks, 2u);
  EXPECT_EQ(tier->Usage().bytes, 2 * Block(0)->charge());
  EXPECT_FALSE(tier->Contains(Key(1)));
  EXPECT_TRUE(tier->Get(Key(0)).ok());
  EXPECT_TRUE(tier->Get(Key(2)).ok());
}

TEST_F(DiskTierTest, ConcurrentReadersAndWritersStayWithinBudget) {
  constexpr int kThreads = 4;
  constexpr uint64_t kSeeds = 48;
  const uint64_t capacity = 16 * Block(0)->charge();
  auto tier = OpenTier(Options(capacity));
  ASSERT_NE(tier, nullptr);
  std::vector<BlockPtr> blocks;
  for (uint64_t s = 0; s < kSeeds; ++s) blocks.push_back(Block(s));

  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      for (int op = 0; op < 250; ++op) {
        const BlockPtr& b = blocks[rng() % kSeeds];
        switch (rng() % 4) {
          case 0:
            if (!tier->Put(b, {.sync = op % 16 == 0}).ok()) ++failures;
            break;
          case 1:
            if (!tier->Erase(b->key()).ok()) ++failures;
            break;
          default: {
            (void)tier->Contains(b->key());
            absl::StatusOr<BlockPtr> got = tier->Get(b->key());
            if (got.ok()) {
              if ((*got)->wire() != b->wire()) ++failures;
            } else if (!absl::IsNotFound(got.status())) {
              ++failures;
            }
          }
        }
        if (tier->Usage().bytes > capacity) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);

  TierUsage u = tier->Usage();
  EXPECT_EQ(u.corrupt, 0u);
  EXPECT_LE(u.bytes, capacity);
  uint64_t seen_bytes = 0, seen_blocks = 0;
  ASSERT_TRUE(tier->ForEach([&](const BlockPtr& b) {
                    seen_bytes += b->charge();
                    ++seen_blocks;
                  })
                  .ok());
  EXPECT_EQ(seen_bytes, u.bytes);
  EXPECT_EQ(seen_blocks, u.blocks);
  std::vector<bool> present;
  for (const BlockPtr& b : blocks) present.push_back(tier->Contains(b->key()));

  // Index and disk agreed: a restart sees exactly the same blocks.
  tier.reset();
  tier = OpenTier(Options(capacity));
  ASSERT_NE(tier, nullptr);
  EXPECT_EQ(tier->Usage().bytes, u.bytes);
  EXPECT_EQ(tier->Usage().blocks, u.blocks);
  for (size_t i = 0; i < blocks.size(); ++i) {
    EXPECT_EQ(tier->Contains(blocks[i]->key()), present[i]) << i;
  }
}

}  // namespace
}  // namespace kvc
