// Optimised QueryFingerprint: the reference's arithmetic (RoPE angles, cos
// and sin in fp64, rotation and sum in fp64), with the rotation table shared
// by all heads and heads run in parallel.
#include <atomic>
#include <cmath>
#include <memory>
#include <new>

#include "kernels/cpu/isa/cpu_kernels.h"
#include "kernels/thread_pool.h"

namespace kvc::kernels::KVC_CPU_NS {

absl::Status QueryFingerprint(const ExecContext& ctx, const FingerprintArgs& args) {
  ThreadPool& pool = ctx.pool != nullptr ? *ctx.pool : DefaultThreadPool();
  const int32_t hq = args.num_q_heads, dim = args.head_dim, half = dim / 2;
  const int64_t num_q = args.num_q;
  const bool rotate = args.rope.style != RopeStyle::kNone;
  const bool interleaved = args.rope.style == RopeStyle::kInterleaved;

  // cos_sin[(i * half + p) * 2 + {0, 1}]: pair p of query i (position
  // base_position + i), as ref/ref_util.h's ApplyRope computes it.
  std::unique_ptr<double[]> cos_sin;
  if (rotate) {
    cos_sin.reset(new (std::nothrow) double[static_cast<size_t>(num_q) * half * 2 + 1]);
    if (!cos_sin) return absl::ResourceExhaustedError("QueryFingerprint: out of memory");
    pool.ParallelFor(num_q, 0, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const double position = static_cast<double>(static_cast<int32_t>(args.base_position + i));
        for (int32_t p = 0; p < half; ++p) {
          const double freq = std::pow(static_cast<double>(args.rope.theta), -2.0 * p / dim);
          const double angle = position * freq;
          cos_sin[(i * half + p) * 2] = std::cos(angle);
          cos_sin[(i * half + p) * 2 + 1] = std::sin(angle);
        }
      }
    });
  }

  std::atomic<bool> ok{true};
  pool.ParallelFor(hq, 1, [&](int64_t h0, int64_t h1) {
    std::unique_ptr<double[]> sum(new (std::nothrow) double[dim]);
    if (!sum) {
      ok.store(false, std::memory_order_relaxed);
      return;
    }
    for (int64_t h = h0; h < h1; ++h) {
      for (int32_t j = 0; j < dim; ++j) sum[j] = 0;
      for (int64_t i = 0; i < num_q; ++i) {
        const float* x = args.q + (i * hq + h) * dim;
        if (!rotate) {
          for (int32_t j = 0; j < dim; ++j) sum[j] += x[j];
          continue;
        }
        const double* cs = cos_sin.get() + i * half * 2;
        for (int32_t p = 0; p < half; ++p) {
          const int32_t a = interleaved ? 2 * p : p, b = interleaved ? 2 * p + 1 : p + half;
          const double c = cs[2 * p], s = cs[2 * p + 1];
          const double xa = x[a], xb = x[b];
          sum[a] += xa * c - xb * s;
          sum[b] += xa * s + xb * c;
        }
      }
      for (int32_t j = 0; j < dim; ++j) {
        args.qbar[h * dim + j] = static_cast<float>(sum[j] / static_cast<double>(num_q));
      }
    }
  });
  if (!ok.load()) return absl::ResourceExhaustedError("QueryFingerprint: out of memory");
  return absl::OkStatus();
}

}  // namespace kvc::kernels::KVC_CPU_NS
