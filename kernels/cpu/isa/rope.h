// RoPE for the optimised CPU kernels without a sin/cos per element.
//
// Pair i of a vector at position p is turned by the angle p * freq_i,
// freq_i = theta^(-2i/D) (kernels/types.h). A RopeTable holds, in fp32, the
// cos/sin of (p & 255) * freq_i (256 rows) and of (p >> 8) * 256 * freq_i
// (one row per 256 positions of the built range), both computed in double;
// the angles of one position are one complex multiply per pair, shared by
// every head of that token. The combined cos/sin are within ~2e-7 of the
// double-precision values the reference uses.
#ifndef KVC_KERNELS_CPU_ISA_ROPE_H_
#define KVC_KERNELS_CPU_ISA_ROPE_H_

#include <cstdint>

#include "kernels/cpu/isa/isa.h"
#include "kernels/cpu/isa/simd.h"
#include "kernels/types.h"

namespace kvc::kernels::KVC_CPU_NS {

// Thread-safety: Build() once, then Angles() from any number of threads.
class RopeTable {
 public:
  RopeTable() = default;
  RopeTable(const RopeTable&) = delete;
  RopeTable& operator=(const RopeTable&) = delete;

  // Prepares angles for positions in [min_position, max_position].
  // REQUIRES: head_dim even, min_position <= max_position. Returns false
  // when the tables cannot be allocated. A range too wide for a table (more
  // than kMaxHighRows * 256 positions) is served by direct double-precision
  // sin/cos per call instead: correct, just slower.
  bool Build(float theta, int head_dim, int32_t min_position, int32_t max_position);

  // cos[i], sin[i] for i < head_dim / 2 at position p.
  // REQUIRES: p within the built range.
  void Angles(int32_t p, float* cos, float* sin) const;

  int half() const { return half_; }

  static constexpr int64_t kMaxHighRows = 16384;

 private:
  float theta_ = 10000.0f;
  int head_dim_ = 0;
  int half_ = 0;
  int32_t high_base_ = 0;  // (min_position >> 8)
  bool direct_ = false;
  // low_: [256][2][half] (cos row then sin row), shared by every table of
  // the same theta and head_dim (LowRows); high_: [rows][2][half].
  const float* low_ = nullptr;
  AlignedFloats high_;
};

// Rotates x [head_dim] in place by the per-pair angles cos, sin [head_dim/2]:
// (a, b) -> (a cos - b sin, a sin + b cos) on the pairs (2i, 2i+1) for
// kInterleaved and (i, i + head_dim/2) for kHalf. kNone leaves x unchanged.
void RotateRow(RopeStyle style, int head_dim, const float* cos, const float* sin, float* x);

// Vector c (of nv) of a key row, rotated in registers when kRope is not
// kNone: rotated = x * C + partner(x) * S with the expanded angle rows of
// ExpandAngles below (the partner of a lane is the other element of its RoPE
// pair: the neighbour for kInterleaved, the element half a row away for
// kHalf). REQUIRES: head_dim == nv * 16; for kHalf nv even.
template <class Tag, RopeStyle kRope>
inline v16f KeyVector(const typename Tag::Storage* key, const float* angles, int c, int nv) {
  const v16f x = Tag::Load16(key + c * kLanes);
  if constexpr (kRope == RopeStyle::kNone) {
    return x;
  } else {
    v16f partner;
    if constexpr (kRope == RopeStyle::kInterleaved) {
      partner = __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
    } else {
      const int pc = c < nv / 2 ? c + nv / 2 : c - nv / 2;
      partner = Tag::Load16(key + pc * kLanes);
    }
    const float* cos = angles;
    const float* sin = angles + nv * kLanes;
    return Fma(partner, Load(sin + c * kLanes), x * Load(cos + c * kLanes));
  }
}

// The expanded angle rows KeyVector uses, from the per-pair cos/sin of a
// position: out[0 .. D) = C, out[D .. 2D) = S with C[d] = cos of d's pair
// and S[d] = -sin for the first element of a pair, +sin for the second.
inline void ExpandAngles(RopeStyle style, int head_dim, const float* cos, const float* sin,
                         float* out) {
  const int half = head_dim / 2;
  float* c_row = out;
  float* s_row = out + head_dim;
  if (style == RopeStyle::kInterleaved) {
    for (int i = 0; i < half; ++i) {
      c_row[2 * i] = c_row[2 * i + 1] = cos[i];
      s_row[2 * i] = -sin[i];
      s_row[2 * i + 1] = sin[i];
    }
  } else {
    for (int i = 0; i < half; ++i) {
      c_row[i] = c_row[i + half] = cos[i];
      s_row[i] = -sin[i];
      s_row[i + half] = sin[i];
    }
  }
}

// The smallest and largest of n positions (n >= 1).
void PositionRange(const int32_t* positions, int64_t n, int32_t* min_position,
                   int32_t* max_position);

}  // namespace kvc::kernels::KVC_CPU_NS

#endif  // KVC_KERNELS_CPU_ISA_ROPE_H_
