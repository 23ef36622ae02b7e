#include "worker/kv/cluster_metrics.h"

#include <string>
#include <utility>

#include "worker/kv/kv_metrics.h"

namespace kvc {

using prometheus::MetricType;

std::vector<prometheus::MetricFamily> ClusterMetrics::Collect() const {
  const ClusterStats s = client_->stats();
  std::vector<prometheus::MetricFamily> out;
  auto counter = [&](const char* name, const char* help, double v) {
    out.push_back(prometheus::MetricFamily{name, help, MetricType::Counter, {MetricSample(MetricType::Counter, v)}});
  };
  out.push_back(
      prometheus::MetricFamily{"kvc_worker_cache_members",
                               "Cache-service members, live or down (skipped within their backoff).",
                               MetricType::Gauge,
                               {MetricSample(MetricType::Gauge, static_cast<double>(s.members - s.down), {{"state", "live"}}),
                                MetricSample(MetricType::Gauge, static_cast<double>(s.down), {{"state", "down"}})}});
  counter("kvc_worker_cache_member_failures_total",
          "Calls to one cache-service member that failed as unreachable or slow.",
          static_cast<double>(s.member_failures));
  counter("kvc_worker_cache_down_misses_total",
          "Blocks and prefix lookups that missed because their cache-service member was down.",
          static_cast<double>(s.down_misses));
  counter("kvc_worker_cache_fallback_puts_total",
          "Block copies stored on another cache-service member than their first choice.",
          static_cast<double>(s.fallback_puts));
  counter("kvc_worker_cache_fallback_hits_total",
          "Blocks found on another cache-service member than their first choice.",
          static_cast<double>(s.fallback_hits));
  out.push_back(prometheus::MetricFamily{
      "kvc_worker_cache_membership_refreshes_total",
      "Resolutions of the cache-service membership (DNS), by result.",
      MetricType::Counter,
      {MetricSample(MetricType::Counter, static_cast<double>(s.refreshes - s.refresh_errors), {{"result", "ok"}}),
       MetricSample(MetricType::Counter, static_cast<double>(s.refresh_errors), {{"result", "error"}})}});
  counter("kvc_worker_cache_membership_changes_total", "Changes of the cache-service membership.",
          static_cast<double>(s.membership_changes));
  return out;
}

}  // namespace kvc
