// DiskTier: the RocksDB tier of the cache service.
//
// Layout on disk (one RocksDB database at DiskTierOptions::path):
//   column family kBlocksColumnFamily: BlockKey::Encode() -> the block's wire
//     bytes (a serialized kvcache.v1.Block), kept in blob files (integrated
//     BlobDB) so multi-megabyte values never churn through compaction.
//   column family kMetaColumnFamily:   BlockKey::Encode() -> a fixed 33-byte
//     record: u8 version (1), then little-endian u64 insertion sequence,
//     u64 charged bytes, u64 checksum, i64 write time (unix micros).
// A block's data and meta are written and deleted in one WriteBatch, so a
// crash never leaves one without the other. Open rebuilds the in-memory index
// (key -> sequence, charge; oldest-first orders globally and per tenant) by
// scanning only the meta column family, never the payloads.
//
// Budgets: the sum of charges (CachedBlock::charge()) never exceeds
// capacity_bytes; a Put first evicts the oldest blocks (lowest insertion
// sequence, across all tenants) in the same WriteBatch as the new block. With
// a tenant quota, the tenant's own oldest blocks make room; never another's.
// Replacing a key refreshes its sequence.
//
// Integrity: every read from disk is parsed and checksummed
// (CachedBlock::FromWire) and compared with its meta record. A block that
// fails is dropped (data and meta), counted in TierUsage::corrupt, logged, and
// reported as DATA_LOSS; it is never served.
//
// Thread-safety: every method may be called concurrently. Contains, Usage and
// TenantBytes touch only the in-memory index (a brief shared lock, no I/O).
// Get looks the key up under that lock and reads RocksDB outside it, so
// readers never wait on each other's I/O. Mutations (Put, Erase, dropping a
// corrupt block) are serialised by one writer lock held across the RocksDB
// write and the index update, which keeps index and disk identical under
// concurrent Put/Erase of one key and makes eviction choices race-free; a
// reader never waits for that lock except on the (rare) corrupt-block path.
#ifndef KVC_CACHESVC_DISK_TIER_H_
#define KVC_CACHESVC_DISK_TIER_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "cachesvc/block_key.h"
#include "cachesvc/block_store.h"
#include "cachesvc/cached_block.h"
#include "common/clock.h"

namespace rocksdb {
class ColumnFamilyHandle;
class DB;
}  // namespace rocksdb

namespace kvc {

// Column family names, for tools and tests that open the database directly
// (with the DiskTier closed).
inline constexpr char kBlocksColumnFamily[] = "blocks";
inline constexpr char kMetaColumnFamily[] = "meta";

struct DiskTierOptions {
  // Directory of the RocksDB database; created if missing. Required.
  std::string path;
  // Budget for the sum of charged bytes of stored blocks. Default 16 GiB.
  // RocksDB's own overhead (WAL, SST metadata, blob garbage awaiting GC) comes
  // on top: size the volume with headroom (about 1.3x).
  uint64_t capacity_bytes = 16ull << 30;
  // Per-tenant byte quota on this tier; null or 0 means no quota. Called on
  // every Put, outside the tier's locks; must be thread-safe.
  QuotaFn tenant_quota;
  // Time source for the write time in meta records. Default Clock::Real();
  // must outlive the tier.
  Clock* clock = Clock::Real();
  // RocksDB block cache for SST index, filter and data blocks (keys and meta
  // records; payloads are not cached here, the host tier does that). Bytes.
  // Default 64 MiB.
  uint64_t block_cache_bytes = 64ull << 20;
  // Memtable size of the blocks column family, in bytes. Payloads pass
  // through it before they reach blob files, so it bounds the memory and WAL
  // replay of recent writes. Default 64 MiB; at least 1 MiB.
  uint64_t write_buffer_bytes = 64ull << 20;
  // Values at least this large (bytes) go to blob files. Default 4 KiB.
  uint64_t min_blob_size = 4096;
  // Target size of one blob file, in bytes. Default 256 MiB.
  uint64_t blob_file_bytes = 256ull << 20;
  // RocksDB background flush and compaction threads. Default 2.
  int max_background_jobs = 2;

  absl::Status Validate() const;
};

class DiskTier final : public BlockStore {
 public:
  // Opens (or creates) the database and rebuilds the index from the meta
  // column family. Meta records that do not decode are dropped and counted
  // as corrupt. If the stored bytes exceed the current budget or quotas (they
  // were lowered), the oldest blocks are evicted. Errors: INVALID_ARGUMENT
  // for bad options; RocksDB failures mapped to a code (DATA_LOSS for
  // corruption, UNAVAILABLE for I/O errors and a held lock, ...).
  static absl::StatusOr<std::unique_ptr<DiskTier>> Open(const DiskTierOptions& options);

  // Closes the database; acknowledged writes are already in the WAL.
  ~DiskTier() override;

  DiskTier(const DiskTier&) = delete;
  DiskTier& operator=(const DiskTier&) = delete;

  absl::string_view name() const override { return "disk"; }

  // options.sync: the WriteBatch is synced (fsync of the WAL) before OK, so
  // the block survives kill -9 and power loss. Without it the write is still
  // in the WAL (it survives a process crash, not a power loss).
  // RESOURCE_EXHAUSTED when the block is larger than capacity_bytes or than
  // its tenant's quota.
  absl::Status Put(const BlockPtr& block, const PutOptions& options) override;
  absl::StatusOr<BlockPtr> Get(const BlockKey& key) override;
  bool Contains(const BlockKey& key) const override;
  absl::StatusOr<bool> Erase(const BlockKey& key) override;
  TierUsage Usage() const override;
  uint64_t TenantBytes(absl::string_view tenant) const override;
  // Syncs the WAL: every Put acknowledged before the call survives power loss.
  absl::Status Flush() override;
  // Visits the blocks indexed at the call, in key order, each read and
  // verified; corrupt ones are dropped and skipped, ones erased meanwhile are
  // skipped. Errors other than corruption stop the walk.
  absl::Status ForEach(absl::FunctionRef<void(const BlockPtr&)> fn) override;

 private:
  struct Entry {
    uint64_t seq = 0;
    uint64_t charge = 0;
    uint64_t checksum = 0;
    std::string tenant;
  };
  struct TenantState {
    uint64_t bytes = 0;
    std::map<uint64_t, std::string> by_seq;  // seq -> encoded key
  };
  // What a read of one block found.
  enum class ReadResult { kOk, kMissing, kCorrupt, kError };

  DiskTier(DiskTierOptions options, rocksdb::DB* db, rocksdb::ColumnFamilyHandle* blocks,
           rocksdb::ColumnFamilyHandle* meta);

  absl::Status LoadIndex();
  // Evicts oldest blocks until the stored bytes fit the budget and quotas.
  absl::Status EnforceBudgetsAtOpen() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);

  // Reads and verifies `ekey` against `want`. kOk sets *out; kCorrupt and
  // kError set *problem.
  ReadResult ReadBlock(const std::string& ekey, const Entry& want, BlockPtr* out,
                       absl::Status* problem) const;
  // The slow path of a failed read: under the writer lock (so no mutation
  // races), re-reads `ekey`; serves it if it is good now, else drops it.
  // NOT_FOUND when it is gone.
  absl::StatusOr<BlockPtr> ReverifyOrDrop(const std::string& ekey);
  // Deletes data and meta of `ekeys` in one batch and updates the index.
  absl::Status DeleteBlocks(const std::vector<std::string>& ekeys, bool count_as_evicted)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);

  void IndexInsert(const std::string& ekey, Entry entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void IndexRemove(const std::string& ekey) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const DiskTierOptions options_;
  rocksdb::DB* const db_;                      // owned
  rocksdb::ColumnFamilyHandle* const blocks_;  // owned
  rocksdb::ColumnFamilyHandle* const meta_;    // owned

  // Serialises mutations of the database and the index. Acquired before mu_.
  absl::Mutex write_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  uint64_t next_seq_ ABSL_GUARDED_BY(write_mu_) = 1;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> index_ ABSL_GUARDED_BY(mu_);  // by encoded key
  std::map<uint64_t, std::string> by_seq_ ABSL_GUARDED_BY(mu_);         // oldest first
  absl::flat_hash_map<std::string, TenantState> tenants_ ABSL_GUARDED_BY(mu_);
  uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;

  mutable std::atomic<uint64_t> hits_{0};
  mutable std::atomic<uint64_t> misses_{0};
  std::atomic<uint64_t> evictions_{0};
  std::atomic<uint64_t> corrupt_{0};
};

}  // namespace kvc

#endif  // KVC_CACHESVC_DISK_TIER_H_
