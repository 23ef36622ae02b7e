// Optimised CPU MergeStates (kernels/attention.h, kernel 3): rows in
// parallel, each a weighted sum over the states vectorised along head_dim.
// The weights exp(lse_s - lse) are formed in double relative to the largest
// lse (no overflow); an empty state (lse -inf) has weight exactly 0 and its
// v is never read.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "kernels/cpu/isa/attention_common.h"
#include "kernels/cpu/isa/cpu_kernels.h"
#include "kernels/cpu/isa/simd.h"

namespace kvc::kernels::KVC_CPU_NS {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();
// Rows per task: enough bytes per task to hide the scheduling cost.
constexpr int64_t kRowGrainBytes = 64 * 1024;

void MergeRow(const MergeStatesArgs& a, int64_t r, float* weights) {
  const int64_t rows = a.num_rows;
  const int32_t d_head = a.head_dim;
  double max_lse = kNegInf;
  for (int32_t s = 0; s < a.num_states; ++s) {
    max_lse = std::max(max_lse, static_cast<double>(a.lse[s * rows + r]));
  }
  float* out = a.out + r * d_head;
  if (max_lse == kNegInf) {
    std::fill(out, out + d_head, 0.0f);
    if (a.out_lse != nullptr) a.out_lse[r] = -std::numeric_limits<float>::infinity();
    return;
  }
  double sum = 0.0;
  for (int32_t s = 0; s < a.num_states; ++s) {
    sum += std::exp(static_cast<double>(a.lse[s * rows + r]) - max_lse);
  }
  const double lse = max_lse + std::log(sum);
  for (int32_t s = 0; s < a.num_states; ++s) {
    weights[s] = static_cast<float>(std::exp(static_cast<double>(a.lse[s * rows + r]) - lse));
  }
  int32_t d = 0;
  for (; d + kLanes <= d_head; d += kLanes) {
    v16f acc = Zero();
    for (int32_t s = 0; s < a.num_states; ++s) {
      if (weights[s] == 0.0f) continue;
      acc = Fma(Splat(weights[s]), Load(a.v + (s * rows + r) * d_head + d), acc);
    }
    Store(out + d, acc);
  }
  for (; d < d_head; ++d) {
    float acc = 0.0f;
    for (int32_t s = 0; s < a.num_states; ++s) {
      if (weights[s] == 0.0f) continue;
      acc = FmaScalar(weights[s], a.v[(s * rows + r) * d_head + d], acc);
    }
    out[d] = acc;
  }
  if (a.out_lse != nullptr) a.out_lse[r] = static_cast<float>(lse);
}

}  // namespace

absl::Status MergeStates(const ExecContext& ctx, const MergeStatesArgs& args) {
  const int64_t row_bytes = int64_t{args.num_states} * args.head_dim * 4 + 1;
  const int64_t grain = std::max<int64_t>(1, kRowGrainBytes / row_bytes);
  std::atomic<bool> ok{true};
  PoolOf(ctx).ParallelFor(args.num_rows, grain, [&](int64_t begin, int64_t end) {
    AlignedFloats weights = AllocateFloats(static_cast<size_t>(args.num_states));
    if (!weights) {
      ok = false;
      return;
    }
    for (int64_t r = begin; r < end; ++r) MergeRow(args, r, weights.get());
  });
  if (!ok) return absl::ResourceExhaustedError("MergeStates: cannot allocate scratch");
  return absl::OkStatus();
}

}  // namespace kvc::kernels::KVC_CPU_NS
