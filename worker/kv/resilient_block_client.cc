#include "worker/kv/resilient_block_client.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace kvc {

ResilientBlockClient::ResilientBlockClient(Factory factory, absl::Duration retry, Clock* clock)
    : factory_(std::move(factory)), retry_(retry), clock_(clock) {}

absl::string_view ResilientBlockClient::transport() const {
  absl::MutexLock lock(&mu_);
  // Stable storage: one of the inner clients' literals or "none".
  if (client_ == nullptr) return "none";
  return client_->transport();
}

int64_t ResilientBlockClient::connects() const {
  absl::MutexLock lock(&mu_);
  return connects_;
}

absl::StatusOr<std::shared_ptr<BlockClient>> ResilientBlockClient::Current() {
  absl::MutexLock lock(&mu_);
  if (client_ != nullptr) return client_;
  if (clock_->Now() < next_try_) {
    if (absl::IsUnauthenticated(last_error_) || absl::IsPermissionDenied(last_error_) ||
        absl::IsInvalidArgument(last_error_)) {
      return last_error_;
    }
    return absl::UnavailableError(absl::StrCat("cache service unreachable (", last_error_.message(), ")"));
  }
  // Made under the lock: one connection attempt at a time.
  absl::StatusOr<std::unique_ptr<BlockClient>> made = factory_();
  if (!made.ok()) {
    last_error_ = made.status();
    next_try_ = clock_->Now() + retry_;
    // A refusal (a bad token, bad options) is not the service being away:
    // callers must see it for what it is.
    if (absl::IsUnauthenticated(made.status()) || absl::IsPermissionDenied(made.status()) ||
        absl::IsInvalidArgument(made.status())) {
      return made.status();
    }
    return absl::UnavailableError(absl::StrCat("cache service unreachable: ", made.status().message()));
  }
  client_ = std::shared_ptr<BlockClient>(std::move(*made));
  ++connects_;
  if (connects_ > 1) KVC_LOG(kInfo, "cache_service_reconnected").With("transport", std::string(client_->transport()));
  return client_;
}

void ResilientBlockClient::Failed(const std::shared_ptr<BlockClient>& client, const absl::Status& s) {
  if (!absl::IsUnavailable(s)) return;
  absl::MutexLock lock(&mu_);
  if (client_ != client) return;  // another call replaced it already
  client_.reset();
  last_error_ = s;
  next_try_ = clock_->Now() + retry_;
  KVC_LOG(kWarning, "cache_service_lost").With("error", s.ToString());
}

template <typename Call>
auto ResilientBlockClient::With(Call call) -> decltype(call(std::declval<BlockClient&>())) {
  absl::StatusOr<std::shared_ptr<BlockClient>> c = Current();
  if (!c.ok()) return c.status();
  auto result = call(**c);
  if constexpr (std::is_same_v<decltype(result), absl::Status>) {
    Failed(*c, result);
  } else {
    if (!result.ok()) Failed(*c, result.status());
  }
  return result;
}

absl::Status ResilientBlockClient::Put(std::span<const absl::string_view> blocks, bool write_through) {
  return With([&](BlockClient& c) { return c.Put(blocks, write_through); });
}

absl::Status ResilientBlockClient::Get(std::span<const BlockKey> keys, absl::FunctionRef<void(GotBlock&)> on_block) {
  return With([&](BlockClient& c) { return c.Get(keys, on_block); });
}

absl::StatusOr<uint32_t> ResilientBlockClient::Lookup(absl::string_view tenant, absl::string_view model,
                                                      std::span<const uint32_t> layers,
                                                      std::span<const Hash128> hashes) {
  return With([&](BlockClient& c) { return c.Lookup(tenant, model, layers, hashes); });
}

absl::StatusOr<bool> ResilientBlockClient::Healthy() {
  return With([&](BlockClient& c) { return c.Healthy(); });
}

}  // namespace kvc
