// CacheServer: the running cache service — store, gRPC server, metrics.
#ifndef KVC_CACHESVC_SERVER_SERVER_H_
#define KVC_CACHESVC_SERVER_SERVER_H_

#include <memory>
#include <thread>

#include "absl/synchronization/notification.h"

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "cachesvc/server/auth.h"
#include "cachesvc/server/metrics.h"
#include "cachesvc/server/options.h"
#include "cachesvc/server/service.h"
#include "cachesvc/server/ucx_service.h"
#include "cachesvc/tiered_store.h"
#include "common/executor.h"

namespace prometheus {
class Exposer;
}

namespace kvc {

// Thread-safe: Shutdown may be called from any thread, more than once.
class CacheServer {
 public:
  // Validates `options`, opens the store under options.data_dir, starts the
  // gRPC server (health service and reflection included) and, when
  // configured, the metrics endpoint. On return the server is SERVING.
  static absl::StatusOr<std::unique_ptr<CacheServer>> Start(const ServerOptions& options,
                                                            Clock* clock = Clock::Real());
  // Shuts down if still running.
  ~CacheServer();

  int port() const { return port_; }
  // The UCX data-plane port; 0 when options.ucx_listen_address is empty.
  int ucx_port() const { return ucx_port_; }
  // 0 when metrics are disabled.
  int metrics_port() const { return metrics_port_; }
  TieredStore* store() const { return store_.get(); }
  const ServiceMetrics* metrics() const { return metrics_.get(); }

  // Re-reads options.auth_tokens_file (SIGHUP). On error the tokens in force
  // stay; the error names the line.
  absl::Status ReloadTenants();

  // Graceful stop: health goes NOT_SERVING, new calls are refused, in-flight
  // calls get up to options.shutdown_grace, queued work drains, host-tier
  // blocks are flushed to disk (flush_host_on_shutdown), RocksDB is synced.
  void Shutdown();

 private:
  CacheServer() = default;

  ServerOptions options_;
  int port_ = 0;
  int metrics_port_ = 0;
  std::unique_ptr<TenantDirectory> tenants_;
  std::unique_ptr<TieredStore> store_;
  std::unique_ptr<ServiceMetrics> metrics_;
  std::unique_ptr<BoundedExecutor> executor_;
  std::unique_ptr<CacheService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<UcxService> ucx_;  // after service_ and executor_: it uses both
  int ucx_port_ = 0;
  std::unique_ptr<prometheus::Exposer> exposer_;
  void WatchTokensFile();

  absl::Notification stop_watching_;
  std::thread reload_thread_;  // polls auth_tokens_file (auth_reload_interval)
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

}  // namespace kvc

#endif  // KVC_CACHESVC_SERVER_SERVER_H_
