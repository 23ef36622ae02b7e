// ResilientBlockClient: a BlockClient that survives the cache service going
// away and coming back (a restart, a rescheduled pod).
//
// It makes its inner client with a factory (MakeBlockClient with the
// worker's options) and remakes it after a call fails with UNAVAILABLE
// (a gRPC channel reconnects by itself; a UCX endpoint does not). While the
// service is away, calls fail fast with UNAVAILABLE instead of each paying a
// connection timeout: a new client is tried at most once per `retry`
// interval. Callers (the block writer, prefix loading, rehydration) already
// treat UNAVAILABLE as "service away": the writer degrades and catches up.
#ifndef KVC_WORKER_KV_RESILIENT_BLOCK_CLIENT_H_
#define KVC_WORKER_KV_RESILIENT_BLOCK_CLIENT_H_

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "worker/kv/block_client.h"

namespace kvc {

class ResilientBlockClient final : public BlockClient {
 public:
  using Factory = absl::AnyInvocable<absl::StatusOr<std::unique_ptr<BlockClient>>()>;

  // Does not connect: the first call does. `clock` for the retry interval.
  ResilientBlockClient(Factory factory, absl::Duration retry = absl::Milliseconds(500),
                       Clock* clock = Clock::Real());

  // The inner client's transport, or "none" while there is none.
  absl::string_view transport() const override;
  absl::Status Put(std::span<const absl::string_view> blocks, bool write_through) override;
  absl::Status Get(std::span<const BlockKey> keys, absl::FunctionRef<void(GotBlock&)> on_block) override;
  absl::StatusOr<uint32_t> Lookup(absl::string_view tenant, absl::string_view model, std::span<const uint32_t> layers,
                                  std::span<const Hash128> hashes) override;
  absl::StatusOr<bool> Healthy() override;

  // Inner clients made so far (1 + reconnects).
  int64_t connects() const;

 private:
  // The current client, making one if none (or UNAVAILABLE within the
  // retry interval of the last failure).
  absl::StatusOr<std::shared_ptr<BlockClient>> Current();
  // Forgets `client` after it reported the service unreachable.
  void Failed(const std::shared_ptr<BlockClient>& client, const absl::Status& s);

  template <typename Call>
  auto With(Call call) -> decltype(call(std::declval<BlockClient&>()));

  Factory factory_;
  const absl::Duration retry_;
  Clock* const clock_;
  mutable absl::Mutex mu_;
  // Shared: a call in flight keeps its client alive while another thread replaces it.
  std::shared_ptr<BlockClient> client_ ABSL_GUARDED_BY(mu_);
  absl::Time next_try_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Status last_error_ ABSL_GUARDED_BY(mu_);
  int64_t connects_ ABSL_GUARDED_BY(mu_) = 0;
  std::string transport_ ABSL_GUARDED_BY(mu_) = "none";
};

}  // namespace kvc

#endif  // KVC_WORKER_KV_RESILIENT_BLOCK_CLIENT_H_
