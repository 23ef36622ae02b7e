// HostTier: the host-memory tier, a BlockStore bounded by a byte budget.
//
// The tier is striped into shards by BlockKey::ShardHash() (as RocksDB's
// sharded_cache); each shard owns capacity_bytes / num_shards and evicts with
// S3-FIFO (Yang et al., SOSP '23): new keys enter a small FIFO (about
// small_queue_fraction of the shard's bytes); a block read again before it
// leaves the small FIFO moves to the main FIFO, the rest are evicted and their
// key hashes remembered in a ghost FIFO. A key found in the ghost FIFO is
// admitted straight to main. Reads set a 2-bit frequency (0..3); the main FIFO
// gives a block with frequency > 0 another lap (decrementing it) instead of
// evicting it. A one-pass scan therefore churns through the small FIFO and
// never displaces a re-read working set, where LRU would lose all of it.
//
// Guarantees:
//  - The sum of CachedBlock::charge() over held blocks never exceeds
//    capacity_bytes, also under concurrent Puts (each shard checks its own
//    share under its lock before committing).
//  - A block that options.pins reports pinned is never evicted. A Put that
//    could only fit by evicting pinned blocks fails with RESOURCE_EXHAUSTED.
//  - With tenant_quota(t) > 0, tenant t's charged bytes in this tier never
//    exceed it; a Put over quota first evicts t's own unpinned blocks in the
//    key's shard (oldest first), never another tenant's.
//  - Every block evicted for room or quota is passed to on_evict; blocks
//    removed by Erase or replaced by Put are not.
//
// Thread-safety: every method may be called concurrently from any thread.
// Each shard has its own mutex; a tier-wide per-tenant byte ledger has its own
// striped mutexes (lock order: shard, then ledger). PinOracle::IsPinned and
// Clock::Now are called under a shard lock; tenant_quota and on_evict are
// called with no lock held, on the thread that called Put, possibly from
// several threads at once.
#ifndef KVC_CACHESVC_HOST_TIER_H_
#define KVC_CACHESVC_HOST_TIER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "cachesvc/block_store.h"
#include "common/clock.h"

namespace kvc {

struct HostTierOptions {
  // Byte budget of the whole tier, in charged bytes (CachedBlock::charge()).
  // Default 1 GiB. Must be at least num_shards * 4 KiB.
  uint64_t capacity_bytes = uint64_t{1} << 30;
  // Number of independently locked shards; a power of two in [1, 4096].
  // Default 16. Each shard holds at most capacity_bytes / num_shards, which
  // is also the largest block the tier admits.
  uint32_t num_shards = 16;
  // Share of each shard's bytes the small (probationary) FIFO aims for, in
  // (0, 1). Default 0.10, the S3-FIFO paper's choice.
  double small_queue_fraction = 0.10;
  // Key hashes of blocks recently evicted from the small FIFO remembered per
  // shard. Default 0: as many as the shard holds blocks, at least 64.
  uint32_t ghost_entries_per_shard = 0;
  // Which blocks must not be evicted; null = none. Not owned; must outlive
  // the tier. Called under shard locks, so it must not call into this tier.
  const PinOracle* pins = nullptr;
  // Time passed to pins->IsPinned. Not owned; never null. Default the real
  // clock.
  Clock* clock = Clock::Real();
  // Per-tenant byte quota in this tier (0 = none); null = no quotas.
  QuotaFn tenant_quota;
  // Receives every block evicted to make room or to honour a quota, so the
  // owner can write it back to a lower tier. Called after the Put that caused
  // the evictions released its locks, before Put returns, even when that Put
  // then failed. Null = evicted blocks are dropped.
  std::function<void(std::vector<BlockPtr>)> on_evict;
  // Called for each such block at the moment it leaves the tier, under the
  // shard's lock, before on_evict: so the owner can make the block findable
  // elsewhere with no gap in which it is nowhere. Must be cheap, must not
  // block and must not call into this tier. Null = nothing.
  std::function<void(const BlockPtr&)> on_evicting;

  absl::Status Validate() const;
};

class HostTier final : public BlockStore {
 public:
  // INVALID_ARGUMENT when options.Validate() fails.
  static absl::StatusOr<std::unique_ptr<HostTier>> Create(const HostTierOptions& options);
  ~HostTier() override;
  HostTier(const HostTier&) = delete;
  HostTier& operator=(const HostTier&) = delete;

  absl::string_view name() const override { return "host"; }

  // RESOURCE_EXHAUSTED, with nothing stored, when the block is larger than a
  // shard or than its tenant's quota, when the shard could only make room by
  // evicting pinned blocks, or when the tenant is over quota and has no
  // unpinned block of its own in the shard left to evict. Blocks already
  // evicted by a failed Put stay evicted (and go to on_evict). Replacing a
  // key keeps its place in the queues and its frequency. `options` ignored.
  absl::Status Put(const BlockPtr& block, const PutOptions& options) override;
  // Counts a hit and raises the block's frequency, or counts a miss.
  absl::StatusOr<BlockPtr> Get(const BlockKey& key) override;
  bool Contains(const BlockKey& key) const override;
  absl::StatusOr<bool> Erase(const BlockKey& key) override;
  // Summed shard by shard: each shard's part is consistent, the whole is not
  // one instant, but bytes <= budget_bytes always holds. budget_bytes is
  // num_shards * (capacity_bytes / num_shards): a remainder goes unused.
  TierUsage Usage() const override;
  uint64_t TenantBytes(absl::string_view tenant) const override;
  // Snapshots every shard (one at a time, under its lock), then calls `fn`
  // with no lock held.
  absl::Status ForEach(absl::FunctionRef<void(const BlockPtr&)> fn) override;

 private:
  class Shard;
  class TenantLedger;

  explicit HostTier(HostTierOptions options);
  Shard& ShardFor(const BlockKey& key) const;

  const HostTierOptions options_;
  const std::unique_ptr<TenantLedger> ledger_;
  std::vector<std::unique_ptr<Shard>> shards_;
};

}  // namespace kvc

#endif  // KVC_CACHESVC_HOST_TIER_H_
