#include "cachesvc/server/auth.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "common/units.h"

namespace kvc {
namespace {

constexpr size_t kMinTokenLength = 16;

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

std::unique_ptr<TenantRegistry> TenantRegistry::Disabled() {
  auto r = std::unique_ptr<TenantRegistry>(new TenantRegistry());
  r->enabled_ = false;
  return r;
}

absl::StatusOr<std::string> TenantRegistry::ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read tenant tokens file '", path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<std::unique_ptr<TenantRegistry>> TenantRegistry::FromFile(const std::string& path) {
  KVC_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  auto r = FromText(text);
  if (!r.ok()) return absl::Status(r.status().code(), absl::StrCat(path, ": ", r.status().message()));
  return r;
}

absl::StatusOr<std::unique_ptr<TenantRegistry>> TenantRegistry::FromText(absl::string_view text) {
  auto r = std::unique_ptr<TenantRegistry>(new TenantRegistry());
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (size_t hash = line.find('#'); hash != absl::string_view::npos) line = line.substr(0, hash);
    std::vector<absl::string_view> f = absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (f.empty()) continue;
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat("line ", line_no, ": ", why));
    };
    if (f.size() < 2 || f.size() > 3) return bad("expected '<tenant> <token> [quota]'");
    for (unsigned char c : f[0]) {
      if (c < 0x21 || c > 0x7e) return bad("tenant name has a non-printable byte");
    }
    if (f[1].size() < kMinTokenLength) {
      return bad(absl::StrCat("token of tenant '", f[0], "' is shorter than ", kMinTokenLength, " characters"));
    }
    auto t = std::make_unique<Tenant>();
    t->name = std::string(f[0]);
    if (f.size() == 3) {
      absl::StatusOr<uint64_t> q = ParseByteSize(f[2]);
      if (!q.ok()) return bad(q.status().message());
      t->quota_bytes = *q;
    }
    if (r->by_name_.contains(t->name)) return bad(absl::StrCat("tenant '", t->name, "' is listed twice"));
    if (r->by_token_.contains(f[1])) return bad("token is already used by another line");
    r->by_name_[t->name] = t.get();
    r->by_token_[std::string(f[1])] = t.get();
    r->tenants_.push_back(std::move(t));
  }
  if (r->tenants_.empty()) return absl::InvalidArgumentError("no tenants defined");
  return r;
}

absl::StatusOr<const Tenant*> TenantRegistry::Authenticate(absl::string_view authorization) const {
  if (!enabled_) return nullptr;
  if (authorization.empty()) {
    return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
  }
  constexpr absl::string_view kBearer = "Bearer ";
  if (!absl::StartsWithIgnoreCase(authorization, kBearer)) {
    return absl::UnauthenticatedError("authorization metadata must be 'Bearer <token>'");
  }
  absl::string_view token = absl::StripAsciiWhitespace(authorization.substr(kBearer.size()));
  auto it = by_token_.find(token);
  // The hash lookup finds the candidate; the comparison that decides is
  // constant-time so a near-miss token takes as long as a far one.
  if (it == by_token_.end() || !ConstantTimeEquals(it->first, token)) {
    return absl::UnauthenticatedError("unknown bearer token");
  }
  return it->second;
}

uint64_t TenantRegistry::QuotaFor(absl::string_view tenant) const {
  auto it = by_name_.find(tenant);
  return it == by_name_.end() ? 0 : it->second->quota_bytes;
}

absl::Status TenantDirectory::Reload() {
  if (!Current()->enabled()) {
    return absl::FailedPreconditionError("authentication is off (no auth_tokens_file); restart to enable it");
  }
  KVC_ASSIGN_OR_RETURN(std::string text, TenantRegistry::ReadFile(path_));
  absl::StatusOr<std::unique_ptr<TenantRegistry>> next = TenantRegistry::FromText(text);
  if (!next.ok()) return absl::Status(next.status().code(), absl::StrCat(path_, ": ", next.status().message()));
  absl::MutexLock lock(&mu_);
  current_ = *std::move(next);
  loaded_text_ = std::move(text);
  return absl::OkStatus();
}

absl::StatusOr<bool> TenantDirectory::ReloadIfChanged() {
  if (!Current()->enabled()) return false;
  KVC_ASSIGN_OR_RETURN(std::string text, TenantRegistry::ReadFile(path_));
  {
    absl::MutexLock lock(&mu_);
    if (text == loaded_text_) return false;
  }
  KVC_RETURN_IF_ERROR(Reload());
  return true;
}

}  // namespace kvc
