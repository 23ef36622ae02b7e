// ClusterBlockClient: a BlockClient over several cache-service instances
// (members), each holding the blocks that rendezvous hashing places on it
// (worker/kv/placement.h; every layer of one block on one member).
//
// Membership: a static list of gRPC "host:port"s and/or a DNS name whose
// A/AAAA records are the members (a Kubernetes headless Service), resolved
// at start and again every refresh_interval on a background thread. A
// member's name is its "host:port" (for DNS: "ip:port"), so a pod that comes
// back with a new IP is a member removed plus one added; list stable pod
// names statically (kvcached-0.kvcached:50051,...) to avoid that.
//
// Failure: every per-member call is bounded by member_timeout (it is the
// member client's own deadline). A member without a connected client is
// first reached over gRPC, then UCX connects, each step within
// member_timeout: a host that does not answer at all costs one
// member_timeout and never gets a UCX connect. A member whose call fails
// with UNAVAILABLE or DEADLINE_EXCEEDED (or another transport error:
// ABORTED, INTERNAL, UNKNOWN, CANCELLED) is *down* for down_backoff: calls
// skip it without waiting, its keys are misses (Get, Lookup) and its writes
// go to the next member in each block's rank. After the backoff the next
// call tries it again. So a member that is down or slow costs misses, never
// a call error and never a hang.
//
//   - Put: blocks grouped by target member and sent concurrently. A block
//     goes to the first live member of its rank; with replicas = 2 a
//     write_through block also goes to the second (Puts without
//     write_through are a cache, not durable state: one copy). A block whose
//     target fails goes to its next live member. OK when every block is
//     stored on at least one member; UNAVAILABLE when some block found no
//     live member (the BlockWriter then degrades and retries). A member
//     that refuses its blocks for what they are (INVALID_ARGUMENT,
//     RESOURCE_EXHAUSTED, PERMISSION_DENIED, ...) fails the call with that
//     status; what the other members stored stays stored.
//   - Get: keys grouped by the first live member of their rank and fetched
//     concurrently; a key that comes back missing, or whose member failed,
//     is asked of its next live member (its replica, or where it went while
//     its first choice was down or before a member was added), up to
//     replicas + 1 members; then it is a miss (NOT_FOUND). UNAVAILABLE only
//     when no member is live or none answered (the whole cluster away, as
//     the one service away would be).
//   - Lookup: each member is asked for the hashes it owns (the first live
//     member of each hash's rank), concurrently. The answer is the first
//     index whose hash no member confirmed; hashes from that break on are
//     asked of their next live member (up to replicas + 1 rounds), so
//     blocks on a fallback member still count. A down member ends the chain
//     at its first hash (unless a later candidate has it). UNAVAILABLE
//     only when no member answered.
//   - Healthy: true when at least one member answers SERVING.
//
// Thread-safe: any number of threads may call any method concurrently. Get
// delivers each key once, in any order, never concurrently.
#ifndef KVC_WORKER_KV_CLUSTER_BLOCK_CLIENT_H_
#define KVC_WORKER_KV_CLUSTER_BLOCK_CLIENT_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "worker/kv/block_client.h"
#include "worker/kv/block_client_factory.h"
#include "worker/kv/cluster_options.h"

namespace kvc {

// Counters for monitoring (Prometheus: worker/kv/cluster_metrics.h).
struct ClusterStats {
  int64_t members = 0;           // members now
  int64_t down = 0;              // members now skipped (within their down_backoff)
  uint64_t member_failures = 0;  // per-member calls that failed as unreachable or slow
  uint64_t down_misses = 0;      // keys and hashes answered as misses because their member was down or failed
  uint64_t fallback_puts = 0;    // block copies stored on a member other than their first choice(s)
  uint64_t fallback_hits = 0;    // keys found on a member other than their first choice
  uint64_t refreshes = 0;        // membership resolutions (DNS)
  uint64_t refresh_errors = 0;   // resolutions that failed (the last membership is kept)
  uint64_t membership_changes = 0;
};

struct ClusterBlockClientOptions {
  ClusterOptions cluster;
  // Each member's client is MakeBlockClient(member) with its addresses
  // (grpc.address, ucx.address) and timeouts (grpc.timeout, ucx.timeout =
  // cluster.member_timeout) set per member; transport, token, TLS and UCX
  // settings are taken as given. With transport "ucx", cluster.ucx_port is
  // required.
  BlockClientOptions member;
  // Least time between attempts to reconnect one member (its
  // ResilientBlockClient). Default 500 ms.
  absl::Duration reconnect = absl::Milliseconds(500);
  // Resolves a DNS host name to its addresses (IPs as text). Default
  // (null): getaddrinfo, every A and AAAA record.
  std::function<absl::StatusOr<std::vector<std::string>>(const std::string& host)> resolve;
  // For down_backoff. Default the real clock.
  Clock* clock = Clock::Real();
};

class ClusterBlockClient final : public BlockClient {
 public:
  // Validates, resolves the membership once (a DNS name that does not
  // resolve yet is not an error: calls are UNAVAILABLE until it does) and
  // starts the refresh thread when there is a DNS name. Connects lazily.
  static absl::StatusOr<std::unique_ptr<ClusterBlockClient>> Create(ClusterBlockClientOptions options);
  // Stops the refresh thread. REQUIRES: no call in flight.
  ~ClusterBlockClient() override;

  // The transport of a connected member ("grpc" or "ucx"), "none" before any.
  absl::string_view transport() const override;
  absl::Status Put(std::span<const absl::string_view> blocks, bool write_through) override;
  // Relaxed order: see BlockClient::Get.
  absl::Status Get(std::span<const BlockKey> keys, absl::FunctionRef<void(GotBlock&)> on_block) override;
  absl::StatusOr<uint32_t> Lookup(absl::string_view tenant, absl::string_view model, std::span<const uint32_t> layers,
                                  std::span<const Hash128> hashes) override;
  absl::StatusOr<bool> Healthy() override;

  // The current members' names, sorted.
  std::vector<std::string> members() const;
  ClusterStats stats() const;
  // Resolves the membership now (what the refresh thread does).
  void RefreshNow();

  struct Member;
  struct View;

 private:
  explicit ClusterBlockClient(ClusterBlockClientOptions options);
  std::shared_ptr<const View> Snapshot() const;
  std::shared_ptr<Member> MakeMember(const std::string& name) const;
  void RefreshLoop();
  // Records the outcome of one call to `m`: a failure marks it down.
  void Note(Member& m, const absl::Status& s);

  const ClusterBlockClientOptions options_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const View> view_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> dns_members_ ABSL_GUARDED_BY(mu_);  // the last good resolution
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Mutex refresh_mu_;  // one resolution at a time
  std::thread refresher_;

  std::atomic<uint64_t> member_failures_{0}, down_misses_{0}, fallback_puts_{0}, fallback_hits_{0}, refreshes_{0},
      refresh_errors_{0}, membership_changes_{0};
};

}  // namespace kvc

#endif  // KVC_WORKER_KV_CLUSTER_BLOCK_CLIENT_H_
