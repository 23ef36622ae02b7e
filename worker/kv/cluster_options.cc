#include "worker/kv/cluster_options.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"

namespace kvc {

absl::Status SplitMemberAddress(absl::string_view address, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat("cache-service member '", address, "' is not host:port"));
  }
  absl::string_view h = address.substr(0, colon);
  if (h.find(':') != absl::string_view::npos && !(h.front() == '[' && h.back() == ']')) {
    return absl::InvalidArgumentError(
        absl::StrCat("cache-service member '", address, "': write an IPv6 address in brackets, [addr]:port"));
  }
  int p = 0;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &p) || p <= 0 || p > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("cache-service member '", address, "' has a bad port"));
  }
  *host = std::string(h);
  *port = p;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ResolveAddresses(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res); rc != 0) {
    return absl::UnavailableError(absl::StrCat("cannot resolve '", host, "': ", gai_strerror(rc)));
  }
  std::vector<std::string> out;
  for (const addrinfo* p = res; p != nullptr; p = p->ai_next) {
    char text[INET6_ADDRSTRLEN] = {};
    const void* addr = nullptr;
    if (p->ai_family == AF_INET) addr = &reinterpret_cast<const sockaddr_in*>(p->ai_addr)->sin_addr;
    if (p->ai_family == AF_INET6) addr = &reinterpret_cast<const sockaddr_in6*>(p->ai_addr)->sin6_addr;
    if (addr != nullptr && inet_ntop(p->ai_family, addr, text, sizeof(text)) != nullptr) out.emplace_back(text);
  }
  freeaddrinfo(res);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

absl::Status ClusterOptions::Validate() const {
  if (members.empty() && dns.empty()) {
    return absl::InvalidArgumentError("cache-service cluster: no members (members) and no DNS name (dns)");
  }
  std::string host;
  int port = 0;
  for (const ClusterMember& m : members) {
    KVC_RETURN_IF_ERROR(SplitMemberAddress(m.address, &host, &port));
    if (m.ucx_port < 0 || m.ucx_port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("cache-service member ", m.address, ": bad ucx_port ", m.ucx_port));
    }
  }
  if (!dns.empty()) KVC_RETURN_IF_ERROR(SplitMemberAddress(dns, &host, &port));
  if (replicas != 1 && replicas != 2) {
    return absl::InvalidArgumentError(absl::StrCat("cache-service cluster: replicas must be 1 or 2, got ", replicas));
  }
  if (ucx_port < 0 || ucx_port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("cache-service cluster: bad ucx_port ", ucx_port));
  }
  if (member_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("cache-service cluster: member_timeout must be > 0");
  }
  if (down_backoff < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("cache-service cluster: down_backoff must be >= 0");
  }
  if (refresh_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("cache-service cluster: refresh_interval must be > 0");
  }
  return absl::OkStatus();
}

absl::StatusOr<ClusterOptions> ParseClusterTarget(absl::string_view target) {
  target = absl::StripAsciiWhitespace(target);
  ClusterOptions o;
  if (absl::ConsumePrefix(&target, "dns:///")) {
    o.dns = std::string(target);
  } else if (absl::StartsWith(target, "dns:")) {
    return absl::InvalidArgumentError(
        absl::StrCat("cache service '", target, "': write a DNS name as dns:///name:port"));
  } else {
    for (absl::string_view m : absl::StrSplit(target, ',')) {
      m = absl::StripAsciiWhitespace(m);
      if (m.empty())
        return absl::InvalidArgumentError(absl::StrCat("cache service '", target, "' has an empty member"));
      o.members.push_back(ClusterMember{std::string(m)});
    }
  }
  KVC_RETURN_IF_ERROR(o.Validate());
  return o;
}

}  // namespace kvc
