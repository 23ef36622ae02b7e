// Quest on the GPU (kernels/quest.h), in double where the reference is:
// keys and the query are rotated with double angles and products, page
// min / max kept in double and rounded to fp32 once, so the metadata equals
// the reference's up to the last bit of sin/cos. Bounds are summed in fp32
// per lane and reduced across the warp (scores within a few fp32 ulps of
// the reference's double sums); the top-k per KV head is the exact radix
// select of TokenSelect (token_select_topk.cu), same tie rule.
//
// QuestUpdatePages: one block per (page, KV head), a thread per channel.
// QuestSelect: the query rotated once into the workspace, then one warp per
// (page, KV head) looping over the group's query heads, then LaunchTopK per
// KV head on the scores row.
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/token_select_workspace.h"

namespace kvc::kernels::cuda {
namespace {

constexpr int kScoreThreads = 256;

// x[d] of a vector at `position` after RoPE, in double; `x` is read through
// `load(i)` (fp32 values).
template <typename Load>
__device__ __forceinline__ double RotatedElement(Rope rope, int32_t position, int32_t d, int32_t head_dim,
                                                 Load load) {
  const double x = load(d);
  if (rope.style == RopeStyle::kNone) return x;
  const RopeSlot slot = RopeSlotOf(rope.style, d, head_dim);
  const double angle = RopeAngle(position, RopeInvFreq(rope.theta, slot.pair, head_dim));
  double s, c;
  sincos(angle, &s, &c);
  const double partner = load(slot.partner);
  return slot.first ? x * c - partner * s : partner * s + x * c;
}

__global__ void QuestUpdateKernel(PoolView pool, Rope rope, float* meta_min, float* meta_max,
                                  int32_t page_size, int64_t first_page, int64_t num_tokens) {
  const int64_t page = first_page + blockIdx.x;
  const int32_t h = blockIdx.y, D = pool.head_dim, hkv = pool.num_kv_heads;
  const int64_t begin = page * page_size;
  const int64_t end = begin + page_size < num_tokens ? begin + page_size : num_tokens;
  for (int32_t d = threadIdx.x; d < D; d += blockDim.x) {
    const double inf = __longlong_as_double(0x7ff0000000000000LL);
    double lo = inf, hi = -inf;
    for (int64_t s = begin; s < end; ++s) {
      const int64_t off = pool.Offset(s, h);
      const double x = RotatedElement(rope, static_cast<int32_t>(s), d, D, [&](int32_t i) {
        return LoadElement(pool.k, pool.dtype, off + i);
      });
      lo = x < lo ? x : lo;
      hi = x > hi ? x : hi;
    }
    const int64_t out = (page * hkv + h) * D + d;
    meta_min[out] = static_cast<float>(lo);
    meta_max[out] = static_cast<float>(hi);
  }
}

// q_rot[h][d] = q[h] rotated to `position`, rounded to fp32.
__global__ void QuestRotateQueryKernel(const float* q, Rope rope, int32_t position, int32_t head_dim,
                                       float* q_rot) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * head_dim;
  for (int32_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    q_rot[row + d] = static_cast<float>(
        RotatedElement(rope, position, d, head_dim, [&](int32_t i) { return q[row + i]; }));
  }
}

__global__ void __launch_bounds__(kScoreThreads)
    QuestScoreKernel(const float* q_rot, const float* meta_min, const float* meta_max, int32_t hkv,
                     int32_t group, int32_t head_dim, int64_t num_pages, float* scores) {
  const int lane = threadIdx.x & 31;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * (kScoreThreads / 32) + (threadIdx.x >> 5);
  if (item >= num_pages * hkv) return;  // whole warps leave together
  const int64_t page = item / hkv;
  const int32_t kv = static_cast<int32_t>(item - page * hkv);
  const float* lo = meta_min + item * head_dim;  // (page * hkv + kv) * D
  const float* hi = meta_max + item * head_dim;
  float best = -__int_as_float(0x7f800000);
  for (int32_t g = 0; g < group; ++g) {
    const float* qh = q_rot + static_cast<int64_t>(kv * group + g) * head_dim;
    float acc = 0.0f;
    for (int32_t d = lane; d < head_dim; d += 32) acc += fmaxf(qh[d] * lo[d], qh[d] * hi[d]);
    acc = WarpSum(acc);
    best = acc > best ? acc : best;
  }
  if (lane == 0) scores[static_cast<int64_t>(kv) * num_pages + page] = best;
}

uintptr_t AlignUp(uintptr_t x, uintptr_t a) { return (x + a - 1) / a * a; }

}  // namespace

absl::Status QuestUpdatePages(const ExecContext& ctx, const QuestUpdateArgs& a) {
  const int64_t ps = a.meta.page_size;
  const int64_t first_page = a.first_new / ps;
  const int64_t end_page = (a.num_tokens + ps - 1) / ps;
  if (first_page >= end_page) return absl::OkStatus();
  if (end_page - first_page > 0x7fffffff || a.pool.num_kv_heads > 65535) {
    return absl::UnimplementedError(absl::StrCat("QuestUpdatePages (CUDA): ", end_page - first_page,
                                                 " pages x ", a.pool.num_kv_heads, " heads exceeds the grid"));
  }
  const int threads = static_cast<int>(CeilDiv(a.pool.head_dim < 1024 ? a.pool.head_dim : 1024, 32) * 32);
  const dim3 grid(static_cast<unsigned>(end_page - first_page), static_cast<unsigned>(a.pool.num_kv_heads));
  QuestUpdateKernel<<<grid, threads, 0, StreamOf(ctx)>>>(PoolView::Of(a.pool), a.rope, a.meta.min, a.meta.max,
                                                          a.meta.page_size, first_page, a.num_tokens);
  return LaunchStatus("QuestUpdateKernel");
}

absl::Status QuestSelect(const ExecContext& ctx, const QuestSelectArgs& a) {
  const int32_t D = a.meta.head_dim, hkv = a.meta.num_kv_heads, hq = a.num_q_heads;
  const int64_t n = a.num_pages;
  // The workspace as QuestWorkspaceBytes lays it out.
  const uintptr_t start = reinterpret_cast<uintptr_t>(a.workspace);
  const uintptr_t base = AlignUp(start, 256);
  float* q_rot = reinterpret_cast<float*>(base);
  const uintptr_t radix = base + AlignUp(static_cast<uintptr_t>(hq) * D * 4, 256);
  TokenSelectWorkspace ws;
  ws.radix = reinterpret_cast<uint32_t*>(radix);
  ws.scan = reinterpret_cast<uint32_t*>(radix + 2048);
  ws.scan_tiles = CeilDiv(n, kTopKScanTile);
  if (radix + 2048 + 16 * static_cast<uintptr_t>(ws.scan_tiles) - start > a.workspace_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("QuestSelect (CUDA): workspace of ", a.workspace_bytes,
                                                   " bytes is too small; QuestWorkspaceBytes gives the size"));
  }
  const cudaStream_t stream = StreamOf(ctx);
  const int rot_threads = static_cast<int>(CeilDiv(D < 1024 ? D : 1024, 32) * 32);
  QuestRotateQueryKernel<<<hq, rot_threads, 0, stream>>>(a.q, a.rope, a.q_position, D, q_rot);
  if (absl::Status s = LaunchStatus("QuestRotateQueryKernel"); !s.ok()) return s;
  const int64_t blocks = CeilDiv(n * hkv, kScoreThreads / 32);
  if (blocks > 0x7fffffff) {
    return absl::UnimplementedError(absl::StrCat("QuestSelect (CUDA): ", n, " pages exceed the grid"));
  }
  QuestScoreKernel<<<static_cast<unsigned>(blocks), kScoreThreads, 0, stream>>>(
      q_rot, a.meta.min, a.meta.max, hkv, hq / hkv, D, n, a.scores);
  if (absl::Status s = LaunchStatus("QuestScoreKernel"); !s.ok()) return s;
  for (int32_t kv = 0; kv < hkv; ++kv) {
    if (absl::Status s = LaunchTopK(a.scores + static_cast<int64_t>(kv) * n, 0, n, a.k,
                                    a.selected + static_cast<int64_t>(kv) * a.k, nullptr, ws, stream);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace kvc::kernels::cuda
