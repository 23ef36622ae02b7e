#include "cachesvc/disk_tier.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "rocksdb/cache.h"
#include "rocksdb/db.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/options.h"
#include "rocksdb/slice.h"
#include "rocksdb/table.h"
#include "rocksdb/write_batch.h"

namespace kvc {
namespace {

constexpr uint8_t kMetaVersion = 1;
constexpr size_t kMetaRecordBytes = 1 + 4 * 8;

// Converts a RocksDB status at the boundary. `what` names the operation.
absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  const std::string msg = absl::StrCat("disk tier: ", what, ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsNoSpace() || s.IsMemoryLimit()) return absl::ResourceExhaustedError(msg);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  if (s.IsNotSupported()) return absl::UnimplementedError(msg);
  if (s.IsAborted()) return absl::AbortedError(msg);
  if (s.IsTimedOut()) return absl::DeadlineExceededError(msg);
  // I/O errors (including a database locked by another process), Busy,
  // TryAgain, Incomplete, ShutdownInProgress: the tier may work again later.
  if (s.IsIOError() || s.IsBusy() || s.IsTryAgain() || s.IsIncomplete() ||
      s.IsShutdownInProgress()) {
    return absl::UnavailableError(msg);
  }
  return absl::InternalError(msg);
}

void PutFixed64(uint64_t v, char* out) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(v >> (8 * i));
}

uint64_t GetFixed64(const char* in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{static_cast<uint8_t>(in[i])} << (8 * i);
  return v;
}

struct MetaRecord {
  uint64_t seq = 0;
  uint64_t charge = 0;
  uint64_t checksum = 0;
  int64_t written_unix_micros = 0;
};

std::string EncodeMeta(const MetaRecord& m) {
  std::string out(kMetaRecordBytes, '\0');
  out[0] = static_cast<char>(kMetaVersion);
  PutFixed64(m.seq, &out[1]);
  PutFixed64(m.charge, &out[9]);
  PutFixed64(m.checksum, &out[17]);
  PutFixed64(static_cast<uint64_t>(m.written_unix_micros), &out[25]);
  return out;
}

absl::StatusOr<MetaRecord> DecodeMeta(absl::string_view bytes) {
  if (bytes.size() != kMetaRecordBytes || static_cast<uint8_t>(bytes[0]) != kMetaVersion) {
    return absl::DataLossError(absl::StrCat("meta record is ", bytes.size(), " bytes with version ",
                                            bytes.empty() ? -1 : static_cast<uint8_t>(bytes[0]),
                                            "; want ", kMetaRecordBytes, " bytes, version ",
                                            kMetaVersion));
  }
  MetaRecord m;
  m.seq = GetFixed64(&bytes[1]);
  m.charge = GetFixed64(&bytes[9]);
  m.checksum = GetFixed64(&bytes[17]);
  m.written_unix_micros = static_cast<int64_t>(GetFixed64(&bytes[25]));
  if (m.seq == 0 || m.charge <= kBlockOverheadBytes) {
    return absl::DataLossError(
        absl::StrCat("meta record has seq ", m.seq, " and charge ", m.charge));
  }
  return m;
}

rocksdb::Slice ToSlice(absl::string_view s) { return rocksdb::Slice(s.data(), s.size()); }

// For logs: the key's readable form, or its hex when it does not decode.
std::string KeyForLog(const std::string& ekey) {
  absl::StatusOr<BlockKey> k = BlockKey::Decode(ekey);
  if (k.ok()) return k->DebugString();
  std::string hex;
  for (unsigned char c : ekey) absl::StrAppend(&hex, absl::Hex(c, absl::kZeroPad2));
  return absl::StrCat("undecodable key 0x", hex);
}

}  // namespace

absl::Status DiskTierOptions::Validate() const {
  if (path.empty()) return absl::InvalidArgumentError("disk tier: path is required");
  if (capacity_bytes == 0) {
    return absl::InvalidArgumentError("disk tier: capacity_bytes must be positive");
  }
  if (clock == nullptr) return absl::InvalidArgumentError("disk tier: clock is null");
  if (write_buffer_bytes < (1ull << 20)) {
    return absl::InvalidArgumentError(absl::StrCat("disk tier: write_buffer_bytes is ",
                                                   write_buffer_bytes, "; minimum is 1048576"));
  }
  if (blob_file_bytes < (1ull << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat("disk tier: blob_file_bytes is ", blob_file_bytes, "; minimum is 1048576"));
  }
  if (max_background_jobs < 1 || max_background_jobs > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("disk tier: max_background_jobs is ", max_background_jobs, "; want 1..64"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DiskTier>> DiskTier::Open(const DiskTierOptions& options) {
  KVC_RETURN_IF_ERROR(options.Validate());

  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.max_background_jobs = options.max_background_jobs;
  // Stop replay at the first damaged WAL record: everything before it (every
  // synced write) is recovered, and the database still opens after a torn
  // tail from a crash.
  db_options.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  // Both column families are written in every batch, so the WAL is freed
  // only when both are flushed; cap it so the meta memtable cannot pin
  // gigabytes of payload WAL.
  db_options.max_total_wal_size = 4 * options.write_buffer_bytes;
  // Smooth write-back of flushed SST and blob files instead of one large
  // fsync at the end of each.
  db_options.bytes_per_sync = 1 << 20;
  db_options.keep_log_file_num = 4;

  rocksdb::BlockBasedTableOptions table;
  table.block_cache = rocksdb::NewLRUCache(options.block_cache_bytes);
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  table.cache_index_and_filter_blocks = true;
  table.pin_l0_filter_and_index_blocks_in_cache = true;
  std::shared_ptr<rocksdb::TableFactory> table_factory(rocksdb::NewBlockBasedTableFactory(table));

  rocksdb::ColumnFamilyOptions blocks_options;
  blocks_options.table_factory = table_factory;
  blocks_options.write_buffer_size = options.write_buffer_bytes;
  blocks_options.level_compaction_dynamic_level_bytes = true;
  // Integrated BlobDB: payloads (256 KiB..32 MiB) live in blob files written
  // once at flush; compaction moves only the small blob references.
  blocks_options.enable_blob_files = true;
  blocks_options.min_blob_size = options.min_blob_size;
  blocks_options.blob_file_size = options.blob_file_bytes;
  // fp16/bf16 KV does not compress enough to pay for the CPU.
  blocks_options.blob_compression_type = rocksdb::kNoCompression;
  // A cache deletes as much as it writes: relocate live blobs out of the
  // oldest quarter of blob files during compaction, and force compaction of
  // those files once half of their bytes are garbage, so space comes back.
  blocks_options.enable_blob_garbage_collection = true;
  blocks_options.blob_garbage_collection_age_cutoff = 0.25;
  blocks_options.blob_garbage_collection_force_threshold = 0.5;

  rocksdb::ColumnFamilyOptions meta_options;
  meta_options.table_factory = table_factory;
  meta_options.write_buffer_size = 4 << 20;
  meta_options.level_compaction_dynamic_level_bytes = true;

  std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
      {kBlocksColumnFamily, blocks_options},
      {kMetaColumnFamily, meta_options},
  };
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, options.path, cfs, &handles, &db);
  if (!s.ok()) return FromRocks(s, absl::StrCat("open ", options.path));
  // The default family is unused; the DB keeps its own reference to it.
  db->DestroyColumnFamilyHandle(handles[0]);

  std::unique_ptr<DiskTier> tier(new DiskTier(options, db, handles[1], handles[2]));
  KVC_RETURN_IF_ERROR(tier->LoadIndex());
  {
    absl::MutexLock wl(&tier->write_mu_);
    KVC_RETURN_IF_ERROR(tier->EnforceBudgetsAtOpen());
  }
  TierUsage u = tier->Usage();
  KVC_LOG(kInfo, "disk_tier_opened")
      .With("path", options.path)
      .With("blocks", u.blocks)
      .With("bytes", u.bytes)
      .With("capacity_bytes", options.capacity_bytes)
      .With("corrupt", u.corrupt)
      .With("evictions", u.evictions);
  return tier;
}

DiskTier::DiskTier(DiskTierOptions options, rocksdb::DB* db, rocksdb::ColumnFamilyHandle* blocks,
                   rocksdb::ColumnFamilyHandle* meta)
    : options_(std::move(options)), db_(db), blocks_(blocks), meta_(meta) {}

DiskTier::~DiskTier() {
  rocksdb::Status s = db_->FlushWAL(/*sync=*/true);
  if (!s.ok()) {
    KVC_LOG(kWarning, "disk_tier_close_sync_failed").With("error", s.ToString());
  }
  db_->DestroyColumnFamilyHandle(blocks_);
  db_->DestroyColumnFamilyHandle(meta_);
  s = db_->Close();
  if (!s.ok()) KVC_LOG(kWarning, "disk_tier_close_failed").With("error", s.ToString());
  delete db_;
}

absl::Status DiskTier::LoadIndex() {
  absl::MutexLock wl(&write_mu_);
  std::vector<std::string> bad;
  uint64_t max_seq = 0;
  {
    rocksdb::ReadOptions ro;
    ro.fill_cache = false;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, meta_));
    absl::MutexLock l(&mu_);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      std::string ekey = it->key().ToString();
      absl::StatusOr<BlockKey> key = BlockKey::Decode(ekey);
      absl::StatusOr<MetaRecord> meta =
          DecodeMeta(absl::string_view(it->value().data(), it->value().size()));
      absl::Status problem = !key.ok() ? key.status() : meta.status();
      if (problem.ok() && by_seq_.contains(meta->seq)) {
        problem = absl::DataLossError(absl::StrCat("sequence ", meta->seq, " used twice"));
      }
      if (!problem.ok()) {
        KVC_LOG(kWarning, "disk_tier_corrupt_meta")
            .With("key", KeyForLog(ekey))
            .With("error", problem.ToString());
        bad.push_back(std::move(ekey));
        continue;
      }
      max_seq = std::max(max_seq, meta->seq);
      IndexInsert(ekey, Entry{meta->seq, meta->charge, meta->checksum, std::move(key->tenant)});
    }
    KVC_RETURN_IF_ERROR(FromRocks(it->status(), "scan meta"));
  }
  next_seq_ = max_seq + 1;
  if (!bad.empty()) {
    KVC_RETURN_IF_ERROR(DeleteBlocks(bad, /*count_as_evicted=*/false));
    corrupt_.fetch_add(bad.size());
  }
  return absl::OkStatus();
}

absl::Status DiskTier::EnforceBudgetsAtOpen() {
  std::vector<std::string> victims;
  {
    absl::ReaderMutexLock l(&mu_);
    absl::flat_hash_set<std::string> chosen;
    uint64_t freed = 0;
    if (options_.tenant_quota) {
      for (const auto& [tenant, state] : tenants_) {
        const uint64_t quota = options_.tenant_quota(tenant);
        uint64_t bytes = state.bytes;
        for (auto it = state.by_seq.begin(); quota > 0 && bytes > quota; ++it) {
          const uint64_t charge = index_.at(it->second).charge;
          bytes -= charge;
          freed += charge;
          chosen.insert(it->second);
          victims.push_back(it->second);
        }
      }
    }
    uint64_t bytes = bytes_ - freed;
    for (auto it = by_seq_.begin(); bytes > options_.capacity_bytes; ++it) {
      if (chosen.contains(it->second)) continue;
      bytes -= index_.at(it->second).charge;
      victims.push_back(it->second);
    }
  }
  if (victims.empty()) return absl::OkStatus();
  return DeleteBlocks(victims, /*count_as_evicted=*/true);
}

absl::Status DiskTier::Put(const BlockPtr& block, const PutOptions& options) {
  if (block == nullptr) return absl::InvalidArgumentError("disk tier: Put of a null block");
  const BlockKey& key = block->key();
  const uint64_t charge = block->charge();
  if (charge > options_.capacity_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("block ", key.DebugString(), " charges ", charge,
                     " bytes; the disk tier's capacity_bytes is ", options_.capacity_bytes));
  }
  const uint64_t quota = options_.tenant_quota ? options_.tenant_quota(key.tenant) : 0;
  if (quota > 0 && charge > quota) {
    return absl::ResourceExhaustedError(
        absl::StrCat("block ", key.DebugString(), " charges ", charge, " bytes; tenant '",
                     key.tenant, "' has a disk tier quota of ", quota, " bytes"));
  }
  const std::string ekey = key.Encode();

  absl::MutexLock wl(&write_mu_);
  // Choose victims: the tenant's own oldest blocks for its quota, then the
  // oldest blocks of anyone for the capacity. The key being replaced is not a
  // victim; its old charge is released by the replacement itself.
  std::vector<std::string> victims;
  {
    absl::ReaderMutexLock l(&mu_);
    uint64_t old_charge = 0;
    if (auto it = index_.find(ekey); it != index_.end()) old_charge = it->second.charge;
    absl::flat_hash_set<absl::string_view> chosen;
    uint64_t freed = 0;
    if (quota > 0) {
      auto t = tenants_.find(key.tenant);
      if (t != tenants_.end()) {
        uint64_t bytes = t->second.bytes - old_charge;
        for (auto it = t->second.by_seq.begin(); bytes + charge > quota; ++it) {
          if (it->second == ekey) continue;
          const uint64_t c = index_.at(it->second).charge;
          bytes -= c;
          freed += c;
          chosen.insert(it->second);
          victims.push_back(it->second);
        }
      }
    }
    uint64_t bytes = bytes_ - old_charge - freed;
    for (auto it = by_seq_.begin(); bytes + charge > options_.capacity_bytes; ++it) {
      if (it->second == ekey || chosen.contains(it->second)) continue;
      bytes -= index_.at(it->second).charge;
      victims.push_back(it->second);
    }
  }

  const MetaRecord meta{next_seq_++, charge, block->checksum(),
                        absl::ToUnixMicros(options_.clock->Now())};
  rocksdb::WriteBatch batch;
  for (const std::string& v : victims) {
    batch.Delete(blocks_, v);
    batch.Delete(meta_, v);
  }
  batch.Put(blocks_, ekey, ToSlice(block->wire()));
  batch.Put(meta_, ekey, EncodeMeta(meta));
  rocksdb::WriteOptions wo;
  wo.sync = options.sync;
  KVC_RETURN_IF_ERROR(FromRocks(db_->Write(wo, &batch), absl::StrCat("put ", key.DebugString())));

  absl::MutexLock l(&mu_);
  for (const std::string& v : victims) IndexRemove(v);
  IndexRemove(ekey);
  IndexInsert(ekey, Entry{meta.seq, charge, block->checksum(), key.tenant});
  evictions_.fetch_add(victims.size());
  return absl::OkStatus();
}

DiskTier::ReadResult DiskTier::ReadBlock(const std::string& ekey, const Entry& want, BlockPtr* out,
                                         absl::Status* problem) const {
  std::string wire;
  // Unpinned values land directly in `wire`; blob values usually do, which
  // saves a copy of up to 32 MiB.
  rocksdb::PinnableSlice value(&wire);
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  rocksdb::Status s = db_->Get(ro, blocks_, ekey, &value);
  if (s.IsNotFound()) {
    *problem = absl::DataLossError("meta record present but block data missing");
    return ReadResult::kMissing;
  }
  if (s.IsCorruption()) {
    *problem = absl::DataLossError(absl::StrCat("rocksdb: ", s.ToString()));
    return ReadResult::kCorrupt;
  }
  if (!s.ok()) {
    *problem = FromRocks(s, absl::StrCat("get ", KeyForLog(ekey)));
    return ReadResult::kError;
  }
  if (value.IsPinned()) wire.assign(value.data(), value.size());
  value.Reset();

  absl::StatusOr<BlockPtr> block = CachedBlock::FromWire(std::move(wire));
  if (!block.ok()) {
    *problem = block.status();
    return ReadResult::kCorrupt;
  }
  const CachedBlock& b = **block;
  if (b.key().Encode() != ekey) {
    *problem =
        absl::DataLossError(absl::StrCat("stored block carries key ", b.key().DebugString()));
    return ReadResult::kCorrupt;
  }
  if (b.checksum() != want.checksum || b.charge() != want.charge) {
    *problem = absl::DataLossError(
        absl::StrCat("stored block (checksum 0x", absl::Hex(b.checksum()), ", charge ", b.charge(),
                     ") does not match its meta record (checksum 0x", absl::Hex(want.checksum),
                     ", charge ", want.charge, ")"));
    return ReadResult::kCorrupt;
  }
  *out = std::move(block).value();
  return ReadResult::kOk;
}

absl::StatusOr<BlockPtr> DiskTier::ReverifyOrDrop(const std::string& ekey) {
  absl::MutexLock wl(&write_mu_);
  Entry want;
  {
    absl::ReaderMutexLock l(&mu_);
    auto it = index_.find(ekey);
    if (it == index_.end()) {
      return absl::NotFoundError(absl::StrCat("block ", KeyForLog(ekey), " not in disk tier"));
    }
    want = it->second;
  }
  BlockPtr block;
  absl::Status problem;
  switch (ReadBlock(ekey, want, &block, &problem)) {
    case ReadResult::kOk:
      return block;  // replaced while the first read ran
    case ReadResult::kError:
      return problem;
    case ReadResult::kMissing:
    case ReadResult::kCorrupt:
      break;
  }
  const std::string name = KeyForLog(ekey);
  KVC_LOG(kWarning, "disk_tier_corrupt_block")
      .With("key", name)
      .With("path", options_.path)
      .With("error", problem.ToString());
  if (absl::Status d = DeleteBlocks({ekey}, /*count_as_evicted=*/false); !d.ok()) {
    return absl::DataLossError(absl::StrCat("block ", name, " on disk is corrupt (",
                                            problem.message(),
                                            ") and could not be dropped: ", d.message()));
  }
  corrupt_.fetch_add(1);
  return absl::DataLossError(absl::StrCat("block ", name, " on disk is corrupt (",
                                          problem.message(), "); it was dropped"));
}

absl::StatusOr<BlockPtr> DiskTier::Get(const BlockKey& key) {
  const std::string ekey = key.Encode();
  Entry want;
  {
    absl::ReaderMutexLock l(&mu_);
    auto it = index_.find(ekey);
    if (it == index_.end()) {
      misses_.fetch_add(1);
      return absl::NotFoundError(absl::StrCat("block ", key.DebugString(), " not in disk tier"));
    }
    want = it->second;
  }
  BlockPtr block;
  absl::Status problem;
  absl::StatusOr<BlockPtr> result;
  switch (ReadBlock(ekey, want, &block, &problem)) {
    case ReadResult::kOk:
      result = std::move(block);
      break;
    case ReadResult::kError:
      result = problem;
      break;
    // Possibly a race with a concurrent Put/Erase of this key rather than
    // damage: decide under the writer lock.
    case ReadResult::kMissing:
    case ReadResult::kCorrupt:
      result = ReverifyOrDrop(ekey);
      break;
  }
  (result.ok() ? hits_ : misses_).fetch_add(1);
  return result;
}

bool DiskTier::Contains(const BlockKey& key) const {
  const std::string ekey = key.Encode();
  absl::ReaderMutexLock l(&mu_);
  return index_.contains(ekey);
}

absl::StatusOr<bool> DiskTier::Erase(const BlockKey& key) {
  const std::string ekey = key.Encode();
  absl::MutexLock wl(&write_mu_);
  {
    absl::ReaderMutexLock l(&mu_);
    if (!index_.contains(ekey)) return false;
  }
  KVC_RETURN_IF_ERROR(DeleteBlocks({ekey}, /*count_as_evicted=*/false));
  return true;
}

absl::Status DiskTier::DeleteBlocks(const std::vector<std::string>& ekeys, bool count_as_evicted) {
  rocksdb::WriteBatch batch;
  for (const std::string& k : ekeys) {
    batch.Delete(blocks_, k);
    batch.Delete(meta_, k);
  }
  KVC_RETURN_IF_ERROR(FromRocks(db_->Write(rocksdb::WriteOptions(), &batch), "delete"));
  absl::MutexLock l(&mu_);
  for (const std::string& k : ekeys) IndexRemove(k);
  if (count_as_evicted) evictions_.fetch_add(ekeys.size());
  return absl::OkStatus();
}

TierUsage DiskTier::Usage() const {
  TierUsage u;
  {
    absl::ReaderMutexLock l(&mu_);
    u.bytes = bytes_;
    u.blocks = index_.size();
  }
  u.budget_bytes = options_.capacity_bytes;
  u.hits = hits_.load();
  u.misses = misses_.load();
  u.evictions = evictions_.load();
  u.corrupt = corrupt_.load();
  return u;
}

uint64_t DiskTier::TenantBytes(absl::string_view tenant) const {
  absl::ReaderMutexLock l(&mu_);
  auto it = tenants_.find(tenant);
  return it == tenants_.end() ? 0 : it->second.bytes;
}

absl::Status DiskTier::Flush() { return FromRocks(db_->FlushWAL(/*sync=*/true), "sync WAL"); }

absl::Status DiskTier::ForEach(absl::FunctionRef<void(const BlockPtr&)> fn) {
  std::vector<std::string> keys;
  {
    absl::ReaderMutexLock l(&mu_);
    keys.reserve(index_.size());
    for (const auto& [ekey, entry] : index_) keys.push_back(ekey);
  }
  std::sort(keys.begin(), keys.end());
  for (const std::string& ekey : keys) {
    Entry want;
    {
      absl::ReaderMutexLock l(&mu_);
      auto it = index_.find(ekey);
      if (it == index_.end()) continue;  // erased or evicted since the snapshot
      want = it->second;
    }
    BlockPtr block;
    absl::Status problem;
    switch (ReadBlock(ekey, want, &block, &problem)) {
      case ReadResult::kOk:
        break;
      case ReadResult::kError:
        return problem;
      case ReadResult::kMissing:
      case ReadResult::kCorrupt: {
        absl::StatusOr<BlockPtr> again = ReverifyOrDrop(ekey);
        if (absl::IsNotFound(again.status()) || absl::IsDataLoss(again.status())) continue;
        if (!again.ok()) return again.status();
        block = *std::move(again);
        break;
      }
    }
    fn(block);
  }
  return absl::OkStatus();
}

void DiskTier::IndexInsert(const std::string& ekey, Entry entry) {
  TenantState& t = tenants_[entry.tenant];
  t.bytes += entry.charge;
  t.by_seq.emplace(entry.seq, ekey);
  by_seq_.emplace(entry.seq, ekey);
  bytes_ += entry.charge;
  index_.insert_or_assign(ekey, std::move(entry));
}

void DiskTier::IndexRemove(const std::string& ekey) {
  auto it = index_.find(ekey);
  if (it == index_.end()) return;
  const Entry& e = it->second;
  auto t = tenants_.find(e.tenant);
  t->second.bytes -= e.charge;
  t->second.by_seq.erase(e.seq);
  if (t->second.by_seq.empty()) tenants_.erase(t);
  by_seq_.erase(e.seq);
  bytes_ -= e.charge;
  index_.erase(it);
}

}  // namespace kvc
