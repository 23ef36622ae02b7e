// Reference MergeStates (kernels/attention.h, kernel 3), in double: the
// weights exp(lse_s - lse) are taken relative to the largest lse so no term
// overflows; empty states (lse -inf) get weight exactly 0.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/ref/ref_kernels.h"

namespace kvc::kernels::ref {

absl::Status MergeStates(const ExecContext& ctx, const MergeStatesArgs& args) {
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  const int64_t rows = args.num_rows;
  const int32_t d_head = args.head_dim;
  std::vector<double> acc(d_head);
  for (int64_t r = 0; r < rows; ++r) {
    double max_lse = kNegInf;
    for (int32_t s = 0; s < args.num_states; ++s) {
      max_lse = std::max(max_lse, static_cast<double>(args.lse[s * rows + r]));
    }
    float* out = args.out + r * d_head;
    if (max_lse == kNegInf) {
      std::fill(out, out + d_head, 0.0f);
      if (args.out_lse != nullptr) args.out_lse[r] = -std::numeric_limits<float>::infinity();
      continue;
    }
    double sum = 0.0;
    for (int32_t s = 0; s < args.num_states; ++s) {
      sum += std::exp(static_cast<double>(args.lse[s * rows + r]) - max_lse);
    }
    const double lse = max_lse + std::log(sum);
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int32_t s = 0; s < args.num_states; ++s) {
      const double w = std::exp(static_cast<double>(args.lse[s * rows + r]) - lse);
      if (w == 0.0) continue;  // also skips an empty state's (possibly garbage) v
      const float* v = args.v + (s * rows + r) * d_head;
      for (int32_t d = 0; d < d_head; ++d) acc[d] += w * v[d];
    }
    for (int32_t d = 0; d < d_head; ++d) out[d] = static_cast<float>(acc[d]);
    if (args.out_lse != nullptr) args.out_lse[r] = static_cast<float>(lse);
  }
  return absl::OkStatus();
}

}  // namespace kvc::kernels::ref
