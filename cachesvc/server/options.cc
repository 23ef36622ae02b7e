#include "cachesvc/server/options.h"

#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "cachesvc/cached_block.h"

namespace kvc {

absl::Status ServerOptions::Validate() const {
  auto bad = [](absl::string_view field, absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("option ", field, ": ", why));
  };
  if (listen_address.empty() || listen_address.find(':') == std::string::npos) {
    return bad("listen_address", absl::StrCat("'", listen_address, "' is not host:port"));
  }
  if (!ucx_listen_address.empty()) {
    if (ucx_listen_address.find(':') == std::string::npos) {
      return bad("ucx_listen_address", absl::StrCat("'", ucx_listen_address, "' is not host:port"));
    }
    if (ucx_listen_address == listen_address && !absl::EndsWith(listen_address, ":0")) {
      return bad("ucx_listen_address", "must differ from listen_address");
    }
  }
  if (data_dir.empty()) return bad("data_dir", "must not be empty");
  if (host_capacity_bytes == 0) return bad("host_capacity_bytes", "must be > 0");
  if (host_shards == 0 || (host_shards & (host_shards - 1)) != 0 || host_shards > 1024) {
    return bad("host_shards", absl::StrCat(host_shards, " is not a power of two in [1, 1024]"));
  }
  if (disk_capacity_bytes < limits.max_block_bytes + kBlockOverheadBytes) {
    return bad("disk_capacity_bytes", "cannot hold one block of limits.max_block_bytes");
  }
  if (metrics_address == listen_address && !absl::EndsWith(listen_address, ":0")) {
    return bad("metrics_address", "must differ from listen_address");
  }
  if (tls_cert_file.empty() != tls_key_file.empty()) {
    return bad("tls_cert_file/tls_key_file", "set both for TLS, or neither");
  }
  if (worker_threads < 1 || worker_threads > 1024) {
    return bad("worker_threads", absl::StrCat(worker_threads, " is outside [1, 1024]"));
  }
  if (max_queued_requests == 0) return bad("max_queued_requests", "must be > 0");
  if (shutdown_grace < absl::ZeroDuration()) return bad("shutdown_grace", "must be >= 0");
  if (auth_reload_interval < absl::ZeroDuration()) return bad("auth_reload_interval", "must be >= 0");
  if (ucx_progress_spin < absl::ZeroDuration() || ucx_progress_spin > absl::Seconds(1)) {
    return bad("ucx_progress_spin", "must be in [0, 1s]");
  }
  if (ucx_recv_pool_bytes < (1u << 20)) return bad("ucx_recv_pool_bytes", "must be >= 1MiB");
  return limits.Validate();
}

namespace {

using Setter = std::function<absl::Status(const YAML::Node&)>;

absl::StatusOr<std::string> Scalar(const std::string& key, const YAML::Node& n) {
  if (!n.IsScalar()) return absl::InvalidArgumentError(absl::StrCat("config key '", key, "' must be a scalar"));
  return n.Scalar();
}

template <typename T>
Setter Int(const std::string& key, T* out) {
  return [key, out](const YAML::Node& n) -> absl::Status {
    KVC_ASSIGN_OR_RETURN(std::string s, Scalar(key, n));
    try {
      *out = n.as<T>();
    } catch (const YAML::Exception&) {
      return absl::InvalidArgumentError(absl::StrCat("config key '", key, "': '", s, "' is not an integer"));
    }
    return absl::OkStatus();
  };
}

template <typename T>
Setter Bytes(const std::string& key, T* out) {
  return [key, out](const YAML::Node& n) -> absl::Status {
    KVC_ASSIGN_OR_RETURN(std::string s, Scalar(key, n));
    absl::StatusOr<uint64_t> v = ParseByteSize(s);
    if (!v.ok()) return absl::InvalidArgumentError(absl::StrCat("config key '", key, "': ", v.status().message()));
    *out = static_cast<T>(*v);
    return absl::OkStatus();
  };
}

Setter Str(const std::string& key, std::string* out) {
  return [key, out](const YAML::Node& n) -> absl::Status {
    KVC_ASSIGN_OR_RETURN(*out, Scalar(key, n));
    return absl::OkStatus();
  };
}

Setter Bool(const std::string& key, bool* out) {
  return [key, out](const YAML::Node& n) -> absl::Status {
    KVC_ASSIGN_OR_RETURN(std::string s, Scalar(key, n));
    try {
      *out = n.as<bool>();
    } catch (const YAML::Exception&) {
      return absl::InvalidArgumentError(absl::StrCat("config key '", key, "': '", s, "' is not true/false"));
    }
    return absl::OkStatus();
  };
}

Setter Duration(const std::string& key, absl::Duration* out) {
  return [key, out](const YAML::Node& n) -> absl::Status {
    KVC_ASSIGN_OR_RETURN(std::string s, Scalar(key, n));
    if (!absl::ParseDuration(s, out)) {
      return absl::InvalidArgumentError(absl::StrCat("config key '", key, "': '", s, "' is not a duration (e.g. 10s)"));
    }
    return absl::OkStatus();
  };
}

Setter Level(const std::string& key, LogLevel* out) {
  return [key, out](const YAML::Node& n) -> absl::Status {
    KVC_ASSIGN_OR_RETURN(std::string s, Scalar(key, n));
    if (!ParseLogLevel(s, out)) {
      return absl::InvalidArgumentError(absl::StrCat("config key '", key, "': '", s, "' is not debug|info|warning|error"));
    }
    return absl::OkStatus();
  };
}

absl::Status ApplyMap(const YAML::Node& node, const std::string& prefix,
                      const std::map<std::string, Setter>& setters) {
  if (!node.IsMap()) return absl::InvalidArgumentError(absl::StrCat("config ", prefix.empty() ? "document" : prefix, " must be a mapping"));
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    const std::string full = prefix.empty() ? key : absl::StrCat(prefix, ".", key);
    auto it = setters.find(full);
    if (it == setters.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown config key '", full, "'"));
    }
    KVC_RETURN_IF_ERROR(it->second(kv.second));
  }
  return absl::OkStatus();
}

absl::Status ApplyNode(const YAML::Node& root, ServerOptions* o) {
  if (root.IsNull()) return absl::OkStatus();
  Limits* l = &o->limits;
  std::map<std::string, Setter> s = {
      {"listen_address", Str("listen_address", &o->listen_address)},
      {"port_file", Str("port_file", &o->port_file)},
      {"ucx_listen_address", Str("ucx_listen_address", &o->ucx_listen_address)},
      {"ucx_port_file", Str("ucx_port_file", &o->ucx_port_file)},
      {"ucx_tls", Str("ucx_tls", &o->ucx_tls)},
      {"ucx_net_devices", Str("ucx_net_devices", &o->ucx_net_devices)},
      {"ucx_recv_pool_bytes", Bytes("ucx_recv_pool_bytes", &o->ucx_recv_pool_bytes)},
      {"ucx_progress_spin", Duration("ucx_progress_spin", &o->ucx_progress_spin)},
      {"data_dir", Str("data_dir", &o->data_dir)},
      {"host_capacity_bytes", Bytes("host_capacity_bytes", &o->host_capacity_bytes)},
      {"host_shards", Int("host_shards", &o->host_shards)},
      {"disk_capacity_bytes", Bytes("disk_capacity_bytes", &o->disk_capacity_bytes)},
      {"disk_block_cache_bytes", Bytes("disk_block_cache_bytes", &o->disk_block_cache_bytes)},
      {"metrics_address", Str("metrics_address", &o->metrics_address)},
      {"auth_tokens_file", Str("auth_tokens_file", &o->auth_tokens_file)},
      {"auth_reload_interval", Duration("auth_reload_interval", &o->auth_reload_interval)},
      {"tls_cert_file", Str("tls_cert_file", &o->tls_cert_file)},
      {"tls_key_file", Str("tls_key_file", &o->tls_key_file)},
      {"worker_threads", Int("worker_threads", &o->worker_threads)},
      {"max_queued_requests", Int("max_queued_requests", &o->max_queued_requests)},
      {"shutdown_grace", Duration("shutdown_grace", &o->shutdown_grace)},
      {"flush_host_on_shutdown", Bool("flush_host_on_shutdown", &o->flush_host_on_shutdown)},
      {"log_level", Level("log_level", &o->log_level)},
      {"limits.max_block_bytes", Bytes("limits.max_block_bytes", &l->max_block_bytes)},
      {"limits.max_batch_blocks", Int("limits.max_batch_blocks", &l->max_batch_blocks)},
      {"limits.max_message_bytes", Bytes("limits.max_message_bytes", &l->max_message_bytes)},
      {"limits.max_lease_ms", Int("limits.max_lease_ms", &l->max_lease_ms)},
      {"limits.max_lookup_hashes", Int("limits.max_lookup_hashes", &l->max_lookup_hashes)},
      {"limits.max_lookup_layers", Int("limits.max_lookup_layers", &l->max_lookup_layers)},
      {"limits.max_key_string_bytes", Int("limits.max_key_string_bytes", &l->max_key_string_bytes)},
  };
  if (!root.IsMap()) return absl::InvalidArgumentError("config document must be a mapping");
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    if (key == "limits") {
      KVC_RETURN_IF_ERROR(ApplyMap(kv.second, "limits", s));
      continue;
    }
    auto it = s.find(key);
    if (it == s.end()) return absl::InvalidArgumentError(absl::StrCat("unknown config key '", key, "'"));
    KVC_RETURN_IF_ERROR(it->second(kv.second));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ApplyYamlText(const std::string& text, ServerOptions* options) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config is not valid YAML: ", e.what()));
  }
  return ApplyNode(root, options);
}

absl::Status ApplyYamlFile(const std::string& path, ServerOptions* options) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read config file '", path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  absl::Status s = ApplyYamlText(ss.str(), options);
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  return absl::OkStatus();
}

}  // namespace kvc
