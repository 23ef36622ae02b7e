// The Prometheus metrics of a worker's link to the cache service, read at
// scrape time from the block writer and the counters below (so they cost
// nothing between scrapes). Names:
//   kvc_worker_write_through_blocks_total{result}   counter (submitted|stored|dropped|rejected)
//   kvc_worker_write_through_stored_bytes_total     counter
//   kvc_worker_write_through_queued_bytes           gauge   (queued or in flight)
//   kvc_worker_write_through_waits_total            counter (Submit waited for room: backpressure)
//   kvc_worker_cache_service_degraded               gauge   (1 while the service is unreachable)
//   kvc_worker_cache_service_degraded_episodes_total counter
//   kvc_worker_prefix_lookups_total{result}         counter (hit|miss)
//   kvc_worker_prefix_tokens_loaded_total           counter
//   kvc_worker_rehydrated_tokens_total              counter (tokens fetched back by refreshes)
//   kvc_worker_refreshes_skipped_total              counter (refreshes the service could not serve)
//   kvc_worker_fetched_back_blocks_total            counter (blocks of values a selection or full step fetched back)
//   kvc_worker_short_selections_total               counter (selections that went without tokens the service could not return)
#ifndef KVC_WORKER_KV_KV_METRICS_H_
#define KVC_WORKER_KV_KV_METRICS_H_

#include <atomic>
#include <cstdint>
#include <utility>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include "worker/kv/block_writer.h"

namespace kvc {

// One sample (labels, value) of a counter or gauge family.
inline prometheus::ClientMetric MetricSample(prometheus::MetricType type, double v,
                                             std::vector<prometheus::ClientMetric::Label> labels = {}) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  if (type == prometheus::MetricType::Counter) {
    m.counter.value = v;
  } else {
    m.gauge.value = v;
  }
  return m;
}

// Thread-safe. `writer` (may be null) must outlive the collector.
class KvMetrics : public prometheus::Collectable {
 public:
  explicit KvMetrics(const BlockWriter* writer) : writer_(writer) {}

  void CountPrefixLookup(int64_t tokens_loaded) {
    (tokens_loaded > 0 ? prefix_hits_ : prefix_misses_).fetch_add(1);
    prefix_tokens_.fetch_add(static_cast<uint64_t>(tokens_loaded));
  }
  // Totals of a sequence's policy, added when the sequence ends.
  void CountRefreshes(int64_t rehydrated_tokens, int64_t skipped) {
    rehydrated_.fetch_add(static_cast<uint64_t>(rehydrated_tokens));
    skipped_.fetch_add(static_cast<uint64_t>(skipped));
  }

  void CountFetchedBack(int64_t blocks, int64_t short_selections) {
    fetched_back_.fetch_add(static_cast<uint64_t>(blocks));
    short_selections_.fetch_add(static_cast<uint64_t>(short_selections));
  }

  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const BlockWriter* writer_;
  std::atomic<uint64_t> prefix_hits_{0}, prefix_misses_{0}, prefix_tokens_{0}, rehydrated_{0}, skipped_{0},
      fetched_back_{0}, short_selections_{0};
};

}  // namespace kvc

#endif  // KVC_WORKER_KV_KV_METRICS_H_
