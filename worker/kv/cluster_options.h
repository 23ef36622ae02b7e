// ClusterOptions: where the members of a cache-service cluster are (a
// static list, a DNS name) and how a client treats them, plus the parsing of
// the `--cache_service` target that names them. Used by ClusterBlockClient
// (worker/kv/cluster_block_client.h) and the worker's ServiceLink.
#ifndef KVC_WORKER_KV_CLUSTER_OPTIONS_H_
#define KVC_WORKER_KV_CLUSTER_OPTIONS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace kvc {

// One statically configured member.
struct ClusterMember {
  // gRPC "host:port" of one kvcached ("[v6addr]:port" for IPv6); also its
  // name in placement.
  std::string address;
  // Its UCX port (same host); 0: ClusterOptions::ucx_port. Default 0.
  int ucx_port = 0;

  friend bool operator==(const ClusterMember&, const ClusterMember&) = default;
};

// Where the members of a cache-service cluster are, and how to treat them.
struct ClusterOptions {
  // Static members. Default none.
  std::vector<ClusterMember> members;
  // "name:port": every A/AAAA record of `name` is a member listening on
  // gRPC `port` (a Kubernetes headless Service). Default "" (none).
  std::string dns;
  // The UCX port every member listens on (same host as its gRPC endpoint);
  // 0: members are reached over gRPC only. Default 0.
  int ucx_port = 0;
  // Copies of each write_through block: 1 or 2. Default 1.
  int replicas = 1;
  // Bound on every call to one member (its client's timeout, connect
  // included). Default 2 s.
  absl::Duration member_timeout = absl::Seconds(2);
  // How long a failed member is skipped before it is tried again. Default 5 s.
  absl::Duration down_backoff = absl::Seconds(5);
  // How often `dns` is resolved again (1 s while it gave no member).
  // Default 10 s.
  absl::Duration refresh_interval = absl::Seconds(10);

  // One static member and no DNS name: a plain client does (no cluster).
  bool single() const { return members.size() == 1 && dns.empty(); }
  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

// Parses a cache-service target: "host:port" (one member), "h1:p1,h2:p2"
// (static members) or "dns:///name:port" (members from DNS). Other fields
// keep their defaults. INVALID_ARGUMENT for anything else.
absl::StatusOr<ClusterOptions> ParseClusterTarget(absl::string_view target);

// "host:port" → host (the brackets of an IPv6 literal kept) and port.
// INVALID_ARGUMENT for anything else (an IPv6 address without brackets, a
// port outside 1..65535).
absl::Status SplitMemberAddress(absl::string_view address, std::string* host, int* port);

// Every A and AAAA record of `host` (getaddrinfo), as text, sorted, without
// duplicates. UNAVAILABLE when it does not resolve.
absl::StatusOr<std::vector<std::string>> ResolveAddresses(const std::string& host);

}  // namespace kvc

#endif  // KVC_WORKER_KV_CLUSTER_OPTIONS_H_
