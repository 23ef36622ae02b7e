// ServiceMetrics: the Prometheus metrics of the cache service.
//
// Request metrics are recorded by the service; tier gauges and counters are
// read from the store at scrape time (StoreCollector), so they are exact and
// cost nothing between scrapes. Names:
//   kvcache_requests_total{method,code}             counter
//   kvcache_request_duration_seconds{method}        histogram
//   kvcache_get_blocks_total{result}                counter  (host|disk|miss|corrupt)
//   kvcache_put_blocks_total                        counter
//   kvcache_payload_bytes_total{direction}          counter  (in: put, out: get)
//   kvcache_tier_bytes{tier} / _budget_bytes / _blocks          gauges
//   kvcache_tier_hits_total{tier} / _misses_total / _evictions_total  counters
//   kvcache_corrupt_blocks_total{tier}, kvcache_pinned_blocks,
//   kvcache_writebacks_total, kvcache_writeback_failures_total
// The UCX data plane (cachesvc/server/ucx_service.h) adds:
//   kvcache_ucx_requests_total{op,code}             counter  (op: hello|put|get)
//   kvcache_ucx_request_duration_seconds{op}        histogram
//   kvcache_ucx_bytes_total{direction}              counter  (AM payload bytes in/out)
//   kvcache_ucx_errors_total{kind}                  counter  (peer_error|bad_frame|recv_failed|send_failed)
//   kvcache_ucx_endpoints                           gauge    (connected UCX clients)
// Blocks moved over UCX also count in the put/get/payload families above.
#ifndef KVC_CACHESVC_SERVER_METRICS_H_
#define KVC_CACHESVC_SERVER_METRICS_H_

#include <array>
#include <memory>
#include <string>

#include <grpcpp/support/status.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/time/time.h"
#include "cachesvc/tiered_store.h"

namespace kvc {

enum class Method { kPut, kGet, kLookup, kDelete, kPin, kUnpin, kStats, kInfo, kCount };
const char* MethodName(Method m);

enum class GetResult { kHost, kDisk, kMiss, kCorrupt, kCount };

// Thread-safe. `store` must outlive this object.
class ServiceMetrics {
 public:
  explicit ServiceMetrics(const TieredStore* store);

  void ObserveRequest(Method method, grpc::StatusCode code, absl::Duration latency);
  void CountGet(GetResult result) { get_blocks_[static_cast<int>(result)]->Increment(); }
  void CountPut(uint64_t blocks, uint64_t payload_bytes);
  void CountBytesOut(uint64_t bytes) { bytes_out_->Increment(static_cast<double>(bytes)); }

  // UCX data plane. `op` is a wire-protocol op name ("put", "get", "hello").
  void ObserveUcxRequest(const char* op, grpc::StatusCode code, absl::Duration latency);
  void CountUcxBytes(bool in, uint64_t bytes) { (in ? ucx_in_ : ucx_out_)->Increment(static_cast<double>(bytes)); }
  enum class UcxError { kPeerError, kBadFrame, kRecvFailed, kSendFailed, kCount };
  void CountUcxError(UcxError e) { ucx_errors_[static_cast<int>(e)]->Increment(); }
  void SetUcxEndpoints(size_t n) { ucx_endpoints_->Set(static_cast<double>(n)); }

  // Both must be registered with an exposer to serve /metrics.
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }
  std::shared_ptr<prometheus::Collectable> store_collector() const { return store_collector_; }
  // The Prometheus text exposition of everything above.
  std::string RenderText() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<prometheus::Collectable> store_collector_;
  prometheus::Family<prometheus::Counter>* requests_;
  std::array<prometheus::Histogram*, static_cast<int>(Method::kCount)> latency_;
  std::array<prometheus::Counter*, static_cast<int>(GetResult::kCount)> get_blocks_;
  prometheus::Counter* put_blocks_;
  prometheus::Counter* bytes_in_;
  prometheus::Counter* bytes_out_;
  prometheus::Family<prometheus::Counter>* ucx_requests_;
  prometheus::Family<prometheus::Histogram>* ucx_latency_;
  prometheus::Counter* ucx_in_;
  prometheus::Counter* ucx_out_;
  std::array<prometheus::Counter*, static_cast<int>(UcxError::kCount)> ucx_errors_;
  prometheus::Gauge* ucx_endpoints_;
};

}  // namespace kvc

#endif  // KVC_CACHESVC_SERVER_METRICS_H_
