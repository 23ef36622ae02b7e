// The register tile of TokenSelect's key scan, at the native vector width
// kW of this ISA level (16 floats on v4, 8 on v3, 4 below): kW accumulators
// (kTC candidates x kTH query heads), key loads that widen bf16 / f16 to
// fp32 in registers, and the transposing reduction of the kW accumulators
// into one vector of kW dot products.
#ifndef KVC_KERNELS_CPU_ISA_TOKEN_SELECT_TILE_H_
#define KVC_KERNELS_CPU_ISA_TOKEN_SELECT_TILE_H_

#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "kernels/cpu/isa/simd.h"

namespace kvc::kernels::KVC_CPU_NS::tile {

#if defined(__AVX512F__)
inline constexpr int kW = 16;
typedef float vw __attribute__((vector_size(64)));
typedef uint32_t vwu __attribute__((vector_size(64)));
typedef uint16_t vwh __attribute__((vector_size(32)));
inline vw Fma(vw a, vw b, vw c) { return (vw)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c); }
#elif defined(__AVX2__)
inline constexpr int kW = 8;
typedef float vw __attribute__((vector_size(32)));
typedef uint32_t vwu __attribute__((vector_size(32)));
typedef uint16_t vwh __attribute__((vector_size(16)));
inline vw Fma(vw a, vw b, vw c) {
#if defined(__FMA__)
  return (vw)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}
#else
inline constexpr int kW = 4;
typedef float vw __attribute__((vector_size(16)));
typedef uint32_t vwu __attribute__((vector_size(16)));
typedef uint16_t vwh __attribute__((vector_size(8)));
inline vw Fma(vw a, vw b, vw c) { return a * b + c; }
#endif

inline vw Load(const float* p) {
  vw v;
  memcpy(&v, p, sizeof v);
  return v;
}

// kW elements of a row in storage type Tag, widened to fp32.
template <class Tag>
inline vw LoadRow(const typename Tag::Storage* p) {
  if constexpr (std::is_same_v<Tag, KvF32>) {
    return Load(p);
  } else if constexpr (std::is_same_v<Tag, KvBF16>) {
    vwh h;
    memcpy(&h, p, sizeof h);
    return (vw)(__builtin_convertvector(h, vwu) << 16);
  } else {
#if defined(__AVX512F__)
    // The maskz form: GCC 12 warns of the plain one's undefined passthrough.
    return (vw)_mm512_maskz_cvtph_ps(0xffff,
                                     _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#elif defined(__F16C__)
    return (vw)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
    float f[kW];
    for (int i = 0; i < kW; ++i) f[i] = Tag::ToFloat(p[i]);
    return Load(f);
#endif
  }
}

// Whether bf16 rows are split into even and odd elements: 2 * kW packed
// elements are kW 32-bit words; shifted left by 16 they are the even
// elements, with the low half cleared the odd ones (two ALU operations, no
// widening shuffle). The query must be permuted to match (QueryPosition).
template <class Tag>
inline constexpr bool kSplitsPairs = std::is_same_v<Tag, KvBF16>;

// Key vectors 2 * c2 and 2 * c2 + 1 of a row, in the scan's element order.
template <class Tag>
inline void LoadPair(const typename Tag::Storage* row, int c2, vw* a, vw* b) {
  if constexpr (kSplitsPairs<Tag>) {
    vwu words;
    memcpy(&words, row + c2 * 2 * kW, sizeof words);
    *a = (vw)(words << 16);
    *b = (vw)(words & 0xffff0000u);
  } else {
    *a = LoadRow<Tag>(row + c2 * 2 * kW);
    *b = LoadRow<Tag>(row + (c2 * 2 + 1) * kW);
  }
}

// Element of the query that scan position i holds when pairs are split.
inline int32_t SplitPairSource(int32_t i) {
  const int32_t base = i / (2 * kW) * (2 * kW), j = i % (2 * kW);
  return base + (j < kW ? 2 * j : 2 * (j - kW) + 1);
}

// One fold level of the transposing reduction, with segments of g lanes:
// in a and b each owner holds 2g consecutive lanes; the result holds g lanes
// per owner (a's owners, then b's), lane o of an owner being the sum of its
// lanes o and o + g.
constexpr int FoldLow(int g, int r) {
  const int owners = kW / (2 * g), s = r / g, o = r % g;
  return s < owners ? s * 2 * g + o : kW + (s - owners) * 2 * g + o;
}
template <int kG, size_t... R>
inline vw FoldImpl(vw a, vw b, std::index_sequence<R...>) {
  return __builtin_shufflevector(a, b, FoldLow(kG, R)...) +
         __builtin_shufflevector(a, b, (FoldLow(kG, R) + kG)...);
}
template <int kG>
inline vw Fold(vw a, vw b) {
  return FoldImpl<kG>(a, b, std::make_index_sequence<kW>{});
}

// Lane i of the result = the sum of the kW lanes of acc[i], by the same
// tree for every i: lanes k and k + kW/2 first, then halving. A level with
// kN vectors folds segments of kN / 2 lanes. acc ([kN]) is consumed.
template <int kN = kW>
inline vw TransposeReduce(vw* acc) {
  if constexpr (kN == 1) {
    return acc[0];
  } else {
    for (int i = 0; i < kN / 2; ++i) acc[i] = Fold<kN / 2>(acc[2 * i], acc[2 * i + 1]);
    return TransposeReduce<kN / 2>(acc);
  }
}

}  // namespace kvc::kernels::KVC_CPU_NS::tile

#endif  // KVC_KERNELS_CPU_ISA_TOKEN_SELECT_TILE_H_
