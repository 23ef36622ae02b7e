// Dense layers, reference path: one fp64 accumulator per output, rounded to
// fp32 once (after adding the existing y when accumulating).
#include <cmath>
#include <cstdint>

#include "kernels/ref/ref_kernels.h"
#include "kernels/ref/ref_util.h"

namespace kvc::kernels::ref {

absl::Status Linear(const ExecContext& ctx, const LinearArgs& a) {
  for (int64_t i = 0; i < a.m; ++i) {
    const float* x = a.x + i * a.k;
    float* y = a.y + i * a.n;
    for (int32_t j = 0; j < a.n; ++j) {
      const int64_t row = static_cast<int64_t>(j) * a.k;
      double acc = 0.0;
      for (int32_t d = 0; d < a.k; ++d) {
        acc += static_cast<double>(x[d]) * LoadElement(a.w, a.w_dtype, row + d);
      }
      if (a.accumulate) acc += y[j];
      y[j] = static_cast<float>(acc);
    }
  }
  return absl::OkStatus();
}

absl::Status RmsNorm(const ExecContext& ctx, const RmsNormArgs& a) {
  for (int64_t i = 0; i < a.rows; ++i) {
    const float* x = a.x + i * a.dim;
    float* out = a.out + i * a.dim;
    double sum_sq = 0.0;
    for (int32_t d = 0; d < a.dim; ++d) sum_sq += static_cast<double>(x[d]) * x[d];
    const double inv_rms = 1.0 / std::sqrt(sum_sq / a.dim + a.eps);
    for (int32_t d = 0; d < a.dim; ++d) out[d] = static_cast<float>(x[d] * inv_rms * a.weight[d]);
  }
  return absl::OkStatus();
}

absl::Status SwiGlu(const ExecContext& ctx, const SwiGluArgs& a) {
  for (int64_t i = 0; i < a.count; ++i) {
    const double g = a.gate[i];
    a.out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * a.up[i]);
  }
  return absl::OkStatus();
}

}  // namespace kvc::kernels::ref
