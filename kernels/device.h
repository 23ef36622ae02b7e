// Device memory for callers of the CUDA backend (tests, benchmarks, the
// worker) without any CUDA header or #ifdef on their side. In a build without
// CUDA, or on a machine without a device, everything here returns
// Unavailable saying why.
#ifndef KVC_KERNELS_DEVICE_H_
#define KVC_KERNELS_DEVICE_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvc::kernels {

// True when this binary was built with the CUDA path.
bool CudaBuilt();
// OK when the CUDA backend can run here; otherwise Unavailable with the reason
// ("built without CUDA", "no CUDA device: <driver message>").
absl::Status CudaAvailable();
// Name and compute capability of device 0, e.g. "NVIDIA H100 80GB HBM3 (sm_90)".
absl::StatusOr<std::string> CudaDeviceName();

// An owned device allocation (RAII). Not thread-safe.
class DeviceBuffer {
 public:
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes);
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  ~DeviceBuffer();

  void* data() const { return ptr_; }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t size() const { return bytes_; }

  absl::Status CopyFromHost(const void* src, size_t bytes, size_t offset = 0);
  absl::Status CopyToHost(void* dst, size_t bytes, size_t offset = 0) const;
  absl::Status Zero();

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Synchronous copies between raw pointers (device pointers from a
// DeviceBuffer or inside one): for callers that keep their own offsets.
// `bytes` may be 0.
absl::Status CopyHostToDevice(void* device_dst, const void* host_src, size_t bytes);
absl::Status CopyDeviceToHost(void* host_dst, const void* device_src, size_t bytes);
absl::Status CopyDeviceToDevice(void* device_dst, const void* device_src, size_t bytes);

// Waits for all work on `stream` (a cudaStream_t; nullptr = default stream)
// and returns the first asynchronous error, if any.
absl::Status CudaSynchronize(void* stream);

}  // namespace kvc::kernels

#endif  // KVC_KERNELS_DEVICE_H_
