#include "worker/kv/kv_metrics.h"

#include <initializer_list>
#include <string>
#include <utility>

namespace kvc {

using prometheus::MetricType;

std::vector<prometheus::MetricFamily> KvMetrics::Collect() const {
  std::vector<prometheus::MetricFamily> out;
  auto single = [&](const char* name, const char* help, MetricType type, double v) {
    out.push_back(prometheus::MetricFamily{name, help, type, {MetricSample(type, v)}});
  };
  auto labelled = [&](const char* name, const char* help, const char* label,
                      std::initializer_list<std::pair<const char*, double>> values) {
    prometheus::MetricFamily f{name, help, MetricType::Counter, {}};
    for (const auto& [l, v] : values) f.metric.push_back(MetricSample(MetricType::Counter, v, {{label, l}}));
    out.push_back(std::move(f));
  };
  if (writer_ != nullptr) {
    const BlockWriterStats s = writer_->stats();
    labelled("kvc_worker_write_through_blocks_total", "KV blocks handed to the write-through, by outcome.", "result",
             {{"submitted", static_cast<double>(s.submitted)},
              {"stored", static_cast<double>(s.stored)},
              {"dropped", static_cast<double>(s.dropped)},
              {"rejected", static_cast<double>(s.rejected)}});
    single("kvc_worker_write_through_stored_bytes_total", "Bytes of blocks the cache service stored.",
           MetricType::Counter, static_cast<double>(s.stored_bytes));
    single("kvc_worker_write_through_queued_bytes", "Bytes of blocks queued or in flight.", MetricType::Gauge,
           static_cast<double>(s.queued_bytes));
    single("kvc_worker_write_through_waits_total", "Submits that waited for queue room (backpressure).",
           MetricType::Counter, static_cast<double>(s.submit_waits));
    single("kvc_worker_cache_service_degraded", "1 while the cache service is unreachable.", MetricType::Gauge,
           s.degraded ? 1.0 : 0.0);
    single("kvc_worker_cache_service_degraded_episodes_total", "Times the cache service became unreachable.",
           MetricType::Counter, static_cast<double>(s.degraded_episodes));
  }
  labelled("kvc_worker_prefix_lookups_total", "Prompt prefix lookups, by whether any block loaded.", "result",
           {{"hit", static_cast<double>(prefix_hits_.load())}, {"miss", static_cast<double>(prefix_misses_.load())}});
  single("kvc_worker_prefix_tokens_loaded_total", "Prompt tokens loaded from the cache service instead of computed.",
         MetricType::Counter, static_cast<double>(prefix_tokens_.load()));
  single("kvc_worker_rehydrated_tokens_total", "Tokens fetched back from the cache service by refresh steps.",
         MetricType::Counter, static_cast<double>(rehydrated_.load()));
  single("kvc_worker_refreshes_skipped_total", "Refresh steps that ran on the hot set because the service was away.",
         MetricType::Counter, static_cast<double>(skipped_.load()));
  single("kvc_worker_fetched_back_blocks_total",
         "Blocks of values fetched back from the cache service by selections and full steps.", MetricType::Counter,
         static_cast<double>(fetched_back_.load()));
  single("kvc_worker_short_selections_total",
         "Selections that went on without tokens the cache service could not return.", MetricType::Counter,
         static_cast<double>(short_selections_.load()));
  return out;
}

}  // namespace kvc
