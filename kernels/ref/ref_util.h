// Small helpers shared by the reference kernels: element loads from a KV
// pool in any stored dtype, RoPE in double precision, and the default
// logit scale. These are part of the specification, so they are written as
// plainly as possible; speed does not matter here.
#ifndef KVC_KERNELS_REF_REF_UTIL_H_
#define KVC_KERNELS_REF_REF_UTIL_H_

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/dtype.h"
#include "kernels/types.h"

namespace kvc::kernels::ref {

// Element `index` of an array of `dtype` starting at `base`, as fp32 (bf16
// and f16 widen exactly). Returns 0 for a dtype outside the enum.
inline float LoadElement(const void* base, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::kF32: {
      float f;
      std::memcpy(&f, static_cast<const char*>(base) + index * 4, sizeof f);
      return f;
    }
    case DType::kBF16: {
      uint16_t h;
      std::memcpy(&h, static_cast<const char*>(base) + index * 2, sizeof h);
      return BF16ToFloat(h);
    }
    case DType::kF16: {
      uint16_t h;
      std::memcpy(&h, static_cast<const char*>(base) + index * 2, sizeof h);
      return F16ToFloat(h);
    }
  }
  return 0.0f;
}

// The head_dim elements of (slot, kv_head) of `base` (pool.k or pool.v) as
// fp32, honouring the pool's layout and dtype. out: [pool.head_dim].
inline void LoadKeyRow(const KvPool& pool, int64_t slot, int32_t kv_head, const void* base,
                       float* out) {
  const int64_t offset = pool.Offset(slot, kv_head);
  for (int32_t d = 0; d < pool.head_dim; ++d) out[d] = LoadElement(base, pool.dtype, offset + d);
}

// `in` rotated to `position`, in double: pair i (i < head_dim / 2) is turned
// by the angle position * theta^(-2i / head_dim). The pair is (2i, 2i+1) for
// kInterleaved and (i, i + head_dim/2) for kHalf; kNone copies. in, out:
// [head_dim]; head_dim is even whenever style != kNone (validated).
inline void ApplyRope(const Rope& rope, int32_t position, int32_t head_dim, const float* in,
                      double* out) {
  if (rope.style == RopeStyle::kNone) {
    for (int32_t d = 0; d < head_dim; ++d) out[d] = in[d];
    return;
  }
  const int32_t half = head_dim / 2;
  for (int32_t i = 0; i < half; ++i) {
    const double freq = std::pow(static_cast<double>(rope.theta), -2.0 * i / head_dim);
    const double angle = static_cast<double>(position) * freq;
    const double c = std::cos(angle), s = std::sin(angle);
    const int32_t a = rope.style == RopeStyle::kInterleaved ? 2 * i : i;
    const int32_t b = rope.style == RopeStyle::kInterleaved ? 2 * i + 1 : i + half;
    const double xa = in[a], xb = in[b];
    out[a] = xa * c - xb * s;
    out[b] = xa * s + xb * c;
  }
}

// The logit scale a kernel uses: `scale`, or 1/sqrt(head_dim) when it is 0.
inline double DefaultScale(float scale, int32_t head_dim) {
  return scale != 0.0f ? static_cast<double>(scale)
                       : 1.0 / std::sqrt(static_cast<double>(head_dim));
}

}  // namespace kvc::kernels::ref

#endif  // KVC_KERNELS_REF_REF_UTIL_H_
