// Native-width fp32 vectors for the dense kernels (cpu/isa/dense.cc): one
// register per vector (16 lanes on v4, 8 on v3), so a register tile can use
// every register the ISA has, which simd.h's fixed 16-lane v16f cannot on
// v3. Masked tail loads never touch memory past the last element.
#ifndef KVC_KERNELS_CPU_ISA_NATIVE_VEC_H_
#define KVC_KERNELS_CPU_ISA_NATIVE_VEC_H_

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

#include "kernels/cpu/isa/isa.h"

namespace kvc::kernels::KVC_CPU_NS {

#if defined(__AVX512F__)
inline constexpr int kVecLanes = 16;
typedef float VecF __attribute__((vector_size(64)));
typedef uint32_t VecU __attribute__((vector_size(64)));
#else
inline constexpr int kVecLanes = 8;
typedef float VecF __attribute__((vector_size(32)));
typedef uint32_t VecU __attribute__((vector_size(32)));
#endif

// Every lane = s (a memory operand becomes an embedded broadcast on v4).
inline VecF SplatVec(float s) {
#if defined(__AVX512F__)
  return (VecF)_mm512_set1_ps(s);
#else
  return (VecF)_mm256_set1_ps(s);
#endif
}

inline VecF LoadVec(const float* p) {
  VecF v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void StoreVec(float* p, VecF v) { std::memcpy(p, &v, sizeof v); }

// The first n (0 < n < kVecLanes) floats at p; the other lanes are zero.
inline VecF LoadVecTail(const float* p, int n) {
#if defined(__AVX512F__)
  return (VecF)_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
#else
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return (VecF)_mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane));
#endif
}
inline void StoreVecTail(float* p, VecF v, int n) {
#if defined(__AVX512F__)
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), (__m512)v);
#else
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  _mm256_maskstore_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane), (__m256)v);
#endif
}

// kVecLanes bf16 values widened to fp32 (exact).
inline VecF LoadVecBF16(const uint16_t* p) {
#if defined(__AVX512F__)
  // The maskz form avoids GCC 12's -Wmaybe-uninitialized in the unmasked one.
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return (VecF)((VecU)_mm512_maskz_cvtepu16_epi32(0xffff, h) << 16);
#else
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return (VecF)((VecU)_mm256_cvtepu16_epi32(h) << 16);
#endif
}
inline VecF LoadVecBF16Tail(const uint16_t* p, int n) {
#if defined(__AVX512F__)
  const __m256i h = _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), p);
  return (VecF)((VecU)_mm512_maskz_cvtepu16_epi32(0xffff, h) << 16);
#else
  uint16_t buf[kVecLanes] = {};
  std::memcpy(buf, p, static_cast<size_t>(n) * sizeof(uint16_t));
  return LoadVecBF16(buf);
#endif
}

// Weight element types of Linear: Load / LoadTail give fp32 vectors.
struct WeightF32 {
  using T = float;
  static VecF Load(const float* p) { return LoadVec(p); }
  static VecF LoadTail(const float* p, int n) { return LoadVecTail(p, n); }
};
struct WeightBF16 {
  using T = uint16_t;
  static VecF Load(const uint16_t* p) { return LoadVecBF16(p); }
  static VecF LoadTail(const uint16_t* p, int n) { return LoadVecBF16Tail(p, n); }
};

// ---- Reducing kVecLanes accumulators at once ----------------------------------
//
// ReduceLanes(acc) returns the vector whose lane t is the sum of the lanes of
// acc[t], with log2(kVecLanes) shuffle-and-add levels over all accumulators
// together (kVecLanes - 1 adds in all instead of kVecLanes - 1 per
// accumulator). Every lane is summed by the same tree, (l, l + kVecLanes/2)
// first, whatever t is.

// Lane `t` of the low (high = false) or high half-pick of one level: inputs u
// and v each hold kVecLanes / group accumulators as runs of `group` partial
// sums; the low pick takes the first group/2 partials of every run of u, then
// of v; the high pick the second group/2. low + high leaves runs of group/2.
constexpr int TreeLane(int t, int group, bool high) {
  const int half = kVecLanes / 2;
  const int s = t % half;
  return (t < half ? 0 : kVecLanes) + s / (group / 2) * group + (high ? group / 2 : 0) +
         s % (group / 2);
}
template <int kGroup, size_t... I>
inline VecF TreeStep(VecF u, VecF v, std::index_sequence<I...>) {
  return __builtin_shufflevector(u, v, TreeLane(I, kGroup, false)...) +
         __builtin_shufflevector(u, v, TreeLane(I, kGroup, true)...);
}
// acc[0 .. count) (runs of kGroup) -> acc[0 .. count / 2) (runs of kGroup / 2).
template <int kGroup>
inline void TreeLevel(VecF* acc, int count) {
  for (int c = 0; c < count / 2; ++c) {
    acc[c] = TreeStep<kGroup>(acc[2 * c], acc[2 * c + 1], std::make_index_sequence<kVecLanes>());
  }
}
// REQUIRES: acc holds kVecLanes vectors; they are overwritten.
inline VecF ReduceLanes(VecF* acc) {
  TreeLevel<kVecLanes>(acc, kVecLanes);
  TreeLevel<kVecLanes / 2>(acc, kVecLanes / 2);
  TreeLevel<kVecLanes / 4>(acc, kVecLanes / 4);
#if defined(__AVX512F__)
  TreeLevel<kVecLanes / 8>(acc, kVecLanes / 8);
#endif
  return acc[0];
}

// ---- Transposing a kVecLanes x kVecLanes block ---------------------------------
//
// One level per bit b of the lane index: rows r and r | 2^b (bit b of r
// clear) swap their off-diagonal 2^b-blocks. After every level, row r lane
// c holds what row c lane r held.
constexpr int SwapLane(int c, int bit, bool upper) {
  const int b = 1 << bit;
  if (!upper) return (c & b) == 0 ? c : kVecLanes + (c ^ b);
  return (c & b) == 0 ? (c | b) : kVecLanes + c;
}
template <int kBit, size_t... I>
inline void SwapBlocks(VecF& lo, VecF& hi, std::index_sequence<I...>) {
  const VecF a = __builtin_shufflevector(lo, hi, SwapLane(I, kBit, false)...);
  hi = __builtin_shufflevector(lo, hi, SwapLane(I, kBit, true)...);
  lo = a;
}
template <int kBit>
inline void TransposeLevel(VecF* rows) {
  constexpr int b = 1 << kBit;
  for (int r = 0; r < kVecLanes; ++r) {
    if ((r & b) == 0) SwapBlocks<kBit>(rows[r], rows[r | b], std::make_index_sequence<kVecLanes>());
  }
}
// REQUIRES: rows holds kVecLanes vectors; transposed in place.
inline void Transpose(VecF* rows) {
  TransposeLevel<0>(rows);
  TransposeLevel<1>(rows);
  TransposeLevel<2>(rows);
#if defined(__AVX512F__)
  TransposeLevel<3>(rows);
#endif
}

}  // namespace kvc::kernels::KVC_CPU_NS

#endif  // KVC_KERNELS_CPU_ISA_NATIVE_VEC_H_
