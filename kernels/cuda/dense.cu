// Dense layers on the GPU (dense.h), fp32 accumulation throughout.
//
// Linear, m <= kGemvMaxRows (decode): one warp per output column j, lanes
// over k (4 elements per lane per step when k % 4 == 0 and the pointers are
// aligned: float4 / 8-byte bf16 loads), up to kGemvMaxRows rows of x per
// pass, so W is read once per call. Bandwidth-bound, like the CPU path.
// Linear, larger m: a shared-memory tiled SGEMM, kTile x kTile outputs per
// block of 256 threads (4 x 4 per thread, strided by 16 so shared reads are
// conflict-free and global writes coalesced), k in steps of kTileK; bf16 W
// is widened to fp32 when it is staged in shared memory.
// RmsNorm: a block per row. SwiGlu: a grid-stride loop.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace kvc::kernels::cuda {
namespace {

constexpr int kGemvMaxRows = 8;
constexpr int kGemvWarps = 8;  // output columns per block
constexpr int kTile = 64;      // GEMM block tile (rows of x and columns of y)
constexpr int kTileK = 16;
constexpr int kGemmThreads = 256;
constexpr int kNormThreads = 256;
constexpr int kSwiGluThreads = 256;

// Four consecutive W elements at `p` (4-element aligned) as fp32.
__device__ __forceinline__ float4 LoadW4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ float4 LoadW4(const uint16_t* p) {
  const uint2 h = *reinterpret_cast<const uint2*>(p);
  return make_float4(__uint_as_float(h.x << 16), __uint_as_float(h.x & 0xffff0000u),
                     __uint_as_float(h.y << 16), __uint_as_float(h.y & 0xffff0000u));
}
__device__ __forceinline__ float LoadW(const float* p) { return *p; }
__device__ __forceinline__ float LoadW(const uint16_t* p) {
  return __uint_as_float(static_cast<uint32_t>(*p) << 16);
}

// y[i][j] for i < m (m <= kGemvMaxRows), j = this warp's column.
// kVec: k % 4 == 0 and x, w aligned for 4-element loads.
template <typename WT, bool kVec>
__global__ void __launch_bounds__(32 * kGemvWarps)
    LinearGemvKernel(const float* __restrict__ x, const WT* __restrict__ w, int64_t m, int32_t k,
                     int32_t n, float* __restrict__ y, bool accumulate) {
  const int lane = threadIdx.x & 31;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  if (j >= n) return;
  const WT* wj = w + j * k;
  float acc[kGemvMaxRows];
#pragma unroll
  for (int r = 0; r < kGemvMaxRows; ++r) acc[r] = 0.0f;
  if (kVec) {
    for (int32_t d = lane * 4; d < k; d += 32 * 4) {
      const float4 wv = LoadW4(wj + d);
#pragma unroll
      for (int r = 0; r < kGemvMaxRows; ++r) {
        if (r < m) {
          const float4 xv = *reinterpret_cast<const float4*>(x + r * k + d);
          acc[r] += xv.x * wv.x + xv.y * wv.y + xv.z * wv.z + xv.w * wv.w;
        }
      }
    }
  } else {
    for (int32_t d = lane; d < k; d += 32) {
      const float wv = LoadW(wj + d);
#pragma unroll
      for (int r = 0; r < kGemvMaxRows; ++r) {
        if (r < m) acc[r] += x[r * k + d] * wv;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kGemvMaxRows; ++r) {
    if (r < m) {
      const float sum = WarpSum(acc[r]);
      if (lane == 0) {
        float* out = y + r * n + j;
        *out = accumulate ? *out + sum : sum;
      }
    }
  }
}

// The kTile x kTile block (blockIdx.y, blockIdx.x) of y = x W^T (+ y).
template <typename WT>
__global__ void __launch_bounds__(kGemmThreads)
    LinearGemmKernel(const float* __restrict__ x, const WT* __restrict__ w, int64_t m, int32_t k,
                     int32_t n, float* __restrict__ y, bool accumulate) {
  // Staged transposed: xs[kk][row], ws[kk][col]; +4 keeps rows 16-byte aligned.
  __shared__ float xs[kTileK][kTile + 4];
  __shared__ float ws[kTileK][kTile + 4];
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kTile;
  // Staging: thread tid loads 4 consecutive k of row / column tid / 4.
  const int load_rc = tid >> 2, load_k = (tid & 3) * 4;
  float acc[4][4] = {};
  for (int32_t k0 = 0; k0 < k; k0 += kTileK) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int32_t d = k0 + load_k + e;
      const int64_t row = row0 + load_rc, col = col0 + load_rc;
      xs[load_k + e][load_rc] = (row < m && d < k) ? x[row * k + d] : 0.0f;
      ws[load_k + e][load_rc] = (col < n && d < k) ? LoadW(w + col * k + d) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) a[r] = xs[kk][ty + 16 * r];
#pragma unroll
      for (int c = 0; c < 4; ++c) b[c] = ws[kk][tx + 16 * c];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t row = row0 + ty + 16 * r;
    if (row >= m) continue;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t col = col0 + tx + 16 * c;
      if (col < n) {
        float* out = y + row * n + col;
        *out = accumulate ? *out + acc[r][c] : acc[r][c];
      }
    }
  }
}

__global__ void __launch_bounds__(kNormThreads)
    RmsNormKernel(const float* __restrict__ x, const float* __restrict__ weight, int32_t dim,
                  float eps, float* __restrict__ out) {
  __shared__ float scratch[32];
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * dim;
  float* outr = out + static_cast<int64_t>(blockIdx.x) * dim;
  float sum_sq = 0.0f;
  for (int32_t d = threadIdx.x; d < dim; d += blockDim.x) sum_sq += xr[d] * xr[d];
  sum_sq = BlockSum(sum_sq, scratch);
  const float inv_rms = rsqrtf(sum_sq / static_cast<float>(dim) + eps);
  for (int32_t d = threadIdx.x; d < dim; d += blockDim.x) outr[d] = xr[d] * inv_rms * weight[d];
}

__global__ void __launch_bounds__(kSwiGluThreads)
    SwiGluKernel(const float* __restrict__ gate, const float* __restrict__ up, int64_t count,
                 float* __restrict__ out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

bool Aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename WT>
absl::Status LaunchLinear(const LinearArgs& a, cudaStream_t stream) {
  const WT* w = static_cast<const WT*>(a.w);
  if (a.m <= kGemvMaxRows) {
    const unsigned blocks = static_cast<unsigned>(CeilDiv(a.n, kGemvWarps));
    const bool vec = a.k % 4 == 0 && Aligned(a.x, 16) && Aligned(a.w, 4 * sizeof(WT));
    if (vec) {
      LinearGemvKernel<WT, true>
          <<<blocks, 32 * kGemvWarps, 0, stream>>>(a.x, w, a.m, a.k, a.n, a.y, a.accumulate);
    } else {
      LinearGemvKernel<WT, false>
          <<<blocks, 32 * kGemvWarps, 0, stream>>>(a.x, w, a.m, a.k, a.n, a.y, a.accumulate);
    }
    return LaunchStatus("LinearGemvKernel");
  }
  const int64_t row_tiles = CeilDiv(a.m, kTile);
  if (row_tiles > 65535) {
    return absl::UnimplementedError(
        absl::StrCat("Linear (CUDA): m = ", a.m, " exceeds ", 65535 * kTile, " rows per launch"));
  }
  const dim3 grid(static_cast<unsigned>(CeilDiv(a.n, kTile)), static_cast<unsigned>(row_tiles));
  LinearGemmKernel<WT><<<grid, kGemmThreads, 0, stream>>>(a.x, w, a.m, a.k, a.n, a.y, a.accumulate);
  return LaunchStatus("LinearGemmKernel");
}

}  // namespace

absl::Status Linear(const ExecContext& ctx, const LinearArgs& a) {
  if (a.w_dtype == DType::kBF16) return LaunchLinear<uint16_t>(a, StreamOf(ctx));
  return LaunchLinear<float>(a, StreamOf(ctx));
}

absl::Status RmsNorm(const ExecContext& ctx, const RmsNormArgs& a) {
  if (a.rows > 0x7fffffff) return absl::UnimplementedError("RmsNorm (CUDA): too many rows for one launch");
  RmsNormKernel<<<static_cast<unsigned>(a.rows), kNormThreads, 0, StreamOf(ctx)>>>(
      a.x, a.weight, a.dim, a.eps, a.out);
  return LaunchStatus("RmsNormKernel");
}

absl::Status SwiGlu(const ExecContext& ctx, const SwiGluArgs& a) {
  const int64_t blocks = std::min<int64_t>(CeilDiv(a.count, kSwiGluThreads), 4096);
  SwiGluKernel<<<static_cast<unsigned>(blocks), kSwiGluThreads, 0, StreamOf(ctx)>>>(
      a.gate, a.up, a.count, a.out);
  return LaunchStatus("SwiGluKernel");
}

}  // namespace kvc::kernels::cuda
