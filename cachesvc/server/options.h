// ServerOptions: every setting of the cache service, with its default.
//
// Set from built-in defaults, then a YAML file (--config), then command-line
// flags, parsed once in main. Nothing below main reads flags or YAML.
#ifndef KVC_CACHESVC_SERVER_OPTIONS_H_
#define KVC_CACHESVC_SERVER_OPTIONS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "cachesvc/limits.h"
#include "common/logging.h"

namespace kvc {

struct ServerOptions {
  // gRPC listen address, host:port. Port 0 picks a free port (see port_file).
  // Default "127.0.0.1:50051".
  std::string listen_address = "127.0.0.1:50051";
  // When non-empty, the bound gRPC port is written here once serving. Default "".
  std::string port_file;
  // UCX (ucp) data-plane listen address, host:port, for bulk Put/Get
  // (cachesvc/server/ucx_service.h); the host must be an IP address or name
  // of a local interface. "" disables UCX (clients use gRPC). Port 0 picks a
  // free port (see ucx_port_file and CacheServer::ucx_port). Default "".
  std::string ucx_listen_address;
  // When non-empty, the bound UCX port is written here once serving. Default "".
  std::string ucx_port_file;
  // UCX_TLS for the listener's UCX context, e.g. "sm,tcp"; "" lets UCX pick
  // (every transport it finds). Clients restrict their own side. Default "".
  std::string ucx_tls;
  // UCX_NET_DEVICES for the listener's UCX context, e.g. "eth0"; "" = all. Default "".
  std::string ucx_net_devices;
  // Registered memory Put payloads arrive in over UCX; a Put that finds it
  // full is refused as busy (RESOURCE_EXHAUSTED). At least
  // limits.max_message_bytes is used. Default 256 MiB.
  uint64_t ucx_recv_pool_bytes = 256ull << 20;
  // How long the UCX progress thread polls after its last event before it
  // sleeps (transport/ucx_context.h): 20-100us can help on hosts with spare
  // cores, 0 is best when cores are contended. Default 0.
  absl::Duration ucx_progress_spin = absl::ZeroDuration();
  // Data directory; RocksDB lives in <data_dir>/rocksdb. Default "./data/kvcache".
  std::string data_dir = "./data/kvcache";

  // Host-memory tier byte budget (charged bytes, never exceeded). Default 1 GiB.
  uint64_t host_capacity_bytes = 1ull << 30;
  // Host tier shards, a power of two. Default 16.
  uint32_t host_shards = 16;
  // RocksDB tier byte budget; oldest blocks are evicted beyond it. Default 16 GiB.
  uint64_t disk_capacity_bytes = 16ull << 30;
  // RocksDB block cache. Default 64 MiB.
  uint64_t disk_block_cache_bytes = 64ull << 20;

  // Prometheus /metrics listen address, host:port; "" disables. Port 0 picks
  // a free port. Default "127.0.0.1:9464".
  std::string metrics_address = "127.0.0.1:9464";

  // Tenant tokens file: one "tenant token [quota]" per line, '#' comments;
  // quota is a byte size such as 8GiB applied to each tier. "" disables
  // authentication (development only: every caller may use any tenant).
  // Default "".
  std::string auth_tokens_file;
  // How often the tokens file is re-read; a changed file replaces the tokens
  // in force (a bad one is logged and ignored). SIGHUP re-reads it at once.
  // 0 disables polling. Default 30s.
  absl::Duration auth_reload_interval = absl::Seconds(30);
  // PEM certificate chain and private key; both set enables TLS on the gRPC
  // port. Default "" (plaintext).
  std::string tls_cert_file;
  std::string tls_key_file;

  // Threads that run request work (disk I/O, checksums). Default 8.
  int worker_threads = 8;
  // Requests that may wait for a worker before new ones get
  // RESOURCE_EXHAUSTED ("server busy"). Default 4096.
  uint32_t max_queued_requests = 4096;
  // On SIGTERM: time allowed for in-flight calls to finish. Default 10s.
  absl::Duration shutdown_grace = absl::Seconds(10);
  // On shutdown, write host-tier blocks that are not yet on disk to RocksDB so
  // a restart finds them. Default true.
  bool flush_host_on_shutdown = true;

  // Wire-contract limits (returned by Info).
  Limits limits;

  // Minimum log level. Default info.
  LogLevel log_level = LogLevel::kInfo;

  // Every field checked; the message names the field and the bad value.
  absl::Status Validate() const;
};

// Overlays the settings present in the YAML file at `path` onto `*options`.
// Keys are the field names above; byte sizes accept units ("512MiB"),
// durations accept absl syntax ("10s"); the limits go under "limits:".
// An unknown key, a wrong type or an unreadable file is INVALID_ARGUMENT
// naming the key (or NOT_FOUND for a missing file).
absl::Status ApplyYamlFile(const std::string& path, ServerOptions* options);
// The same, from YAML text (for tests).
absl::Status ApplyYamlText(const std::string& text, ServerOptions* options);

}  // namespace kvc

#endif  // KVC_CACHESVC_SERVER_OPTIONS_H_
