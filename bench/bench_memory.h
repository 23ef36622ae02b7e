// Buffers for the kernel benchmark that live where the backend computes:
// 64-byte aligned host memory for the CPU backends, device memory for CUDA.
#ifndef KVC_BENCH_BENCH_MEMORY_H_
#define KVC_BENCH_BENCH_MEMORY_H_

#include <cstddef>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/device.h"
#include "kernels/types.h"

namespace kvc::bench {

class Mem {
 public:
  static absl::StatusOr<Mem> Make(kernels::Backend backend, size_t bytes);
  template <typename T>
  static absl::StatusOr<Mem> From(kernels::Backend backend, const std::vector<T>& host) {
    auto m = Make(backend, host.size() * sizeof(T));
    if (m.ok() && !host.empty()) {
      if (auto s = m->Upload(host.data(), host.size() * sizeof(T)); !s.ok()) return s;
    }
    return m;
  }

  void* get() const { return device_.size() ? device_.data() : host_.get(); }
  template <typename T>
  T* as() const { return static_cast<T*>(get()); }
  size_t size() const { return bytes_; }
  absl::Status Upload(const void* src, size_t bytes, size_t offset = 0);
  absl::Status Download(void* dst, size_t bytes, size_t offset = 0) const;

 private:
  struct AlignedFree {
    void operator()(char* p) const { ::operator delete[](p, std::align_val_t(64)); }
  };
  std::unique_ptr<char[], AlignedFree> host_;
  kernels::DeviceBuffer device_;
  size_t bytes_ = 0;
};

// Waits for the backend's queued work (CUDA) so a timer can stop; no-op on CPU.
absl::Status Sync(kernels::Backend backend);

}  // namespace kvc::bench

#endif  // KVC_BENCH_BENCH_MEMORY_H_
