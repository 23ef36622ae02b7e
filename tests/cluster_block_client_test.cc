// ClusterBlockClient against real kvcached children on loopback, over gRPC
// and over UCX (tcp on lo):
//   - blocks spread over the members as placement says (each member's own
//     Stats), every one found again, Lookup across members;
//   - a member SIGKILLed: its blocks are misses within the member timeout,
//     writes go to the others, no call fails; restarted: used again after
//     its backoff, and what went elsewhere meanwhile is still found;
//   - a member SIGSTOPped (slow, not gone): a miss after the timeout, then
//     skipped at once;
//   - a member added: only its share of keys changes place, and old keys
//     are still found where they are;
//   - replicas = 2 with write_through: a member killed loses nothing;
//   - membership from DNS (a resolver the test controls, members on
//     127.0.0.{2,3,4}): records added, failing and removed;
//   - the worker's ServiceLink over several members (and its metrics), and
//     over one (the plain client, as before).
#include "worker/kv/cluster_block_client.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "tests/kvcached_child.h"
#include "tests/server_fixture.h"
#include "tests/temp_dir.h"
#include "tests/test_blocks.h"
#include "worker/kv/cluster_metrics.h"
#include "worker/kv/placement.h"
#include "worker/kv/service_link.h"

namespace kvc {
namespace {

namespace v1 = ::kvcache::v1;

constexpr absl::Duration kMemberTimeout = absl::Seconds(1);
constexpr absl::Duration kBackoff = absl::Seconds(1);

testing::BlockSpec Spec(uint64_t seed, uint32_t layer = 0) {
  testing::BlockSpec s;
  s.tenant = "a";  // the children's tokens file: tenant a
  s.model = "m";
  s.layer = layer;
  s.seed = seed;
  return s;
}

std::vector<uint64_t> Seeds(uint64_t first, int n) {
  std::vector<uint64_t> out;
  for (int i = 0; i < n; ++i) out.push_back(first + i);
  return out;
}

std::vector<BlockKey> Keys(const std::vector<uint64_t>& seeds, uint32_t layer = 0) {
  std::vector<BlockKey> out;
  for (uint64_t s : seeds) out.push_back(testing::MakeKey(Spec(s, layer)));
  return out;
}

std::vector<Hash128> Hashes(const std::vector<uint64_t>& seeds) {
  std::vector<Hash128> out;
  for (uint64_t s : seeds) out.push_back(testing::MakeKey(Spec(s)).hash);
  return out;
}

// The member that placement puts `seed`'s block on, among `names`.
std::string Owner(const std::vector<std::string>& names, uint64_t seed) {
  const Placement p(names);
  const BlockKey k = testing::MakeKey(Spec(seed));
  return p.members()[p.First(Placement::BlockId(k.tenant, k.model, k.hash))];
}

// A port free on every one of `hosts` (checked by binding it on each).
int FreePortOn(const std::vector<std::string>& hosts) {
  for (int attempt = 0; attempt < 50; ++attempt) {
    int port = 0;
    bool ok = true;
    std::vector<int> fds;
    for (const std::string& h : hosts) {
      const int fd = socket(AF_INET, SOCK_STREAM, 0);
      fds.push_back(fd);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(static_cast<uint16_t>(port));
      inet_pton(AF_INET, h.c_str(), &a.sin_addr);
      if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
        ok = false;
        break;
      }
      socklen_t len = sizeof(a);
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
      port = ntohs(a.sin_port);
    }
    for (int fd : fds) close(fd);
    if (ok) return port;
  }
  return 0;
}

// Waits (up to 5 s) until every thread of `pid` is stopped: a SIGSTOP
// takes effect asynchronously.
bool AwaitStopped(pid_t pid) {
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (absl::Now() < deadline) {
    bool all = true;
    const std::string task_dir = absl::StrCat("/proc/", pid, "/task");
    for (const auto& task : std::filesystem::directory_iterator(task_dir)) {
      std::ifstream stat(task.path() / "stat");
      std::string line;
      std::getline(stat, line);
      // "tid (comm) S ...": the state follows the last ')'.
      const size_t paren = line.rfind(')');
      if (paren == std::string::npos || paren + 2 >= line.size() || line[paren + 2] != 'T') all = false;
    }
    if (all) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return false;
}

struct GetResult {
  absl::Status status;
  absl::Duration took;
  std::set<uint64_t> hits, misses;
  int deliveries = 0;
  bool bad_bytes = false;
};

struct Param {
  const char* name;
  const char* transport;  // grpc | ucx
};

void PrintTo(const Param& p, std::ostream* os) { *os << p.name; }

class ClusterTest : public ::testing::TestWithParam<Param> {
 protected:
  bool ucx() const { return std::string(GetParam().transport) == "ucx"; }

  testing::KvcachedChild* StartMember(const std::string& host = "127.0.0.1", int port = 0, int ucx_port = 0) {
    dirs_.push_back(std::make_unique<testing::TempDir>());
    testing::KvcachedChildOptions o;
    o.ucx = ucx();
    o.host = host;
    o.port = port;
    o.ucx_port = ucx_port;
    o.host_capacity = "16MiB";
    members_.push_back(std::make_unique<testing::KvcachedChild>(dirs_.back()->path(), o));
    EXPECT_GT(members_.back()->port(), 0) << "kvcached did not start on " << host;
    return members_.back().get();
  }

  ClusterBlockClientOptions Options(const std::vector<testing::KvcachedChild*>& members) const {
    ClusterBlockClientOptions o;
    o.member.transport = GetParam().transport;
    o.member.grpc.token = testing::kTokenA;
    o.member.ucx.ucx.tls = "tcp";
    o.member.ucx.ucx.net_devices = "lo";
    for (const testing::KvcachedChild* m : members) {
      o.cluster.members.push_back(ClusterMember{m->address(), ucx() ? m->ucx_port() : 0});
    }
    o.cluster.member_timeout = kMemberTimeout;
    o.cluster.down_backoff = kBackoff;
    o.reconnect = absl::Milliseconds(100);
    return o;
  }

  static std::unique_ptr<ClusterBlockClient> Client(ClusterBlockClientOptions o) {
    auto c = ClusterBlockClient::Create(std::move(o));
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  static std::vector<std::string> Names(const std::vector<testing::KvcachedChild*>& members) {
    std::vector<std::string> out;
    for (const auto* m : members) out.push_back(m->address());
    return out;
  }

  // Puts the blocks of `seeds` (of `layer`) in batches of 32.
  static absl::Status Put(BlockClient& c, const std::vector<uint64_t>& seeds, bool write_through = false,
                          uint32_t layer = 0) {
    for (size_t at = 0; at < seeds.size(); at += 32) {
      std::vector<std::string> wire;
      for (size_t i = at; i < std::min(seeds.size(), at + 32); ++i) {
        wire.push_back(testing::MakeBlockProto(Spec(seeds[i], layer)).SerializeAsString());
      }
      const std::vector<absl::string_view> views(wire.begin(), wire.end());
      if (absl::Status s = c.Put(views, write_through); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  // Gets the layer-0 blocks of `seeds` and checks the bytes of every hit.
  static GetResult Get(BlockClient& c, const std::vector<uint64_t>& seeds) {
    GetResult r;
    const std::vector<BlockKey> keys = Keys(seeds);
    std::vector<int> seen(keys.size());
    const absl::Time t0 = absl::Now();
    r.status = c.Get(keys, [&](GotBlock& got) {
      ++r.deliveries;
      if (got.index >= keys.size() || seen[got.index]++ > 0) {
        r.bad_bytes = true;  // an index twice or out of range
        return;
      }
      const uint64_t seed = seeds[got.index];
      if (!got.status.ok()) {
        EXPECT_TRUE(absl::IsNotFound(got.status)) << got.status;
        r.misses.insert(seed);
        return;
      }
      const v1::Block want = testing::MakeBlockProto(Spec(seed));
      if (got.block.k != want.k() || got.block.v != want.v() || !(got.block.key == keys[got.index])) {
        r.bad_bytes = true;
      }
      r.hits.insert(seed);
    });
    r.took = absl::Now() - t0;
    return r;
  }

  static uint64_t HostBlocks(const testing::KvcachedChild& m) {
    ClientOptions o;
    o.address = m.address();
    o.token = testing::kTokenA;
    o.timeout = absl::Seconds(10);
    auto c = CacheClient::Connect(o);
    if (!c.ok()) return ~0ull;
    auto s = (*c)->Stats();
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? s->host().blocks() : ~0ull;
  }

  std::vector<std::unique_ptr<testing::TempDir>> dirs_;
  std::vector<std::unique_ptr<testing::KvcachedChild>> members_;
};

TEST_P(ClusterTest, PlacesBlocksOverMembersAndFindsThemAgain) {
  std::vector<testing::KvcachedChild*> ms = {StartMember(), StartMember(), StartMember()};
  auto c = Client(Options(ms));
  ASSERT_NE(c, nullptr);
  const std::vector<std::string> names = Names(ms);
  EXPECT_EQ(c->members(), Placement(names).members());
  const std::vector<uint64_t> seeds = Seeds(1, 240);
  ASSERT_TRUE(Put(*c, seeds).ok());
  ASSERT_TRUE(Put(*c, Seeds(1, 120), false, /*layer=*/1).ok());  // layer 1 of the first 120 only

  // Every member holds exactly the blocks placement gives it, all layers of a
  // block on one member.
  std::map<std::string, uint64_t> expected;
  for (uint64_t s : seeds) expected[Owner(names, s)] += s <= 120 ? 2 : 1;
  for (const auto* m : ms) {
    EXPECT_EQ(HostBlocks(*m), expected[m->address()]) << m->address();
    EXPECT_GT(expected[m->address()], 360u / 3 / 2) << "placement left " << m->address() << " nearly empty";
  }

  const GetResult r = Get(*c, seeds);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.hits.size(), seeds.size());
  EXPECT_EQ(r.deliveries, static_cast<int>(seeds.size()));
  EXPECT_FALSE(r.bad_bytes);

  // Lookup walks the chain across members: every layer-0 block, the first
  // 120 for layers {0, 1}, and a hole in the middle ends the chain.
  const std::vector<uint32_t> l0 = {0}, l01 = {0, 1};
  EXPECT_EQ(*c->Lookup("a", "m", l0, Hashes(seeds)), 240u);
  EXPECT_EQ(*c->Lookup("a", "m", l01, Hashes(seeds)), 120u);
  std::vector<Hash128> holed = Hashes(Seeds(1, 50));
  holed.push_back(testing::MakeKey(Spec(99999)).hash);
  for (const Hash128& h : Hashes(Seeds(51, 50))) holed.push_back(h);
  EXPECT_EQ(*c->Lookup("a", "m", l0, holed), 50u);
  EXPECT_EQ(c->Lookup("b", "m", l0, Hashes(seeds)).status().code(), absl::StatusCode::kPermissionDenied)
      << "a refusal of every member is the caller's error";

  EXPECT_TRUE(*c->Healthy());
  EXPECT_EQ(c->transport(), GetParam().transport);
  const ClusterStats st = c->stats();
  EXPECT_EQ(st.members, 3);
  EXPECT_EQ(st.down, 0);
  EXPECT_EQ(st.fallback_puts, 0u);
  EXPECT_EQ(st.down_misses, 0u);
  EXPECT_EQ(st.member_failures, 0u);
}

TEST_P(ClusterTest, KilledMemberCostsMissesAndRestartedMemberServesAgain) {
  std::vector<testing::KvcachedChild*> ms = {StartMember(), StartMember(), StartMember()};
  auto c = Client(Options(ms));
  ASSERT_NE(c, nullptr);
  const std::vector<std::string> names = Names(ms);
  const std::vector<uint64_t> before = Seeds(1, 150);
  ASSERT_TRUE(Put(*c, before).ok());
  testing::KvcachedChild& victim = *ms[1];
  std::set<uint64_t> on_victim;
  for (uint64_t s : before) {
    if (Owner(names, s) == victim.address()) on_victim.insert(s);
  }
  ASSERT_FALSE(on_victim.empty());
  victim.Kill(SIGKILL);

  // Its blocks (in its host tier, not durable) are misses; the call is not an error.
  GetResult r = Get(*c, before);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_LT(r.took, 2 * kMemberTimeout);
  EXPECT_EQ(r.misses, on_victim);
  EXPECT_EQ(r.hits.size(), before.size() - on_victim.size());
  EXPECT_FALSE(r.bad_bytes);
  // The chain ends at the first hash the victim held.
  const absl::Time t0 = absl::Now();
  absl::StatusOr<uint32_t> cached = c->Lookup("a", "m", std::vector<uint32_t>{0}, Hashes(before));
  ASSERT_TRUE(cached.ok()) << cached.status();
  EXPECT_LT(absl::Now() - t0, 2 * kMemberTimeout);
  EXPECT_EQ(*cached, *on_victim.begin() - 1);
  EXPECT_GE(c->stats().down_misses, on_victim.size());

  // Writes go to the others; all of them are found.
  const std::vector<uint64_t> during = Seeds(1001, 90);
  ASSERT_TRUE(Put(*c, during).ok());
  int during_on_victim = 0;
  for (uint64_t s : during) during_on_victim += Owner(names, s) == victim.address();
  EXPECT_EQ(c->stats().fallback_puts, static_cast<uint64_t>(during_on_victim));
  r = Get(*c, during);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.hits.size(), during.size());
  EXPECT_TRUE(*c->Healthy());

  // Restarted: after its backoff it takes its share again.
  ASSERT_TRUE(victim.Restart());
  const absl::Time restarted = absl::Now();
  uint64_t seed = 2001;
  uint64_t on_it = 0;
  while (absl::Now() - restarted < absl::Seconds(15)) {
    ASSERT_TRUE(Put(*c, Seeds(seed, 30)).ok());
    seed += 30;
    on_it = HostBlocks(victim);
    if (on_it > 0) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_GT(on_it, 0u) << "the restarted member got no block back within 15 s";
  std::printf("restarted member used again after %.2f s\n", absl::ToDoubleSeconds(absl::Now() - restarted));
  EXPECT_EQ(c->stats().down, 0);
  // What went to a fallback member while it was away is still found there.
  const uint64_t fallback_hits = c->stats().fallback_hits;
  r = Get(*c, during);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.hits.size(), during.size());
  EXPECT_EQ(c->stats().fallback_hits - fallback_hits, static_cast<uint64_t>(during_on_victim));
}

TEST_P(ClusterTest, StoppedMemberIsAMissAfterTheTimeoutThenSkipped) {
  std::vector<testing::KvcachedChild*> ms = {StartMember(), StartMember(), StartMember()};
  auto c = Client(Options(ms));
  ASSERT_NE(c, nullptr);
  const std::vector<std::string> names = Names(ms);
  const std::vector<uint64_t> seeds = Seeds(1, 90);
  ASSERT_TRUE(Put(*c, seeds).ok());
  ASSERT_TRUE(Get(*c, seeds).status.ok());  // every member's connection is up
  testing::KvcachedChild& slow = *ms[2];
  int on_slow = 0;
  for (uint64_t s : seeds) on_slow += Owner(names, s) == slow.address();
  slow.Signal(SIGSTOP);  // connected, but answers nothing
  ASSERT_TRUE(AwaitStopped(slow.pid())) << "kvcached did not stop";

  GetResult r = Get(*c, seeds);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_GE(r.took, kMemberTimeout * 0.9) << "the stopped member should cost its timeout once";
  EXPECT_LT(r.took, 2 * kMemberTimeout);
  EXPECT_EQ(r.misses.size(), static_cast<size_t>(on_slow));
  // Now it is down: skipped without waiting.
  r = Get(*c, seeds);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_LT(r.took, kMemberTimeout / 2);
  EXPECT_EQ(r.misses.size(), static_cast<size_t>(on_slow));
  EXPECT_EQ(c->stats().down, 1);
  ASSERT_TRUE(Put(*c, Seeds(500, 60)).ok());
  slow.Signal(SIGCONT);
}

TEST_P(ClusterTest, AddedMemberTakesOnlyItsShare) {
  std::vector<testing::KvcachedChild*> ms = {StartMember(), StartMember(), StartMember()};
  auto three = Client(Options(ms));
  ASSERT_NE(three, nullptr);
  const std::vector<uint64_t> seeds = Seeds(1, 400);
  ASSERT_TRUE(Put(*three, seeds).ok());
  const std::vector<std::string> old_names = Names(ms);
  testing::KvcachedChild* added = StartMember();
  ms.push_back(added);
  auto four = Client(Options(ms));
  ASSERT_NE(four, nullptr);
  const std::vector<std::string> new_names = Names(ms);

  std::set<uint64_t> moved;
  for (uint64_t s : seeds) {
    const std::string now = Owner(new_names, s);
    if (now == Owner(old_names, s)) continue;
    EXPECT_EQ(now, added->address()) << "seed " << s << " moved between old members";
    moved.insert(s);
  }
  const double share = static_cast<double>(moved.size()) / seeds.size();
  EXPECT_GT(share, 0.15);
  EXPECT_LT(share, 0.35);
  std::printf("member added: %zu of %zu keys (%.1f%%) now place on it\n", moved.size(), seeds.size(), 100 * share);

  // Nothing was copied; every old key is still found (the moved ones on
  // their old member, now their second choice), and the chain is whole.
  EXPECT_EQ(HostBlocks(*added), 0u);
  const GetResult r = Get(*four, seeds);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.hits.size(), seeds.size());
  EXPECT_EQ(four->stats().fallback_hits, moved.size());
  EXPECT_EQ(*four->Lookup("a", "m", std::vector<uint32_t>{0}, Hashes(seeds)), seeds.size());

  // New blocks: the newcomer takes its share.
  const std::vector<uint64_t> fresh = Seeds(1001, 200);
  ASSERT_TRUE(Put(*four, fresh).ok());
  uint64_t its = 0;
  for (uint64_t s : fresh) its += Owner(new_names, s) == added->address();
  EXPECT_EQ(HostBlocks(*added), its);
  EXPECT_GT(its, 200u / 4 / 2);
}

TEST_P(ClusterTest, WriteThroughReplicasSurviveAMemberKilled) {
  std::vector<testing::KvcachedChild*> ms = {StartMember(), StartMember(), StartMember()};
  ClusterBlockClientOptions o = Options(ms);
  o.cluster.replicas = 2;
  auto c = Client(o);
  ASSERT_NE(c, nullptr);
  const std::vector<std::string> names = Names(ms);
  const std::vector<uint64_t> seeds = Seeds(1, 90);
  ASSERT_TRUE(Put(*c, seeds, /*write_through=*/true).ok());
  // Each block on its first two members.
  const Placement p(names);
  std::map<std::string, uint64_t> expected;
  for (uint64_t s : seeds) {
    const BlockKey k = testing::MakeKey(Spec(s));
    for (int m : p.Rank(Placement::BlockId(k.tenant, k.model, k.hash), 2)) ++expected[p.members()[m]];
  }
  for (const auto* m : ms) EXPECT_EQ(HostBlocks(*m), expected[m->address()]) << m->address();
  // Without write_through: one copy.
  ASSERT_TRUE(Put(*c, Seeds(1001, 30)).ok());
  uint64_t total = 0;
  for (const auto* m : ms) total += HostBlocks(*m);
  EXPECT_EQ(total, 2 * 90u + 30u);

  for (testing::KvcachedChild* victim : {ms[0], ms[2]}) {
    victim->Kill(SIGKILL);
    const GetResult r = Get(*c, seeds);
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.hits.size(), seeds.size()) << "a write-through block was lost with " << victim->address();
    EXPECT_LT(r.took, 2 * kMemberTimeout);
    EXPECT_EQ(*c->Lookup("a", "m", std::vector<uint32_t>{0}, Hashes(seeds)), seeds.size());
    ASSERT_TRUE(victim->Restart());                      // durable: its copies come back from RocksDB
    absl::SleepFor(kBackoff + absl::Milliseconds(300));  // and it is asked again
  }
  EXPECT_EQ(c->stats().down_misses, 0u);
}

// Members on 127.0.0.{2,3,4} sharing one port, as DNS gives addresses, not
// ports. gRPC only: UCX's tcp transport does not reach loopback aliases
// (the multi-host test, tests/netns_cluster_test.sh, has DNS over UCX).
class ClusterDnsTest : public ClusterTest {};

TEST_P(ClusterDnsTest, MembershipFromDnsFollowsTheRecords) {
  const std::vector<std::string> ips = {"127.0.0.2", "127.0.0.3", "127.0.0.4"};
  const int port = FreePortOn(ips), ucx_port = ucx() ? FreePortOn(ips) : 0;
  ASSERT_GT(port, 0);
  std::vector<testing::KvcachedChild*> ms;
  for (const std::string& ip : ips) ms.push_back(StartMember(ip, port, ucx_port));
  for (const auto* m : ms) ASSERT_EQ(m->port(), port);

  absl::Mutex mu;
  std::vector<std::string> records = {ips[0], ips[1]};
  bool failing = false;
  int resolved = 0;
  ClusterBlockClientOptions o = Options({});
  o.cluster.members.clear();
  o.cluster.dns = absl::StrCat("kvcached.test:", port);
  o.cluster.ucx_port = ucx_port;
  o.cluster.refresh_interval = absl::Milliseconds(100);
  o.resolve = [&](const std::string& host) -> absl::StatusOr<std::vector<std::string>> {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(host, "kvcached.test");
    ++resolved;
    if (failing) return absl::UnavailableError("SERVFAIL");
    return records;
  };
  auto c = Client(o);
  ASSERT_NE(c, nullptr);
  auto names = [&](std::vector<std::string> hosts) {
    for (std::string& h : hosts) h = absl::StrCat(h, ":", port);
    return hosts;
  };
  auto await_members = [&](const std::vector<std::string>& want) {
    const absl::Time deadline = absl::Now() + absl::Seconds(5);
    while (c->members() != want && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
    return c->members() == want;
  };
  ASSERT_EQ(c->members(), names({ips[0], ips[1]}));
  const std::vector<uint64_t> seeds = Seeds(1, 200);
  ASSERT_TRUE(Put(*c, seeds).ok());
  EXPECT_EQ(HostBlocks(*ms[2]), 0u) << "not a member yet";

  // A failing resolver keeps the members.
  {
    absl::MutexLock lock(&mu);
    failing = true;
    resolved = 0;
  }
  {
    absl::MutexLock lock(&mu);
    mu.AwaitWithTimeout(absl::Condition(
                            +[](int* n) { return *n >= 3; }, &resolved),
                        absl::Seconds(5));
  }
  EXPECT_EQ(c->members(), names({ips[0], ips[1]}));
  EXPECT_GT(c->stats().refresh_errors, 0u);

  // A record added: a third member, only its share moves.
  {
    absl::MutexLock lock(&mu);
    failing = false;
    records = ips;
  }
  ASSERT_TRUE(await_members(names(ips)));
  GetResult r = Get(*c, seeds);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.hits.size(), seeds.size());
  const std::vector<uint64_t> fresh = Seeds(1001, 150);
  ASSERT_TRUE(Put(*c, fresh).ok());
  uint64_t its = 0;
  for (uint64_t s : fresh) its += Owner(names(ips), s) == ms[2]->address();
  EXPECT_EQ(HostBlocks(*ms[2]), its);
  EXPECT_GT(its, 0u);

  // A record removed: only the keys it held are lost to the cluster.
  {
    absl::MutexLock lock(&mu);
    records = {ips[0], ips[2]};
  }
  ASSERT_TRUE(await_members(names({ips[0], ips[2]})));
  r = Get(*c, seeds);
  ASSERT_TRUE(r.status.ok()) << r.status;
  for (uint64_t s : seeds) {
    const bool held_by_removed = Owner(names({ips[0], ips[1]}), s) == ms[1]->address();
    EXPECT_EQ(r.hits.count(s), held_by_removed ? 0u : 1u) << "seed " << s;
  }
  const ClusterStats st = c->stats();
  EXPECT_EQ(st.membership_changes, 2u);
  EXPECT_GT(st.refreshes, 3u);
}

// The worker's link: several members make a cluster client (with its
// metrics), one member the plain client as before.
TEST_P(ClusterTest, ServiceLinkSpreadsTheWorkersBlocksOverTheMembers) {
  std::vector<testing::KvcachedChild*> ms = {StartMember(), StartMember(), StartMember()};
  const ClusterBlockClientOptions co = Options(ms);
  ServiceLinkOptions o;
  o.client = co.member;
  o.cluster = co.cluster;
  o.sync.tenant = "a";
  o.sync.model = "m";
  absl::StatusOr<std::unique_ptr<ServiceLink>> link = ServiceLink::Start(o);
  ASSERT_TRUE(link.ok()) << link.status();
  ASSERT_NE((*link)->cluster(), nullptr);
  const std::vector<uint64_t> seeds = Seeds(1, 120);
  for (uint64_t s : seeds) {
    ASSERT_TRUE((*link)->writer().Submit(testing::MakeBlockProto(Spec(s)).SerializeAsString()).ok());
  }
  ASSERT_TRUE((*link)->writer().Flush(absl::Seconds(20)).ok());
  EXPECT_EQ((*link)->writer().stats().stored, seeds.size());
  uint64_t total = 0;
  for (const auto* m : ms) {
    const uint64_t n = HostBlocks(*m);
    EXPECT_GT(n, 0u) << m->address();
    total += n;
  }
  EXPECT_EQ(total, seeds.size());
  EXPECT_EQ(Get((*link)->client(), seeds).hits.size(), seeds.size());
  EXPECT_EQ((*link)->client().transport(), GetParam().transport);

  // Its metrics, as a scrape reads them.
  ms[0]->Kill(SIGKILL);
  EXPECT_TRUE(Get((*link)->client(), seeds).status.ok());
  std::map<std::string, double> values;
  for (const prometheus::MetricFamily& f : ClusterMetrics((*link)->cluster()).Collect()) {
    for (const prometheus::ClientMetric& m : f.metric) {
      const std::string name = m.label.empty() ? f.name : absl::StrCat(f.name, "{", m.label[0].value, "}");
      values[name] = f.type == prometheus::MetricType::Counter ? m.counter.value : m.gauge.value;
    }
  }
  EXPECT_EQ(values["kvc_worker_cache_members{live}"], 2);
  EXPECT_EQ(values["kvc_worker_cache_members{down}"], 1);
  EXPECT_GE(values["kvc_worker_cache_member_failures_total"], 1);
  EXPECT_GT(values["kvc_worker_cache_down_misses_total"], 0);
  EXPECT_EQ(values.count("kvc_worker_cache_fallback_puts_total"), 1u);
  EXPECT_EQ(values.count("kvc_worker_cache_membership_refreshes_total{ok}"), 1u);

  // One member: no cluster.
  ServiceLinkOptions one = o;
  one.cluster = *ParseClusterTarget(ms[1]->address());
  one.cluster.ucx_port = ucx() ? ms[1]->ucx_port() : 0;
  absl::StatusOr<std::unique_ptr<ServiceLink>> single = ServiceLink::Start(one);
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_EQ((*single)->cluster(), nullptr);
  ASSERT_TRUE(Put((*single)->client(), Seeds(500, 10)).ok());
  EXPECT_EQ((*single)->client().transport(), GetParam().transport);
}

INSTANTIATE_TEST_SUITE_P(Transports, ClusterTest, ::testing::Values(Param{"grpc", "grpc"}, Param{"ucx_tcp", "ucx"}),
                         [](const ::testing::TestParamInfo<Param>& p) { return std::string(p.param.name); });
INSTANTIATE_TEST_SUITE_P(Transports, ClusterDnsTest, ::testing::Values(Param{"grpc", "grpc"}),
                         [](const ::testing::TestParamInfo<Param>& p) { return std::string(p.param.name); });

// --- without a running member ---------------------------------------------------

TEST(ClusterTargetTest, ParsesOneListOrDns) {
  absl::StatusOr<ClusterOptions> o = ParseClusterTarget("10.0.0.1:50051");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->single());
  EXPECT_EQ(o->members[0].address, "10.0.0.1:50051");
  o = ParseClusterTarget("a:1, b:2,[::1]:3");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->single());
  ASSERT_EQ(o->members.size(), 3u);
  EXPECT_EQ(o->members[1].address, "b:2");
  EXPECT_EQ(o->members[2].address, "[::1]:3");
  o = ParseClusterTarget("dns:///kvcached.cache.svc.cluster.local:50051");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->single());
  EXPECT_EQ(o->dns, "kvcached.cache.svc.cluster.local:50051");
  for (const char* bad : {"", "a", "a:1,,b:2", "a:0", "a:70000", "dns://x:1", "dns:///x", "::1:5"}) {
    EXPECT_EQ(ParseClusterTarget(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  ClusterOptions c = *ParseClusterTarget("a:1,b:2");
  c.replicas = 3;
  EXPECT_EQ(c.Validate().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ClusterTargetTest, UcxTransportNeedsTheMembersUcxPort) {
  ClusterBlockClientOptions o;
  o.cluster = *ParseClusterTarget("127.0.0.1:1,127.0.0.1:2");
  o.member.transport = "ucx";
  EXPECT_EQ(ClusterBlockClient::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.cluster.ucx_port = 7;
  EXPECT_TRUE(ClusterBlockClient::Create(o).ok());
}

TEST(ClusterNoMemberTest, AClusterWhollyAwayIsUnavailableQuickly) {
  // Ports nobody listens on: connections are refused at once.
  ClusterBlockClientOptions o;
  const int a = FreePortOn({"127.0.0.1"});
  int b = FreePortOn({"127.0.0.1"});
  while (b == a) b = FreePortOn({"127.0.0.1"});
  o.cluster = *ParseClusterTarget(absl::StrCat("127.0.0.1:", a, ",127.0.0.1:", b));
  o.cluster.member_timeout = absl::Seconds(1);
  o.member.transport = "grpc";
  auto c = ClusterBlockClient::Create(o);
  ASSERT_TRUE(c.ok()) << c.status();
  const std::string wire = testing::MakeBlockProto(Spec(1)).SerializeAsString();
  const std::vector<absl::string_view> views = {wire};
  const absl::Time t0 = absl::Now();
  EXPECT_EQ((*c)->Put(views, false).code(), absl::StatusCode::kUnavailable);
  int delivered = 0;
  EXPECT_EQ((*c)->Get(Keys({1, 2}), [&](GotBlock&) { ++delivered; }).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(delivered, 0);
  EXPECT_EQ((*c)->Lookup("a", "m", std::vector<uint32_t>{0}, Hashes({1})).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_FALSE((*c)->Healthy().ok());
  EXPECT_LT(absl::Now() - t0, absl::Seconds(4));
  EXPECT_EQ((*c)->stats().down, 2);
  // A block that fails to parse is the caller's error, whatever the members.
  const std::vector<absl::string_view> junk = {"\xff\xff"};
  EXPECT_EQ((*c)->Put(junk, false).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ClusterNoMemberTest, DnsNameThatDoesNotResolveYetIsNotAnError) {
  ClusterBlockClientOptions o;
  o.cluster.dns = "kvcached.invalid:50051";
  o.member.transport = "grpc";
  o.resolve = [](const std::string&) -> absl::StatusOr<std::vector<std::string>> {
    return absl::UnavailableError("NXDOMAIN");
  };
  auto c = ClusterBlockClient::Create(o);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE((*c)->members().empty());
  EXPECT_EQ((*c)->Get(Keys({1}), [](GotBlock&) {}).code(), absl::StatusCode::kUnavailable);
  EXPECT_GE((*c)->stats().refresh_errors, 1u);
}

}  // namespace
}  // namespace kvc
