#include "cachesvc/tiered_store.h"

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace kvc {

absl::StatusOr<std::unique_ptr<TieredStore>> TieredStore::Open(TieredStoreOptions options) {
  auto store = std::unique_ptr<TieredStore>(new TieredStore(options.clock));
  options.disk.tenant_quota = options.tenant_quota;
  options.disk.clock = options.clock;
  KVC_ASSIGN_OR_RETURN(store->disk_, DiskTier::Open(options.disk));
  options.host.tenant_quota = options.tenant_quota;
  options.host.clock = options.clock;
  options.host.pins = &store->leases_;
  TieredStore* self = store.get();
  options.host.on_evicting = [self](const BlockPtr& b) { self->MarkEvicting(b); };
  options.host.on_evict = [self](std::vector<BlockPtr> evicted) { self->WriteBack(std::move(evicted)); };
  KVC_ASSIGN_OR_RETURN(store->host_, HostTier::Create(options.host));
  return store;
}

TieredStore::~TieredStore() {
  host_.reset();  // stops write-backs before the disk tier closes
  disk_.reset();
}

void TieredStore::MarkEvicting(const BlockPtr& b) {
  // Under the host shard's lock: from here until WriteBack finishes, Get and
  // Locate find the block in pending_, and an Erase marks it there.
  absl::MutexLock lock(&pending_mu_);
  pending_[b->key()] = Pending{b, false};
}

void TieredStore::WriteBack(std::vector<BlockPtr> evicted) {
  for (BlockPtr& b : evicted) {
    absl::Status s;
    if (!disk_->Contains(b->key())) {  // else promoted or written through earlier
      s = disk_->Put(b, PutOptions{.sync = false});
      if (s.ok()) {
        writebacks_.fetch_add(1, std::memory_order_relaxed);
      } else {
        writeback_failures_.fetch_add(1, std::memory_order_relaxed);
        KVC_LOG(kWarning, "writeback_failed").With("key", b->key().DebugString()).With("error", s.ToString());
      }
    }
    bool erased = false;
    {
      absl::MutexLock lock(&pending_mu_);
      auto it = pending_.find(b->key());
      if (it != pending_.end() && it->second.block == b) {
        erased = it->second.erased;
        pending_.erase(it);
      }
    }
    if (erased) (void)disk_->Erase(b->key());
  }
}

absl::Status TieredStore::Put(const BlockPtr& block, bool write_through) {
  if (write_through) {
    KVC_RETURN_IF_ERROR(disk_->Put(block, PutOptions{.sync = true}));
  }
  absl::Status host = host_->Put(block, PutOptions{});
  if (host.ok()) return absl::OkStatus();
  if (host.code() != absl::StatusCode::kResourceExhausted) return host;
  if (write_through) return absl::OkStatus();  // durable copy is already on disk
  // The host tier refused it (pinned shard, quota, size): keep it on disk.
  absl::Status disk = disk_->Put(block, PutOptions{.sync = false});
  if (!disk.ok()) {
    return absl::Status(disk.code(), absl::StrCat("host tier: ", host.message(), "; disk tier: ", disk.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<FoundBlock> TieredStore::Get(const BlockKey& key) {
  if (std::optional<FoundBlock> hot = GetFromMemory(key)) return *std::move(hot);
  return GetAfterMemoryMiss(key);
}

std::optional<FoundBlock> TieredStore::GetFromMemory(const BlockKey& key) {
  absl::StatusOr<BlockPtr> h = host_->Get(key);
  if (h.ok()) return FoundBlock{*std::move(h), Tier::kHost};
  absl::MutexLock lock(&pending_mu_);
  auto it = pending_.find(key);
  if (it != pending_.end() && !it->second.erased) return FoundBlock{it->second.block, Tier::kHost};
  return std::nullopt;
}

absl::StatusOr<FoundBlock> TieredStore::GetAfterMemoryMiss(const BlockKey& key) {
  KVC_ASSIGN_OR_RETURN(BlockPtr b, disk_->Get(key));
  // Promote; a refusal (pinned shard, quota) only means it stays disk-only.
  (void)host_->Put(b, PutOptions{});
  return FoundBlock{std::move(b), Tier::kDisk};
}

Tier TieredStore::Locate(const BlockKey& key) const {
  if (host_->Contains(key)) return Tier::kHost;
  {
    absl::MutexLock lock(&pending_mu_);
    auto it = pending_.find(key);
    if (it != pending_.end() && !it->second.erased) return Tier::kHost;
  }
  return disk_->Contains(key) ? Tier::kDisk : Tier::kNone;
}

absl::StatusOr<bool> TieredStore::Erase(const BlockKey& key) {
  // Host first: a block evicted before this point is already in pending_
  // (MarkEvicting runs under the shard lock), so the mark below reaches it;
  // one still in the host tier is removed and can no longer be evicted.
  KVC_ASSIGN_OR_RETURN(bool in_host, host_->Erase(key));
  bool pending = false;
  {
    absl::MutexLock lock(&pending_mu_);
    auto it = pending_.find(key);
    if (it != pending_.end() && !it->second.erased) {
      it->second.erased = true;
      pending = true;
    }
  }
  // A write-back that finished before the mark has put the block on disk.
  KVC_ASSIGN_OR_RETURN(bool on_disk, disk_->Erase(key));
  return in_host || pending || on_disk;
}

absl::StatusOr<PinGrant> TieredStore::Pin(std::span<const BlockKey> keys, absl::Duration lease) {
  const absl::Time expiry = clock_->Now() + lease;
  // Lease first, so a block promoted below cannot be evicted before it is pinned.
  KVC_ASSIGN_OR_RETURN(uint64_t id, leases_.Acquire(std::vector<BlockKey>(keys.begin(), keys.end()), expiry));
  for (size_t i = 0; i < keys.size(); ++i) {
    if (host_->Contains(keys[i])) continue;
    absl::StatusOr<BlockPtr> b = disk_->Get(keys[i]);
    if (!b.ok()) {
      {
        absl::MutexLock lock(&pending_mu_);
        auto it = pending_.find(keys[i]);
        if (it != pending_.end() && !it->second.erased) b = it->second.block;
      }
    }
    absl::Status s = b.status();
    if (b.ok()) s = host_->Put(*b, PutOptions{});
    if (!s.ok()) {
      (void)leases_.Release(id);
      if (s.code() == absl::StatusCode::kNotFound) {
        return absl::NotFoundError(absl::StrCat("keys[", i, "] (", keys[i].DebugString(), ") is not cached"));
      }
      return absl::Status(s.code(), absl::StrCat("cannot pin keys[", i, "]: ", s.message()));
    }
  }
  return PinGrant{id, expiry};
}

absl::StatusOr<size_t> TieredStore::Unpin(uint64_t lease_id) { return leases_.Release(lease_id); }

StoreStats TieredStore::Stats() const {
  StoreStats s;
  s.host = host_->Usage();
  s.disk = disk_->Usage();
  s.pinned_blocks = leases_.PinnedKeys(clock_->Now());
  s.writebacks = writebacks_.load(std::memory_order_relaxed);
  s.writeback_failures = writeback_failures_.load(std::memory_order_relaxed);
  return s;
}

uint64_t TieredStore::TenantHostBytes(absl::string_view tenant) const { return host_->TenantBytes(tenant); }
uint64_t TieredStore::TenantDiskBytes(absl::string_view tenant) const { return disk_->TenantBytes(tenant); }

absl::Status TieredStore::FlushHostToDisk() {
  uint64_t written = 0;
  absl::Status first_error;
  KVC_RETURN_IF_ERROR(host_->ForEach([&](const BlockPtr& b) {
    if (disk_->Contains(b->key())) return;
    absl::Status s = disk_->Put(b, PutOptions{.sync = false});
    if (s.ok()) {
      ++written;
    } else if (first_error.ok()) {
      first_error = s;
    }
  }));
  KVC_RETURN_IF_ERROR(disk_->Flush());
  KVC_LOG(kInfo, "host_tier_flushed").With("blocks_written", written);
  return first_error;
}

}  // namespace kvc
