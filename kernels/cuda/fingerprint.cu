// QueryFingerprint on the GPU (token_select.h): qbar[h] = mean over the
// chunk of rope(q[i][h], base_position + i), rotated and summed in double in
// query order as the reference does. One block per query head, one thread
// per RoPE pair (or per dim without RoPE).
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace kvc::kernels::cuda {
namespace {

constexpr int kThreads = 128;

__global__ void __launch_bounds__(kThreads)
    FingerprintKernel(const float* q, int64_t num_q, int32_t num_q_heads, int32_t head_dim,
                      RopeStyle style, float theta, int32_t base_position, float* qbar) {
  const int32_t h = blockIdx.x;
  const double count = static_cast<double>(num_q);
  float* out = qbar + static_cast<int64_t>(h) * head_dim;
  if (style == RopeStyle::kNone) {
    for (int32_t d = threadIdx.x; d < head_dim; d += kThreads) {
      double sum = 0.0;
      for (int64_t i = 0; i < num_q; ++i) sum += q[(i * num_q_heads + h) * head_dim + d];
      out[d] = static_cast<float>(sum / count);
    }
    return;
  }
  const int32_t half = head_dim / 2;
  for (int32_t pair = threadIdx.x; pair < half; pair += kThreads) {
    const int32_t a = style == RopeStyle::kInterleaved ? 2 * pair : pair;
    const int32_t b = style == RopeStyle::kInterleaved ? 2 * pair + 1 : pair + half;
    const double inv_freq = RopeInvFreq(theta, pair, head_dim);
    double sum_a = 0.0, sum_b = 0.0;
    for (int64_t i = 0; i < num_q; ++i) {
      const int32_t position = static_cast<int32_t>(base_position + i);
      double sn, cs;
      sincos(static_cast<double>(position) * inv_freq, &sn, &cs);
      const float* row = q + (i * num_q_heads + h) * head_dim;
      const double xa = row[a], xb = row[b];
      sum_a += xa * cs - xb * sn;
      sum_b += xa * sn + xb * cs;
    }
    out[a] = static_cast<float>(sum_a / count);
    out[b] = static_cast<float>(sum_b / count);
  }
}

}  // namespace

absl::Status QueryFingerprint(const ExecContext& ctx, const FingerprintArgs& a) {
  FingerprintKernel<<<static_cast<unsigned>(a.num_q_heads), kThreads, 0, StreamOf(ctx)>>>(
      a.q, a.num_q, a.num_q_heads, a.head_dim, a.rope.style, a.rope.theta, a.base_position, a.qbar);
  return LaunchStatus("FingerprintKernel");
}

}  // namespace kvc::kernels::cuda
