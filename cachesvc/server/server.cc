#include "cachesvc/server/server.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <prometheus/exposer.h>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/units.h"

namespace kvc {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path, absl::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", what, " '", path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const ServerOptions& o) {
  if (o.tls_cert_file.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions ssl;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  KVC_ASSIGN_OR_RETURN(pair.cert_chain, ReadFile(o.tls_cert_file, "TLS certificate"));
  KVC_ASSIGN_OR_RETURN(pair.private_key, ReadFile(o.tls_key_file, "TLS private key"));
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  return grpc::SslServerCredentials(ssl);
}

}  // namespace

absl::StatusOr<std::unique_ptr<CacheServer>> CacheServer::Start(const ServerOptions& options, Clock* clock) {
  KVC_RETURN_IF_ERROR(options.Validate());
  auto srv = std::unique_ptr<CacheServer>(new CacheServer());
  srv->options_ = options;

  std::unique_ptr<TenantRegistry> registry;
  std::string tokens_text;
  if (options.auth_tokens_file.empty()) {
    registry = TenantRegistry::Disabled();
    KVC_LOG(kWarning, "auth_disabled")
        .With("detail", "no auth_tokens_file: any caller may use any tenant; for development only");
  } else {
    KVC_ASSIGN_OR_RETURN(tokens_text, TenantRegistry::ReadFile(options.auth_tokens_file));
    absl::StatusOr<std::unique_ptr<TenantRegistry>> parsed = TenantRegistry::FromText(tokens_text);
    if (!parsed.ok()) {
      return absl::Status(parsed.status().code(),
                          absl::StrCat(options.auth_tokens_file, ": ", parsed.status().message()));
    }
    registry = *std::move(parsed);
  }
  const bool auth_enabled = registry->enabled();
  const size_t tenant_count = registry->size();
  srv->tenants_ = std::make_unique<TenantDirectory>(std::move(registry), options.auth_tokens_file,
                                                    std::move(tokens_text));
  KVC_ASSIGN_OR_RETURN(auto creds, Credentials(options));

  std::error_code ec;
  std::filesystem::create_directories(options.data_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create data_dir '", options.data_dir, "': ", ec.message()));
  }

  TieredStoreOptions store_opts;
  store_opts.clock = clock;
  store_opts.host.capacity_bytes = options.host_capacity_bytes;
  store_opts.host.num_shards = options.host_shards;
  store_opts.disk.path = (std::filesystem::path(options.data_dir) / "rocksdb").string();
  store_opts.disk.capacity_bytes = options.disk_capacity_bytes;
  store_opts.disk.block_cache_bytes = options.disk_block_cache_bytes;
  const TenantDirectory* tenants = srv->tenants_.get();
  if (auth_enabled) {
    store_opts.tenant_quota = [tenants](absl::string_view t) { return tenants->QuotaFor(t); };
  }
  const absl::Time open_start = absl::Now();
  KVC_ASSIGN_OR_RETURN(srv->store_, TieredStore::Open(std::move(store_opts)));
  {
    const StoreStats s = srv->store_->Stats();
    KVC_LOG(kInfo, "store_opened")
        .With("data_dir", options.data_dir)
        .With("disk_blocks", s.disk.blocks)
        .With("disk_bytes", s.disk.bytes)
        .With("open_ms", absl::ToInt64Milliseconds(absl::Now() - open_start));
  }

  srv->metrics_ = std::make_unique<ServiceMetrics>(srv->store_.get());
  srv->executor_ = std::make_unique<BoundedExecutor>("requests", options.worker_threads,
                                                     options.max_queued_requests);
  srv->service_ = std::make_unique<CacheService>(srv->store_.get(), tenants, options.limits,
                                                 srv->executor_.get(), srv->metrics_.get(), clock);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, creds, &srv->port_);
  builder.RegisterService(srv->service_.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.limits.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.limits.max_message_bytes));
  // KV blocks are megabytes: a stream's flow-control window covers a whole
  // message (anything larger is refused anyway), so a Put never stalls on
  // window updates, and frames are large.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES,
                             static_cast<int>(options.limits.max_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, (1 << 24) - 1);
  srv->server_ = builder.BuildAndStart();
  if (srv->server_ == nullptr || srv->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on '", options.listen_address, "'"));
  }
  srv->server_->GetHealthCheckService()->SetServingStatus(true);

  if (!options.metrics_address.empty()) {
    try {
      srv->exposer_ = std::make_unique<prometheus::Exposer>(options.metrics_address, 2);
    } catch (const std::exception& e) {
      srv->Shutdown();
      return absl::UnavailableError(
          absl::StrCat("cannot serve metrics on '", options.metrics_address, "': ", e.what()));
    }
    srv->exposer_->RegisterCollectable(srv->metrics_->registry());
    srv->exposer_->RegisterCollectable(srv->metrics_->store_collector());
    const std::vector<int> ports = srv->exposer_->GetListeningPorts();
    srv->metrics_port_ = ports.empty() ? 0 : ports[0];
  }

  if (!options.ucx_listen_address.empty()) {
    UcxServiceOptions uo;
    uo.listen_address = options.ucx_listen_address;
    uo.ucx.tls = options.ucx_tls;
    uo.ucx.net_devices = options.ucx_net_devices;
    uo.ucx.progress_spin = options.ucx_progress_spin;
    uo.recv_pool_bytes = options.ucx_recv_pool_bytes;
    // A restarted service binds its port again, TIME_WAIT or not.
    uo.ucx.reuse_address = true;
    absl::StatusOr<std::unique_ptr<UcxService>> ucx = UcxService::Start(uo, srv->service_.get());
    if (!ucx.ok()) {
      srv->Shutdown();
      return absl::Status(ucx.status().code(),
                          absl::StrCat("cannot start the UCX listener: ", ucx.status().message()));
    }
    srv->ucx_ = *std::move(ucx);
    srv->ucx_port_ = srv->ucx_->port();
  }

  for (auto [file, port, what] : {std::tuple{&options.port_file, srv->port_, "port_file"},
                                  std::tuple{&options.ucx_port_file, srv->ucx_port_, "ucx_port_file"}}) {
    if (file->empty()) continue;
    const std::string tmp = *file + ".tmp";
    {
      std::ofstream out(tmp);
      out << port << "\n";
    }
    std::filesystem::rename(tmp, *file, ec);
    if (ec) {
      srv->Shutdown();
      return absl::FailedPreconditionError(absl::StrCat("cannot write ", what, " '", *file, "'"));
    }
  }
  if (auth_enabled && options.auth_reload_interval > absl::ZeroDuration()) {
    CacheServer* self = srv.get();
    srv->reload_thread_ = std::thread([self] { self->WatchTokensFile(); });
  }
  KVC_LOG(kInfo, "server_started")
      .With("port", srv->port_)
      .With("ucx_port", srv->ucx_port_)
      .With("metrics_port", srv->metrics_port_)
      .With("tls", !options.tls_cert_file.empty())
      .With("auth", auth_enabled)
      .With("tenants", static_cast<uint64_t>(tenant_count))
      .With("host_capacity", FormatBytes(options.host_capacity_bytes))
      .With("disk_capacity", FormatBytes(options.disk_capacity_bytes));
  return srv;
}

CacheServer::~CacheServer() { Shutdown(); }

void CacheServer::WatchTokensFile() {
  while (!stop_watching_.WaitForNotificationWithTimeout(options_.auth_reload_interval)) {
    absl::StatusOr<bool> reloaded = tenants_->ReloadIfChanged();
    if (!reloaded.ok()) {
      KVC_LOG(kError, "tenants_reload_failed").With("error", reloaded.status().ToString());
    } else if (*reloaded) {
      KVC_LOG(kInfo, "tenants_reloaded").With("tenants", static_cast<uint64_t>(tenants_->Current()->size()));
    }
  }
}

absl::Status CacheServer::ReloadTenants() {
  absl::Status s = tenants_->Reload();
  if (s.ok()) {
    KVC_LOG(kInfo, "tenants_reloaded").With("tenants", static_cast<uint64_t>(tenants_->Current()->size()));
  } else {
    KVC_LOG(kError, "tenants_reload_failed").With("error", s.ToString());
  }
  return s;
}

void CacheServer::Shutdown() {
  {
    absl::MutexLock lock(&shutdown_mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  const absl::Time start = absl::Now();
  stop_watching_.Notify();
  if (reload_thread_.joinable()) reload_thread_.join();
  // civetweb's stop can take up to its 2 s poll quantum; overlap it with the drain.
  std::thread stop_metrics([this] { exposer_.reset(); });
  if (server_) {
    // Stop taking calls (they get UNAVAILABLE and the health check says
    // NOT_SERVING), let the running ones finish within the grace period, then
    // close the listener and every connection at once.
    server_->GetHealthCheckService()->SetServingStatus(false);
    service_->StartDraining();
    const absl::Time deadline = start + options_.shutdown_grace;
    while (service_->in_flight() > 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
    if (service_->in_flight() > 0) {
      KVC_LOG(kWarning, "shutdown_grace_expired").With("calls_cancelled", service_->in_flight());
    }
    server_->Shutdown(std::chrono::system_clock::now());
  }
  // UCX: in-flight requests have drained (they count in in_flight); close the
  // listener and endpoints before the executor stops (its tasks post replies).
  if (ucx_) ucx_->Stop(absl::Seconds(1));
  KVC_LOG(kDebug, "shutdown_step").With("step", "grpc_stopped").With("ms", absl::ToInt64Milliseconds(absl::Now() - start));
  if (executor_) executor_->Shutdown();
  if (server_) server_->Wait();
  KVC_LOG(kDebug, "shutdown_step").With("step", "drained").With("ms", absl::ToInt64Milliseconds(absl::Now() - start));
  if (store_ && options_.flush_host_on_shutdown) {
    absl::Status s = store_->FlushHostToDisk();
    if (!s.ok()) KVC_LOG(kError, "flush_failed").With("error", s.ToString());
  }
  server_.reset();
  ucx_.reset();
  service_.reset();
  executor_.reset();
  store_.reset();
  stop_metrics.join();
  KVC_LOG(kInfo, "server_stopped").With("shutdown_ms", absl::ToInt64Milliseconds(absl::Now() - start));
}

}  // namespace kvc
