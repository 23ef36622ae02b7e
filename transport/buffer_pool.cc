#include "transport/buffer_pool.h"

namespace kvc::ucx {
namespace {
size_t RoundUp(size_t n) { return (n + 63) & ~size_t{63}; }
}  // namespace

BufferPool::BufferPool(std::unique_ptr<RegisteredMemory> memory) : memory_(std::move(memory)) {
  free_[0] = memory_->size();
  free_bytes_ = memory_->size();
}

void BufferPool::SetOnFree(absl::AnyInvocable<void()> hook) { on_free_ = std::move(hook); }

std::optional<BufferPool::Region> BufferPool::TryAllocateLocked(size_t size) {
  const size_t need = RoundUp(size);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < need) continue;
    const size_t offset = it->first;
    const size_t left = it->second - need;
    free_.erase(it);
    if (left > 0) free_[offset + need] = left;
    free_bytes_ -= need;
    return Region{memory_->data() + offset, need, offset};
  }
  return std::nullopt;
}

std::optional<BufferPool::Region> BufferPool::TryAllocate(size_t size) {
  absl::MutexLock lock(&mu_);
  return TryAllocateLocked(size);
}

std::optional<BufferPool::Region> BufferPool::Allocate(size_t size, absl::Time deadline) {
  if (RoundUp(size) > memory_->size()) return std::nullopt;
  absl::MutexLock lock(&mu_);
  while (true) {
    if (auto r = TryAllocateLocked(size)) return r;
    const size_t need = RoundUp(size);
    auto fits = [this, need]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      for (const auto& [off, len] : free_) {
        if (len >= need) return true;
      }
      return false;
    };
    if (!mu_.AwaitWithDeadline(absl::Condition(&fits), deadline)) return std::nullopt;
  }
}

BufferPool::Lease BufferPool::TryLease(size_t size) {
  std::optional<Region> r = TryAllocate(size);
  return r ? Lease(this, *r) : Lease();
}

BufferPool::Lease BufferPool::LeaseWithin(size_t size, absl::Time deadline) {
  std::optional<Region> r = Allocate(size, deadline);
  return r ? Lease(this, *r) : Lease();
}

void BufferPool::Free(const Region& r) {
  {
    absl::MutexLock lock(&mu_);
    auto [it, inserted] = free_.emplace(r.offset, r.size);
    free_bytes_ += r.size;
    auto next = std::next(it);
    if (next != free_.end() && it->first + it->second == next->first) {
      it->second += next->second;
      free_.erase(next);
    }
    if (it != free_.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second == it->first) {
        prev->second += it->second;
        free_.erase(it);
      }
    }
  }
  if (on_free_) on_free_();
}

size_t BufferPool::free_bytes() const {
  absl::MutexLock lock(&mu_);
  return free_bytes_;
}

}  // namespace kvc::ucx
