// kvcached: the KV-cache service.
//
//   kvcached [--config=kvcached.yaml] [--flag=value ...]
//
// Settings come from built-in defaults, then the YAML file, then flags given
// on the command line. SIGTERM or SIGINT shuts down gracefully.
#include <csignal>
#include <cstdio>
#include <iostream>

#include "absl/container/flat_hash_set.h"
#include "absl/flags/flag.h"
#include "absl/strings/strip.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "cachesvc/server/options.h"
#include "cachesvc/server/server.h"
#include "common/allocator.h"
#include "common/logging.h"
#include "common/units.h"

namespace {
const kvc::ServerOptions kDefaults;
}  // namespace

ABSL_FLAG(std::string, config, "", "YAML settings file; flags given on the command line override it");
ABSL_FLAG(bool, malloc_huge_pages, true,
          "Back the heap that holds stored blocks with transparent huge pages: when THP is in madvise mode, "
          "re-executes itself once with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (same-host UCX Gets copy blocks "
          "out of it 1.5x faster; costs up to 2 MiB per heap in rounding and, with THP defrag on madvise, "
          "compaction on page faults when memory is fragmented)");
ABSL_FLAG(bool, check_config, false, "Validate the settings, print them, and exit (0 if valid)");
ABSL_FLAG(std::string, listen_address, kDefaults.listen_address, "gRPC listen address host:port (port 0: any free port)");
ABSL_FLAG(std::string, port_file, kDefaults.port_file, "Write the bound gRPC port to this file once serving");
ABSL_FLAG(std::string, ucx_listen_address, kDefaults.ucx_listen_address, "UCX data-plane listen address host:port for bulk Put/Get (empty: UCX off; port 0: any free port)");
ABSL_FLAG(std::string, ucx_port_file, kDefaults.ucx_port_file, "Write the bound UCX port to this file once serving");
ABSL_FLAG(std::string, ucx_tls, kDefaults.ucx_tls, "UCX_TLS of the UCX listener's context, e.g. sm,tcp (empty: UCX picks)");
ABSL_FLAG(std::string, ucx_net_devices, kDefaults.ucx_net_devices, "UCX_NET_DEVICES of the UCX listener's context (empty: all)");
ABSL_FLAG(std::string, ucx_recv_pool_bytes, "256MiB",
          "Registered memory UCX Put payloads arrive in (a Put finding it full is refused as busy)");
ABSL_FLAG(absl::Duration, ucx_progress_spin, kDefaults.ucx_progress_spin,
          "How long the UCX progress thread polls before sleeping (0 when cores are contended)");
ABSL_FLAG(std::string, data_dir, kDefaults.data_dir, "Data directory; RocksDB lives in <data_dir>/rocksdb");
ABSL_FLAG(std::string, host_capacity_bytes, "1GiB", "Host-memory tier byte budget (e.g. 512MiB, 8GiB)");
ABSL_FLAG(uint32_t, host_shards, kDefaults.host_shards, "Host tier shards (power of two)");
ABSL_FLAG(std::string, disk_capacity_bytes, "16GiB", "RocksDB tier byte budget; oldest blocks are evicted beyond it");
ABSL_FLAG(std::string, disk_block_cache_bytes, "64MiB", "RocksDB block cache size");
ABSL_FLAG(std::string, metrics_address, kDefaults.metrics_address, "Prometheus /metrics address host:port; empty disables");
ABSL_FLAG(std::string, auth_tokens_file, kDefaults.auth_tokens_file, "Tenant tokens file ('tenant token [quota]' per line); empty disables auth (development only)");
ABSL_FLAG(absl::Duration, auth_reload_interval, kDefaults.auth_reload_interval, "How often the tokens file is re-read (0: only on SIGHUP)");
ABSL_FLAG(std::string, tls_cert_file, "", "PEM certificate chain; with --tls_key_file enables TLS");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key for --tls_cert_file");
ABSL_FLAG(int, worker_threads, kDefaults.worker_threads, "Threads that run request work");
ABSL_FLAG(uint32_t, max_queued_requests, kDefaults.max_queued_requests, "Queued requests before new ones are refused as busy");
ABSL_FLAG(absl::Duration, shutdown_grace, kDefaults.shutdown_grace, "Time in-flight calls get on SIGTERM");
ABSL_FLAG(bool, flush_host_on_shutdown, kDefaults.flush_host_on_shutdown, "Write host-tier blocks to RocksDB on shutdown");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");
ABSL_FLAG(std::string, max_block_bytes, "32MiB", "Limit: bytes of k+v in one block");
ABSL_FLAG(uint32_t, max_batch_blocks, kDefaults.limits.max_batch_blocks, "Limit: blocks or keys in one request");
ABSL_FLAG(std::string, max_message_bytes, "256MiB", "Limit: one gRPC message");
ABSL_FLAG(uint32_t, max_lease_ms, kDefaults.limits.max_lease_ms, "Limit: longest pin lease");

namespace {

// Names of the flags given on the command line (abseil keeps that private).
absl::flat_hash_set<std::string>* given_flags = new absl::flat_hash_set<std::string>();

void RecordGivenFlags(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view a = argv[i];
    if (a == "--") break;
    if (!absl::ConsumePrefix(&a, "--") && !absl::ConsumePrefix(&a, "-")) continue;
    a = a.substr(0, a.find('='));
    given_flags->insert(std::string(a));
    if (absl::ConsumePrefix(&a, "no")) given_flags->insert(std::string(a));
  }
}

bool Given(absl::string_view name) { return given_flags->contains(name); }

absl::Status Bytes(const absl::Flag<std::string>& flag, absl::string_view name, uint64_t* out) {
  if (!Given(name)) return absl::OkStatus();
  absl::StatusOr<uint64_t> v = kvc::ParseByteSize(absl::GetFlag(flag));
  if (!v.ok()) return absl::InvalidArgumentError(absl::StrCat("--", name, ": ", v.status().message()));
  *out = *v;
  return absl::OkStatus();
}

absl::StatusOr<kvc::ServerOptions> LoadOptions() {
  kvc::ServerOptions o;
  if (!absl::GetFlag(FLAGS_config).empty()) {
    absl::Status s = kvc::ApplyYamlFile(absl::GetFlag(FLAGS_config), &o);
    if (!s.ok()) return s;
  }
#define KVC_FLAG_OVERRIDE(name, field) \
  if (Given(#name)) field = absl::GetFlag(FLAGS_##name)
  KVC_FLAG_OVERRIDE(listen_address, o.listen_address);
  KVC_FLAG_OVERRIDE(port_file, o.port_file);
  KVC_FLAG_OVERRIDE(ucx_listen_address, o.ucx_listen_address);
  KVC_FLAG_OVERRIDE(ucx_port_file, o.ucx_port_file);
  KVC_FLAG_OVERRIDE(ucx_tls, o.ucx_tls);
  KVC_FLAG_OVERRIDE(ucx_net_devices, o.ucx_net_devices);
  KVC_FLAG_OVERRIDE(ucx_progress_spin, o.ucx_progress_spin);
  KVC_FLAG_OVERRIDE(data_dir, o.data_dir);
  KVC_FLAG_OVERRIDE(host_shards, o.host_shards);
  KVC_FLAG_OVERRIDE(metrics_address, o.metrics_address);
  KVC_FLAG_OVERRIDE(auth_tokens_file, o.auth_tokens_file);
  KVC_FLAG_OVERRIDE(auth_reload_interval, o.auth_reload_interval);
  KVC_FLAG_OVERRIDE(tls_cert_file, o.tls_cert_file);
  KVC_FLAG_OVERRIDE(tls_key_file, o.tls_key_file);
  KVC_FLAG_OVERRIDE(worker_threads, o.worker_threads);
  KVC_FLAG_OVERRIDE(max_queued_requests, o.max_queued_requests);
  KVC_FLAG_OVERRIDE(shutdown_grace, o.shutdown_grace);
  KVC_FLAG_OVERRIDE(flush_host_on_shutdown, o.flush_host_on_shutdown);
  KVC_FLAG_OVERRIDE(max_batch_blocks, o.limits.max_batch_blocks);
  KVC_FLAG_OVERRIDE(max_lease_ms, o.limits.max_lease_ms);
#undef KVC_FLAG_OVERRIDE
  for (auto [flag, name, field] : {
           std::tuple{&FLAGS_host_capacity_bytes, "host_capacity_bytes", &o.host_capacity_bytes},
           std::tuple{&FLAGS_disk_capacity_bytes, "disk_capacity_bytes", &o.disk_capacity_bytes},
           std::tuple{&FLAGS_disk_block_cache_bytes, "disk_block_cache_bytes", &o.disk_block_cache_bytes},
           std::tuple{&FLAGS_ucx_recv_pool_bytes, "ucx_recv_pool_bytes", &o.ucx_recv_pool_bytes},
           std::tuple{&FLAGS_max_block_bytes, "max_block_bytes", &o.limits.max_block_bytes},
           std::tuple{&FLAGS_max_message_bytes, "max_message_bytes", &o.limits.max_message_bytes}}) {
    absl::Status s = Bytes(*flag, name, field);
    if (!s.ok()) return s;
  }
  if (Given("log_level") && !kvc::ParseLogLevel(absl::GetFlag(FLAGS_log_level), &o.log_level)) {
    return absl::InvalidArgumentError(absl::StrCat("--log_level: '", absl::GetFlag(FLAGS_log_level),
                                                   "' is not debug|info|warning|error"));
  }
  absl::Status v = o.Validate();
  if (!v.ok()) return v;
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  kvc::TuneAllocatorForLargeBuffers();
  absl::SetProgramUsageMessage(
      "The KV-cache service: a tiered (host memory + RocksDB) store of KV blocks behind gRPC.\n"
      "Usage: kvcached [--config=kvcached.yaml] [--flag=value ...]\n"
      "Flags given on the command line override the YAML file; SIGTERM shuts down gracefully;\n"
      "SIGHUP re-reads --auth_tokens_file.");
  RecordGivenFlags(argc, argv);
  absl::ParseCommandLine(argc, argv);

  absl::StatusOr<kvc::ServerOptions> options = LoadOptions();
  if (!options.ok()) {
    std::fprintf(stderr, "kvcached: invalid settings: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }
  kvc::SetMinLogLevel(options->log_level);
  if (absl::GetFlag(FLAGS_check_config)) {
    std::printf("settings are valid: listen %s, data_dir %s, host %s, disk %s\n",
                options->listen_address.c_str(), options->data_dir.c_str(),
                kvc::FormatBytes(options->host_capacity_bytes).c_str(),
                kvc::FormatBytes(options->disk_capacity_bytes).c_str());
    return 0;
  }

  // Before any thread: this may re-execute the process.
  std::string huge_pages = "off (--malloc_huge_pages=false)";
  if (absl::GetFlag(FLAGS_malloc_huge_pages)) kvc::ReexecWithHugePageMalloc(argv, &huge_pages);
  KVC_LOG(kInfo, "malloc_huge_pages").With("state", huge_pages);

  // Block the shutdown signals before any thread starts, so every thread
  // inherits the mask and only sigwait below receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  absl::StatusOr<std::unique_ptr<kvc::CacheServer>> server = kvc::CacheServer::Start(*options);
  if (!server.ok()) {
    KVC_LOG(kError, "start_failed").With("error", server.status().ToString());
    return 1;
  }
  int sig = 0;
  // SIGHUP re-reads the tenant tokens file; SIGTERM and SIGINT stop.
  while (sigwait(&signals, &sig) == 0 && sig == SIGHUP) (void)(*server)->ReloadTenants();
  KVC_LOG(kInfo, "shutdown_requested").With("signal", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  (*server)->Shutdown();
  return 0;
}
