// The CUDA path in a build without nvcc: every entry says so.
#include "kernels/device.h"
#include "kernels/internal/backend.h"

namespace kvc::kernels {
namespace {
absl::Status NotBuilt() {
  return absl::UnavailableError(
      "CUDA backend: this binary was built without CUDA (KVC_CUDA=OFF or no nvcc found)");
}
}  // namespace

bool CudaBuilt() { return false; }
absl::Status CudaAvailable() { return NotBuilt(); }
absl::StatusOr<std::string> CudaDeviceName() { return NotBuilt(); }

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t) { return NotBuilt(); }
DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept : ptr_(other.ptr_), bytes_(other.bytes_) {
  other.ptr_ = nullptr;
  other.bytes_ = 0;
}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  std::swap(ptr_, other.ptr_);
  std::swap(bytes_, other.bytes_);
  return *this;
}
DeviceBuffer::~DeviceBuffer() = default;
absl::Status DeviceBuffer::CopyFromHost(const void*, size_t, size_t) { return NotBuilt(); }
absl::Status DeviceBuffer::CopyToHost(void*, size_t, size_t) const { return NotBuilt(); }
absl::Status DeviceBuffer::Zero() { return NotBuilt(); }
absl::Status CopyHostToDevice(void*, const void*, size_t) { return NotBuilt(); }
absl::Status CopyDeviceToHost(void*, const void*, size_t) { return NotBuilt(); }
absl::Status CopyDeviceToDevice(void*, const void*, size_t) { return NotBuilt(); }
absl::Status CudaSynchronize(void*) { return NotBuilt(); }

namespace internal {
absl::StatusOr<const KernelTable*> CudaKernels() { return NotBuilt(); }
}  // namespace internal

}  // namespace kvc::kernels
