// Device helpers shared by the CUDA kernels: stored-dtype loads, paged pool
// addressing, RoPE angles, warp/block reductions, and the launcher-side
// conversion of CUDA errors into absl::Status.
//
// RoPE: the angle position * theta^(-2i/D) is formed and reduced to
// [-pi, pi] in double (so a position of 10^6 loses nothing), then sin/cos
// are taken in fp32 (sincosf, ~1 ulp) for keys, or in double where the
// reference's exact values matter more than speed (queries, fingerprints).
#ifndef KVC_KERNELS_CUDA_COMMON_CUH_
#define KVC_KERNELS_CUDA_COMMON_CUH_

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/types.h"

namespace kvc::kernels::cuda {

inline cudaStream_t StreamOf(const ExecContext& ctx) {
  return static_cast<cudaStream_t>(ctx.cuda_stream);
}

// OK, or InternalError naming `kernel` with the launch error (bad
// configuration, missing kernel image for this GPU, ...). Launch errors
// only: asynchronous faults surface at the caller's CudaSynchronize.
inline absl::Status LaunchStatus(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("CUDA kernel ", kernel, ": ", cudaGetErrorName(err), ": ",
                                          cudaGetErrorString(err)));
}

// Opts `kernel` in to `bytes` of dynamic shared memory per block when that is
// above the 48 KiB default; Unimplemented when the current device allows
// less, InternalError when the runtime refuses.
inline absl::Status AllowSharedMemory(const void* kernel, size_t bytes, const char* name) {
  if (bytes <= 48 * 1024) return absl::OkStatus();
  int device = 0, limit = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) {
    return absl::InternalError(absl::StrCat("CUDA kernel ", name, ": ", cudaGetErrorString(err)));
  }
  if (bytes > static_cast<size_t>(limit)) {
    return absl::UnimplementedError(absl::StrCat("CUDA kernel ", name, " needs ", bytes,
                                                 " bytes of shared memory; this device allows ",
                                                 limit));
  }
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(bytes));
  if (err != cudaSuccess) {
    return absl::InternalError(absl::StrCat("CUDA kernel ", name, ": ", cudaGetErrorString(err)));
  }
  return absl::OkStatus();
}

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- Stored element types ------------------------------------------------

// Element `i` of an array of stored type T as fp32 (exact widening).
struct F32Elem {
  static __device__ __forceinline__ float Load(const void* base, int64_t i) {
    return static_cast<const float*>(base)[i];
  }
};
struct BF16Elem {
  static __device__ __forceinline__ float Load(const void* base, int64_t i) {
    return __uint_as_float(static_cast<uint32_t>(static_cast<const uint16_t*>(base)[i]) << 16);
  }
};
struct F16Elem {
  static __device__ __forceinline__ float Load(const void* base, int64_t i) {
    return __half2float(__ushort_as_half(static_cast<const unsigned short*>(base)[i]));
  }
};

__device__ __forceinline__ float LoadElement(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kBF16:
      return BF16Elem::Load(base, i);
    case DType::kF16:
      return F16Elem::Load(base, i);
    default:
      return F32Elem::Load(base, i);
  }
}

// The paged pool's addressing (KvPool::Offset), on the device.
struct PoolView {
  const void* k;
  const void* v;
  DType dtype;
  KvLayout layout;
  int32_t page_size;
  int32_t num_kv_heads;
  int32_t head_dim;

  static PoolView Of(const KvPool& p) {
    return PoolView{p.k, p.v, p.dtype, p.layout, p.page_size, p.num_kv_heads, p.head_dim};
  }
  // Element offset of (slot, kv_head, dim 0).
  __device__ __forceinline__ int64_t Offset(int64_t slot, int32_t kv_head) const {
    if (layout == KvLayout::kNHD) return (slot * num_kv_heads + kv_head) * head_dim;
    const int64_t page = slot / page_size, in_page = slot - page * page_size;
    return ((page * num_kv_heads + kv_head) * page_size + in_page) * head_dim;
  }
};

// ---- RoPE ------------------------------------------------------------------

// theta^(-2i/D), as the reference computes it (kernels/ref/ref_util.h).
__device__ __forceinline__ double RopeInvFreq(float theta, int32_t pair, int32_t head_dim) {
  return pow(static_cast<double>(theta), -2.0 * pair / head_dim);
}

// Angle position * inv_freq reduced to [-pi, pi] in double.
__device__ __forceinline__ double RopeAngle(int32_t position, double inv_freq) {
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  constexpr double kInvTwoPi = 0.15915494309189533576888376337251;
  const double a = static_cast<double>(position) * inv_freq;
  return fma(-rint(a * kInvTwoPi), kTwoPi, a);
}

// Pair index, partner element and role of element d under a RoPE style:
// the rotated value is x*c - partner*s for the first element of a pair and
// partner*s + x*c for the second.
struct RopeSlot {
  int32_t pair;
  int32_t partner;
  bool first;
};
__device__ __forceinline__ RopeSlot RopeSlotOf(RopeStyle style, int32_t d, int32_t head_dim) {
  if (style == RopeStyle::kInterleaved) return RopeSlot{d >> 1, d ^ 1, (d & 1) == 0};
  const int32_t half = head_dim >> 1;
  return d < half ? RopeSlot{d, d + half, true} : RopeSlot{d - half, d - half, false};
}

// ---- Reductions --------------------------------------------------------------

template <typename T>
__device__ __forceinline__ T WarpSum(T x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
template <typename T>
__device__ __forceinline__ T WarpMax(T x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = max(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Block-wide reductions; every thread gets the result. `scratch` holds at
// least 32 elements; REQUIRES blockDim.x a multiple of 32, all threads call.
template <typename T>
__device__ T BlockSum(T x, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  x = WarpSum(x);
  __syncthreads();
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < warps; ++w) total += scratch[w];  // fixed order: deterministic
  return total;
}
template <typename T>
__device__ T BlockMax(T x, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  x = WarpMax(x);
  __syncthreads();
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  T m = scratch[0];
  for (int w = 1; w < warps; ++w) m = max(m, scratch[w]);
  return m;
}

// Exclusive prefix sum over the block in thread order; `*total` gets the sum.
// `scratch` holds at least 33 elements.
__device__ inline uint32_t BlockExclusiveScan(uint32_t x, uint32_t* total, uint32_t* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  uint32_t inclusive = x;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t y = __shfl_up_sync(0xffffffffu, inclusive, o);
    if (lane >= o) inclusive += y;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  if (threadIdx.x == 0) {
    uint32_t run = 0;
    for (int w = 0; w < warps; ++w) {
      const uint32_t t = scratch[w];
      scratch[w] = run;
      run += t;
    }
    scratch[32] = run;
  }
  __syncthreads();
  *total = scratch[32];
  return scratch[warp] + inclusive - x;
}

}  // namespace kvc::kernels::cuda

#endif  // KVC_KERNELS_CUDA_COMMON_CUH_
