// The tiled attention kernel behind Prefill and Decode, seen from its
// launchers: the parameter block and one launch function per compiled head
// dim (48, 64, 128; 0 = any head dim, slower). The kernel body is in
// attention_kernel.cuh, instantiated once per head dim in attention_d*.cu so
// nvcc compiles them in parallel.
//
// Work decomposition. The rows of one sequence and one KV head are the
// (query i, head-in-group r) pairs, row = i * group + r, num_q * group rows.
// A block takes `rows_per_block` consecutive rows (a whole number of groups
// when group <= kRowsPerTile, so the group reduction of the score
// accumulation stays inside the block), one KV head (grid.y) and one slice
// of up to 128 output dims (grid.z). grid.x = batch * row_tiles.
#ifndef KVC_KERNELS_CUDA_ATTENTION_LAUNCH_H_
#define KVC_KERNELS_CUDA_ATTENTION_LAUNCH_H_

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/attention.h"
#include "kernels/cuda/common.cuh"

namespace kvc::kernels::cuda {

// Tile shape: 128 threads as 16 row lanes x 8 key/dim lanes; 32 keys per
// tile; rows per tile 16 * rows_per_thread (1 or 4); head dims in chunks of
// 128 (the key chunk for the dot products and the output slice).
inline constexpr int kAttnThreads = 128;
inline constexpr int kAttnKeysPerTile = 32;
inline constexpr int kAttnDimChunk = 128;

struct AttentionParams {
  const float* q = nullptr;              // [batch][num_q][Hq][D], before RoPE
  const int32_t* q_positions = nullptr;  // [batch][num_q]; used iff rope_style != kNone
  int64_t num_q = 0;                     // queries per sequence (decode: 1)
  int32_t num_q_heads = 0;
  int32_t group = 1;  // Hq / Hkv
  PoolView kv{};
  const int32_t* indptr = nullptr;  // lists: seq (shared) or seq * Hkv + h (per_kv_head)
  const int32_t* indices = nullptr;
  const int32_t* positions = nullptr;  // null: keys are not rotated
  bool per_kv_head = false;
  bool causal = false;
  double scale = 0.0;  // the logit scale (already resolved from 0 = 1/sqrt(D))
  RopeStyle rope_style = RopeStyle::kNone;
  float rope_theta = 10000.0f;
  float* out = nullptr;  // [batch][num_q][Hq][D] or null
  float* lse = nullptr;  // [batch][num_q][Hq] or null
  // Whether the softmax state is needed (out, lse, or the score pass's own
  // normaliser); false for a scores-only call with accum.lse given.
  bool main_pass = true;

  // Score accumulation (attention.h ScoreAccum); accum_mode kNone = off.
  // The kEma decay beta^q of the old scores is applied by a separate kernel
  // before this one; this kernel only adds the weighted probabilities.
  ScoreMode accum_mode = ScoreMode::kNone;
  GroupReduce group_reduce = GroupReduce::kMax;
  double beta = 0.999;
  int64_t first_query = 0;
  float* scores = nullptr;  // [Hkv][num_slots]
  int64_t num_slots = 0;
  const float* norm_lse = nullptr;  // [batch][num_q][Hq] or null = own lse

  int32_t rows_per_block = 0;
  int32_t row_tiles = 0;  // blocks per sequence along grid.x
};

// Byte offsets of the kernel's dynamic shared memory for head dim D and
// `rows` rows per tile (host and device agree on them).
struct AttentionSmem {
  int32_t q_stride, k_stride, p_stride;
  size_t inv_freq, q, k, v, p, weight, row_query, slot, pos, bytes;

  __host__ __device__ AttentionSmem(int32_t head_dim, int32_t rows) {
    const int32_t chunk = head_dim < kAttnDimChunk ? head_dim : kAttnDimChunk;
    q_stride = head_dim + 1;  // +1: rows land in different banks
    k_stride = chunk + 1;
    p_stride = kAttnKeysPerTile + 1;
    inv_freq = 0;  // doubles first, for alignment
    q = inv_freq + sizeof(double) * ((head_dim + 1) / 2);
    k = q + sizeof(float) * rows * q_stride;
    v = k + sizeof(float) * kAttnKeysPerTile * k_stride;
    p = v + sizeof(float) * kAttnKeysPerTile * k_stride;
    weight = p + sizeof(float) * rows * p_stride;
    row_query = weight + sizeof(float) * rows;
    slot = row_query + sizeof(int32_t) * rows;
    pos = slot + sizeof(int32_t) * kAttnKeysPerTile;
    bytes = pos + sizeof(int32_t) * kAttnKeysPerTile;
  }
};

// Launches AttentionKernel<kHeadDim, rows_per_thread> (rows_per_thread 1 or
// 4) on `stream` with the given grid and dynamic shared memory.
template <int kHeadDim>
absl::Status LaunchAttentionKernel(const AttentionParams& params, int rows_per_thread, dim3 grid,
                                   size_t smem_bytes, cudaStream_t stream);

extern template absl::Status LaunchAttentionKernel<48>(const AttentionParams&, int, dim3, size_t,
                                                       cudaStream_t);
extern template absl::Status LaunchAttentionKernel<64>(const AttentionParams&, int, dim3, size_t,
                                                       cudaStream_t);
extern template absl::Status LaunchAttentionKernel<128>(const AttentionParams&, int, dim3, size_t,
                                                        cudaStream_t);
extern template absl::Status LaunchAttentionKernel<0>(const AttentionParams&, int, dim3, size_t,
                                                      cudaStream_t);

}  // namespace kvc::kernels::cuda

#endif  // KVC_KERNELS_CUDA_ATTENTION_LAUNCH_H_
