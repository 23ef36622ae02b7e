// MergeStates on the GPU (attention.h, kernel 3): one warp per row, lanes
// over the head dims, weights exp(lse_s - lse) in double relative to the
// largest lse as the reference computes them; a state whose weight is 0
// (lse = -inf) is skipped, so its v is never read.
#include <cmath>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace kvc::kernels::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kDimsPerLane = 8;  // dims per lane per pass: 256 per warp

// v [S][rows][D], lse [S][rows] -> out [rows][D], out_lse [rows] (optional).
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    MergeStatesKernel(const float* v, const float* lse, int32_t num_states, int64_t num_rows,
                      int32_t head_dim, float* out, float* out_lse) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= num_rows) return;
  double max_lse = -INFINITY;
  for (int32_t s = 0; s < num_states; ++s)
    max_lse = fmax(max_lse, static_cast<double>(lse[s * num_rows + row]));
  float* o = out + row * head_dim;
  if (max_lse == -INFINITY) {
    for (int32_t d = lane; d < head_dim; d += 32) o[d] = 0.0f;
    if (out_lse != nullptr && lane == 0) out_lse[row] = -INFINITY;
    return;
  }
  double sum = 0.0;
  for (int32_t s = 0; s < num_states; ++s)
    sum += exp(static_cast<double>(lse[s * num_rows + row]) - max_lse);
  const double merged = max_lse + log(sum);
  for (int32_t d0 = 0; d0 < head_dim; d0 += 32 * kDimsPerLane) {
    double acc[kDimsPerLane];
#pragma unroll
    for (int k = 0; k < kDimsPerLane; ++k) acc[k] = 0.0;
    for (int32_t s = 0; s < num_states; ++s) {
      const double w = exp(static_cast<double>(lse[s * num_rows + row]) - merged);
      if (w == 0.0) continue;
      const float* vs = v + (s * num_rows + row) * head_dim;
#pragma unroll
      for (int k = 0; k < kDimsPerLane; ++k) {
        const int32_t d = d0 + lane + 32 * k;
        if (d < head_dim) acc[k] += w * static_cast<double>(vs[d]);
      }
    }
#pragma unroll
    for (int k = 0; k < kDimsPerLane; ++k) {
      const int32_t d = d0 + lane + 32 * k;
      if (d < head_dim) o[d] = static_cast<float>(acc[k]);
    }
  }
  if (out_lse != nullptr && lane == 0) out_lse[row] = static_cast<float>(merged);
}

}  // namespace

absl::Status MergeStates(const ExecContext& ctx, const MergeStatesArgs& a) {
  const int64_t blocks = CeilDiv(a.num_rows, kWarpsPerBlock);
  if (blocks > 0x7fffffff)
    return absl::UnimplementedError("MergeStates (CUDA): too many rows for one launch");
  MergeStatesKernel<<<static_cast<unsigned>(blocks), 32 * kWarpsPerBlock, 0, StreamOf(ctx)>>>(
      a.v, a.lse, a.num_states, a.num_rows, a.head_dim, a.out, a.out_lse);
  return LaunchStatus("MergeStatesKernel");
}

}  // namespace kvc::kernels::cuda
