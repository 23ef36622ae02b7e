#include "kernels/cpu/isa/token_select_topk.h"

#include <cstring>

namespace kvc::kernels::KVC_CPU_NS {
namespace {

// An unsigned key ordered like the float scores (the mapping of
// kernels/ref/token_select.cc): a larger key is a larger score, both zeros
// share a key, NaN is below every number.
inline uint32_t ScoreOrderKey(float score) {
  if (score != score) return 0;
  if (score == 0.0f) score = 0.0f;
  uint32_t bits;
  std::memcpy(&bits, &score, sizeof bits);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

}  // namespace

void SelectTopK(const float* scores, int64_t n, int64_t k, int64_t index_offset, int32_t* selected,
                float* selected_scores) {
  // Most significant digit first: find the k-th largest key `threshold`
  // 8 bits at a time, counting only keys that match the digits fixed so far.
  // `needed` ends as the number of keys equal to the threshold that belong
  // to the selection (the lowest-indexed ones).
  uint32_t prefix = 0, prefix_mask = 0;
  int64_t needed = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    int64_t histogram[256] = {};
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t key = ScoreOrderKey(scores[i]);
      if ((key & prefix_mask) == prefix) ++histogram[(key >> shift) & 0xffu];
    }
    int digit = 255;
    for (; digit > 0 && histogram[digit] < needed; --digit) needed -= histogram[digit];
    prefix |= static_cast<uint32_t>(digit) << shift;
    prefix_mask |= 0xffu << shift;
  }
  const uint32_t threshold = prefix;

  // One pass in index order emits the selection already sorted.
  int64_t out = 0;
  for (int64_t i = 0; i < n && out < k; ++i) {
    const uint32_t key = ScoreOrderKey(scores[i]);
    if (key > threshold || (key == threshold && needed > 0)) {
      if (key == threshold) --needed;
      selected[out] = static_cast<int32_t>(i + index_offset);
      if (selected_scores != nullptr) selected_scores[out] = scores[i];
      ++out;
    }
  }
}

}  // namespace kvc::kernels::KVC_CPU_NS
