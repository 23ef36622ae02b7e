#include "bench/bench_memory.h"

#include <cstring>

#include "common/status_macros.h"

namespace kvc::bench {

absl::StatusOr<Mem> Mem::Make(kernels::Backend backend, size_t bytes) {
  Mem m;
  m.bytes_ = bytes;
  if (backend == kernels::Backend::kCuda) {
    KVC_ASSIGN_OR_RETURN(m.device_, kernels::DeviceBuffer::Allocate(bytes ? bytes : 64));
  } else {
    m.host_.reset(new (std::align_val_t(64)) char[bytes ? bytes : 64]);
  }
  return m;
}

absl::Status Mem::Upload(const void* src, size_t bytes, size_t offset) {
  if (device_.size()) return device_.CopyFromHost(src, bytes, offset);
  std::memcpy(host_.get() + offset, src, bytes);
  return absl::OkStatus();
}

absl::Status Mem::Download(void* dst, size_t bytes, size_t offset) const {
  if (device_.size()) return device_.CopyToHost(dst, bytes, offset);
  std::memcpy(dst, host_.get() + offset, bytes);
  return absl::OkStatus();
}

absl::Status Sync(kernels::Backend backend) {
  return backend == kernels::Backend::kCuda ? kernels::CudaSynchronize(nullptr) : absl::OkStatus();
}

}  // namespace kvc::bench
