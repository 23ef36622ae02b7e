// UcxService: the cache service's UCX (ucp) data plane for bulk Put and Get,
// beside the gRPC service it shares validation, auth, limits, the store, the
// executor and the metrics with. The protocol is transport/wire_protocol.h.
//
// Threads: one UCX worker with one progress thread (transport/ucx_worker.h)
// owns the listener and every client endpoint. It parses requests, checks
// them (CacheService::CheckBatch / CheckKey, the same code gRPC runs) and
// serves host-tier hits itself; anything that may touch RocksDB (every Put,
// Get misses in memory) runs on the server's BoundedExecutor and posts its
// replies back to the progress thread.
//
// Memory: a Get hit is sent from the cached block's own wire bytes (the
// BlockPtr is held until the send completes): no copy, and no registration
// of ours (UCX registers through its cache where a transport needs it; the
// sm and tcp memory domains register at no cost). A Put (and any payload
// that arrives by rendezvous) is received into a region of one registered
// receive pool, allocated once; each block's bytes are then copied once out
// of it into the string the CachedBlock adopts (ReadPutRequest) and the
// region goes back. HELLO and Get requests that arrive eagerly are parsed
// where UCX delivered them. Nothing is allocated per payload: when the pool
// has no room for one, the request is refused with RESOURCE_EXHAUSTED
// ("server busy", like a full executor queue) and its payload dropped unread,
// so a burst can neither grow memory nor wait on itself.
//
// Failure: a client that disconnects (or dies) mid-transfer fails only its
// own requests; its endpoint is closed and counted in
// kvcache_ucx_errors_total{kind="peer_error"}. An endpoint a client opened
// to the worker address (shared memory) has no peer-failure detection of
// its own (see UcxBlockClientOptions::connect); its HELLO names the
// listener connection it belongs to (wire_protocol.h, sessions), and it is
// dropped with that connection. Requests still in flight on a dropped
// endpoint are settled at once (counted as UNAVAILABLE) rather than when UCX
// gives their operations back, which for a dead shared-memory peer is only
// at Stop.
#ifndef KVC_CACHESVC_SERVER_UCX_SERVICE_H_
#define KVC_CACHESVC_SERVER_UCX_SERVICE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cachesvc/server/service.h"
#include "transport/ucx_context.h"

namespace kvc {

struct UcxServiceOptions {
  // host:port to listen on; port 0 picks a free port.
  std::string listen_address;
  // The listener's UCX context settings.
  ucx::UcxOptions ucx;
  // Registered memory that receives Put payloads, in bytes. At least the
  // service's max_message_bytes is used, so one payload of any legal size
  // fits. Its pages are faulted in as receives first land in them, not at
  // start. Default 256 MiB.
  size_t recv_pool_bytes = 256ull << 20;
};

// Thread-safe: port() any time; Stop() from any thread, once or more.
class UcxService {
 public:
  // REQUIRES: `service` outlives this object, and its executor outlives
  // Stop() (tasks may still post replies until then).
  static absl::StatusOr<std::unique_ptr<UcxService>> Start(const UcxServiceOptions& options,
                                                           CacheService* service);
  ~UcxService();

  int port() const { return port_; }
  // Client endpoints the service currently holds (listener connections and
  // worker-address endpoints); kvcache_ucx_endpoints reports the same.
  size_t endpoints() const;

  // Closes the listener and every endpoint (a flush close, bounded by
  // `grace`; requests still in flight then fail on the client side) and
  // joins the progress thread. Call after the CacheService has drained.
  void Stop(absl::Duration grace);

  class Impl;

 private:
  UcxService() = default;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace kvc

#endif  // KVC_CACHESVC_SERVER_UCX_SERVICE_H_
