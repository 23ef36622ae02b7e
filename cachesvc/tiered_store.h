// TieredStore: the cache service's storage, composed of two BlockStores.
//
//   Put ──► host tier ──(eviction: write-back)──► disk tier (RocksDB)
//   Get ◄── host hit │ write-back in flight │ disk hit, promoted to host
//
// Write-through puts go to both tiers and return once the disk copy is
// synced. A block the host tier refuses (pinned-full shard, tenant quota,
// larger than a shard) goes straight to disk, so an accepted Put is never
// lost to a full host tier. The disk copy of a promoted block is kept
// (inclusive), so evicting it from the host again costs no write.
#ifndef KVC_CACHESVC_TIERED_STORE_H_
#define KVC_CACHESVC_TIERED_STORE_H_

#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cachesvc/block_store.h"
#include "cachesvc/disk_tier.h"
#include "cachesvc/host_tier.h"
#include "cachesvc/lease_table.h"
#include "common/clock.h"

namespace kvc {

enum class Tier { kNone = 0, kHost = 1, kDisk = 2 };

struct TieredStoreOptions {
  // The host tier's options; on_evict and pins are set by TieredStore.
  HostTierOptions host;
  // The disk tier's options.
  DiskTierOptions disk;
  // Per-tenant quota applied to each tier; null means none.
  QuotaFn tenant_quota;
  // Time source for leases. Default the real clock.
  Clock* clock = Clock::Real();
};

struct FoundBlock {
  BlockPtr block;
  Tier tier = Tier::kNone;
};

struct PinGrant {
  uint64_t lease_id = 0;
  absl::Time expiry;
};

struct StoreStats {
  TierUsage host;
  TierUsage disk;
  uint64_t pinned_blocks = 0;
  uint64_t writebacks = 0;         // blocks written to disk on host eviction
  uint64_t writeback_failures = 0; // write-backs the disk tier refused
};

// Thread-safe: every method may be called concurrently.
class TieredStore {
 public:
  static absl::StatusOr<std::unique_ptr<TieredStore>> Open(TieredStoreOptions options);
  ~TieredStore();

  // Stores `block`. With `write_through` the disk copy is synced before
  // returning. Errors: RESOURCE_EXHAUSTED when neither tier can take it
  // (the message says why), or a storage error.
  absl::Status Put(const BlockPtr& block, bool write_through);

  // Host, then blocks being written back, then disk (a disk hit is promoted).
  // NOT_FOUND on a miss; DATA_LOSS when the disk copy was corrupt (dropped).
  absl::StatusOr<FoundBlock> Get(const BlockKey& key);

  // Get split at the memory boundary, for callers that must not wait on disk
  // (gRPC reactor threads): GetFromMemory serves host hits and blocks whose
  // write-back is in flight; on nullopt, GetAfterMemoryMiss (which may read
  // disk) finishes the lookup without counting a second host miss.
  std::optional<FoundBlock> GetFromMemory(const BlockKey& key);
  absl::StatusOr<FoundBlock> GetAfterMemoryMiss(const BlockKey& key);

  // Where the block is, without reading it, counting a hit or promoting it.
  Tier Locate(const BlockKey& key) const;

  // Removes the block from every tier; returns whether it was anywhere.
  absl::StatusOr<bool> Erase(const BlockKey& key);

  // Keeps `keys` in host memory until `lease` elapses or Unpin. Blocks only
  // on disk are promoted. NOT_FOUND (naming the key's index) when a key is
  // not cached, RESOURCE_EXHAUSTED when the host tier cannot hold them; in
  // both cases no lease is left behind.
  absl::StatusOr<PinGrant> Pin(std::span<const BlockKey> keys, absl::Duration lease);
  // Returns the number of keys the lease covered; NOT_FOUND when unknown or expired.
  absl::StatusOr<size_t> Unpin(uint64_t lease_id);

  StoreStats Stats() const;
  uint64_t TenantHostBytes(absl::string_view tenant) const;
  uint64_t TenantDiskBytes(absl::string_view tenant) const;

  // Writes every host-tier block that is not on disk yet to the disk tier and
  // syncs it: called on graceful shutdown so a restart finds them.
  absl::Status FlushHostToDisk();

 private:
  explicit TieredStore(Clock* clock) : clock_(clock), leases_(clock) {}
  void MarkEvicting(const BlockPtr& block);  // host on_evicting, under a shard lock
  void WriteBack(std::vector<BlockPtr> evicted);  // host on_evict, outside its locks

  Clock* const clock_;
  LeaseTable leases_;
  std::unique_ptr<DiskTier> disk_;
  std::unique_ptr<HostTier> host_;  // destroyed before disk_ (it writes back into it)

  struct Pending {
    BlockPtr block;
    bool erased = false;  // Erase ran while the write-back was in flight
  };
  mutable absl::Mutex pending_mu_;
  // Blocks evicted from the host tier whose write-back has not finished.
  absl::flat_hash_map<BlockKey, Pending> pending_ ABSL_GUARDED_BY(pending_mu_);
  std::atomic<uint64_t> writebacks_{0};
  std::atomic<uint64_t> writeback_failures_{0};
};

}  // namespace kvc

#endif  // KVC_CACHESVC_TIERED_STORE_H_
