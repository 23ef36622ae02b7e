// ServiceLink: a worker process's link to the cache service, in one object:
// the transport client (UCX or gRPC, remade after the service comes back;
// over several services, a ClusterBlockClient placing blocks over them),
// the asynchronous write-through, the metrics endpoint; and per sequence,
// the policy wrapped for write-through and rehydration, and its prompt's
// cached prefix loaded.
//
//   auto link = ServiceLink::Start(options);
//   auto seq = link->Attach(config, MakePolicy(config, spec));
//   auto load = link->LoadPrefix(config, prompt, *seq, model.options().max_chunk);
//   model.Forward(prompt.subspan(load->tokens), load->tokens, *seq, logits);  // after seq->AppendTokens
#ifndef KVC_WORKER_KV_SERVICE_LINK_H_
#define KVC_WORKER_KV_SERVICE_LINK_H_

#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/cache/policy.h"
#include "worker/kv/block_client_factory.h"
#include "worker/kv/block_writer.h"
#include "worker/kv/cluster_block_client.h"
#include "worker/kv/kv_metrics.h"
#include "worker/kv/kv_sync.h"
#include "worker/kv/resilient_block_client.h"

namespace prometheus {
class Collectable;
class Exposer;
class Registry;
}  // namespace prometheus

namespace kvc {

struct ServiceLinkOptions {
  // The one service's client; with `cluster`, the template of each member's
  // client (its addresses and timeouts are set per member).
  BlockClientOptions client;
  // Several services (ClusterOptions: members, a DNS name, replicas,
  // timeouts). Default: no members and no DNS name, i.e. the one service
  // of `client`. One member alone is that service too (no cluster).
  ClusterOptions cluster;
  BlockWriterOptions writer;
  KvSyncOptions sync;
  // Prometheus /metrics listen address, host:port; "" disables. Default "".
  std::string metrics_address;
  // Least time between attempts to reach a service that went away. Default 500 ms.
  absl::Duration reconnect = absl::Milliseconds(500);
  // Load the cached prefix of each prompt. Default true.
  bool prefix_reuse = true;
};

// Thread-safe: sequences on different threads may share one link.
class ServiceLink {
 public:
  // Validates the options and starts the metrics endpoint. Does not wait for
  // the service: the first block or lookup connects (a service that is not
  // there yet means degraded mode, not an error).
  static absl::StatusOr<std::unique_ptr<ServiceLink>> Start(const ServiceLinkOptions& options);
  ~ServiceLink();

  // `policy` for a new sequence, writing its blocks through and, when the
  // policy can (RefreshKV), keeping its full context in the service.
  absl::StatusOr<std::unique_ptr<WriteThroughCache>> Attach(const model::ModelConfig& config,
                                                            std::unique_ptr<cache::CachePolicy> policy);
  // Looks up the longest cached prefix of `prompt` (a multiple of `align`
  // tokens, see LoadCachedPrefix), announces those tokens and streams their
  // blocks into `seq` (WriteThroughCache::StreamPrefix: each layer loads as
  // the prompt's rest reaches it). The caller then runs prompt[tokens:] from
  // position `tokens`; should that fail for a block that could not be
  // fetched after all, it starts the sequence anew with prefix_reuse off.
  // Nothing loads with prefix_reuse off or a policy that cannot load.
  absl::StatusOr<PrefixLoad> LoadPrefix(const model::ModelConfig& config, std::span<const int32_t> prompt,
                                        WriteThroughCache& seq, int64_t align);
  // A sequence ended: its refresh counters go to the metrics.
  void Finish(WriteThroughCache& seq);

  BlockClient& client() { return *client_; }
  // The cluster client when the link spreads blocks over several services, else null.
  ClusterBlockClient* cluster() { return cluster_; }
  BlockWriter& writer() { return *writer_; }
  KvMetrics& metrics() { return *metrics_; }
  const ServiceLinkOptions& options() const { return options_; }
  // The bound metrics port, 0 when disabled.
  int metrics_port() const { return metrics_port_; }
  // Serves `c` on the link's metrics endpoint too (nothing when disabled).
  void ExposeToo(const std::shared_ptr<prometheus::Collectable>& c);

 private:
  explicit ServiceLink(const ServiceLinkOptions& options);

  ServiceLinkOptions options_;
  std::unique_ptr<BlockClient> client_;
  ClusterBlockClient* cluster_ = nullptr;  // client_, when it is one
  std::unique_ptr<BlockWriter> writer_;
  std::shared_ptr<KvMetrics> metrics_;
  std::shared_ptr<prometheus::Collectable> cluster_metrics_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int metrics_port_ = 0;
};

}  // namespace kvc

#endif  // KVC_WORKER_KV_SERVICE_LINK_H_
