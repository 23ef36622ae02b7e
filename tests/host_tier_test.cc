#include "cachesvc/host_tier.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <list>
#include <random>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "cachesvc/lease_table.h"
#include "common/clock.h"
#include "tests/test_blocks.h"

namespace kvc {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using testing::MakeBlock;
using testing::SpecOfSize;

constexpr uint64_t kKv = 4096;  // k+v bytes of the usual test block (one token)

BlockPtr Block(uint64_t seed, std::string tenant = "t1", uint64_t kv_bytes = kKv) {
  return MakeBlock(SpecOfSize(kv_bytes, seed, std::move(tenant)));
}

// The charge of every Block(seed) with a small seed.
uint64_t Charge() { return Block(1)->charge(); }

// Collects what on_evict receives, from any thread.
class EvictionLog {
 public:
  std::function<void(std::vector<BlockPtr>)> Callback() {
    return [this](std::vector<BlockPtr> blocks) {
      absl::MutexLock lock(&mu_);
      for (auto& b : blocks) blocks_.push_back(std::move(b));
    };
  }
  std::vector<BlockPtr> Blocks() const {
    absl::MutexLock lock(&mu_);
    return blocks_;
  }
  // Seeds are not recoverable from keys, so compare keys.
  std::vector<BlockKey> Keys() const {
    std::vector<BlockKey> keys;
    for (const BlockPtr& b : Blocks()) keys.push_back(b->key());
    return keys;
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<BlockPtr> blocks_ ABSL_GUARDED_BY(mu_);
};

// One shard holding `blocks` test blocks, so eviction order is deterministic.
HostTierOptions OneShard(uint64_t blocks) {
  HostTierOptions o;
  o.num_shards = 1;
  o.capacity_bytes = blocks * Charge();
  return o;
}

std::unique_ptr<HostTier> MakeTier(const HostTierOptions& o) {
  auto tier = HostTier::Create(o);
  EXPECT_TRUE(tier.ok()) << tier.status();
  return tier.ok() ? std::move(*tier) : nullptr;
}

absl::Status Put(HostTier& tier, const BlockPtr& b) { return tier.Put(b, PutOptions{}); }

uint64_t ForEachBytes(HostTier& tier, absl::string_view tenant = "") {
  uint64_t bytes = 0;
  EXPECT_TRUE(tier.ForEach([&](const BlockPtr& b) {
                    if (tenant.empty() || b->key().tenant == tenant) bytes += b->charge();
                  })
                  .ok());
  return bytes;
}

TEST(HostTierOptionsTest, ValidateRejectsBadValues) {
  EXPECT_TRUE(HostTierOptions{}.Validate().ok());
  HostTierOptions o;
  o.num_shards = 3;
  EXPECT_EQ(HostTier::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.num_shards = 0;
  EXPECT_FALSE(o.Validate().ok());
  o = {};
  o.capacity_bytes = 0;
  EXPECT_FALSE(o.Validate().ok());
  o = {};
  o.small_queue_fraction = 0;
  EXPECT_FALSE(o.Validate().ok());
  o = {};
  o.small_queue_fraction = 1;
  EXPECT_FALSE(o.Validate().ok());
  o = {};
  o.clock = nullptr;
  EXPECT_FALSE(o.Validate().ok());
}

TEST(HostTierTest, PutThenGetReturnsTheBlockAndCountsHitsAndMisses) {
  auto tier = MakeTier(HostTierOptions{});
  const BlockPtr b = Block(1);
  ASSERT_TRUE(Put(*tier, b).ok());
  EXPECT_TRUE(tier->Contains(b->key()));
  auto got = tier->Get(b->key());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)->wire(), b->wire());
  EXPECT_EQ(tier->Get(Block(2)->key()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(tier->Contains(Block(2)->key()));

  const TierUsage u = tier->Usage();
  EXPECT_EQ(u.bytes, b->charge());
  EXPECT_EQ(u.blocks, 1u);
  EXPECT_EQ(u.hits, 1u) << "Contains must not count";
  EXPECT_EQ(u.misses, 1u);
  EXPECT_EQ(u.evictions, 0u);
  EXPECT_EQ(u.budget_bytes, HostTierOptions{}.capacity_bytes);
  EXPECT_EQ(tier->TenantBytes("t1"), b->charge());
  EXPECT_EQ(tier->name(), "host");
}

TEST(HostTierTest, PutOfExistingKeyReplacesAndAdjustsBytes) {
  EvictionLog log;
  HostTierOptions o;
  o.on_evict = log.Callback();
  auto tier = MakeTier(o);
  const BlockPtr small = Block(7, "t1", kKv);
  const BlockPtr big = Block(7, "t1", 4 * kKv);
  ASSERT_EQ(small->key(), big->key());
  ASSERT_TRUE(Put(*tier, small).ok());
  ASSERT_TRUE(Put(*tier, big).ok());
  EXPECT_EQ((*tier->Get(big->key()))->wire(), big->wire());
  EXPECT_EQ(tier->Usage().bytes, big->charge());
  EXPECT_EQ(tier->Usage().blocks, 1u);
  EXPECT_EQ(tier->TenantBytes("t1"), big->charge());
  ASSERT_TRUE(Put(*tier, small).ok());
  EXPECT_EQ(tier->Usage().bytes, small->charge());
  EXPECT_THAT(log.Blocks(), IsEmpty()) << "a replaced block is not an eviction";
}

TEST(HostTierTest, EraseReturnsWhetherPresentAndIsNotAnEviction) {
  EvictionLog log;
  HostTierOptions o;
  o.on_evict = log.Callback();
  auto tier = MakeTier(o);
  const BlockPtr b = Block(1);
  ASSERT_TRUE(Put(*tier, b).ok());
  EXPECT_EQ(tier->Erase(b->key()).value(), true);
  EXPECT_EQ(tier->Erase(b->key()).value(), false);
  EXPECT_FALSE(tier->Contains(b->key()));
  EXPECT_EQ(tier->Usage().bytes, 0u);
  EXPECT_EQ(tier->Usage().evictions, 0u);
  EXPECT_EQ(tier->TenantBytes("t1"), 0u);
  EXPECT_THAT(log.Blocks(), IsEmpty());
}

TEST(HostTierTest, BlockLargerThanAShardIsResourceExhaustedNamingSizes) {
  HostTierOptions o;
  o.capacity_bytes = 64 * 1024;
  o.num_shards = 4;  // 16 KiB each
  auto tier = MakeTier(o);
  const BlockPtr b = Block(1, "t1", 8 * kKv);
  const absl::Status s = Put(*tier, b);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat(b->charge())));
  EXPECT_THAT(s.message(), HasSubstr("16384"));
  EXPECT_FALSE(tier->Contains(b->key()));
  EXPECT_EQ(tier->Usage().bytes, 0u);
}

TEST(HostTierTest, OnEvictReceivesExactlyTheEvictedBlocks) {
  EvictionLog log;
  HostTierOptions o = OneShard(10);
  o.on_evict = log.Callback();
  std::vector<BlockPtr> announced;  // on_evicting runs under the shard lock, before on_evict
  o.on_evicting = [&announced](const BlockPtr& b) { announced.push_back(b); };
  auto tier = MakeTier(o);
  std::vector<BlockPtr> all;
  for (uint64_t seed = 1; seed <= 50; ++seed) {
    all.push_back(Block(seed));
    ASSERT_TRUE(Put(*tier, all.back()).ok());
    ASSERT_LE(tier->Usage().bytes, o.capacity_bytes);
  }
  absl::flat_hash_set<BlockKey> resident, evicted;
  ASSERT_TRUE(tier->ForEach([&](const BlockPtr& b) { resident.insert(b->key()); }).ok());
  for (const BlockPtr& b : log.Blocks()) {
    EXPECT_TRUE(evicted.insert(b->key()).second) << "evicted twice: " << b->key().DebugString();
    EXPECT_FALSE(resident.contains(b->key())) << "reported evicted but still held";
  }
  EXPECT_EQ(resident.size(), 10u);
  EXPECT_EQ(resident.size() + evicted.size(), all.size()) << "every block is held or reported";
  EXPECT_EQ(tier->Usage().evictions, evicted.size());
  EXPECT_EQ(tier->Usage().blocks, 10u);
  EXPECT_EQ(announced, log.Blocks()) << "on_evicting and on_evict see the same blocks, in order";
}

// Mixed Put/Get/Erase/Contains with pins and a quota from 4 threads: the
// budget holds at every observation and the counters agree with the contents.
TEST(HostTierTest, BudgetHoldsUnderConcurrentMixedWorkload) {
  FakeClock clock;
  LeaseTable leases(&clock);
  EvictionLog log;
  HostTierOptions o;
  o.capacity_bytes = 16 * 12 * Charge();
  o.num_shards = 16;
  o.clock = &clock;
  o.pins = &leases;
  const uint64_t quota = 40 * Charge();
  o.tenant_quota = [quota](absl::string_view t) { return t == "t2" ? quota : 0; };
  o.on_evict = log.Callback();
  auto tier = MakeTier(o);

  // Two sizes per key, so Puts also replace with a different charge.
  std::vector<BlockPtr> pool;
  for (uint64_t seed = 0; seed < 300; ++seed) {
    const std::string tenant = seed % 3 == 0 ? "t2" : "t1";
    pool.push_back(Block(seed, tenant, kKv));
    pool.push_back(Block(seed, tenant, 3 * kKv));
  }
  std::atomic<int> over_budget{0}, over_quota{0}, unexpected_errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      for (int i = 0; i < 3000; ++i) {
        const BlockPtr& b = pool[rng() % pool.size()];
        switch (rng() % 10) {
          case 0:
            (void)tier->Erase(b->key());
            break;
          case 1:
            (void)tier->Contains(b->key());
            break;
          case 2:
            (void)leases.Acquire({b->key()}, clock.Now() + absl::Seconds(1 + rng() % 3));
            if (t == 0) clock.Advance(absl::Seconds(1));
            break;
          case 3:
          case 4:
          case 5:
            (void)tier->Get(b->key());
            break;
          default:
            if (absl::Status s = Put(*tier, b);
                !s.ok() && s.code() != absl::StatusCode::kResourceExhausted) {
              ++unexpected_errors;
            }
        }
        if (tier->Usage().bytes > o.capacity_bytes) ++over_budget;
        if (tier->TenantBytes("t2") > quota) ++over_quota;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(over_budget, 0);
  EXPECT_EQ(over_quota, 0);
  EXPECT_EQ(unexpected_errors, 0);

  const TierUsage u = tier->Usage();
  EXPECT_LE(u.bytes, o.capacity_bytes);
  EXPECT_LE(u.budget_bytes, o.capacity_bytes);
  EXPECT_EQ(ForEachBytes(*tier), u.bytes);
  EXPECT_EQ(tier->TenantBytes("t1") + tier->TenantBytes("t2"), u.bytes);
  EXPECT_EQ(ForEachBytes(*tier, "t2"), tier->TenantBytes("t2"));
  EXPECT_LE(tier->TenantBytes("t2"), quota);
  EXPECT_EQ(log.Blocks().size(), u.evictions);
  EXPECT_GT(u.evictions, 0u) << "the workload should have exercised eviction";
  uint64_t blocks = 0;
  ASSERT_TRUE(tier->ForEach([&](const BlockPtr&) { ++blocks; }).ok());
  EXPECT_EQ(blocks, u.blocks);
}

// A byte-budgeted LRU over the same trace, as the baseline S3-FIFO must beat.
class LruModel {
 public:
  explicit LruModel(uint64_t capacity) : capacity_(capacity) {}
  bool Get(uint64_t id) {
    auto it = where_.find(id);
    if (it == where_.end()) return false;
    order_.splice(order_.begin(), order_, it->second);
    return true;
  }
  void Put(uint64_t id, uint64_t charge) {
    while (used_ + charge > capacity_) {
      used_ -= charge_[order_.back()];
      where_.erase(order_.back());
      order_.pop_back();
    }
    order_.push_front(id);
    where_[id] = order_.begin();
    charge_[id] = charge;
    used_ += charge;
  }

 private:
  uint64_t capacity_, used_ = 0;
  std::list<uint64_t> order_;
  absl::flat_hash_map<uint64_t, std::list<uint64_t>::iterator> where_;
  absl::flat_hash_map<uint64_t, uint64_t> charge_;
};

TEST(HostTierTest, ReReadWorkingSetSurvivesScanOfTenTimesCapacity) {
  constexpr uint64_t kCapacityBlocks = 100, kHot = 20;
  HostTierOptions o = OneShard(kCapacityBlocks);
  auto tier = MakeTier(o);
  LruModel lru(o.capacity_bytes);

  std::vector<BlockPtr> hot;
  for (uint64_t i = 0; i < kHot; ++i) {
    hot.push_back(Block(100'000 + i));
    ASSERT_TRUE(Put(*tier, hot.back()).ok());
    lru.Put(100'000 + i, hot.back()->charge());
  }
  for (int round = 0; round < 3; ++round) {
    for (uint64_t i = 0; i < kHot; ++i) {
      ASSERT_TRUE(tier->Get(hot[i]->key()).ok());
      ASSERT_TRUE(lru.Get(100'000 + i));
    }
  }
  // One pass over 10x capacity of blocks never read again.
  for (uint64_t seed = 1; seed <= 10 * kCapacityBlocks; ++seed) {
    const BlockPtr cold = Block(seed);
    ASSERT_TRUE(Put(*tier, cold).ok());
    lru.Put(seed, cold->charge());
  }
  int tier_hits = 0, lru_hits = 0;
  for (uint64_t i = 0; i < kHot; ++i) {
    tier_hits += tier->Get(hot[i]->key()).ok();
    lru_hits += lru.Get(100'000 + i);
  }
  EXPECT_EQ(lru_hits, 0) << "the baseline loses the whole working set";
  EXPECT_GE(tier_hits, static_cast<int>(kHot * 9 / 10))
      << "S3-FIFO should keep the re-read working set through the scan";
  EXPECT_GE(tier->Usage().evictions, 10 * kCapacityBlocks - kCapacityBlocks);
  EXPECT_FALSE(tier->Contains(Block(1)->key())) << "old scan blocks are gone";
}

TEST(HostTierTest, KeyReadmittedSoonAfterEvictionOutlivesANewKey) {
  HostTierOptions o = OneShard(20);
  auto tier = MakeTier(o);
  const BlockPtr returning = Block(500), fresh = Block(600);
  ASSERT_TRUE(Put(*tier, returning).ok());
  for (uint64_t seed = 1; seed <= 20; ++seed) ASSERT_TRUE(Put(*tier, Block(seed)).ok());
  ASSERT_FALSE(tier->Contains(returning->key())) << "evicted once, never read";
  // The ghost FIFO remembers it: it goes straight to main, `fresh` to small.
  ASSERT_TRUE(Put(*tier, returning).ok());
  ASSERT_TRUE(Put(*tier, fresh).ok());
  for (uint64_t seed = 21; seed <= 60; ++seed) ASSERT_TRUE(Put(*tier, Block(seed)).ok());
  EXPECT_TRUE(tier->Contains(returning->key()));
  EXPECT_FALSE(tier->Contains(fresh->key()));
}

TEST(HostTierTest, MainQueueGivesFrequentlyReadBlocksAnotherLap) {
  HostTierOptions o = OneShard(10);
  auto tier = MakeTier(o);
  const BlockPtr hot = Block(500), peer = Block(600);
  // Both are read once, so filling the shard promotes them to main together.
  for (const BlockPtr& b : {hot, peer}) {
    ASSERT_TRUE(Put(*tier, b).ok());
    ASSERT_TRUE(tier->Get(b->key()).ok());
  }
  for (uint64_t seed = 1; seed <= 10; ++seed) ASSERT_TRUE(Put(*tier, Block(seed)).ok());
  ASSERT_TRUE(tier->Contains(hot->key()) && tier->Contains(peer->key()));
  // Then only `hot` is read again; blocks read once each press on main.
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(tier->Get(hot->key()).ok());
  for (uint64_t seed = 11; seed <= 25; ++seed) {
    ASSERT_TRUE(Put(*tier, Block(seed)).ok());
    ASSERT_TRUE(tier->Get(Block(seed)->key()).ok());
  }
  EXPECT_TRUE(tier->Contains(hot->key()));
  EXPECT_FALSE(tier->Contains(peer->key()));
}

class PinnedHostTierTest : public ::testing::Test {
 protected:
  void SetUp() override {
    HostTierOptions o = OneShard(10);
    o.clock = &clock_;
    o.pins = &leases_;
    o.on_evict = log_.Callback();
    capacity_ = o.capacity_bytes;
    tier_ = MakeTier(o);
  }
  // Puts `n` new blocks, each read once after its Put when `read` (so they
  // are promoted and press on the main FIFO too).
  void Pressure(int n, bool read = false) {
    for (int i = 0; i < n; ++i) {
      const BlockPtr b = Block(next_seed_++);
      ASSERT_TRUE(Put(*tier_, b).ok());
      if (read) {
        ASSERT_TRUE(tier_->Get(b->key()).ok());
      }
    }
  }
  bool WasEvicted(const BlockPtr& b) const {
    for (const BlockKey& k : log_.Keys()) {
      if (k == b->key()) return true;
    }
    return false;
  }

  FakeClock clock_;
  LeaseTable leases_{&clock_};
  EvictionLog log_;
  uint64_t capacity_ = 0;
  uint64_t next_seed_ = 1000;
  std::unique_ptr<HostTier> tier_;
};

TEST_F(PinnedHostTierTest, PinnedBlockSurvivesPressureUntilItsLeaseExpires) {
  const BlockPtr pinned = Block(1);
  ASSERT_TRUE(Put(*tier_, pinned).ok());
  ASSERT_TRUE(leases_.Acquire({pinned->key()}, clock_.Now() + absl::Seconds(10)).ok());
  Pressure(100);
  EXPECT_TRUE(tier_->Contains(pinned->key()));
  EXPECT_FALSE(WasEvicted(pinned));
  EXPECT_LE(tier_->Usage().bytes, capacity_);

  clock_.Advance(absl::Seconds(10));
  Pressure(100);
  EXPECT_FALSE(tier_->Contains(pinned->key()));
  EXPECT_TRUE(WasEvicted(pinned));
}

TEST_F(PinnedHostTierTest, PinnedBlockBecomesEvictableAfterRelease) {
  const BlockPtr pinned = Block(1);
  ASSERT_TRUE(Put(*tier_, pinned).ok());
  ASSERT_TRUE(tier_->Get(pinned->key()).ok());  // read once, like the pressure
  auto lease = leases_.Acquire({pinned->key()}, clock_.Now() + absl::Hours(1));
  ASSERT_TRUE(lease.ok());
  Pressure(100, /*read=*/true);
  EXPECT_TRUE(tier_->Contains(pinned->key()));
  EXPECT_LE(tier_->Usage().bytes, capacity_);

  ASSERT_EQ(*leases_.Release(*lease), 1u);
  Pressure(100, /*read=*/true);
  EXPECT_FALSE(tier_->Contains(pinned->key()));
  EXPECT_TRUE(WasEvicted(pinned));
}

TEST_F(PinnedHostTierTest, ShardWithOnlyPinnedBlocksRefusesPut) {
  // Block 0 is read, so filling the shard promotes it to main and evicts
  // block 1 from small: both queues then hold pinned blocks.
  ASSERT_TRUE(Put(*tier_, Block(0)).ok());
  ASSERT_TRUE(tier_->Get(Block(0)->key()).ok());
  for (uint64_t seed = 1; seed <= 10; ++seed) {
    ASSERT_EQ(Block(seed)->charge(), Charge());
    ASSERT_TRUE(Put(*tier_, Block(seed)).ok());
  }
  ASSERT_THAT(log_.Keys(), ElementsAre(Block(1)->key()));
  std::vector<BlockKey> keys;
  ASSERT_TRUE(tier_->ForEach([&](const BlockPtr& b) { keys.push_back(b->key()); }).ok());
  ASSERT_EQ(keys.size(), 10u);
  auto lease = leases_.Acquire(keys, clock_.Now() + absl::Hours(1));
  ASSERT_TRUE(lease.ok());

  const absl::Status s = Put(*tier_, Block(11));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("pinned"));
  EXPECT_FALSE(tier_->Contains(Block(11)->key()));
  for (const BlockKey& k : keys) EXPECT_TRUE(tier_->Contains(k));
  EXPECT_EQ(log_.Blocks().size(), 1u) << "a refused Put evicts nothing";
  EXPECT_EQ(tier_->Usage().bytes, capacity_);

  // Growing a pinned block in place must fail too, keeping the old copy.
  const BlockPtr bigger = Block(0, "t1", 2 * kKv);
  EXPECT_EQ(Put(*tier_, bigger).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ((*tier_->Get(Block(0)->key()))->wire(), Block(0)->wire());
  EXPECT_EQ(tier_->TenantBytes("t1"), capacity_);

  ASSERT_TRUE(leases_.Release(*lease).ok());
  EXPECT_TRUE(Put(*tier_, Block(11)).ok());
  EXPECT_EQ(log_.Blocks().size(), 2u);
}

class QuotaHostTierTest : public ::testing::Test {
 protected:
  void SetUp() override {
    HostTierOptions o = OneShard(20);
    o.clock = &clock_;
    o.pins = &leases_;
    o.on_evict = log_.Callback();
    quota_ = 3 * Block(1, "a")->charge();
    o.tenant_quota = [this](absl::string_view t) { return t == "a" ? quota_ : 0; };
    tier_ = MakeTier(o);
  }

  FakeClock clock_;
  LeaseTable leases_{&clock_};
  EvictionLog log_;
  uint64_t quota_ = 0;
  std::unique_ptr<HostTier> tier_;
};

TEST_F(QuotaHostTierTest, TenantOverQuotaEvictsItsOwnOldestBlocksOnly) {
  std::vector<BlockPtr> a, b;
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    b.push_back(Block(seed, "b"));
    ASSERT_TRUE(Put(*tier_, b.back()).ok());
  }
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    a.push_back(Block(seed, "a"));
    ASSERT_TRUE(Put(*tier_, a.back()).ok());
    ASSERT_LE(tier_->TenantBytes("a"), quota_);
  }
  EXPECT_EQ(tier_->TenantBytes("a"), quota_);
  EXPECT_EQ(tier_->TenantBytes("b"), 5 * b[0]->charge());
  for (const BlockPtr& x : b) EXPECT_TRUE(tier_->Contains(x->key()));
  EXPECT_THAT(log_.Keys(), ElementsAre(a[0]->key(), a[1]->key()));
  for (int i = 2; i < 5; ++i) EXPECT_TRUE(tier_->Contains(a[i]->key()));
  EXPECT_EQ(tier_->Usage().evictions, 2u);
}

TEST_F(QuotaHostTierTest, TenantWhoseOwnBlocksArePinnedIsRefused) {
  std::vector<BlockKey> keys;
  for (uint64_t seed = 1; seed <= 3; ++seed) {
    ASSERT_TRUE(Put(*tier_, Block(seed, "a")).ok());
    keys.push_back(Block(seed, "a")->key());
  }
  ASSERT_TRUE(Put(*tier_, Block(9, "b")).ok());
  ASSERT_TRUE(leases_.Acquire(keys, clock_.Now() + absl::Hours(1)).ok());

  const absl::Status s = Put(*tier_, Block(4, "a"));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("tenant 'a'"));
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat(quota_)));
  EXPECT_EQ(tier_->TenantBytes("a"), quota_);
  EXPECT_TRUE(tier_->Contains(Block(9, "b")->key())) << "never another tenant's block";
  EXPECT_THAT(log_.Blocks(), IsEmpty());

  const absl::Status too_big = Put(*tier_, Block(5, "a", 4 * kKv));
  EXPECT_EQ(too_big.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(too_big.message(), HasSubstr("quota"));
}

TEST(HostTierQuotaTest, QuotaHoldsUnderConcurrentPutsAcrossShards) {
  HostTierOptions o;
  o.capacity_bytes = 64 << 20;  // no room pressure: only the quota evicts
  const uint64_t quota = 10 * Charge();
  o.tenant_quota = [quota](absl::string_view) { return quota; };
  EvictionLog log;
  o.on_evict = log.Callback();
  auto tier = MakeTier(o);
  std::atomic<int> over{0}, failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (uint64_t i = 0; i < 300; ++i) {
        if (!Put(*tier, Block(t * 1000 + i, "a")).ok()) ++failed;
        if (tier->TenantBytes("a") > quota) ++over;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(over, 0);
  EXPECT_LE(ForEachBytes(*tier, "a"), quota);
  EXPECT_EQ(ForEachBytes(*tier, "a"), tier->TenantBytes("a"));
  EXPECT_EQ(log.Blocks().size() + tier->Usage().blocks + failed, 1200u)
      << "every block is held, reported evicted, or was refused";
}

}  // namespace
}  // namespace kvc
