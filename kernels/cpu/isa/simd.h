// SIMD building blocks of the optimised CPU kernels, written with GCC vector
// extensions so one source compiles for every ISA level (isa.h): a 16-float
// vector is one zmm register on v4, two ymm on v3, four xmm on v2.
//
// The ISA builds use -ffp-contract=fast (kernels/CMakeLists.txt), so GCC
// may fuse `a * b + c`. Where the rounding must be the same on every ISA
// build and thread count (TokenSelect logits, the cascade scores), use Fma()
// explicitly; it is exact-rounded FMA on v3/v4 and a separate multiply and
// add on v2.
#ifndef KVC_KERNELS_CPU_ISA_SIMD_H_
#define KVC_KERNELS_CPU_ISA_SIMD_H_

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>

#include "kernels/cpu/isa/isa.h"
#include "kernels/dtype.h"
#include "kernels/types.h"

namespace kvc::kernels::KVC_CPU_NS {

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef uint16_t v16h __attribute__((vector_size(32)));
typedef float v8f __attribute__((vector_size(32)));

inline constexpr int kLanes = 16;
// Floats per native register at this ISA level (for register-blocking
// decisions: v16f costs 16 / kNativeLanes registers).
#if defined(__AVX512F__)
inline constexpr int kNativeLanes = 16;
#elif defined(__AVX__)
inline constexpr int kNativeLanes = 8;
#else
inline constexpr int kNativeLanes = 4;
#endif

// A broadcast (`v16f{} + x` would cost a scalar add: 0 + x is not x for -0).
inline v16f Splat(float x) { return v16f{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
inline v16f Zero() { return v16f{}; }

// Unaligned loads and stores of 16 floats.
inline v16f Load(const float* p) {
  v16f v;
  memcpy(&v, p, sizeof v);
  return v;
}
inline void Store(float* p, v16f v) { memcpy(p, &v, sizeof v); }
// The first n (0..16) floats; the rest of the vector is zero.
inline v16f LoadPartial(const float* p, int n) {
  float buf[kLanes] = {};
  for (int i = 0; i < n; ++i) buf[i] = p[i];
  return Load(buf);
}
inline void StorePartial(float* p, v16f v, int n) {
  float buf[kLanes];
  Store(buf, v);
  for (int i = 0; i < n; ++i) p[i] = buf[i];
}

// a * b + c, fused on v3/v4.
inline v16f Fma(v16f a, v16f b, v16f c) {
#if defined(__AVX512F__)
  return (v16f)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__)
  const v8f lo =
      (v8f)_mm256_fmadd_ps((__m256)__builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7),
                           (__m256)__builtin_shufflevector(b, b, 0, 1, 2, 3, 4, 5, 6, 7),
                           (__m256)__builtin_shufflevector(c, c, 0, 1, 2, 3, 4, 5, 6, 7));
  const v8f hi =
      (v8f)_mm256_fmadd_ps((__m256)__builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15),
                           (__m256)__builtin_shufflevector(b, b, 8, 9, 10, 11, 12, 13, 14, 15),
                           (__m256)__builtin_shufflevector(c, c, 8, 9, 10, 11, 12, 13, 14, 15));
  return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#else
  return a * b + c;
#endif
}
// Scalar a * b + c, fused on v3/v4.
inline float FmaScalar(float a, float b, float c) {
#if defined(__FMA__)
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

inline v16f Max(v16f a, v16f b) { return a > b ? a : b; }
inline v16f Min(v16f a, v16f b) { return a < b ? a : b; }

inline float ReduceAdd(v16f v) {
  const v8f h8 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  float s[8];
  memcpy(s, &h8, sizeof s);
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}
inline float ReduceMax(v16f v) {
  float s[kLanes];
  Store(s, v);
  float m = s[0];
  for (int i = 1; i < kLanes; ++i) m = s[i] > m ? s[i] : m;
  return m;
}

// exp(x) per lane, relative error below ~2e-7 for x in [-87, 88]; lanes
// below -87.3 (including -inf) give exactly 0; lanes above 88.3 are clamped
// (softmax only feeds x <= 0). NaN lanes give NaN.
inline v16f Exp(v16f x) {
  const v16f kLog2e = Splat(1.44269504088896341f);
  const v16f kLn2Hi = Splat(0.693359375f);
  const v16f kLn2Lo = Splat(-2.12194440e-4f);
  const v16f kRound = Splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const v16f xc = Min(Max(x, Splat(-87.3f)), Splat(88.3f));
  const v16f t = Fma(xc, kLog2e, kRound);
  const v16f n = t - kRound;
  v16f r = Fma(n, -kLn2Hi, xc);
  r = Fma(n, -kLn2Lo, r);
  // exp(r) on |r| <= ln2/2: degree-7 Taylor, truncation error < 6e-9.
  v16f p = Splat(1.0f / 5040.0f);
  p = Fma(p, r, Splat(1.0f / 720.0f));
  p = Fma(p, r, Splat(1.0f / 120.0f));
  p = Fma(p, r, Splat(1.0f / 24.0f));
  p = Fma(p, r, Splat(1.0f / 6.0f));
  p = Fma(p, r, Splat(0.5f));
  p = Fma(p, r, Splat(1.0f));
  p = Fma(p, r, Splat(1.0f));
  const v16i ni = (v16i)t - (v16i)kRound;  // the integer n, from the low mantissa bits
  const v16f scale = (v16f)((ni + 127) << 23);
  const v16f y = p * scale;
  const v16i underflow = x < Splat(-87.3f);
  const v16f zero = Zero();
  const v16f out = underflow ? zero : y;
  return x != x ? x : out;
}

// ---------------------------------------------------------------------------
// KV storage types. Each tag names the stored element and converts 16 of
// them to fp32 exactly (every bf16 and f16 value is representable in fp32).

struct KvF32 {
  using Storage = float;
  static constexpr DType kDType = DType::kF32;
  static v16f Load16(const float* p) { return Load(p); }
  static float ToFloat(float x) { return x; }
};

struct KvBF16 {
  using Storage = uint16_t;
  static constexpr DType kDType = DType::kBF16;
  static v16f Load16(const uint16_t* p) {
#if defined(__AVX512F__)
    // One vpmovzxwd (GCC splits the generic conversion in two halves); the
    // maskz form avoids GCC 12's -Wmaybe-uninitialized in the unmasked one.
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return (v16f)((v16u)_mm512_maskz_cvtepu16_epi32(0xffff, h) << 16);
#else
    v16h h;
    memcpy(&h, p, sizeof h);
    return (v16f)(__builtin_convertvector(h, v16u) << 16);
#endif
  }
  static float ToFloat(uint16_t x) { return BF16ToFloat(x); }
};

struct KvF16 {
  using Storage = uint16_t;
  static constexpr DType kDType = DType::kF16;
  static v16f Load16(const uint16_t* p) {
#if defined(__AVX512F__)
    // The maskz form: the unmasked one trips GCC 12's -Wuninitialized.
    return (v16f)_mm512_maskz_cvtph_ps(0xffff,
                                       _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#elif defined(__F16C__)
    const v8f lo = (v8f)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const v8f hi = (v8f)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)));
    return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#else
    // Bit manipulation (F. Giesen's half_to_float): exact for normals,
    // subnormals, zeros, infinities and NaN.
    v16h h16;
    memcpy(&h16, p, sizeof h16);
    const v16u h = __builtin_convertvector(h16, v16u);
    const v16u shifted_exp = v16u{} + (0x7c00u << 13);
    v16u o = (h & 0x7fffu) << 13;
    const v16u exp = o & shifted_exp;
    o += (127u - 15u) << 23;
    const v16u inf_nan = o + ((128u - 16u) << 23);
    const v16f sub = (v16f)(o + (1u << 23)) - (v16f)(v16u{} + (113u << 23));
    v16u r = exp == shifted_exp ? inf_nan : o;
    r = exp == 0 ? (v16u)sub : r;
    return (v16f)(r | ((h & 0x8000u) << 16));
#endif
  }
  static float ToFloat(uint16_t x) { return F16ToFloat(x); }
};

// Converts n elements of storage type Tag to fp32 (any n; full vectors then
// a scalar tail).
template <class Tag>
inline void ConvertRow(const typename Tag::Storage* src, int n, float* dst) {
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) Store(dst + i, Tag::Load16(src + i));
  for (; i < n; ++i) dst[i] = Tag::ToFloat(src[i]);
}

// Calls fn(Tag{}) with the tag of `dtype` (a valid DType) and returns its
// result, so a kernel body is written once as a template over the tag.
template <class Fn>
inline decltype(auto) VisitKvType(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kBF16:
      return fn(KvBF16{});
    case DType::kF16:
      return fn(KvF16{});
    case DType::kF32:
    default:
      return fn(KvF32{});
  }
}

// ---------------------------------------------------------------------------
// Scratch memory: 64-byte-aligned float arrays, null when allocation fails
// (callers turn that into ResourceExhausted; nothing here throws).
struct AlignedFloatDeleter {
  void operator()(float* p) const { ::operator delete[](p, std::align_val_t(64)); }
};
using AlignedFloats = std::unique_ptr<float[], AlignedFloatDeleter>;
inline AlignedFloats AllocateFloats(size_t n) {
  void* p = ::operator new[]((n == 0 ? 1 : n) * sizeof(float), std::align_val_t(64), std::nothrow);
  return AlignedFloats(static_cast<float*>(p));
}

}  // namespace kvc::kernels::KVC_CPU_NS

#endif  // KVC_KERNELS_CPU_ISA_SIMD_H_
