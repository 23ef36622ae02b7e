// The Prometheus metrics of a worker's cache-service cluster client, read at
// scrape time from ClusterBlockClient::stats(). Names:
//   kvc_worker_cache_members{state}                     gauge   (live|down: down = skipped within its backoff)
//   kvc_worker_cache_member_failures_total              counter (per-member calls that failed as unreachable or slow)
//   kvc_worker_cache_down_misses_total                  counter (keys and prefix lookups that missed because their
//   member was down) kvc_worker_cache_fallback_puts_total                counter (block copies stored on another member
//   than their first choice) kvc_worker_cache_fallback_hits_total                counter (blocks found on another
//   member than their first choice) kvc_worker_cache_membership_refreshes_total{result} counter (ok|error: DNS
//   resolutions) kvc_worker_cache_membership_changes_total           counter
#ifndef KVC_WORKER_KV_CLUSTER_METRICS_H_
#define KVC_WORKER_KV_CLUSTER_METRICS_H_

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <vector>

#include "worker/kv/cluster_block_client.h"

namespace kvc {

// Thread-safe. `client` must outlive the collector.
class ClusterMetrics : public prometheus::Collectable {
 public:
  explicit ClusterMetrics(const ClusterBlockClient* client) : client_(client) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const ClusterBlockClient* client_;
};

}  // namespace kvc

#endif  // KVC_WORKER_KV_CLUSTER_METRICS_H_
