// RmsNorm and SwiGlu (kernels/dense.h), optimised CPU path: 16-lane fp32
// loops (simd.h), rows or element ranges split over the pool when a call is
// large enough to pay for waking it. Each output is computed by one thread
// in a fixed order, so results do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cpu/isa/cpu_kernels.h"
#include "kernels/cpu/isa/simd.h"
#include "kernels/thread_pool.h"

namespace kvc::kernels::KVC_CPU_NS {
namespace {

// Elements per task (and the size below which a call stays on the caller).
constexpr int64_t kGrainElems = 64 * 1024;

ThreadPool& PoolOf(const ExecContext& ctx) {
  return ctx.pool != nullptr ? *ctx.pool : DefaultThreadPool();
}

void NormRow(const RmsNormArgs& a, int64_t row) {
  const float* x = a.x + row * a.dim;
  float* out = a.out + row * a.dim;
  const int32_t dim = a.dim;
  v16f acc0 = Zero(), acc1 = Zero();
  int32_t d = 0;
  for (; d + 2 * kLanes <= dim; d += 2 * kLanes) {
    const v16f u = Load(x + d), v = Load(x + d + kLanes);
    acc0 = Fma(u, u, acc0);
    acc1 = Fma(v, v, acc1);
  }
  for (; d + kLanes <= dim; d += kLanes) {
    const v16f u = Load(x + d);
    acc0 = Fma(u, u, acc0);
  }
  if (d < dim) {
    const v16f u = LoadPartial(x + d, dim - d);
    acc1 = Fma(u, u, acc1);
  }
  const float sum_sq = ReduceAdd(acc0 + acc1);
  const float inv_rms = 1.0f / std::sqrt(sum_sq / static_cast<float>(dim) + a.eps);
  const v16f scale = Splat(inv_rms);
  for (d = 0; d + kLanes <= dim; d += kLanes) {
    Store(out + d, Load(x + d) * scale * Load(a.weight + d));
  }
  if (d < dim) {
    StorePartial(out + d, LoadPartial(x + d, dim - d) * scale * LoadPartial(a.weight + d, dim - d),
                 dim - d);
  }
}

// silu(g) * u = g / (1 + exp(-g)) * u.
inline v16f SwiGlu16(v16f g, v16f u) { return g / (Splat(1.0f) + Exp(-g)) * u; }

void SwiGluRange(const SwiGluArgs& a, int64_t begin, int64_t end) {
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) Store(a.out + i, SwiGlu16(Load(a.gate + i), Load(a.up + i)));
  if (i < end) {
    const int n = static_cast<int>(end - i);
    StorePartial(a.out + i, SwiGlu16(LoadPartial(a.gate + i, n), LoadPartial(a.up + i, n)), n);
  }
}

}  // namespace

absl::Status RmsNorm(const ExecContext& ctx, const RmsNormArgs& a) {
  const int64_t rows_per_task = std::max<int64_t>(1, kGrainElems / a.dim);
  PoolOf(ctx).ParallelFor(a.rows, rows_per_task, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) NormRow(a, r);
  });
  return absl::OkStatus();
}

absl::Status SwiGlu(const ExecContext& ctx, const SwiGluArgs& a) {
  // Task boundaries are multiples of kLanes, so only the last range has a tail.
  PoolOf(ctx).ParallelFor(a.count, kGrainElems,
                          [&](int64_t begin, int64_t end) { SwiGluRange(a, begin, end); });
  return absl::OkStatus();
}

}  // namespace kvc::kernels::KVC_CPU_NS
