// Rendezvous placement (worker/kv/placement.h): blocks spread evenly, and a
// membership change moves only the share of keys it must.
#include "worker/kv/placement.h"

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace kvc {
namespace {

std::vector<std::string> Members(int n, int first = 0) {
  std::vector<std::string> out;
  for (int i = first; i < first + n; ++i) out.push_back(absl::StrCat("10.0.0.", i + 1, ":50051"));
  return out;
}

// Ids of real keys: tenant "a", model "m", chain hashes of consecutive blocks.
std::vector<uint64_t> Ids(int n) {
  std::vector<uint64_t> out;
  Hash128 h;
  for (int i = 0; i < n; ++i) {
    const int32_t tokens[4] = {i, i + 1, i + 2, i + 3};
    h = ChainHash(h, tokens);
    out.push_back(Placement::BlockId("a", "m", h));
  }
  return out;
}

TEST(PlacementTest, SpreadsKeysEvenly) {
  for (int n : {2, 3, 5, 8}) {
    const Placement p(Members(n));
    const std::vector<uint64_t> ids = Ids(60000);
    std::vector<int> count(n);
    for (uint64_t id : ids) ++count[p.First(id)];
    // Chi-square over n-1 degrees of freedom: its 99.99th percentile is
    // below 30 for n <= 8 (the ids are fixed, so this never flakes).
    const double expected = static_cast<double>(ids.size()) / n;
    double chi2 = 0;
    for (int c : count) chi2 += (c - expected) * (c - expected) / expected;
    EXPECT_LT(chi2, 30.0) << n << " members";
    for (int c : count) EXPECT_NEAR(c, expected, 0.05 * expected) << n << " members";
  }
}

TEST(PlacementTest, AddingAMemberMovesItsShareOnlyOntoIt) {
  for (int n : {1, 3, 7}) {
    const Placement before(Members(n)), after(Members(n + 1));
    const std::string added = Members(1, n)[0];
    const std::vector<uint64_t> ids = Ids(40000);
    int moved = 0;
    for (uint64_t id : ids) {
      const std::string& was = before.members()[before.First(id)];
      const std::string& now = after.members()[after.First(id)];
      if (was == now) continue;
      ++moved;
      EXPECT_EQ(now, added) << "a key moved between two old members";
    }
    const double share = static_cast<double>(moved) / ids.size();
    EXPECT_NEAR(share, 1.0 / (n + 1), 0.02) << n << " -> " << n + 1 << " members";
  }
}

TEST(PlacementTest, RemovingAMemberMovesOnlyItsKeys) {
  const std::vector<std::string> all = Members(6);
  const Placement before(all);
  std::vector<std::string> rest = all;
  const std::string removed = rest[2];
  rest.erase(rest.begin() + 2);
  const Placement after(rest);
  std::map<std::string, int> moved_to;
  int moved = 0;
  for (uint64_t id : Ids(30000)) {
    const std::vector<int> rank = before.Rank(id, 2);
    const std::string& was = before.members()[rank[0]];
    const std::string& now = after.members()[after.First(id)];
    if (was != removed) {
      EXPECT_EQ(now, was) << "a key of a member that stayed moved";
      continue;
    }
    // It goes where it was second: its replica / fallback is already there.
    EXPECT_EQ(now, before.members()[rank[1]]);
    ++moved_to[now];
    ++moved;
  }
  EXPECT_NEAR(moved, 30000 / 6, 0.1 * 30000 / 6);
  // Spread over all the others, not dumped on one.
  EXPECT_EQ(moved_to.size(), 5u);
  for (const auto& [member, n] : moved_to) EXPECT_NEAR(n, moved / 5, 0.25 * moved / 5) << member;
}

TEST(PlacementTest, RankIsAPermutationHeadedByFirst) {
  const Placement p(Members(5));
  for (uint64_t id : Ids(500)) {
    const std::vector<int> rank = p.Rank(id, 5);
    ASSERT_EQ(rank.size(), 5u);
    EXPECT_EQ(rank[0], p.First(id));
    EXPECT_EQ(std::set<int>(rank.begin(), rank.end()).size(), 5u);
    EXPECT_EQ(p.Rank(id, 2), std::vector<int>(rank.begin(), rank.begin() + 2));
  }
  EXPECT_EQ(p.Rank(1, 9).size(), 5u);
  EXPECT_TRUE(Placement({}).Rank(1, 2).empty());
  EXPECT_EQ(Placement({}).First(1), -1);
}

TEST(PlacementTest, MemberOrderAndDuplicatesDoNotMatter) {
  std::vector<std::string> m = Members(4);
  const Placement a(m);
  std::vector<std::string> shuffled = {m[2], m[0], m[3], m[1], m[0]};
  const Placement b(shuffled);
  EXPECT_EQ(a.members(), b.members());
  for (uint64_t id : Ids(200)) EXPECT_EQ(a.members()[a.First(id)], b.members()[b.First(id)]);
}

// Placement::BlockId("a", "m", {0x0123456789abcdef, 0xfedcba9876543210}).
constexpr uint64_t kPinnedId = 6500710047029233759ull;

TEST(PlacementTest, BlockIdIsStableAndNamesTenantModelAndHash) {
  const Hash128 h{0x0123456789abcdefull, 0xfedcba9876543210ull};
  // Pinned: workers built at different times must place a block alike.
  EXPECT_EQ(Placement::BlockId("a", "m", h), Placement::BlockId("a", "m", h));
  EXPECT_NE(Placement::BlockId("a", "m", h), Placement::BlockId("b", "m", h));
  EXPECT_NE(Placement::BlockId("a", "m", h), Placement::BlockId("a", "n", h));
  EXPECT_NE(Placement::BlockId("a", "m", h), Placement::BlockId("a", "m", Hash128{h.hi, h.lo + 1}));
  // Length-prefixed: moving a byte between tenant and model is another key.
  EXPECT_NE(Placement::BlockId("ab", "c", h), Placement::BlockId("a", "bc", h));
  EXPECT_EQ(Placement::BlockId("a", "m", h), kPinnedId);
}

}  // namespace
}  // namespace kvc
