#include "cachesvc/lease_table.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvc {

LeaseTable::LeaseTable(Clock* clock) : clock_(clock) {}

absl::StatusOr<uint64_t> LeaseTable::Acquire(std::vector<BlockKey> keys, absl::Time expiry) {
  if (keys.empty()) return absl::InvalidArgumentError("lease covers no keys");
  const absl::Time now = clock_->Now();
  if (expiry <= now) {
    return absl::InvalidArgumentError(absl::StrCat("lease expiry ", absl::FormatTime(expiry),
                                                   " is not after now (", absl::FormatTime(now),
                                                   ")"));
  }
  absl::MutexLock lock(&mu_);
  ExpireLocked(now);
  const uint64_t id = next_id_++;
  Lease& lease = leases_[id];
  lease.expiry = expiry;
  for (BlockKey& key : keys) {
    Holders& h = holders_[key];
    // A key listed twice in one lease is already held by `id`.
    if (!h.empty() && h.back().first == id) continue;
    h.emplace_back(id, expiry);
    lease.keys.push_back(std::move(key));
  }
  by_expiry_.emplace(expiry, id);
  keys_with_holders_.store(holders_.size(), std::memory_order_release);
  return id;
}

absl::StatusOr<size_t> LeaseTable::Release(uint64_t lease_id) {
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(lease_id);
  if (it == leases_.end() || it->second.expiry <= now) {
    ExpireLocked(now);
    return absl::NotFoundError(absl::StrCat("lease ", lease_id, " is unknown or expired"));
  }
  const size_t covered = it->second.keys.size();
  by_expiry_.erase({it->second.expiry, lease_id});
  DropLocked(lease_id);
  keys_with_holders_.store(holders_.size(), std::memory_order_release);
  return covered;
}

bool LeaseTable::IsPinned(const BlockKey& key, absl::Time now) const {
  if (keys_with_holders_.load(std::memory_order_acquire) == 0) return false;
  absl::ReaderMutexLock lock(&mu_);
  auto it = holders_.find(key);
  if (it == holders_.end()) return false;
  return std::any_of(it->second.begin(), it->second.end(),
                     [now](const auto& holder) { return now < holder.second; });
}

size_t LeaseTable::PinnedKeys(absl::Time now) const {
  absl::ReaderMutexLock lock(&mu_);
  size_t n = 0;
  for (const auto& [key, holders] : holders_) {
    n += std::any_of(holders.begin(), holders.end(),
                     [now](const auto& holder) { return now < holder.second; });
  }
  return n;
}

size_t LeaseTable::LeaseCount() const {
  absl::ReaderMutexLock lock(&mu_);
  return leases_.size();
}

void LeaseTable::ExpireUntil(absl::Time now) {
  absl::MutexLock lock(&mu_);
  ExpireLocked(now);
}

void LeaseTable::ExpireLocked(absl::Time now) {
  while (!by_expiry_.empty() && by_expiry_.begin()->first <= now) {
    DropLocked(by_expiry_.begin()->second);
    by_expiry_.erase(by_expiry_.begin());
  }
  keys_with_holders_.store(holders_.size(), std::memory_order_release);
}

void LeaseTable::DropLocked(uint64_t lease_id) {
  auto it = leases_.find(lease_id);
  for (const BlockKey& key : it->second.keys) {
    auto h = holders_.find(key);
    Holders& holders = h->second;
    holders.erase(std::find_if(holders.begin(), holders.end(),
                               [lease_id](const auto& x) { return x.first == lease_id; }));
    if (holders.empty()) holders_.erase(h);
  }
  leases_.erase(it);
}

}  // namespace kvc
