// TokenSelect and TokenSelectLse on the GPU (token_select.h). The arithmetic
// follows kernels/ref/token_select.cc per candidate, so the selection equals
// the reference's:
//  - logit_h(t) = (float)(scale * sum_d (double)qbar_h[d] * k_t[d]), the sum
//    in dim order (each product is exact in double, so fma rounds as the
//    reference's multiply-add does): the same bits on any shard or thread;
//  - lse_h = (float)(m + log sum exp(logit - m)) in double over the eligible
//    candidates (block partials, combined in a fixed order);
//  - score(t) = (float) sum over heads in order of exp(logit - lse), double;
//  - pooled(t) = max over |u - t| <= pool_kernel / 2 (std::max semantics);
//  - exact top-k with lower position winning ties (token_select_topk.cu).
#include <cmath>
#include <cstdint>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/token_select_workspace.h"

namespace kvc::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTileFloats = 4096;  // key-chunk elements per block of the logit kernel

// logits[h][t] for t in [t_begin, t_end) and the kHeads heads
// blockIdx.z * kHeads .. of KV head blockIdx.y's group. A block covers
// 256 / kHeads candidates; key dims stream through shared memory in chunks
// of 16 * kHeads, each thread keeping one (candidate, head) double sum.
template <int kHeads>
__global__ void __launch_bounds__(kThreads)
    LogitsKernel(const float* qbar, PoolView pool, const int32_t* candidates, int64_t t_begin,
                 int64_t t_end, int64_t n, int32_t group, double scale, float* logits) {
  constexpr int kCands = kThreads / kHeads, kChunk = kTileFloats / kCands;
  __shared__ float k_s[kCands * (kChunk + 1)];
  __shared__ float q_s[kHeads * kChunk];
  __shared__ int32_t slot_s[kCands];
  const int tid = threadIdx.x, tc = tid % kCands, hh = tid / kCands;
  const int32_t kv_head = blockIdx.y, head_dim = pool.head_dim;
  const int32_t hg0 = blockIdx.z * kHeads;
  const int64_t t0 = t_begin + static_cast<int64_t>(blockIdx.x) * kCands;
  if (tid < kCands) {
    const int64_t t = t0 + tid;
    slot_s[tid] =
        t < t_end ? (candidates != nullptr ? candidates[t] : static_cast<int32_t>(t)) : -1;
  }
  __syncthreads();
  double acc = 0.0;
  for (int32_t d0 = 0; d0 < head_dim; d0 += kChunk) {
    const int32_t cn = min(kChunk, head_dim - d0);
    for (int idx = tid; idx < kCands * kChunk; idx += kThreads) {
      const int c = idx / kChunk, dd = idx - c * kChunk;
      const int32_t slot = slot_s[c];
      k_s[c * (kChunk + 1) + dd] =
          slot >= 0 && dd < cn
              ? LoadElement(pool.k, pool.dtype, pool.Offset(slot, kv_head) + d0 + dd)
              : 0.0f;
    }
    for (int idx = tid; idx < kHeads * kChunk; idx += kThreads) {
      const int h = idx / kChunk, dd = idx - h * kChunk;
      q_s[idx] = hg0 + h < group && dd < cn
                     ? qbar[(static_cast<int64_t>(kv_head) * group + hg0 + h) * head_dim + d0 + dd]
                     : 0.0f;
    }
    __syncthreads();
    const float* kr = k_s + tc * (kChunk + 1);
    const float* qr = q_s + hh * kChunk;
    for (int dd = 0; dd < cn; ++dd)
      acc = fma(static_cast<double>(qr[dd]), static_cast<double>(kr[dd]), acc);
    __syncthreads();
  }
  const int64_t t = t0 + tc;
  if (hg0 + hh < group && t < t_end) {
    logits[(static_cast<int64_t>(kv_head) * group + hg0 + hh) * n + t] =
        static_cast<float>(scale * acc);
  }
}

// Per (head, block): max and sum of exp(x - max) over a strided share of the
// eligible logits, in double.
__global__ void __launch_bounds__(kThreads)
    LsePartialKernel(const float* logits, int64_t n, int64_t begin, int64_t end, double* partials) {
  __shared__ double scratch[32];
  const int32_t h = blockIdx.y;
  const float* row = logits + static_cast<int64_t>(h) * n;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  double m = -INFINITY;
  for (int64_t t = begin + static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; t < end;
       t += stride) {
    m = fmax(m, static_cast<double>(row[t]));
  }
  m = BlockMax(m, scratch);
  double sum = 0.0;
  if (m != -INFINITY) {
    for (int64_t t = begin + static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; t < end;
         t += stride) {
      sum += exp(static_cast<double>(row[t]) - m);
    }
  }
  sum = BlockSum(sum, scratch);
  if (threadIdx.x == 0) {
    double* out = partials + (static_cast<int64_t>(h) * gridDim.x + blockIdx.x) * 2;
    out[0] = m;
    out[1] = sum;
  }
}

// lse[h] from the partials of its blocks, combined in block order.
__global__ void LseFinalizeKernel(const double* partials, int32_t blocks, int32_t num_heads,
                                  float* lse) {
  const int32_t h = blockIdx.x * blockDim.x + threadIdx.x;
  if (h >= num_heads) return;
  const double* p = partials + static_cast<int64_t>(h) * blocks * 2;
  double m = -INFINITY;
  for (int32_t b = 0; b < blocks; ++b) m = fmax(m, p[2 * b]);
  if (m == -INFINITY) {
    lse[h] = -INFINITY;
    return;
  }
  double sum = 0.0;
  for (int32_t b = 0; b < blocks; ++b) {
    if (p[2 * b] != -INFINITY) sum += p[2 * b + 1] * exp(p[2 * b] - m);
  }
  lse[h] = static_cast<float>(m + log(sum));
}

// score[t] = sum over heads in order of exp(logit_h(t) - lse_h), t in [0, n).
__global__ void __launch_bounds__(kThreads)
    ScoreKernel(const float* logits, int64_t n, int32_t num_heads, const float* lse, float* score) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= n) return;
  double s = 0.0;
  for (int32_t h = 0; h < num_heads; ++h) {
    s += exp(static_cast<double>(logits[static_cast<int64_t>(h) * n + t]) -
             static_cast<double>(lse[h]));
  }
  score[t] = static_cast<float>(s);
}

// pooled[t] = max of score[u], |u - t| <= radius, u in [0, n).
__global__ void __launch_bounds__(kThreads)
    PoolKernel(const float* score, int64_t n, int32_t radius, float* pooled) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= n) return;
  const int64_t lo = t - radius < 0 ? 0 : t - radius;
  const int64_t hi = t + radius > n - 1 ? n - 1 : t + radius;
  float m = score[t];
  for (int64_t u = lo; u <= hi; ++u) {
    const float s = score[u];
    m = m < s ? s : m;
  }
  pooled[t] = m;
}

absl::Status LaunchLogits(const TokenSelectArgs& a, int64_t t_begin, int64_t t_end, float* logits,
                          cudaStream_t stream) {
  if (t_end <= t_begin) return absl::OkStatus();
  const PoolView pool = PoolView::Of(a.pool);
  const int32_t group = a.num_q_heads / a.pool.num_kv_heads;
  const double scale = a.scale != 0.0f ? static_cast<double>(a.scale)
                                       : 1.0 / std::sqrt(static_cast<double>(a.pool.head_dim));
  const int heads = group >= 8 ? 8 : group >= 4 ? 4 : group >= 2 ? 2 : 1;
  const int64_t blocks = CeilDiv(t_end - t_begin, kThreads / heads);
  if (blocks > std::numeric_limits<int32_t>::max() || a.pool.num_kv_heads > 65535) {
    return absl::UnimplementedError(
        "TokenSelect (CUDA): too many candidates or KV heads for one launch");
  }
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(a.pool.num_kv_heads),
                  static_cast<unsigned>(CeilDiv(group, heads)));
  const int64_t n = a.num_candidates;
  switch (heads) {
    case 8:
      LogitsKernel<8><<<grid, kThreads, 0, stream>>>(a.qbar, pool, a.candidates, t_begin, t_end, n,
                                                     group, scale, logits);
      break;
    case 4:
      LogitsKernel<4><<<grid, kThreads, 0, stream>>>(a.qbar, pool, a.candidates, t_begin, t_end, n,
                                                     group, scale, logits);
      break;
    case 2:
      LogitsKernel<2><<<grid, kThreads, 0, stream>>>(a.qbar, pool, a.candidates, t_begin, t_end, n,
                                                     group, scale, logits);
      break;
    default:
      LogitsKernel<1><<<grid, kThreads, 0, stream>>>(a.qbar, pool, a.candidates, t_begin, t_end, n,
                                                     group, scale, logits);
  }
  return LaunchStatus("TokenSelect LogitsKernel");
}

// lse[h] over the eligible logits [begin, end).
absl::Status LaunchLse(const TokenSelectWorkspace& ws, int64_t n, int32_t num_heads, int64_t begin,
                       int64_t end, float* lse, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(ws.lse_blocks), static_cast<unsigned>(num_heads));
  LsePartialKernel<<<grid, kThreads, 0, stream>>>(ws.logits, n, begin, end, ws.lse_partials);
  if (absl::Status s = LaunchStatus("TokenSelect LsePartialKernel"); !s.ok()) return s;
  LseFinalizeKernel<<<static_cast<unsigned>(CeilDiv(num_heads, 128)), 128, 0, stream>>>(
      ws.lse_partials, ws.lse_blocks, num_heads, lse);
  return LaunchStatus("TokenSelect LseFinalizeKernel");
}

struct Range {
  int64_t begin, end;
};
Range EligibleRange(const TokenSelectArgs& a) {
  return Range{a.select_begin, a.select_end < 0 ? a.num_candidates : a.select_end};
}

absl::Status CheckHeads(const TokenSelectArgs& a, const char* caller) {
  if (a.pool.num_kv_heads > 65535) {
    return absl::UnimplementedError(absl::StrCat(caller, " (CUDA): more than 65535 KV heads"));
  }
  if (a.num_candidates > std::numeric_limits<int32_t>::max()) {
    return absl::UnimplementedError(absl::StrCat(caller, " (CUDA): more than 2^31 - 1 candidates"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status TokenSelectLse(const ExecContext& ctx, const TokenSelectArgs& a, float* lse_out) {
  if (absl::Status s = CheckHeads(a, "TokenSelectLse"); !s.ok()) return s;
  const Range r = EligibleRange(a);
  absl::StatusOr<TokenSelectWorkspace> ws = CarveTokenSelectWorkspace(
      a.workspace, a.workspace_bytes, a.num_candidates, a.num_q_heads, r.end - r.begin);
  if (!ws.ok()) return ws.status();
  const cudaStream_t stream = StreamOf(ctx);
  if (absl::Status s = LaunchLogits(a, r.begin, r.end, ws->logits, stream); !s.ok()) return s;
  return LaunchLse(*ws, a.num_candidates, a.num_q_heads, r.begin, r.end, lse_out, stream);
}

absl::Status TokenSelect(const ExecContext& ctx, const TokenSelectArgs& a) {
  if (absl::Status s = CheckHeads(a, "TokenSelect"); !s.ok()) return s;
  const Range r = EligibleRange(a);
  const int64_t n = a.num_candidates;
  absl::StatusOr<TokenSelectWorkspace> ws =
      CarveTokenSelectWorkspace(a.workspace, a.workspace_bytes, n, a.num_q_heads, r.end - r.begin);
  if (!ws.ok()) return ws.status();
  const cudaStream_t stream = StreamOf(ctx);

  // Every candidate is scored (halo ones feed the pooling; `scores` reports all).
  if (absl::Status s = LaunchLogits(a, 0, n, ws->logits, stream); !s.ok()) return s;
  const float* lse = a.global_lse;
  if (lse == nullptr) {
    if (absl::Status s = LaunchLse(*ws, n, a.num_q_heads, r.begin, r.end, ws->lse, stream); !s.ok())
      return s;
    lse = ws->lse;
  }
  const int32_t radius = a.pool_kernel > 1 ? a.pool_kernel / 2 : 0;
  float* pooled = a.scores != nullptr ? a.scores : ws->pooled;
  const unsigned blocks = static_cast<unsigned>(CeilDiv(n, kThreads));
  ScoreKernel<<<blocks, kThreads, 0, stream>>>(ws->logits, n, a.num_q_heads, lse,
                                               radius > 0 ? ws->score : pooled);
  if (absl::Status s = LaunchStatus("TokenSelect ScoreKernel"); !s.ok()) return s;
  if (radius > 0) {
    PoolKernel<<<blocks, kThreads, 0, stream>>>(ws->score, n, radius, pooled);
    if (absl::Status s = LaunchStatus("TokenSelect PoolKernel"); !s.ok()) return s;
  }
  return LaunchTopK(pooled, r.begin, r.end, a.k, a.selected, a.selected_scores, *ws, stream);
}

}  // namespace kvc::kernels::cuda
