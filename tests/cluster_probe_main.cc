// cluster_probe: a ClusterBlockClient in a process of its own, for the
// multi-host test (tests/netns_cluster_test.sh), which runs it inside a
// network namespace against kvcached members in others. Each command acts
// on the synthetic layer-0 blocks of seeds [first, first + count) (tenant
// "a", model "m", as tests/test_blocks.h makes them), prints what it saw on
// one line and checks what the flags expect: exit 0 when all holds, 1 with
// the reason on stderr otherwise.
//
//   put      stores the blocks (batches of 32)
//   get      fetches them, verifies every byte; --expect_hits,
//            --expect_missing_on=ADDR (the misses are exactly the keys
//            placed first on ADDR), --expect_fallback_on=ADDR (that many
//            hits came from a second choice), --max_ms
//   lookup   the chain of their hashes; --expect_cached
//   stats    each member's host-tier blocks (its own Stats);
//            --expect_placed_on=ADDR: ADDR holds exactly the keys placed
//            first on it
//   members  waits (--wait_ms) until the membership has --expect_members
//            members (DNS refreshed every --refresh_ms), printing each change
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "tests/test_blocks.h"
#include "worker/cache_client.h"
#include "worker/kv/cluster_block_client.h"
#include "worker/kv/placement.h"

ABSL_FLAG(std::string, cache_service, "", "Members: h1:p1,h2:p2 or dns:///name:port");
ABSL_FLAG(int, cache_ucx_port, 0, "UCX port of every member (0: gRPC only)");
ABSL_FLAG(std::string, transport, "auto", "ucx, grpc or auto");
ABSL_FLAG(std::string, token, "", "Bearer token of tenant a");
ABSL_FLAG(int, member_timeout_ms, 1000, "Bound on every call to one member");
ABSL_FLAG(int, backoff_ms, 1000, "How long a failed member is skipped");
ABSL_FLAG(int, refresh_ms, 200, "DNS refresh interval");
ABSL_FLAG(int, replicas, 1, "Copies of write-through blocks");
ABSL_FLAG(bool, write_through, false, "put: durable");
ABSL_FLAG(uint64_t, first, 1, "First seed");
ABSL_FLAG(int, count, 100, "Seeds");
ABSL_FLAG(int, expect_hits, -1, "get: hits expected (-1: no check)");
ABSL_FLAG(std::string, expect_missing_on, "", "get: the misses are exactly the keys placed first on this member");
ABSL_FLAG(std::string, expect_fallback_on, "", "get: this member's keys were found on their second choice");
ABSL_FLAG(int, max_ms, 0, "get, lookup: the call must return within this (0: no check)");
ABSL_FLAG(int, expect_cached, -1, "lookup: chain length expected (-1: no check)");
ABSL_FLAG(std::string, expect_placed_on, "", "stats: this member holds exactly the keys placed first on it");
ABSL_FLAG(int, expect_members, 0, "members: wait for this many members");
ABSL_FLAG(int, wait_ms, 20000, "members: how long to wait");

namespace kvc {
namespace {

testing::BlockSpec Spec(uint64_t seed) {
  testing::BlockSpec s;
  s.tenant = "a";
  s.model = "m";
  s.seed = seed;
  return s;
}

std::vector<uint64_t> Seeds() {
  std::vector<uint64_t> out;
  for (int i = 0; i < absl::GetFlag(FLAGS_count); ++i) out.push_back(absl::GetFlag(FLAGS_first) + i);
  return out;
}

std::string FirstChoice(const std::vector<std::string>& members, uint64_t seed) {
  const Placement p(members);
  const BlockKey k = testing::MakeKey(Spec(seed));
  return p.members()[p.First(Placement::BlockId(k.tenant, k.model, k.hash))];
}

int Fail(const std::string& why) {
  std::fprintf(stderr, "cluster_probe: FAILED: %s\n", why.c_str());
  return 1;
}

absl::StatusOr<uint64_t> HostBlocks(const std::string& member) {
  ClientOptions o;
  o.address = member;
  o.token = absl::GetFlag(FLAGS_token);
  o.timeout = absl::Seconds(5);
  absl::StatusOr<std::unique_ptr<CacheClient>> c = CacheClient::Connect(o);
  if (!c.ok()) return c.status();
  absl::StatusOr<kvcache::v1::StatsResponse> s = (*c)->Stats();
  if (!s.ok()) return s.status();
  return s->host().blocks();
}

void PrintStats(const ClusterBlockClient& c) {
  const ClusterStats s = c.stats();
  std::printf(
      "cluster: members=%lld down=%lld member_failures=%llu down_misses=%llu fallback_puts=%llu "
      "fallback_hits=%llu refreshes=%llu changes=%llu\n",
      static_cast<long long>(s.members), static_cast<long long>(s.down),
      static_cast<unsigned long long>(s.member_failures), static_cast<unsigned long long>(s.down_misses),
      static_cast<unsigned long long>(s.fallback_puts), static_cast<unsigned long long>(s.fallback_hits),
      static_cast<unsigned long long>(s.refreshes), static_cast<unsigned long long>(s.membership_changes));
}

int Run(const std::string& cmd) {
  absl::StatusOr<ClusterOptions> cluster = ParseClusterTarget(absl::GetFlag(FLAGS_cache_service));
  if (!cluster.ok()) return Fail(cluster.status().ToString());
  ClusterBlockClientOptions o;
  o.cluster = *cluster;
  o.cluster.ucx_port = absl::GetFlag(FLAGS_cache_ucx_port);
  o.cluster.replicas = absl::GetFlag(FLAGS_replicas);
  o.cluster.member_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_member_timeout_ms));
  o.cluster.down_backoff = absl::Milliseconds(absl::GetFlag(FLAGS_backoff_ms));
  o.cluster.refresh_interval = absl::Milliseconds(absl::GetFlag(FLAGS_refresh_ms));
  o.member.transport = absl::GetFlag(FLAGS_transport);
  o.member.grpc.token = absl::GetFlag(FLAGS_token);
  absl::StatusOr<std::unique_ptr<ClusterBlockClient>> made = ClusterBlockClient::Create(o);
  if (!made.ok()) return Fail(made.status().ToString());
  ClusterBlockClient& c = **made;
  const std::vector<std::string> members = c.members();
  std::printf("members: %s\n", absl::StrJoin(members, ",").c_str());
  const std::vector<uint64_t> seeds = Seeds();
  const int max_ms = absl::GetFlag(FLAGS_max_ms);

  if (cmd == "put") {
    for (size_t at = 0; at < seeds.size(); at += 32) {
      std::vector<std::string> wire;
      for (size_t i = at; i < std::min(seeds.size(), at + 32); ++i) {
        wire.push_back(testing::MakeBlockProto(Spec(seeds[i])).SerializeAsString());
      }
      const std::vector<absl::string_view> views(wire.begin(), wire.end());
      if (absl::Status s = c.Put(views, absl::GetFlag(FLAGS_write_through)); !s.ok()) {
        return Fail(absl::StrCat("put: ", s.ToString()));
      }
    }
    std::printf("put: %zu blocks via %s\n", seeds.size(), std::string(c.transport()).c_str());
    PrintStats(c);
    return 0;
  }
  if (cmd == "get") {
    std::vector<BlockKey> keys;
    for (uint64_t s : seeds) keys.push_back(testing::MakeKey(Spec(s)));
    std::set<uint64_t> hits, misses;
    bool bad = false;
    const absl::Time t0 = absl::Now();
    const absl::Status s = c.Get(keys, [&](GotBlock& got) {
      const uint64_t seed = seeds[got.index];
      if (!got.status.ok()) {
        if (!absl::IsNotFound(got.status)) bad = true;
        misses.insert(seed);
        return;
      }
      const kvcache::v1::Block want = testing::MakeBlockProto(Spec(seed));
      if (got.block.k != want.k() || got.block.v != want.v()) bad = true;
      hits.insert(seed);
    });
    const int64_t ms = absl::ToInt64Milliseconds(absl::Now() - t0);
    std::printf("get: hits=%zu misses=%zu took_ms=%lld via %s\n", hits.size(), misses.size(),
                static_cast<long long>(ms), std::string(c.transport()).c_str());
    PrintStats(c);
    if (!s.ok()) return Fail(absl::StrCat("get: ", s.ToString()));
    if (bad) return Fail("get: a block came back wrong or with an error other than NOT_FOUND");
    if (hits.size() + misses.size() != seeds.size()) return Fail("get: not every key answered once");
    if (const int want = absl::GetFlag(FLAGS_expect_hits); want >= 0 && static_cast<int>(hits.size()) != want) {
      return Fail(absl::StrCat("get: ", hits.size(), " hits, expected ", want));
    }
    if (const std::string down = absl::GetFlag(FLAGS_expect_missing_on); !down.empty()) {
      std::set<uint64_t> placed;
      for (uint64_t seed : seeds) {
        if (FirstChoice(members, seed) == down) placed.insert(seed);
      }
      if (placed.empty()) return Fail("get: no key places on " + down);
      if (placed != misses) {
        return Fail(absl::StrCat("get: ", misses.size(), " misses, but ", placed.size(), " keys place on ", down));
      }
    }
    if (const std::string on = absl::GetFlag(FLAGS_expect_fallback_on); !on.empty()) {
      uint64_t placed = 0;
      for (uint64_t seed : seeds) placed += FirstChoice(members, seed) == on;
      if (placed == 0 || c.stats().fallback_hits != placed) {
        return Fail(
            absl::StrCat("get: ", c.stats().fallback_hits, " fallback hits, but ", placed, " keys place on ", on));
      }
    }
    if (max_ms > 0 && ms > max_ms) return Fail(absl::StrCat("get took ", ms, " ms > ", max_ms));
    return 0;
  }
  if (cmd == "lookup") {
    std::vector<Hash128> hashes;
    for (uint64_t s : seeds) hashes.push_back(testing::MakeKey(Spec(s)).hash);
    const absl::Time t0 = absl::Now();
    absl::StatusOr<uint32_t> cached = c.Lookup("a", "m", std::vector<uint32_t>{0}, hashes);
    const int64_t ms = absl::ToInt64Milliseconds(absl::Now() - t0);
    if (!cached.ok()) return Fail(absl::StrCat("lookup: ", cached.status().ToString()));
    std::printf("lookup: cached=%u of %zu took_ms=%lld\n", *cached, hashes.size(), static_cast<long long>(ms));
    PrintStats(c);
    if (const int want = absl::GetFlag(FLAGS_expect_cached); want >= 0 && static_cast<int>(*cached) != want) {
      return Fail(absl::StrCat("lookup: ", *cached, " cached, expected ", want));
    }
    if (max_ms > 0 && ms > max_ms) return Fail(absl::StrCat("lookup took ", ms, " ms > ", max_ms));
    return 0;
  }
  if (cmd == "stats") {
    for (const std::string& m : members) {
      absl::StatusOr<uint64_t> n = HostBlocks(m);
      std::printf("member %s host_blocks=%s\n", m.c_str(),
                  n.ok() ? std::to_string(*n).c_str() : n.status().ToString().c_str());
    }
    if (const std::string on = absl::GetFlag(FLAGS_expect_placed_on); !on.empty()) {
      uint64_t placed = 0;
      for (uint64_t seed : seeds) placed += FirstChoice(members, seed) == on;
      absl::StatusOr<uint64_t> n = HostBlocks(on);
      if (!n.ok()) return Fail(n.status().ToString());
      if (*n != placed) return Fail(absl::StrCat(on, " holds ", *n, " blocks, ", placed, " place on it"));
      std::printf("placed on %s: %llu as expected\n", on.c_str(), static_cast<unsigned long long>(placed));
    }
    return 0;
  }
  if (cmd == "members") {
    const size_t want = static_cast<size_t>(absl::GetFlag(FLAGS_expect_members));
    const absl::Time deadline = absl::Now() + absl::Milliseconds(absl::GetFlag(FLAGS_wait_ms));
    std::fflush(stdout);
    std::vector<std::string> last = members;
    while (c.members().size() != want && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(50));
      if (c.members() != last) {
        last = c.members();
        std::printf("members: %s\n", absl::StrJoin(last, ",").c_str());
        std::fflush(stdout);
      }
    }
    PrintStats(c);
    if (c.members().size() != want) return Fail(absl::StrCat(c.members().size(), " members, expected ", want));
    std::printf("members: %zu as expected\n", want);
    return 0;
  }
  return Fail("unknown command " + cmd + " (put, get, lookup, stats, members)");
}

}  // namespace
}  // namespace kvc

int main(int argc, char** argv) {
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) return kvc::Fail("expected one command: put, get, lookup, stats, members");
  const int rc = kvc::Run(args[1]);
  std::fflush(stdout);
  return rc;
}
