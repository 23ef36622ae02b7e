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
// Zero-copy: a Get hit is sent from the cached block's own wire bytes (the
// BlockPtr is held until the send completes). A Put is received into one
// buffer per request and each block's bytes are copied once out of it into
// the string the CachedBlock adopts (ReadPutRequest), never re-encoded.
//
// Failure: a client that disconnects (or dies) mid-transfer fails only its
// own requests; its endpoint is closed and counted in
// kvcache_ucx_errors_total{kind="peer_error"}.
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
