// LeaseTable: time-bounded pins on blocks, the PinOracle the tiers consult.
//
// A lease covers a set of keys until its expiry or its release, whichever
// comes first. A key stays pinned while any live lease covers it, so two
// requests that share a prefix can pin the same blocks independently.
//
// Thread-safety: every method may be called concurrently from any thread.
// IsPinned is on the host tier's eviction path (called under its shard locks):
// it takes only a reader lock, and no lock at all while nothing is pinned.
// LeaseTable never calls into a BlockStore, so it is safe to call from one.
#ifndef KVC_CACHESVC_LEASE_TABLE_H_
#define KVC_CACHESVC_LEASE_TABLE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <set>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cachesvc/block_key.h"
#include "cachesvc/block_store.h"
#include "common/clock.h"

namespace kvc {

class LeaseTable final : public PinOracle {
 public:
  // `clock` is read by Acquire and Release to drop and refuse expired leases.
  // It must outlive the table.
  explicit LeaseTable(Clock* clock = Clock::Real());
  LeaseTable(const LeaseTable&) = delete;
  LeaseTable& operator=(const LeaseTable&) = delete;

  // Pins `keys` until `expiry` (exclusive) or Release. Returns the lease id:
  // nonzero and never reused by this table. Duplicate keys count once.
  // INVALID_ARGUMENT for an empty key list or an expiry not after
  // clock->Now(). Drops leases that have expired, so memory stays bounded by
  // the live leases.
  absl::StatusOr<uint64_t> Acquire(std::vector<BlockKey> keys, absl::Time expiry);

  // Ends a lease early. Returns how many distinct keys it covered. NOT_FOUND
  // for an id never issued, already released, or already expired.
  absl::StatusOr<size_t> Release(uint64_t lease_id);

  // True while a lease covering `key` is unreleased and `now` < its expiry.
  bool IsPinned(const BlockKey& key, absl::Time now) const override;

  // Distinct keys pinned at `now`. O(pinned keys); for metrics and tests.
  size_t PinnedKeys(absl::Time now) const;

  // Leases held, including expired ones not yet dropped.
  size_t LeaseCount() const;

  // Drops every lease whose expiry is at or before `now`.
  void ExpireUntil(absl::Time now);

 private:
  struct Lease {
    std::vector<BlockKey> keys;  // distinct
    absl::Time expiry;
  };
  // The leases covering one key: (lease id, expiry). Usually one or two.
  using Holders = absl::InlinedVector<std::pair<uint64_t, absl::Time>, 2>;

  void DropLocked(uint64_t lease_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ExpireLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Clock* const clock_;
  mutable absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint64_t, Lease> leases_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<BlockKey, Holders> holders_ ABSL_GUARDED_BY(mu_);
  // (expiry, lease id) of every lease in leases_, soonest first.
  std::set<std::pair<absl::Time, uint64_t>> by_expiry_ ABSL_GUARDED_BY(mu_);
  // holders_.size(), readable without mu_: lets IsPinned skip the lock when
  // nothing is pinned. Written only under mu_.
  std::atomic<size_t> keys_with_holders_{0};
};

}  // namespace kvc

#endif  // KVC_CACHESVC_LEASE_TABLE_H_
