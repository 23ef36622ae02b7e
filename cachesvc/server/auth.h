// Tenant authentication: bearer tokens from an operator-provided file.
//
// File format, one tenant per line, '#' starts a comment:
//   <tenant> <token> [quota]
// where quota is a byte size ("8GiB") capping the tenant's bytes in each
// tier; absent or 0 means no quota. Tenant names follow the key rules
// (printable ASCII, no spaces); tokens must be at least 16 characters. Two
// lines with one token, or one tenant twice, are refused.
#ifndef KVC_CACHESVC_SERVER_AUTH_H_
#define KVC_CACHESVC_SERVER_AUTH_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace kvc {

struct Tenant {
  std::string name;
  uint64_t quota_bytes = 0;  // per tier; 0 = none
};

// Immutable after construction; thread-safe.
class TenantRegistry {
 public:
  // Authentication off: every caller is accepted and acts as the tenant its
  // keys name. For development only; the server logs a warning.
  static std::unique_ptr<TenantRegistry> Disabled();
  static absl::StatusOr<std::unique_ptr<TenantRegistry>> FromFile(const std::string& path);
  // The bytes of the tokens file, NOT_FOUND naming it when unreadable.
  static absl::StatusOr<std::string> ReadFile(const std::string& path);
  static absl::StatusOr<std::unique_ptr<TenantRegistry>> FromText(absl::string_view text);

  bool enabled() const { return enabled_; }

  // Maps the value of the "authorization" metadata ("Bearer <token>") to a
  // tenant. UNAUTHENTICATED when the header is missing, malformed or the
  // token is unknown. With authentication off, returns nullptr (any tenant).
  absl::StatusOr<const Tenant*> Authenticate(absl::string_view authorization) const;

  // Quota of `tenant` in bytes per tier, 0 when none or unknown.
  uint64_t QuotaFor(absl::string_view tenant) const;

  size_t size() const { return tenants_.size(); }

 private:
  TenantRegistry() = default;

  bool enabled_ = true;
  std::vector<std::unique_ptr<Tenant>> tenants_;
  // token -> tenant. Lookup is by hash; tokens are compared in constant time.
  absl::flat_hash_map<std::string, const Tenant*> by_token_;
  absl::flat_hash_map<std::string, const Tenant*> by_name_;
};

// The registry in force, replaceable while serving (SIGHUP re-reads the
// tokens file, e.g. after a Kubernetes Secret is rotated). Thread-safe.
// Callers take a reference with Current() and use it for one request, so a
// reload never pulls a registry from under a request.
class TenantDirectory {
 public:
  // `loaded_text` is the file content `initial` was parsed from.
  TenantDirectory(std::unique_ptr<TenantRegistry> initial, std::string path, std::string loaded_text)
      : current_(std::move(initial)), loaded_text_(std::move(loaded_text)), path_(std::move(path)) {}

  std::shared_ptr<const TenantRegistry> Current() const {
    absl::MutexLock lock(&mu_);
    return current_;
  }

  // Re-reads the tokens file. On any error the registry in force stays and
  // the error (naming the line) is returned. FAILED_PRECONDITION when the
  // service runs without authentication (it cannot be switched on live).
  absl::Status Reload();
  // Reload() if the file's bytes differ from those last loaded; returns
  // whether it reloaded. Cheap enough to poll every few seconds.
  absl::StatusOr<bool> ReloadIfChanged();

  uint64_t QuotaFor(absl::string_view tenant) const { return Current()->QuotaFor(tenant); }

 private:
  mutable absl::Mutex mu_;
  std::shared_ptr<const TenantRegistry> current_ ABSL_GUARDED_BY(mu_);
  std::string loaded_text_ ABSL_GUARDED_BY(mu_);  // the file's bytes at the last load
  const std::string path_;
};

}  // namespace kvc

#endif  // KVC_CACHESVC_SERVER_AUTH_H_
