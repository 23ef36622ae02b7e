// UcxBlockClient: BlockClient with bulk Put and Get over UCX active messages
// (transport/wire_protocol.h) and Lookup / Healthy over gRPC.
//
// Threads: the client owns one ucp worker driven by one progress thread
// (transport/ucx_worker.h); every UCX call runs there. Put and Get may be
// called from any number of threads: each builds its request, posts it to
// the progress thread and waits (bounded by options.timeout) for its own
// replies. Chosen over a mutex around a shared worker because the calling
// threads never progress UCX themselves, so one slow caller cannot stall the
// others' traffic, and the worker needs no locks (UCS_THREAD_MODE_SINGLE).
//
// Memory: two pools are ucp_mem_map'ed once per client and reused, and
// never grow: the send pool (a Put's PutRequest bytes are written there with
// one copy of each block, then sent from registered memory) and the receive
// pool (a Get's blocks land there, straight from the wire for rendezvous
// transfers, and reach the caller as BlockViews over it, no further copy).
// A Put waits (within options.timeout) for send-pool room. A Get block that
// finds the receive pool full stays at the server (its rendezvous is put
// off) until a region comes back. Memory of its own is used, and counted in
// pool_fallbacks(), only where waiting could not help: a single Put or block
// larger than its whole pool, a small eager block that must be copied at
// once, and the block a caller is waiting for when the pool is full of later
// blocks (at most one such block per Get in progress).
//
// Failure: a lost connection (server died, network) fails every call in
// flight with UNAVAILABLE at once and every later call too; create a new
// client to reconnect. A call that gets no answer within options.timeout
// returns DEADLINE_EXCEEDED.
#ifndef KVC_WORKER_KV_UCX_BLOCK_CLIENT_H_
#define KVC_WORKER_KV_UCX_BLOCK_CLIENT_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transport/ucx_context.h"
#include "worker/cache_client.h"
#include "worker/kv/block_client.h"

namespace kvc {

struct UcxBlockClientOptions {
  // host:port of kvcached's UCX listener (its ucx_listen_address). Required.
  std::string address;
  // Bearer token, sent in the HELLO; "" when the service runs without auth. Default "".
  std::string token;
  // UCX settings of this client's context: tls ("sm", "tcp", ...), net_devices ("lo", ...).
  ucx::UcxOptions ucx;
  // How the data endpoint is opened. "listener": the connection to `address`
  // carries everything. "worker_address": that connection only bootstraps
  // (HELLO returns the server's ucp worker address) and stays open as a
  // liveness channel; requests go over a second endpoint to the worker
  // address, which can use shared memory: UCX 1.13's listener path only
  // uses transports on the listening network device (tcp on lo), so this is
  // how tls "sm,tcp" gets sm. "auto": worker_address when `ucx.tls` names a
  // shared-memory transport (sm, posix, sysv, cma), else listener. Default "auto".
  std::string connect = "auto";
  // Bound on every call (connect + HELLO, Put, Get). Default 30s.
  absl::Duration timeout = absl::Seconds(30);
  // Registered receive / send pool sizes in bytes; a Get's blocks (or a
  // Put) larger than its pool cost a copy outside it. Default 64 MiB each.
  size_t recv_pool_bytes = 64ull << 20;
  size_t send_pool_bytes = 64ull << 20;
  // The gRPC side (address, token, TLS) for Lookup and Healthy. It must
  // answer: Create reaches it first (within `timeout`), so a host that
  // answers nothing fails over gRPC before any UCX endpoint is opened.
  ClientOptions grpc;

  absl::Status Validate() const;
};

class UcxBlockClient final : public BlockClient {
 public:
  // Reaches the gRPC side, then connects and authenticates (HELLO), each
  // within options.timeout: UNAVAILABLE when either is unreachable (the
  // message names which), UNAUTHENTICATED for a bad token.
  static absl::StatusOr<std::unique_ptr<UcxBlockClient>> Create(const UcxBlockClientOptions& options);
  ~UcxBlockClient() override;

  absl::string_view transport() const override { return "ucx"; }
  absl::Status Put(std::span<const absl::string_view> blocks, bool write_through) override;
  absl::Status Get(std::span<const BlockKey> keys, absl::FunctionRef<void(GotBlock&)> on_block) override;
  absl::StatusOr<uint32_t> Lookup(absl::string_view tenant, absl::string_view model,
                                  std::span<const uint32_t> layers, std::span<const Hash128> hashes) override;
  absl::StatusOr<bool> Healthy() override;

  // The tenant the server mapped the token to ("" with auth off).
  const std::string& tenant() const;
  // Transfers that used memory of their own, not the registered pools
  // (see "Memory" above; diagnostics).
  uint64_t pool_fallbacks() const;

  class Impl;

 private:
  explicit UcxBlockClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvc

#endif  // KVC_WORKER_KV_UCX_BLOCK_CLIENT_H_
