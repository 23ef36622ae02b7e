// BufferPool: variable-size regions carved out of one RegisteredMemory, so
// the hot path never allocates or registers memory. First fit over an
// address-ordered free list with coalescing: regions are large (blocks of
// 256 KiB to tens of MiB) and few, so a map is cheap. The pool never grows:
// a caller that finds it full decides what to do (wait, refuse, defer).
#ifndef KVC_TRANSPORT_BUFFER_POOL_H_
#define KVC_TRANSPORT_BUFFER_POOL_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "transport/ucx_context.h"

namespace kvc::ucx {

// Thread-safe.
class BufferPool {
 public:
  struct Region {
    char* data = nullptr;
    size_t size = 0;
    size_t offset = 0;
  };

  // A region held until the Lease is destroyed or Reset(): RAII over
  // TryAllocate / Free. Move-only; an empty Lease holds nothing.
  // REQUIRES: the pool outlives it.
  class Lease {
   public:
    Lease() = default;
    Lease(BufferPool* pool, Region r) : pool_(pool), region_(r) {}
    Lease(Lease&& o) noexcept : pool_(std::exchange(o.pool_, nullptr)), region_(o.region_) {}
    Lease& operator=(Lease&& o) noexcept {
      if (this != &o) {
        Reset();
        pool_ = std::exchange(o.pool_, nullptr);
        region_ = o.region_;
      }
      return *this;
    }
    ~Lease() { Reset(); }
    void Reset() {
      if (pool_ != nullptr) std::exchange(pool_, nullptr)->Free(region_);
    }
    explicit operator bool() const { return pool_ != nullptr; }
    char* data() const { return region_.data; }
    size_t size() const { return region_.size; }
    ucp_mem_h memh() const { return pool_ != nullptr ? pool_->memh() : nullptr; }

   private:
    BufferPool* pool_ = nullptr;
    Region region_;
  };

  explicit BufferPool(std::unique_ptr<RegisteredMemory> memory);

  // A region of `size` bytes (rounded up to 64), or nullopt when none is free
  // now. REQUIRES: 0 < size.
  std::optional<Region> TryAllocate(size_t size);
  // Waits until a region is free or `deadline`; nullopt on timeout or when
  // `size` exceeds the pool.
  std::optional<Region> Allocate(size_t size, absl::Time deadline);
  // The same as Leases: empty when none is free now / by `deadline`.
  Lease TryLease(size_t size);
  Lease LeaseWithin(size_t size, absl::Time deadline);
  // Returns `r` to the pool and runs the on-free hook (outside the lock).
  void Free(const Region& r);
  // Called after every Free, on the freeing thread, e.g. to retry receives
  // waiting for space. Set before the pool is shared.
  void SetOnFree(absl::AnyInvocable<void()> hook);

  size_t capacity() const { return memory_->size(); }
  ucp_mem_h memh() const { return memory_->memh(); }
  size_t free_bytes() const;

 private:
  std::optional<Region> TryAllocateLocked(size_t size) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::unique_ptr<RegisteredMemory> memory_;
  mutable absl::Mutex mu_;
  std::map<size_t, size_t> free_ ABSL_GUARDED_BY(mu_);  // offset -> length
  size_t free_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  absl::AnyInvocable<void()> on_free_;
};

}  // namespace kvc::ucx

#endif  // KVC_TRANSPORT_BUFFER_POOL_H_
