#include "cachesvc/server/metrics.h"

#include <prometheus/gauge.h>
#include <prometheus/text_serializer.h>

#include "absl/strings/str_cat.h"

namespace kvc {

const char* MethodName(Method m) {
  switch (m) {
    case Method::kPut: return "Put";
    case Method::kGet: return "Get";
    case Method::kLookup: return "Lookup";
    case Method::kDelete: return "Delete";
    case Method::kPin: return "Pin";
    case Method::kUnpin: return "Unpin";
    case Method::kStats: return "Stats";
    case Method::kInfo: return "Info";
    case Method::kCount: break;
  }
  return "unknown";
}

namespace {

const char* CodeName(grpc::StatusCode code) {
  static const char* kNames[] = {
      "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
      "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return (i >= 0 && i < 17) ? kNames[i] : "UNKNOWN";
}

// Reads the store's counters at scrape time.
class StoreCollector : public prometheus::Collectable {
 public:
  explicit StoreCollector(const TieredStore* store) : store_(store) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    const StoreStats s = store_->Stats();
    std::vector<prometheus::MetricFamily> out;
    auto per_tier = [&](const char* name, const char* help, prometheus::MetricType type,
                        uint64_t host, uint64_t disk) {
      prometheus::MetricFamily f{name, help, type, {}};
      for (auto [tier, v] : {std::pair{"host", host}, std::pair{"disk", disk}}) {
        prometheus::ClientMetric m;
        m.label = {{"tier", tier}};
        if (type == prometheus::MetricType::Counter) m.counter.value = static_cast<double>(v);
        else m.gauge.value = static_cast<double>(v);
        f.metric.push_back(std::move(m));
      }
      out.push_back(std::move(f));
    };
    auto single = [&](const char* name, const char* help, prometheus::MetricType type, uint64_t v) {
      prometheus::ClientMetric m;
      if (type == prometheus::MetricType::Counter) m.counter.value = static_cast<double>(v);
      else m.gauge.value = static_cast<double>(v);
      out.push_back(prometheus::MetricFamily{name, help, type, {std::move(m)}});
    };
    using prometheus::MetricType;
    per_tier("kvcache_tier_bytes", "Charged bytes held in the tier.", MetricType::Gauge, s.host.bytes, s.disk.bytes);
    per_tier("kvcache_tier_budget_bytes", "Byte budget of the tier.", MetricType::Gauge, s.host.budget_bytes, s.disk.budget_bytes);
    per_tier("kvcache_tier_blocks", "Blocks held in the tier.", MetricType::Gauge, s.host.blocks, s.disk.blocks);
    per_tier("kvcache_tier_hits_total", "Block reads the tier served.", MetricType::Counter, s.host.hits, s.disk.hits);
    per_tier("kvcache_tier_misses_total", "Block reads the tier could not serve.", MetricType::Counter, s.host.misses, s.disk.misses);
    per_tier("kvcache_tier_evictions_total", "Blocks evicted to stay within a budget or quota.", MetricType::Counter, s.host.evictions, s.disk.evictions);
    per_tier("kvcache_corrupt_blocks_total", "Blocks dropped because they failed their checksum.", MetricType::Counter, s.host.corrupt, s.disk.corrupt);
    single("kvcache_pinned_blocks", "Blocks under an unexpired pin lease.", MetricType::Gauge, s.pinned_blocks);
    single("kvcache_writebacks_total", "Blocks written to disk on host eviction.", MetricType::Counter, s.writebacks);
    single("kvcache_writeback_failures_total", "Write-backs the disk tier refused.", MetricType::Counter, s.writeback_failures);
    return out;
  }

 private:
  const TieredStore* store_;
};

}  // namespace

ServiceMetrics::ServiceMetrics(const TieredStore* store)
    : registry_(std::make_shared<prometheus::Registry>()),
      store_collector_(std::make_shared<StoreCollector>(store)) {
  requests_ = &prometheus::BuildCounter()
                   .Name("kvcache_requests_total")
                   .Help("Completed requests by method and gRPC status code.")
                   .Register(*registry_);
  auto& latency = prometheus::BuildHistogram()
                      .Name("kvcache_request_duration_seconds")
                      .Help("Request latency from arrival to completion, by method.")
                      .Register(*registry_);
  const prometheus::Histogram::BucketBoundaries buckets = {
      50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5, 5, 10};
  for (int i = 0; i < static_cast<int>(Method::kCount); ++i) {
    latency_[i] = &latency.Add({{"method", MethodName(static_cast<Method>(i))}}, buckets);
  }
  auto& gets = prometheus::BuildCounter()
                   .Name("kvcache_get_blocks_total")
                   .Help("Blocks requested by Get, by result: served from host or disk, miss, corrupt.")
                   .Register(*registry_);
  const char* results[] = {"host", "disk", "miss", "corrupt"};
  for (int i = 0; i < static_cast<int>(GetResult::kCount); ++i) {
    get_blocks_[i] = &gets.Add({{"result", results[i]}});
  }
  put_blocks_ = &prometheus::BuildCounter()
                     .Name("kvcache_put_blocks_total")
                     .Help("Blocks stored by Put.")
                     .Register(*registry_)
                     .Add({});
  auto& bytes = prometheus::BuildCounter()
                    .Name("kvcache_payload_bytes_total")
                    .Help("K+V payload bytes received by Put (in) and sent by Get (out).")
                    .Register(*registry_);
  bytes_in_ = &bytes.Add({{"direction", "in"}});
  bytes_out_ = &bytes.Add({{"direction", "out"}});

  ucx_requests_ = &prometheus::BuildCounter()
                       .Name("kvcache_ucx_requests_total")
                       .Help("Completed UCX data-plane requests by op and status code.")
                       .Register(*registry_);
  ucx_latency_ = &prometheus::BuildHistogram()
                      .Name("kvcache_ucx_request_duration_seconds")
                      .Help("UCX request latency from arrival of the request to the last reply sent, by op.")
                      .Register(*registry_);
  auto& ucx_bytes = prometheus::BuildCounter()
                        .Name("kvcache_ucx_bytes_total")
                        .Help("UCX active-message payload bytes received (in) and sent (out).")
                        .Register(*registry_);
  ucx_in_ = &ucx_bytes.Add({{"direction", "in"}});
  ucx_out_ = &ucx_bytes.Add({{"direction", "out"}});
  auto& ucx_errors = prometheus::BuildCounter()
                         .Name("kvcache_ucx_errors_total")
                         .Help("UCX data-plane failures: peer_error (endpoint failed, e.g. client died), "
                               "bad_frame, recv_failed, send_failed.")
                         .Register(*registry_);
  const char* kinds[] = {"peer_error", "bad_frame", "recv_failed", "send_failed"};
  for (int i = 0; i < static_cast<int>(UcxError::kCount); ++i) ucx_errors_[i] = &ucx_errors.Add({{"kind", kinds[i]}});
  ucx_endpoints_ = &prometheus::BuildGauge()
                        .Name("kvcache_ucx_endpoints")
                        .Help("Connected UCX client endpoints.")
                        .Register(*registry_)
                        .Add({});
}

void ServiceMetrics::ObserveUcxRequest(const char* op, grpc::StatusCode code, absl::Duration latency) {
  ucx_requests_->Add({{"op", op}, {"code", CodeName(code)}}).Increment();
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1, 5};
  ucx_latency_->Add({{"op", op}}, kBuckets).Observe(absl::ToDoubleSeconds(latency));
}

void ServiceMetrics::ObserveRequest(Method method, grpc::StatusCode code, absl::Duration latency) {
  requests_->Add({{"method", MethodName(method)}, {"code", CodeName(code)}}).Increment();
  latency_[static_cast<int>(method)]->Observe(absl::ToDoubleSeconds(latency));
}

void ServiceMetrics::CountPut(uint64_t blocks, uint64_t payload_bytes) {
  put_blocks_->Increment(static_cast<double>(blocks));
  bytes_in_->Increment(static_cast<double>(payload_bytes));
}

std::string ServiceMetrics::RenderText() const {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  std::vector<prometheus::MetricFamily> store = store_collector_->Collect();
  families.insert(families.end(), store.begin(), store.end());
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace kvc
