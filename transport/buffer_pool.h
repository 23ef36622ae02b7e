// BufferPool: variable-size regions carved out of one RegisteredMemory, so
// the hot path never allocates or registers memory. First fit over an
// address-ordered free list with coalescing: regions are large (blocks of
// 256 KiB to tens of MiB) and few, so a map is cheap.
#ifndef KVC_TRANSPORT_BUFFER_POOL_H_
#define KVC_TRANSPORT_BUFFER_POOL_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>

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

  explicit BufferPool(std::unique_ptr<RegisteredMemory> memory);

  // A region of `size` bytes (rounded up to 64), or nullopt when none is free
  // now. REQUIRES: 0 < size.
  std::optional<Region> TryAllocate(size_t size);
  // Waits until a region is free or `deadline`; nullopt on timeout or when
  // `size` exceeds the pool.
  std::optional<Region> Allocate(size_t size, absl::Time deadline);
  // Returns `r` to the pool and runs the on-free hook (outside the lock).
  void Free(const Region& r);
  // Called after every Free, e.g. to retry receives waiting for space.
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
