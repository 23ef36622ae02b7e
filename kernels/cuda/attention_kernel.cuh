// The tiled attention kernel (flash style, fp32 compute) behind Prefill and
// Decode; see attention_launch.h for the decomposition. Included only by
// attention_d*.cu, each of which instantiates one head dim.
//
// Per block: the tile's query rows are rotated (double), scaled by
// scale * log2(e) and kept in shared memory; keys stream through shared
// memory 32 at a time (rotated at their gather positions on load), the
// 16 x 8 thread grid computes a rows x 32 logit tile (each thread
// rows_per_thread x 4), the running max / sum are updated per row (online
// softmax in base 2), and P is written to shared memory for the P.V product,
// where each thread owns rows_per_thread x (dims/8) outputs.
//
// Score pass (ScoreAccum): once the block's rows have their final
// normaliser, the keys are streamed again, P is recomputed, reduced over
// each query's group rows (max or sum), weighted per query (kEma:
// (1-beta) beta^(q-1-i); kSum: 1) and summed over the block's queries by one
// lane per key, which adds the sum to scores[h][slot] with one atomicAdd.
// Blocks of different query tiles add to the same score, so the order of
// those additions (not their set) varies from run to run.
#ifndef KVC_KERNELS_CUDA_ATTENTION_KERNEL_CUH_
#define KVC_KERNELS_CUDA_ATTENTION_KERNEL_CUH_

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/attention_launch.h"
#include "kernels/cuda/common.cuh"

namespace kvc::kernels::cuda {
namespace attention_detail {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Shared-memory views of one block.
struct Tiles {
  double* inv_freq;    // [D/2]
  float* q;            // [rows][q_stride], rotated, times scale*log2(e)
  float* k;            // [32][k_stride], one chunk of rotated key dims
  float* v;            // [32][k_stride], one slice of value dims
  float* p;            // [rows][p_stride]
  float* weight;       // [rows] score weight of each row's query
  int32_t* row_query;  // [rows] query index of each row, relative to the block's first
  int32_t* slot;       // [32] pool slot of each key of the tile, -1 past the list
  int32_t* pos;        // [32] RoPE position of each key
};

// Key dims [c0, c0 + cn) of the tile's keys into t.k, rotated when `rotate`.
template <typename Elem>
__device__ __forceinline__ void LoadKeyChunk(const AttentionParams& p, const Tiles& t,
                                             const AttentionSmem& L, int32_t head_dim,
                                             int32_t kv_head, int32_t c0, int32_t cn, bool rotate) {
  for (int idx = threadIdx.x; idx < kAttnKeysPerTile * cn; idx += kAttnThreads) {
    const int c = idx / cn, dd = idx - c * cn;
    const int32_t slot = t.slot[c];
    float value = 0.0f;
    if (slot >= 0) {
      const int64_t base = p.kv.Offset(slot, kv_head);
      const int32_t d = c0 + dd;
      value = Elem::Load(p.kv.k, base + d);
      if (rotate) {
        const RopeSlot rs = RopeSlotOf(p.rope_style, d, head_dim);
        const float partner = Elem::Load(p.kv.k, base + rs.partner);
        float sn, cs;
        sincosf(static_cast<float>(RopeAngle(t.pos[c], t.inv_freq[rs.pair])), &sn, &cs);
        value = rs.first ? value * cs - partner * sn : partner * sn + value * cs;
      }
    }
    t.k[c * L.k_stride + dd] = value;
  }
}

// Value dims [d0, d0 + dn) of the tile's keys into t.v (zeros past the list).
template <typename Elem>
__device__ __forceinline__ void LoadValueSlice(const AttentionParams& p, const Tiles& t,
                                               const AttentionSmem& L, int32_t kv_head, int32_t d0,
                                               int32_t dn) {
  for (int idx = threadIdx.x; idx < kAttnKeysPerTile * dn; idx += kAttnThreads) {
    const int c = idx / dn, dd = idx - c * dn;
    const int32_t slot = t.slot[c];
    t.v[c * L.k_stride + dd] =
        slot >= 0 ? Elem::Load(p.kv.v, p.kv.Offset(slot, kv_head) + d0 + dd) : 0.0f;
  }
}

__device__ __forceinline__ void LoadKeys(const AttentionParams& p, const Tiles& t,
                                         const AttentionSmem& L, int32_t head_dim, int32_t kv_head,
                                         int32_t c0, int32_t cn, bool rotate) {
  switch (p.kv.dtype) {
    case DType::kBF16:
      LoadKeyChunk<BF16Elem>(p, t, L, head_dim, kv_head, c0, cn, rotate);
      break;
    case DType::kF16:
      LoadKeyChunk<F16Elem>(p, t, L, head_dim, kv_head, c0, cn, rotate);
      break;
    default:
      LoadKeyChunk<F32Elem>(p, t, L, head_dim, kv_head, c0, cn, rotate);
  }
}

__device__ __forceinline__ void LoadValues(const AttentionParams& p, const Tiles& t,
                                           const AttentionSmem& L, int32_t kv_head, int32_t d0,
                                           int32_t dn) {
  switch (p.kv.dtype) {
    case DType::kBF16:
      LoadValueSlice<BF16Elem>(p, t, L, kv_head, d0, dn);
      break;
    case DType::kF16:
      LoadValueSlice<F16Elem>(p, t, L, kv_head, d0, dn);
      break;
    default:
      LoadValueSlice<F32Elem>(p, t, L, kv_head, d0, dn);
  }
}

// The slots and positions of keys [kt, kt + 32) of the list into t.
__device__ __forceinline__ void LoadKeyMeta(const AttentionParams& p, const Tiles& t, int64_t begin,
                                            int64_t n, int64_t kt) {
  if (threadIdx.x < kAttnKeysPerTile) {
    const int64_t e = kt + threadIdx.x;
    t.slot[threadIdx.x] = e < n ? p.indices[begin + e] : -1;
    t.pos[threadIdx.x] = e < n && p.positions != nullptr ? p.positions[begin + e] : 0;
  }
}

// s[i][j] = q_row(ty + 16 i) . key(tx + 8 j) over all head dims, in the
// scaled log2 domain. Streams the key dims through t.k in chunks; every
// thread of the block must call it.
template <int kHeadDim, int kRpt>
__device__ __forceinline__ void TileLogits(const AttentionParams& p, const Tiles& t,
                                           const AttentionSmem& L, int32_t head_dim,
                                           int32_t kv_head, bool rotate, float (&s)[kRpt][4]) {
  const int tx = threadIdx.x & 7, ty = threadIdx.x >> 3;
#pragma unroll
  for (int i = 0; i < kRpt; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) s[i][j] = 0.0f;
  }
  for (int32_t c0 = 0; c0 < head_dim; c0 += kAttnDimChunk) {
    const int32_t cn = kHeadDim > 0 ? kHeadDim : min(kAttnDimChunk, head_dim - c0);
    if (c0 > 0) __syncthreads();  // the previous chunk has been read
    LoadKeys(p, t, L, head_dim, kv_head, c0, cn, rotate);
    __syncthreads();
    const float* qbase = t.q + c0;
#pragma unroll 4
    for (int32_t dd = 0; dd < cn; ++dd) {
      float kv[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) kv[j] = t.k[(tx + 8 * j) * L.k_stride + dd];
#pragma unroll
      for (int i = 0; i < kRpt; ++i) {
        const float qv = qbase[(ty + 16 * i) * L.q_stride + dd];
#pragma unroll
        for (int j = 0; j < 4; ++j) s[i][j] = fmaf(qv, kv[j], s[i][j]);
      }
    }
  }
}

// Max / sum over the 8 lanes (tx) that share a row.
__device__ __forceinline__ float RowMax(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 4));
}
__device__ __forceinline__ float RowSum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x + __shfl_xor_sync(0xffffffffu, x, 4);
}

}  // namespace attention_detail

template <int kHeadDim, int kRpt>
__global__ void __launch_bounds__(kAttnThreads) AttentionKernel(const AttentionParams p) {
  using namespace attention_detail;
  constexpr int kRows = 16 * kRpt;
  constexpr int kDims = kHeadDim > 0 ? (kHeadDim + 7) / 8 : kAttnDimChunk / 8;
  static_assert(kHeadDim <= kAttnDimChunk, "fixed head dims fit one chunk");
  constexpr float kNegInf = -INFINITY;

  const int32_t D = kHeadDim > 0 ? kHeadDim : p.kv.head_dim;
  const int tid = threadIdx.x, tx = tid & 7, ty = tid >> 3;
  const int32_t kv_head = blockIdx.y;
  const int64_t seq = blockIdx.x / p.row_tiles;
  const int64_t row0 = (blockIdx.x - seq * p.row_tiles) * static_cast<int64_t>(p.rows_per_block);
  const int32_t d0 = blockIdx.z * kAttnDimChunk;  // this block's output slice
  const int32_t dn = min(kAttnDimChunk, D - d0);
  const int64_t total_rows = p.num_q * p.group;
  const int32_t rows =
      static_cast<int32_t>(min(static_cast<int64_t>(p.rows_per_block), total_rows - row0));
  const int64_t list = p.per_kv_head ? seq * p.kv.num_kv_heads + kv_head : seq;
  const int64_t begin = p.indptr[list];
  const int64_t n = p.indptr[list + 1] - begin;
  const int32_t hq = p.num_q_heads;
  const int64_t q_first = row0 / p.group;  // first query of the block

  const AttentionSmem L(D, kRows);
  extern __shared__ __align__(16) unsigned char smem[];
  const Tiles t{
      reinterpret_cast<double*>(smem + L.inv_freq),   reinterpret_cast<float*>(smem + L.q),
      reinterpret_cast<float*>(smem + L.k),           reinterpret_cast<float*>(smem + L.v),
      reinterpret_cast<float*>(smem + L.p),           reinterpret_cast<float*>(smem + L.weight),
      reinterpret_cast<int32_t*>(smem + L.row_query), reinterpret_cast<int32_t*>(smem + L.slot),
      reinterpret_cast<int32_t*>(smem + L.pos)};

  const bool rope = p.rope_style != RopeStyle::kNone;
  const bool rotate_keys = rope && p.positions != nullptr;
  if (rope) {
    for (int i = tid; i < D / 2; i += kAttnThreads) t.inv_freq[i] = RopeInvFreq(p.rope_theta, i, D);
  }
  __syncthreads();

  // Query rows: rotated in double at the query's position, scaled into the
  // log2 domain. Rows past `rows` are zeros (and masked below).
  for (int64_t idx = tid; idx < static_cast<int64_t>(kRows) * D; idx += kAttnThreads) {
    const int32_t r = static_cast<int32_t>(idx / D),
                  d = static_cast<int32_t>(idx - static_cast<int64_t>(r) * D);
    float value = 0.0f;
    if (r < rows) {
      const int64_t row = row0 + r, qi = row / p.group;
      const int32_t h = kv_head * p.group + static_cast<int32_t>(row - qi * p.group);
      const float* q = p.q + ((seq * p.num_q + qi) * hq + h) * D;
      double x = q[d];
      if (rope) {
        const RopeSlot rs = RopeSlotOf(p.rope_style, d, D);
        double sn, cs;
        sincos(static_cast<double>(p.q_positions[seq * p.num_q + qi]) * t.inv_freq[rs.pair], &sn,
               &cs);
        const double partner = q[rs.partner];
        x = rs.first ? x * cs - partner * sn : partner * sn + x * cs;
      }
      value = static_cast<float>(x * p.scale * static_cast<double>(kLog2e));
    }
    t.q[r * L.q_stride + d] = value;
  }
  if (tid < kRows) {
    t.row_query[tid] = tid < rows ? static_cast<int32_t>((row0 + tid) / p.group - q_first) : -1;
  }

  // This thread's rows: which keys each sees (entries [0, visible)).
  int64_t visible[kRpt], out_row[kRpt];
#pragma unroll
  for (int i = 0; i < kRpt; ++i) {
    const int32_t r = ty + 16 * i;
    visible[i] = 0;
    out_row[i] = -1;
    if (r < rows) {
      const int64_t row = row0 + r, qi = row / p.group;
      const int32_t h = kv_head * p.group + static_cast<int32_t>(row - qi * p.group);
      out_row[i] = (seq * p.num_q + qi) * hq + h;
      visible[i] = p.causal ? min(max(n - p.num_q + qi + 1, int64_t{0}), n) : n;
    }
  }
  // Keys any row of the block sees: the last row's.
  const int64_t q_last = (row0 + rows - 1) / p.group;
  const int64_t key_end = p.causal ? min(max(n - p.num_q + q_last + 1, int64_t{0}), n) : n;
  __syncthreads();

  float m[kRpt], l[kRpt], acc[kRpt][kDims];
#pragma unroll
  for (int i = 0; i < kRpt; ++i) {
    m[i] = kNegInf;
    l[i] = 0.0f;
#pragma unroll
    for (int k = 0; k < kDims; ++k) acc[i][k] = 0.0f;
  }

  if (p.main_pass) {
    for (int64_t kt = 0; kt < key_end; kt += kAttnKeysPerTile) {
      LoadKeyMeta(p, t, begin, n, kt);
      __syncthreads();
      float s[kRpt][4];
      TileLogits<kHeadDim, kRpt>(p, t, L, D, kv_head, rotate_keys, s);
#pragma unroll
      for (int i = 0; i < kRpt; ++i) {
        float tile_max = kNegInf;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (kt + tx + 8 * j >= visible[i]) s[i][j] = kNegInf;
          tile_max = fmaxf(tile_max, s[i][j]);
        }
        const float m_new = fmaxf(m[i], RowMax(tile_max));
        float alpha = 1.0f, sum = 0.0f;
        if (m_new != kNegInf) {
          alpha = exp2f(m[i] - m_new);  // 0 when m[i] is -inf
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            s[i][j] = exp2f(s[i][j] - m_new);
            sum += s[i][j];
          }
        } else {
#pragma unroll
          for (int j = 0; j < 4; ++j) s[i][j] = 0.0f;
        }
        l[i] = l[i] * alpha + RowSum(sum);
        m[i] = m_new;
#pragma unroll
        for (int k = 0; k < kDims; ++k) acc[i][k] *= alpha;
#pragma unroll
        for (int j = 0; j < 4; ++j) t.p[(ty + 16 * i) * L.p_stride + tx + 8 * j] = s[i][j];
      }
      if (p.out != nullptr) LoadValues(p, t, L, kv_head, d0, dn);
      __syncthreads();
      if (p.out != nullptr) {
#pragma unroll 2
        for (int c = 0; c < kAttnKeysPerTile; ++c) {
          float vv[kDims];
#pragma unroll
          for (int k = 0; k < kDims; ++k) {
            const int dd = tx + 8 * k;
            vv[k] = (kHeadDim > 0 || dd < dn) ? t.v[c * L.k_stride + dd] : 0.0f;
          }
#pragma unroll
          for (int i = 0; i < kRpt; ++i) {
            const float pv = t.p[(ty + 16 * i) * L.p_stride + c];
#pragma unroll
            for (int k = 0; k < kDims; ++k) acc[i][k] = fmaf(pv, vv[k], acc[i][k]);
          }
        }
      }
      __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < kRpt; ++i) {
      if (out_row[i] < 0) continue;
      if (p.out != nullptr) {
        const float inv_l = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
        float* o = p.out + out_row[i] * D + d0;
#pragma unroll
        for (int k = 0; k < kDims; ++k) {
          const int dd = tx + 8 * k;
          if (kHeadDim > 0 || dd < dn) o[dd] = acc[i][k] * inv_l;
        }
      }
      if (p.lse != nullptr && blockIdx.z == 0 && tx == 0) {
        p.lse[out_row[i]] = l[i] > 0.0f ? (m[i] + log2f(l[i])) * kLn2 : kNegInf;
      }
    }
  }

  if (p.accum_mode == ScoreMode::kNone || blockIdx.z != 0 || q_last < p.first_query) return;

  // ---- Score pass ----
  // Normaliser of each row in the log2 domain; -inf: P = 0.
  float norm[kRpt];
#pragma unroll
  for (int i = 0; i < kRpt; ++i) {
    norm[i] = kNegInf;
    if (out_row[i] < 0) continue;
    if (p.norm_lse != nullptr) {
      norm[i] = p.norm_lse[out_row[i]] * kLog2e;
    } else if (l[i] > 0.0f) {
      norm[i] = m[i] + log2f(l[i]);
    }
  }
  if (tid < kRows) {
    float w = 0.0f;
    if (tid < rows) {
      const int64_t qi = q_first + t.row_query[tid];
      if (qi >= p.first_query) {
        const int64_t contributing = p.num_q - p.first_query;
        w = p.accum_mode == ScoreMode::kEma
                ? static_cast<float>(
                      (1.0 - p.beta) *
                      pow(p.beta, static_cast<double>(contributing - 1 - (qi - p.first_query))))
                : 1.0f;
      }
    }
    t.weight[tid] = w;
  }
  __syncthreads();

  for (int64_t kt = 0; kt < key_end; kt += kAttnKeysPerTile) {
    LoadKeyMeta(p, t, begin, n, kt);
    __syncthreads();
    float s[kRpt][4];
    TileLogits<kHeadDim, kRpt>(p, t, L, D, kv_head, rotate_keys, s);
#pragma unroll
    for (int i = 0; i < kRpt; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const bool seen = kt + tx + 8 * j < visible[i] && norm[i] != kNegInf;
        t.p[(ty + 16 * i) * L.p_stride + tx + 8 * j] = seen ? exp2f(s[i][j] - norm[i]) : 0.0f;
      }
    }
    __syncthreads();
    // One lane per key folds the block's rows: group reduction per query,
    // then the weighted sum over queries.
    if (tid < kAttnKeysPerTile && t.slot[tid] >= 0) {
      const bool group_max = p.group_reduce == GroupReduce::kMax;
      float total = 0.0f, reduced = 0.0f;
      int32_t query = t.row_query[0];
      float weight = t.weight[0];
      for (int32_t r = 0; r < rows; ++r) {
        if (t.row_query[r] != query) {
          total = fmaf(weight, reduced, total);
          reduced = 0.0f;
          query = t.row_query[r];
          weight = t.weight[r];
        }
        const float pr = t.p[r * L.p_stride + tid];
        reduced = group_max ? fmaxf(reduced, pr) : reduced + pr;
      }
      total = fmaf(weight, reduced, total);
      if (total != 0.0f) atomicAdd(p.scores + kv_head * p.num_slots + t.slot[tid], total);
    }
    __syncthreads();
  }
}

template <int kHeadDim>
absl::Status LaunchAttentionKernel(const AttentionParams& params, int rows_per_thread, dim3 grid,
                                   size_t smem_bytes, cudaStream_t stream) {
  const void* kernel = rows_per_thread == 4
                           ? reinterpret_cast<const void*>(&AttentionKernel<kHeadDim, 4>)
                           : reinterpret_cast<const void*>(&AttentionKernel<kHeadDim, 1>);
  if (absl::Status s = AllowSharedMemory(kernel, smem_bytes, "AttentionKernel"); !s.ok()) return s;
  if (rows_per_thread == 4) {
    AttentionKernel<kHeadDim, 4><<<grid, kAttnThreads, smem_bytes, stream>>>(params);
  } else {
    AttentionKernel<kHeadDim, 1><<<grid, kAttnThreads, smem_bytes, stream>>>(params);
  }
  return LaunchStatus("AttentionKernel");
}

}  // namespace kvc::kernels::cuda

#endif  // KVC_KERNELS_CUDA_ATTENTION_KERNEL_CUH_
