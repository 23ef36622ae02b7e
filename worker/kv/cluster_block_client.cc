#include "worker/kv/cluster_block_client.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cachesvc/block_view.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "worker/cache_client.h"
#include "worker/kv/placement.h"
#include "worker/kv/resilient_block_client.h"

namespace kvc {

struct ClusterBlockClient::Member {
  std::string name;  // the gRPC host:port
  std::unique_ptr<ResilientBlockClient> client;
  // Skipped until then (unix micros).
  std::atomic<int64_t> down_until_us{std::numeric_limits<int64_t>::min()};
  // The last call failed as unreachable (for the down/up logs).
  std::atomic<bool> failing{false};

  bool Live(absl::Time now) const { return absl::ToUnixMicros(now) >= down_until_us.load(); }
};

struct ClusterBlockClient::View {
  explicit View(std::vector<std::string> names) : placement(std::move(names)) {}
  Placement placement;
  std::vector<std::shared_ptr<Member>> members;  // aligned with placement.members()
};

namespace {

// The member is away or too slow: skip it for a while, its keys are misses.
bool Unreachable(const absl::Status& s) { return IsUnreachable(s); }

// The member refused the request for what it is (a bad token, a bad
// request): every member would, so the caller must see it.
bool Refusal(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return true;
    default:
      return false;
  }
}

// Runs every task, tasks[1..] on threads of their own and tasks[0] on the
// caller's; returns when all have ended.
void RunAll(std::vector<std::function<void()>>& tasks) {
  if (tasks.empty()) return;
  std::vector<std::thread> threads;
  threads.reserve(tasks.size() - 1);
  for (size_t i = 1; i < tasks.size(); ++i) {
    try {
      threads.emplace_back(tasks[i]);
    } catch (const std::system_error&) {
      tasks[i]();  // no thread to be had: serially, still bounded by member_timeout
    }
  }
  tasks[0]();
  for (std::thread& t : threads) t.join();
}

// Which members a call may ask: those not within their down_backoff.
std::vector<char> Usable(const std::vector<std::shared_ptr<ClusterBlockClient::Member>>& members, absl::Time now) {
  std::vector<char> out(members.size());
  for (size_t m = 0; m < members.size(); ++m) out[m] = members[m]->Live(now) ? 1 : 0;
  return out;
}

// The first `max` members of `rank` that are live and have not failed in this call.
std::vector<int> LiveCandidates(const std::vector<int>& rank, const std::vector<char>& usable, int max) {
  std::vector<int> out;
  for (int m : rank) {
    if (static_cast<int>(out.size()) == max) break;
    if (usable[m]) out.push_back(m);
  }
  return out;
}

}  // namespace

// --- the client ----------------------------------------------------------------

ClusterBlockClient::ClusterBlockClient(ClusterBlockClientOptions options) : options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<ClusterBlockClient>> ClusterBlockClient::Create(ClusterBlockClientOptions options) {
  KVC_RETURN_IF_ERROR(options.cluster.Validate());
  const std::string& t = options.member.transport;
  if (t != "auto" && t != "ucx" && t != "grpc") {
    return absl::InvalidArgumentError(absl::StrCat("block client transport '", t, "' is not ucx|grpc|auto"));
  }
  if (t == "ucx") {
    const ClusterOptions& c = options.cluster;
    const bool every =
        c.ucx_port > 0 || (c.dns.empty() && std::all_of(c.members.begin(), c.members.end(),
                                                        [](const ClusterMember& m) { return m.ucx_port > 0; }));
    if (!every) {
      return absl::InvalidArgumentError(
          "cache-service cluster: transport 'ucx' needs the members' UCX port (ucx_port)");
    }
  }
  if (!options.resolve) options.resolve = ResolveAddresses;
  if (options.clock == nullptr) options.clock = Clock::Real();
  std::unique_ptr<ClusterBlockClient> c(new ClusterBlockClient(std::move(options)));
  c->RefreshNow();
  if (!c->options_.cluster.dns.empty()) c->refresher_ = std::thread([p = c.get()] { p->RefreshLoop(); });
  return c;
}

ClusterBlockClient::~ClusterBlockClient() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (refresher_.joinable()) refresher_.join();
}

std::shared_ptr<const ClusterBlockClient::View> ClusterBlockClient::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return view_;
}

std::shared_ptr<ClusterBlockClient::Member> ClusterBlockClient::MakeMember(const std::string& name) const {
  auto m = std::make_shared<Member>();
  m->name = name;
  BlockClientOptions o = options_.member;
  o.grpc.address = name;
  o.grpc.timeout = options_.cluster.member_timeout;
  std::string host;
  int port = 0;
  (void)SplitMemberAddress(name, &host, &port);  // validated when the name came in
  int ucx_port = options_.cluster.ucx_port;
  for (const ClusterMember& s : options_.cluster.members) {
    if (s.address == name && s.ucx_port > 0) ucx_port = s.ucx_port;
  }
  o.ucx.address = ucx_port > 0 ? absl::StrCat(host, ":", ucx_port) : "";
  o.ucx.timeout = options_.cluster.member_timeout;
  m->client = std::make_unique<ResilientBlockClient>(
      [o]() -> absl::StatusOr<std::unique_ptr<BlockClient>> {
        // A member that answers nothing is found out over gRPC first
        // (MakeBlockClient reaches it before any UCX connect): UNAVAILABLE
        // within member_timeout, so it is skipped for its backoff.
        return MakeBlockClient(o);
      },
      options_.reconnect, options_.clock);
  return m;
}

void ClusterBlockClient::RefreshNow() {
  absl::MutexLock refresh(&refresh_mu_);
  const ClusterOptions& co = options_.cluster;
  std::vector<std::string> dns_members;
  if (!co.dns.empty()) {
    {
      absl::MutexLock lock(&mu_);
      dns_members = dns_members_;
    }
    refreshes_.fetch_add(1);
    std::string host;
    int port = 0;
    (void)SplitMemberAddress(co.dns, &host, &port);
    if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
    absl::StatusOr<std::vector<std::string>> addrs = options_.resolve(host);
    if (!addrs.ok() || addrs->empty()) {
      // A DNS hiccup (or a Service with no ready pod yet) keeps what we had.
      refresh_errors_.fetch_add(1);
      KVC_LOG(kWarning, "cache_members_resolve_failed")
          .With("dns", co.dns)
          .With("error", addrs.ok() ? std::string("no address") : addrs.status().ToString())
          .With("kept_members", static_cast<int64_t>(dns_members.size()));
    } else {
      dns_members.clear();
      for (const std::string& a : *addrs) {
        dns_members.push_back(a.find(':') != std::string::npos ? absl::StrCat("[", a, "]:", port)
                                                               : absl::StrCat(a, ":", port));
      }
    }
  }
  std::vector<std::string> names;
  for (const ClusterMember& m : co.members) names.push_back(m.address);
  names.insert(names.end(), dns_members.begin(), dns_members.end());
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());

  std::shared_ptr<const View> old;
  {
    absl::MutexLock lock(&mu_);
    dns_members_ = dns_members;
    if (view_ != nullptr && view_->placement.members() == names) return;
    old = view_;
  }
  auto view = std::make_shared<View>(names);
  std::vector<std::string> added, removed;
  for (const std::string& name : view->placement.members()) {
    std::shared_ptr<Member> kept;
    if (old != nullptr) {
      for (const auto& m : old->members) {
        if (m->name == name) kept = m;
      }
    }
    if (kept == nullptr) added.push_back(name);
    view->members.push_back(kept != nullptr ? kept : MakeMember(name));
  }
  if (old != nullptr) {
    for (const std::string& name : old->placement.members()) {
      if (!std::binary_search(names.begin(), names.end(), name)) removed.push_back(name);
    }
  }
  {
    absl::MutexLock lock(&mu_);
    view_ = view;
  }
  if (old != nullptr) membership_changes_.fetch_add(1);
  KVC_LOG(kInfo, "cache_members_changed")
      .With("members", absl::StrJoin(names, ","))
      .With("added", absl::StrJoin(added, ","))
      .With("removed", absl::StrJoin(removed, ","));
}

void ClusterBlockClient::RefreshLoop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      absl::Duration wait = options_.cluster.refresh_interval;
      if (view_ == nullptr || view_->members.empty()) wait = std::min(wait, absl::Seconds(1));
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), wait)) return;
    }
    RefreshNow();
  }
}

void ClusterBlockClient::Note(Member& m, const absl::Status& s) {
  if (s.ok()) {
    if (m.failing.exchange(false)) KVC_LOG(kInfo, "cache_member_up").With("member", m.name);
    return;
  }
  if (!Unreachable(s)) return;
  m.down_until_us.store(absl::ToUnixMicros(options_.clock->Now() + options_.cluster.down_backoff));
  member_failures_.fetch_add(1);
  if (!m.failing.exchange(true)) {
    KVC_LOG(kWarning, "cache_member_down")
        .With("member", m.name)
        .With("error", s.ToString())
        .With("backoff_ms", absl::ToInt64Milliseconds(options_.cluster.down_backoff));
  }
}

std::vector<std::string> ClusterBlockClient::members() const {
  std::shared_ptr<const View> v = Snapshot();
  return v == nullptr ? std::vector<std::string>{} : v->placement.members();
}

ClusterStats ClusterBlockClient::stats() const {
  ClusterStats s;
  if (std::shared_ptr<const View> v = Snapshot(); v != nullptr) {
    const absl::Time now = options_.clock->Now();
    s.members = static_cast<int64_t>(v->members.size());
    for (const auto& m : v->members) s.down += m->Live(now) ? 0 : 1;
  }
  s.member_failures = member_failures_.load();
  s.down_misses = down_misses_.load();
  s.fallback_puts = fallback_puts_.load();
  s.fallback_hits = fallback_hits_.load();
  s.refreshes = refreshes_.load();
  s.refresh_errors = refresh_errors_.load();
  s.membership_changes = membership_changes_.load();
  return s;
}

absl::string_view ClusterBlockClient::transport() const {
  if (std::shared_ptr<const View> v = Snapshot(); v != nullptr) {
    for (const auto& m : v->members) {
      const absl::string_view t = m->client->transport();  // a literal of the inner client
      if (t != "none") return t;
    }
  }
  return "none";
}

// --- Put -------------------------------------------------------------------------

absl::Status ClusterBlockClient::Put(std::span<const absl::string_view> blocks, bool write_through) {
  if (blocks.empty()) return absl::OkStatus();
  const std::shared_ptr<const View> view = Snapshot();
  if (view == nullptr || view->members.empty()) return absl::UnavailableError("no cache-service member is known");
  const size_t nm = view->members.size();
  const int copies = write_through && options_.cluster.replicas >= 2 ? 2 : 1;

  struct Target {
    std::vector<int> rank;  // every member, best first
    size_t next = 0;        // rank position of the next member to try
    int stored = 0;         // copies acknowledged
  };
  std::vector<Target> targets(blocks.size());
  for (size_t b = 0; b < blocks.size(); ++b) {
    absl::StatusOr<BlockView> parsed = BlockView::Parse(blocks[b]);
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("block ", b, " of the Put: ", parsed.status().message()));
    }
    const BlockKey& k = parsed->key;
    targets[b].rank = view->placement.Rank(Placement::BlockId(k.tenant, k.model, k.hash), nm);
  }
  std::vector<char> usable = Usable(view->members, options_.clock->Now());
  auto next_member = [&](Target& t) {
    while (t.next < t.rank.size()) {
      const int m = t.rank[t.next++];
      if (usable[m]) return m;
    }
    return -1;
  };
  std::vector<std::vector<uint32_t>> groups(nm);
  for (size_t b = 0; b < blocks.size(); ++b) {
    for (int c = 0; c < copies; ++c) {
      const int m = next_member(targets[b]);
      if (m >= 0) groups[m].push_back(static_cast<uint32_t>(b));
    }
  }

  absl::Status refused;
  // Each round sends every group at once; a failed member's blocks move to
  // their next usable member for the next round. At most one round per member.
  for (size_t round = 0; round < nm; ++round) {
    std::vector<absl::Status> result(nm);
    std::vector<std::function<void()>> tasks;
    for (size_t m = 0; m < nm; ++m) {
      if (groups[m].empty()) continue;
      tasks.push_back([&, m] {
        std::vector<absl::string_view> sub;
        sub.reserve(groups[m].size());
        for (uint32_t b : groups[m]) sub.push_back(blocks[b]);
        Member& member = *view->members[m];
        result[m] = member.client->Put(sub, write_through);
        Note(member, result[m]);
      });
    }
    if (tasks.empty()) break;
    RunAll(tasks);
    for (size_t m = 0; m < nm; ++m) {
      if (!groups[m].empty() && Unreachable(result[m])) usable[m] = 0;
    }
    std::vector<std::vector<uint32_t>> next(nm);
    for (size_t m = 0; m < nm; ++m) {
      for (uint32_t b : groups[m]) {
        Target& t = targets[b];
        if (result[m].ok()) {
          ++t.stored;
          const size_t pos = std::find(t.rank.begin(), t.rank.end(), static_cast<int>(m)) - t.rank.begin();
          if (pos >= static_cast<size_t>(copies)) fallback_puts_.fetch_add(1);
        } else if (Unreachable(result[m])) {
          if (const int to = next_member(t); to >= 0) next[to].push_back(b);
        } else if (refused.ok()) {
          refused = result[m];
        }
      }
    }
    groups = std::move(next);
  }
  if (!refused.ok()) return refused;
  const size_t unstored = std::count_if(targets.begin(), targets.end(), [](const Target& t) { return t.stored == 0; });
  if (unstored > 0) {
    return absl::UnavailableError(
        absl::StrCat("no live cache-service member took ", unstored, " of ", blocks.size(), " blocks"));
  }
  return absl::OkStatus();
}

// --- Get -------------------------------------------------------------------------

absl::Status ClusterBlockClient::Get(std::span<const BlockKey> keys, absl::FunctionRef<void(GotBlock&)> on_block) {
  if (keys.empty()) return absl::OkStatus();
  const std::shared_ptr<const View> view = Snapshot();
  if (view == nullptr || view->members.empty()) return absl::UnavailableError("no cache-service member is known");
  const size_t nm = view->members.size();
  const int max_candidates = options_.cluster.replicas + 1;
  std::vector<char> usable = Usable(view->members, options_.clock->Now());
  const std::vector<char> live_at_start = usable;

  struct KeyState {
    int first = -1;        // its first choice, live or not
    std::vector<int> ask;  // live members to ask, in rank order
    bool done = false;
    absl::Status error;  // a block-level error other than NOT_FOUND
  };
  std::vector<KeyState> st(keys.size());
  bool any = false;
  for (size_t i = 0; i < keys.size(); ++i) {
    const std::vector<int> rank =
        view->placement.Rank(Placement::BlockId(keys[i].tenant, keys[i].model, keys[i].hash), nm);
    st[i].first = rank[0];
    st[i].ask = LiveCandidates(rank, usable, max_candidates);
    any = any || !st[i].ask.empty();
  }
  if (!any) {
    down_misses_.fetch_add(keys.size());
    return absl::UnavailableError("every cache-service member is down");
  }

  absl::Mutex deliver_mu;  // on_block never runs concurrently
  absl::Status refused;
  std::atomic<bool> answered{false};  // some member answered the call
  for (int round = 0; round < max_candidates; ++round) {
    std::vector<std::vector<uint32_t>> groups(nm);
    for (size_t i = 0; i < keys.size(); ++i) {
      KeyState& k = st[i];
      if (k.done || round >= static_cast<int>(k.ask.size()) || !usable[k.ask[round]]) continue;
      groups[k.ask[round]].push_back(static_cast<uint32_t>(i));
    }
    std::vector<absl::Status> result(nm);
    std::vector<std::function<void()>> tasks;
    for (size_t m = 0; m < nm; ++m) {
      if (groups[m].empty()) continue;
      tasks.push_back([&, m] {
        const std::vector<uint32_t>& idx = groups[m];
        std::vector<BlockKey> sub;
        sub.reserve(idx.size());
        for (uint32_t i : idx) sub.push_back(keys[i]);
        Member& member = *view->members[m];
        // Each key is in one group per round: only this task touches st[idx[*]].
        result[m] = member.client->Get(sub, [&](GotBlock& got) {
          if (got.index >= idx.size()) return;
          const uint32_t i = idx[got.index];
          KeyState& k = st[i];
          if (k.done) return;
          if (!got.status.ok()) {
            if (!absl::IsNotFound(got.status) && k.error.ok()) k.error = got.status;
            return;
          }
          k.done = true;
          if (static_cast<int>(m) != k.first) fallback_hits_.fetch_add(1);
          GotBlock out;
          out.index = i;
          out.tier = got.tier;
          out.block = got.block;
          absl::MutexLock lock(&deliver_mu);
          on_block(out);
        });
        Note(member, result[m]);
        if (result[m].ok()) answered = true;
      });
    }
    if (tasks.empty()) break;
    RunAll(tasks);
    for (size_t m = 0; m < nm; ++m) {
      if (groups[m].empty() || result[m].ok()) continue;
      if (Unreachable(result[m])) usable[m] = 0;
      if (Refusal(result[m]) && refused.ok()) refused = result[m];
    }
  }
  if (!answered && refused.ok()) {
    // The whole cluster is away: a transfer failure, as with one service.
    down_misses_.fetch_add(keys.size());
    return absl::UnavailableError("no cache-service member answered");
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    KeyState& k = st[i];
    if (k.done) continue;
    if (!live_at_start[k.first] || !usable[k.first]) down_misses_.fetch_add(1);
    GotBlock out;
    out.index = static_cast<uint32_t>(i);
    out.status = k.error.ok() ? absl::NotFoundError("block is on no live cache-service member") : k.error;
    on_block(out);
  }
  return refused;
}

// --- Lookup ------------------------------------------------------------------------

absl::StatusOr<uint32_t> ClusterBlockClient::Lookup(absl::string_view tenant, absl::string_view model,
                                                    std::span<const uint32_t> layers, std::span<const Hash128> hashes) {
  const std::shared_ptr<const View> view = Snapshot();
  if (view == nullptr || view->members.empty()) return absl::UnavailableError("no cache-service member is known");
  if (hashes.empty()) return 0;
  const size_t nm = view->members.size(), n = hashes.size();
  const int max_candidates = options_.cluster.replicas + 1;
  std::vector<char> usable = Usable(view->members, options_.clock->Now());
  const std::vector<char> live_at_start = usable;
  std::vector<int> first(n);
  std::vector<std::vector<int>> ask(n);
  bool any = false;
  for (size_t i = 0; i < n; ++i) {
    const std::vector<int> rank = view->placement.Rank(Placement::BlockId(tenant, model, hashes[i]), nm);
    first[i] = rank[0];
    ask[i] = LiveCandidates(rank, usable, max_candidates);
    any = any || !ask[i].empty();
  }
  if (!any) {
    down_misses_.fetch_add(1);
    return absl::UnavailableError("every cache-service member is down");
  }

  std::vector<char> confirmed(n, 0);
  size_t answer = 0;
  absl::Status refused;
  std::atomic<bool> answered{false};
  for (int round = 0; round < max_candidates; ++round) {
    while (answer < n && confirmed[answer]) ++answer;
    if (answer == n) break;
    // Round 0 asks every hash of its first live member; later rounds ask the
    // next member for the hashes from the chain's break on.
    std::vector<std::vector<uint32_t>> groups(nm);
    for (size_t i = answer; i < n; ++i) {
      if (confirmed[i] || round >= static_cast<int>(ask[i].size()) || !usable[ask[i][round]]) continue;
      groups[ask[i][round]].push_back(static_cast<uint32_t>(i));
    }
    std::vector<absl::Status> result(nm);
    std::vector<std::function<void()>> tasks;
    for (size_t m = 0; m < nm; ++m) {
      if (groups[m].empty()) continue;
      tasks.push_back([&, m] {
        const std::vector<uint32_t>& idx = groups[m];
        std::vector<Hash128> sub;
        sub.reserve(idx.size());
        for (uint32_t i : idx) sub.push_back(hashes[i]);
        Member& member = *view->members[m];
        absl::StatusOr<uint32_t> cached = member.client->Lookup(tenant, model, layers, sub);
        result[m] = cached.status();
        Note(member, result[m]);
        if (!cached.ok()) return;
        answered = true;
        const size_t c = std::min<size_t>(*cached, idx.size());
        for (size_t j = 0; j < c; ++j) confirmed[idx[j]] = 1;  // distinct per task
      });
    }
    if (tasks.empty()) break;
    RunAll(tasks);
    for (size_t m = 0; m < nm; ++m) {
      if (groups[m].empty() || result[m].ok()) continue;
      if (Unreachable(result[m])) usable[m] = 0;
      if (Refusal(result[m]) && refused.ok()) refused = result[m];
    }
  }
  while (answer < n && confirmed[answer]) ++answer;
  if (!refused.ok()) return refused;
  if (!answered) {
    down_misses_.fetch_add(1);
    return absl::UnavailableError("no cache-service member answered");
  }
  if (answer < n && (!live_at_start[first[answer]] || !usable[first[answer]])) down_misses_.fetch_add(1);
  return static_cast<uint32_t>(answer);
}

// --- Healthy ------------------------------------------------------------------------

absl::StatusOr<bool> ClusterBlockClient::Healthy() {
  const std::shared_ptr<const View> view = Snapshot();
  if (view == nullptr || view->members.empty()) return absl::UnavailableError("no cache-service member is known");
  const size_t nm = view->members.size();
  std::vector<absl::StatusOr<bool>> result(nm, absl::UnknownError("not asked"));
  std::vector<std::function<void()>> tasks;
  for (size_t m = 0; m < nm; ++m) {
    tasks.push_back([&, m] {
      Member& member = *view->members[m];
      result[m] = member.client->Healthy();
      Note(member, result[m].status());
    });
  }
  RunAll(tasks);
  bool answered = false;
  for (const absl::StatusOr<bool>& r : result) {
    if (r.ok() && *r) return true;
    answered = answered || r.ok();
  }
  if (answered) return false;
  return result.front().status();
}

}  // namespace kvc
