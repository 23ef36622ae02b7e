// CacheService: the kvcache.v1.KVCache gRPC service over a TieredStore.
//
// Every handler authenticates the caller, checks the request against the
// Limits and the caller's tenant, then hands the work to a bounded executor
// so no gRPC reactor thread ever waits on disk. Get is a raw-ByteBuffer
// stream: a block's stored wire bytes go onto the socket without being
// parsed or copied (see get_reactor.cc); clients see ordinary GetResponse
// messages.
#ifndef KVC_CACHESVC_SERVER_SERVICE_H_
#define KVC_CACHESVC_SERVER_SERVICE_H_

#include <atomic>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "cachesvc/limits.h"
#include "cachesvc/server/auth.h"
#include "cachesvc/server/metrics.h"
#include "cachesvc/server/put_request.h"
#include "cachesvc/tiered_store.h"
#include "common/clock.h"
#include "common/executor.h"
#include "kvcache/v1/cache.grpc.pb.h"

namespace kvc {

// Who is calling. With authentication off, `tenant` is empty and the caller
// may use any tenant named in its keys.
struct Caller {
  std::string tenant;
  bool any_tenant = false;
};

grpc::Status ToGrpc(const absl::Status& s);

// Thread-safe. Every pointer must outlive the service.
class CacheService final
    : public kvcache::v1::KVCache::WithRawCallbackMethod_Put<
          kvcache::v1::KVCache::WithRawCallbackMethod_Get<kvcache::v1::KVCache::CallbackService>> {
 public:
  CacheService(TieredStore* store, const TenantDirectory* tenants, const Limits& limits,
               BoundedExecutor* executor, ServiceMetrics* metrics, Clock* clock);

  // Raw: each block's serialized bytes are lifted out of the request and
  // kept as its stored wire bytes, validated in place (put_request.cc).
  grpc::ServerUnaryReactor* Put(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                grpc::ByteBuffer* resp) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Get(grpc::CallbackServerContext* ctx,
                                                  const grpc::ByteBuffer* req) override;
  grpc::ServerUnaryReactor* Lookup(grpc::CallbackServerContext* ctx, const kvcache::v1::LookupRequest* req,
                                   kvcache::v1::LookupResponse* resp) override;
  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* ctx, const kvcache::v1::DeleteRequest* req,
                                   kvcache::v1::DeleteResponse* resp) override;
  grpc::ServerUnaryReactor* Pin(grpc::CallbackServerContext* ctx, const kvcache::v1::PinRequest* req,
                                kvcache::v1::PinResponse* resp) override;
  grpc::ServerUnaryReactor* Unpin(grpc::CallbackServerContext* ctx, const kvcache::v1::UnpinRequest* req,
                                  kvcache::v1::UnpinResponse* resp) override;
  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* ctx, const kvcache::v1::StatsRequest* req,
                                  kvcache::v1::StatsResponse* resp) override;
  grpc::ServerUnaryReactor* Info(grpc::CallbackServerContext* ctx, const kvcache::v1::InfoRequest* req,
                                 kvcache::v1::InfoResponse* resp) override;

  // Used by the Get stream (get_reactor.cc).
  absl::StatusOr<Caller> Authenticate(grpc::CallbackServerContext* ctx) const;
  // The same from the value of an "authorization" header ("Bearer <token>"),
  // for transports other than gRPC (the UCX listener's HELLO).
  absl::StatusOr<Caller> AuthenticateAuthorization(absl::string_view authorization) const;
  // Validates a whole Put batch (block contract, the caller's tenant, quota)
  // and stores it; returns the number of blocks stored. Shared by gRPC Put
  // and the UCX listener. May touch disk: never on a reactor/progress thread.
  absl::StatusOr<uint32_t> StoreBlocks(const Caller& caller, RawPutRequest req);
  // OK when the caller may use `key` (tenant matches) and its strings are
  // within limits. `what` names the key in messages, e.g. "keys[3]".
  absl::Status CheckKey(const Caller& caller, const kvcache::v1::BlockKey& key,
                        absl::string_view what) const;
  // Checks a batch size against max_batch_blocks; `what` is e.g. "Get keys".
  absl::Status CheckBatch(size_t n, absl::string_view what) const;

  // Graceful shutdown: from now on new calls get UNAVAILABLE ("shutting
  // down"); calls already running finish normally.
  void StartDraining() { draining_.store(true); }
  // Calls (unary and Get streams) that have started and not finished.
  int in_flight() const { return in_flight_.load(); }
  // Get streams count themselves in and out with these.
  bool draining() const { return draining_.load(); }
  void CallStarted() { in_flight_.fetch_add(1); }
  void CallEnded() { in_flight_.fetch_sub(1); }

  TieredStore* store() const { return store_; }
  BoundedExecutor* executor() const { return executor_; }
  ServiceMetrics* metrics() const { return metrics_; }
  const Limits& limits() const { return limits_; }

 private:
  // Authenticates, then runs `work(caller)` on the executor (or inline when
  // `inline_work`) and finishes the call with its status, recording metrics.
  template <typename Work>
  grpc::ServerUnaryReactor* Unary(Method method, grpc::CallbackServerContext* ctx, bool inline_work,
                                  Work work);
  void Finish(grpc::ServerUnaryReactor* reactor, Method method, absl::Time start,
              const absl::Status& status);

  absl::Status DoPut(const Caller& caller, const grpc::ByteBuffer& req, grpc::ByteBuffer* resp);
  absl::Status DoLookup(const Caller& caller, const kvcache::v1::LookupRequest& req,
                        kvcache::v1::LookupResponse* resp);
  absl::Status DoPin(const Caller& caller, const kvcache::v1::PinRequest& req,
                     kvcache::v1::PinResponse* resp);
  absl::Status DoUnpin(const Caller& caller, const kvcache::v1::UnpinRequest& req,
                       kvcache::v1::UnpinResponse* resp);

  TieredStore* const store_;
  const TenantDirectory* const tenants_;
  const Limits limits_;
  BoundedExecutor* const executor_;
  ServiceMetrics* const metrics_;
  Clock* const clock_;
  std::atomic<bool> draining_{false};
  std::atomic<int> in_flight_{0};

  struct LeaseOwner {
    std::string tenant;
    absl::Time expiry;
  };
  absl::Mutex leases_mu_;
  // Which tenant took each live lease, so nobody releases another's pins.
  absl::flat_hash_map<uint64_t, LeaseOwner> lease_owner_ ABSL_GUARDED_BY(leases_mu_);
  size_t lease_sweep_at_ ABSL_GUARDED_BY(leases_mu_) = 1024;
};

}  // namespace kvc

#endif  // KVC_CACHESVC_SERVER_SERVICE_H_
