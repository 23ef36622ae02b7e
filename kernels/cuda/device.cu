// kernels/device.h for a build with CUDA: device discovery, owned device
// buffers and stream synchronisation, every CUDA error turned into a Status.
#include <cuda_runtime.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/device.h"

namespace kvc::kernels {
namespace {

absl::Status CudaError(absl::string_view what, cudaError_t err) {
  return absl::InternalError(
      absl::StrCat(what, ": ", cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
}

}  // namespace

bool CudaBuilt() { return true; }

absl::Status CudaAvailable() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // the error is not sticky; clear it for later calls
    return absl::UnavailableError(
        absl::StrCat("no CUDA device: ", cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
  }
  if (count == 0) return absl::UnavailableError("no CUDA device: cudaGetDeviceCount found none");
  return absl::OkStatus();
}

absl::StatusOr<std::string> CudaDeviceName() {
  if (absl::Status s = CudaAvailable(); !s.ok()) return s;
  cudaDeviceProp prop;
  if (cudaError_t err = cudaGetDeviceProperties(&prop, 0); err != cudaSuccess) {
    return CudaError("cudaGetDeviceProperties", err);
  }
  return absl::StrCat(prop.name, " (sm_", prop.major, prop.minor, ")");
}

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes) {
  DeviceBuffer buffer;
  if (bytes == 0) return buffer;
  if (cudaError_t err = cudaMalloc(&buffer.ptr_, bytes); err != cudaSuccess) {
    buffer.ptr_ = nullptr;
    const absl::StatusCode code = err == cudaErrorMemoryAllocation
                                      ? absl::StatusCode::kResourceExhausted
                                      : absl::StatusCode::kInternal;
    return absl::Status(code, absl::StrCat("cudaMalloc(", bytes, "): ", cudaGetErrorString(err)));
  }
  buffer.bytes_ = bytes;
  return buffer;
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept : ptr_(other.ptr_), bytes_(other.bytes_) {
  other.ptr_ = nullptr;
  other.bytes_ = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  std::swap(ptr_, other.ptr_);
  std::swap(bytes_, other.bytes_);
  return *this;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) cudaFree(ptr_);  // a failure here has no one to report to
}

absl::Status DeviceBuffer::CopyFromHost(const void* src, size_t bytes, size_t offset) {
  if (offset > bytes_ || bytes > bytes_ - offset) {
    return absl::OutOfRangeError(absl::StrCat("DeviceBuffer::CopyFromHost: ", bytes, " bytes at ",
                                              offset, " in a ", bytes_, "-byte buffer"));
  }
  if (bytes == 0) return absl::OkStatus();
  if (cudaError_t err =
          cudaMemcpy(static_cast<char*>(ptr_) + offset, src, bytes, cudaMemcpyHostToDevice);
      err != cudaSuccess) {
    return CudaError("cudaMemcpy host to device", err);
  }
  return absl::OkStatus();
}

absl::Status DeviceBuffer::CopyToHost(void* dst, size_t bytes, size_t offset) const {
  if (offset > bytes_ || bytes > bytes_ - offset) {
    return absl::OutOfRangeError(absl::StrCat("DeviceBuffer::CopyToHost: ", bytes, " bytes at ",
                                              offset, " in a ", bytes_, "-byte buffer"));
  }
  if (bytes == 0) return absl::OkStatus();
  if (cudaError_t err =
          cudaMemcpy(dst, static_cast<const char*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost);
      err != cudaSuccess) {
    return CudaError("cudaMemcpy device to host", err);
  }
  return absl::OkStatus();
}

absl::Status DeviceBuffer::Zero() {
  if (bytes_ == 0) return absl::OkStatus();
  if (cudaError_t err = cudaMemset(ptr_, 0, bytes_); err != cudaSuccess)
    return CudaError("cudaMemset", err);
  return absl::OkStatus();
}

namespace {
absl::Status Copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, const char* what) {
  if (bytes == 0) return absl::OkStatus();
  if (cudaError_t err = cudaMemcpy(dst, src, bytes, kind); err != cudaSuccess) return CudaError(what, err);
  return absl::OkStatus();
}
}  // namespace

absl::Status CopyHostToDevice(void* device_dst, const void* host_src, size_t bytes) {
  return Copy(device_dst, host_src, bytes, cudaMemcpyHostToDevice, "cudaMemcpy host to device");
}
absl::Status CopyDeviceToHost(void* host_dst, const void* device_src, size_t bytes) {
  return Copy(host_dst, device_src, bytes, cudaMemcpyDeviceToHost, "cudaMemcpy device to host");
}
absl::Status CopyDeviceToDevice(void* device_dst, const void* device_src, size_t bytes) {
  return Copy(device_dst, device_src, bytes, cudaMemcpyDeviceToDevice, "cudaMemcpy device to device");
}

absl::Status CudaSynchronize(void* stream) {
  if (cudaError_t err = cudaStreamSynchronize(static_cast<cudaStream_t>(stream));
      err != cudaSuccess) {
    return CudaError("cudaStreamSynchronize", err);
  }
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess)
    return CudaError("CUDA asynchronous error", err);
  return absl::OkStatus();
}

}  // namespace kvc::kernels
