#include "worker/kv/service_link.h"

#include <prometheus/exposer.h>
#include <prometheus/registry.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "cachesvc/cached_block.h"
#include "common/status_macros.h"
#include "worker/kv/cluster_metrics.h"
#include "worker/cache/combined.h"
#include "worker/cache/refresh_kv.h"
#include "worker/cache/token_select.h"

namespace kvc {

absl::StatusOr<std::unique_ptr<ServiceLink>> ServiceLink::Start(const ServiceLinkOptions& options) {
  KVC_RETURN_IF_ERROR(options.sync.Validate());
  KVC_RETURN_IF_ERROR(options.writer.Validate());
  const ClusterOptions& cluster = options.cluster;
  const bool several = !(cluster.members.empty() && cluster.dns.empty()) && !cluster.single();
  BlockClientOptions client_options = options.client;
  if (cluster.single()) {
    // One member: the plain client, as without a cluster.
    KVC_RETURN_IF_ERROR(cluster.Validate());
    const ClusterMember& m = cluster.members.front();
    client_options.grpc.address = m.address;
    const int ucx_port = m.ucx_port > 0 ? m.ucx_port : cluster.ucx_port;
    if (ucx_port > 0 && client_options.ucx.address.empty()) {
      client_options.ucx.address = absl::StrCat(m.address.substr(0, m.address.rfind(':')), ":", ucx_port);
    }
  }
  if (!several) KVC_RETURN_IF_ERROR(ValidateBlockClientOptions(client_options));
  std::unique_ptr<ServiceLink> link(new ServiceLink(options));
  if (several) {
    ClusterBlockClientOptions co;
    co.cluster = cluster;
    co.member = client_options;
    co.reconnect = options.reconnect;
    KVC_ASSIGN_OR_RETURN(std::unique_ptr<ClusterBlockClient> c, ClusterBlockClient::Create(std::move(co)));
    link->cluster_ = c.get();
    link->client_ = std::move(c);
  } else {
    link->client_ = std::make_unique<ResilientBlockClient>(
        [client_options] { return MakeBlockClient(client_options); }, options.reconnect);
  }
  link->writer_ = std::make_unique<BlockWriter>(link->client_.get(), options.writer);
  link->metrics_ = std::make_shared<KvMetrics>(link->writer_.get());
  if (link->cluster_ != nullptr) link->cluster_metrics_ = std::make_shared<ClusterMetrics>(link->cluster_);
  if (!options.metrics_address.empty()) {
    try {
      link->exposer_ = std::make_unique<prometheus::Exposer>(options.metrics_address, 1);
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot serve metrics on ", options.metrics_address, ": ", e.what()));
    }
    link->exposer_->RegisterCollectable(link->metrics_);
    if (link->cluster_metrics_ != nullptr) link->exposer_->RegisterCollectable(link->cluster_metrics_);
    const std::vector<int> ports = link->exposer_->GetListeningPorts();
    link->metrics_port_ = ports.empty() ? 0 : ports.front();
  }
  return link;
}

ServiceLink::ServiceLink(const ServiceLinkOptions& options) : options_(options) {}

void ServiceLink::ExposeToo(const std::shared_ptr<prometheus::Collectable>& c) {
  if (exposer_ != nullptr) exposer_->RegisterCollectable(c);
}

ServiceLink::~ServiceLink() = default;

absl::StatusOr<std::unique_ptr<WriteThroughCache>> ServiceLink::Attach(const model::ModelConfig& config,
                                                                       std::unique_ptr<cache::CachePolicy> policy) {
  return WriteThroughCache::Create(config, std::move(policy), writer_.get(), options_.sync, client_.get());
}

absl::StatusOr<PrefixLoad> ServiceLink::LoadPrefix(const model::ModelConfig& config, std::span<const int32_t> prompt,
                                                   WriteThroughCache& seq, int64_t align) {
  PrefixLoad load;
  if (options_.prefix_reuse && seq.loads_prefix()) {
    KVC_ASSIGN_OR_RETURN(load.tokens, CachedPrefixTokens(*client_, options_.sync, config, seq.kv_origin(), prompt, align));
  }
  metrics_->CountPrefixLookup(load.tokens);
  if (load.tokens > 0) {
    // Streamed: each layer's blocks load while the layers before it compute.
    seq.AppendTokens(prompt.first(static_cast<size_t>(load.tokens)));
    KVC_RETURN_IF_ERROR(seq.StreamPrefix(load.tokens));
    load.blocks = load.tokens / options_.sync.block_tokens;
    load.bytes = 2 * load.tokens * config.n_layers * int64_t{config.n_kv_heads} * config.head_dim() *
                 static_cast<int64_t>(DTypeBytes(options_.sync.dtype));
  }
  return load;
}

void ServiceLink::Finish(WriteThroughCache& seq) {
  if (auto* r = dynamic_cast<cache::RefreshKv*>(&seq.inner())) {
    metrics_->CountRefreshes(r->rehydrated_tokens(), r->refreshes_skipped());
  } else if (auto* t = dynamic_cast<cache::TokenSelectPolicy*>(&seq.inner())) {
    metrics_->CountFetchedBack(t->cold_stats().fetched_blocks, t->short_selections());
  } else if (auto* c = dynamic_cast<cache::Combined*>(&seq.inner())) {
    metrics_->CountRefreshes(0, c->refreshes_skipped());
    metrics_->CountFetchedBack(c->cold_stats().fetched_blocks, c->short_selections());
  }
}

}  // namespace kvc
