#include "cachesvc/lease_table.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "common/clock.h"
#include "tests/test_blocks.h"

namespace kvc {
namespace {

using testing::BlockSpec;
using testing::MakeKey;

BlockKey Key(uint64_t seed) { return MakeKey(BlockSpec{.seed = seed}); }

class LeaseTableTest : public ::testing::Test {
 protected:
  absl::Time In(absl::Duration d) const { return clock_.Now() + d; }

  FakeClock clock_;
  LeaseTable table_{&clock_};
};

TEST_F(LeaseTableTest, IdsAreNonzeroAndUnique) {
  absl::flat_hash_set<uint64_t> ids;
  for (int i = 0; i < 100; ++i) {
    auto id = table_.Acquire({Key(i % 3)}, In(absl::Seconds(10)));
    ASSERT_TRUE(id.ok()) << id.status();
    EXPECT_NE(*id, 0u);
    EXPECT_TRUE(ids.insert(*id).second) << "reused id " << *id;
  }
}

TEST_F(LeaseTableTest, KeyIsPinnedUntilExpiryExclusive) {
  const absl::Time expiry = In(absl::Seconds(10));
  ASSERT_TRUE(table_.Acquire({Key(1)}, expiry).ok());
  EXPECT_TRUE(table_.IsPinned(Key(1), clock_.Now()));
  EXPECT_TRUE(table_.IsPinned(Key(1), expiry - absl::Microseconds(1)));
  EXPECT_FALSE(table_.IsPinned(Key(1), expiry));
  EXPECT_FALSE(table_.IsPinned(Key(2), clock_.Now())) << "a key no lease covers";
}

TEST_F(LeaseTableTest, ReleaseUnpinsAndReportsKeysCovered) {
  auto id = table_.Acquire({Key(1), Key(2), Key(3)}, In(absl::Seconds(10)));
  ASSERT_TRUE(id.ok());
  auto n = table_.Release(*id);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 3u);
  EXPECT_FALSE(table_.IsPinned(Key(1), clock_.Now()));
  EXPECT_EQ(table_.PinnedKeys(clock_.Now()), 0u);
}

TEST_F(LeaseTableTest, DuplicateKeysInOneLeaseCountOnce) {
  auto id = table_.Acquire({Key(1), Key(1), Key(2)}, In(absl::Seconds(10)));
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(table_.PinnedKeys(clock_.Now()), 2u);
  EXPECT_EQ(*table_.Release(*id), 2u);
  EXPECT_FALSE(table_.IsPinned(Key(1), clock_.Now()));
}

TEST_F(LeaseTableTest, OverlappingLeasesPinIndependently) {
  auto a = table_.Acquire({Key(1), Key(2)}, In(absl::Seconds(10)));
  auto b = table_.Acquire({Key(2), Key(3)}, In(absl::Seconds(20)));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(table_.PinnedKeys(clock_.Now()), 3u);

  ASSERT_TRUE(table_.Release(*a).ok());
  EXPECT_FALSE(table_.IsPinned(Key(1), clock_.Now()));
  EXPECT_TRUE(table_.IsPinned(Key(2), clock_.Now())) << "lease b still covers key 2";
  EXPECT_TRUE(table_.IsPinned(Key(3), clock_.Now()));

  clock_.Advance(absl::Seconds(20));
  EXPECT_FALSE(table_.IsPinned(Key(2), clock_.Now()));
  EXPECT_EQ(table_.PinnedKeys(clock_.Now()), 0u);
}

// Releasing the longer of two leases must not leave the key pinned until the
// released lease's expiry.
TEST_F(LeaseTableTest, ReleasingLongerLeaseLeavesShorterExpiry) {
  auto longer = table_.Acquire({Key(1)}, In(absl::Seconds(60)));
  auto shorter = table_.Acquire({Key(1)}, In(absl::Seconds(10)));
  ASSERT_TRUE(longer.ok() && shorter.ok());
  ASSERT_TRUE(table_.Release(*longer).ok());
  EXPECT_TRUE(table_.IsPinned(Key(1), In(absl::Seconds(5))));
  EXPECT_FALSE(table_.IsPinned(Key(1), In(absl::Seconds(15))));
}

TEST_F(LeaseTableTest, UnknownReleasedOrExpiredLeaseIsNotFound) {
  EXPECT_EQ(table_.Release(12345).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(table_.Release(0).status().code(), absl::StatusCode::kNotFound);

  auto id = table_.Acquire({Key(1)}, In(absl::Seconds(10)));
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(table_.Release(*id).ok());
  EXPECT_EQ(table_.Release(*id).status().code(), absl::StatusCode::kNotFound);

  auto expiring = table_.Acquire({Key(2)}, In(absl::Seconds(10)));
  ASSERT_TRUE(expiring.ok());
  clock_.Advance(absl::Seconds(10));
  EXPECT_EQ(table_.Release(*expiring).status().code(), absl::StatusCode::kNotFound)
      << "a lease that expired but was not yet dropped";
}

TEST_F(LeaseTableTest, RejectsEmptyAndAlreadyExpiredLeases) {
  EXPECT_EQ(table_.Acquire({}, In(absl::Seconds(1))).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(table_.Acquire({Key(1)}, clock_.Now()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(table_.IsPinned(Key(1), clock_.Now()));
}

TEST_F(LeaseTableTest, ExpireUntilDropsExpiredLeasesOnly) {
  auto early = table_.Acquire({Key(1)}, In(absl::Seconds(5)));
  auto late = table_.Acquire({Key(2)}, In(absl::Seconds(50)));
  ASSERT_TRUE(early.ok() && late.ok());
  table_.ExpireUntil(In(absl::Seconds(5)));
  EXPECT_EQ(table_.LeaseCount(), 1u);
  EXPECT_EQ(table_.Release(*early).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*table_.Release(*late), 1u);
}

TEST_F(LeaseTableTest, AcquireDropsExpiredLeasesSoMemoryIsBounded) {
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(table_.Acquire({Key(i)}, In(absl::Seconds(1))).ok());
  }
  EXPECT_EQ(table_.LeaseCount(), 1000u);
  clock_.Advance(absl::Seconds(2));
  ASSERT_TRUE(table_.Acquire({Key(0)}, In(absl::Seconds(1))).ok());
  EXPECT_EQ(table_.LeaseCount(), 1u);
  EXPECT_EQ(table_.PinnedKeys(clock_.Now()), 1u);
}

TEST_F(LeaseTableTest, ConcurrentAcquireReleaseAndIsPinned) {
  // Key 0 stays pinned throughout by a long lease; the workers churn others.
  ASSERT_TRUE(table_.Acquire({Key(0)}, In(absl::Hours(1))).ok());
  std::atomic<bool> key0_unpinned{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        auto id = table_.Acquire({Key(1 + (i + t) % 16), Key(0)}, In(absl::Seconds(1 + i % 3)));
        if (!id.ok()) continue;
        if (!table_.IsPinned(Key(0), clock_.Now())) key0_unpinned = true;
        if (i % 2 == 0) (void)table_.Release(*id);
        if (t == 0 && i % 100 == 0) clock_.Advance(absl::Seconds(1));
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_FALSE(key0_unpinned);
  table_.ExpireUntil(In(absl::Seconds(10)));
  EXPECT_EQ(table_.LeaseCount(), 1u);
  EXPECT_EQ(table_.PinnedKeys(clock_.Now()), 1u);
}

}  // namespace
}  // namespace kvc
