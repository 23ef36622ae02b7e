// The inner loops of the optimised CPU Decode, for one KV head and a block
// of up to 16 gathered keys: the G (<= 4) query rows of the group share
// every loaded key and value row. Logits are D-lane partial dot products
// per key, transposed and reduced into one vector of 16 logits per row.
#ifndef KVC_KERNELS_CPU_ISA_DECODE_BLOCK_H_
#define KVC_KERNELS_CPU_ISA_DECODE_BLOCK_H_

#include <cstdint>

#include "kernels/cpu/isa/isa.h"
#include "kernels/cpu/isa/rope.h"
#include "kernels/cpu/isa/simd.h"
#include "kernels/types.h"

namespace kvc::kernels::KVC_CPU_NS {

inline constexpr int kDecodeBlock = 16;
// Query rows handled together (more rows re-read the block from L1).
inline constexpr int kDecodeRows = 4;
// Output vectors per row kept in registers while accumulating P V.
inline constexpr int kDecodeColumns = kNativeLanes == 16 ? 4 : 1;

// Lane k of the result = sum of the 16 lanes of x[k].
inline v16f TransposeReduce16(const v16f* x) {
  v16f a[8], b[4], c[2];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    const v16f u = x[2 * i], w = x[2 * i + 1];
    a[i] =
        __builtin_shufflevector(u, w, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
        __builtin_shufflevector(u, w, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    const v16f u = a[2 * i], w = a[2 * i + 1];
    b[i] =
        __builtin_shufflevector(u, w, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
        __builtin_shufflevector(u, w, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  }
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) {
    const v16f u = b[2 * i], w = b[2 * i + 1];
    c[i] =
        __builtin_shufflevector(u, w, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
        __builtin_shufflevector(u, w, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  }
  return __builtin_shufflevector(c[0], c[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28,
                                 30) +
         __builtin_shufflevector(c[0], c[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29,
                                 31);
}

// logits[r] lane k = q[r] . key k for k < count (lanes >= count are 0).
// keys[k]: row of key k in storage type Tag, nv * 16 elements (padded);
// angles: kRope != kNone only, [16][2][nv * 16] expanded angle rows per key
// (rope.h ExpandAngles);
// q: G rows of nv * 16 floats, `q_stride` apart. NV: nv when known at
// compile time (the common head dims), 0 otherwise.
template <class Tag, int G, int NV, RopeStyle kRope>
inline void BlockLogits(const typename Tag::Storage* const* keys, const float* angles, int count,
                        const float* q, int64_t q_stride, int nv, v16f* logits) {
  if constexpr (NV > 0) nv = NV;
  v16f part[G][kDecodeBlock];
  for (int k = 0; k < kDecodeBlock; ++k) {
    v16f acc[G];
#pragma GCC unroll 4
    for (int r = 0; r < G; ++r) acc[r] = Zero();
    if (k < count) {
      const typename Tag::Storage* key = keys[k];
      const float* key_angles = angles + int64_t{k} * 2 * nv * kLanes;
#pragma GCC unroll 8
      for (int c = 0; c < nv; ++c) {
        const v16f kv = KeyVector<Tag, kRope>(key, key_angles, c, nv);
#pragma GCC unroll 4
        for (int r = 0; r < G; ++r) acc[r] = Fma(Load(q + r * q_stride + c * kLanes), kv, acc[r]);
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < G; ++r) part[r][k] = acc[r];
  }
#pragma GCC unroll 4
  for (int r = 0; r < G; ++r) logits[r] = TransposeReduce16(part[r]);
}

// o[r][c*16 ..) = alpha[r] * o[r] + sum_{k < count} p[r][k] * value k, for
// CV output vectors starting at column vector c0. p: G rows of 16 floats.
template <class Tag, int G, int CV>
inline void BlockAccumulateColumns(const typename Tag::Storage* const* values, int count,
                                   const float* p, const float* alpha, int c0, float* o,
                                   int64_t o_stride) {
  v16f acc[G][CV];
#pragma GCC unroll 4
  for (int r = 0; r < G; ++r) {
    const v16f a = Splat(alpha[r]);
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v) acc[r][v] = Load(o + r * o_stride + (c0 + v) * kLanes) * a;
  }
  for (int k = 0; k < count; ++k) {
    v16f w[CV];
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v) w[v] = Tag::Load16(values[k] + (c0 + v) * kLanes);
#pragma GCC unroll 4
    for (int r = 0; r < G; ++r) {
      const v16f pb = Splat(p[r * kDecodeBlock + k]);
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) acc[r][v] = Fma(pb, w[v], acc[r][v]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < G; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v) Store(o + r * o_stride + (c0 + v) * kLanes, acc[r][v]);
  }
}

template <class Tag, int G, int NV>
inline void BlockAccumulate(const typename Tag::Storage* const* values, int count, const float* p,
                            const float* alpha, int nv, float* o, int64_t o_stride) {
  if constexpr (NV > 0) {
    constexpr int kFull = NV / kDecodeColumns * kDecodeColumns;
#pragma GCC unroll 2
    for (int c = 0; c < kFull; c += kDecodeColumns) {
      BlockAccumulateColumns<Tag, G, kDecodeColumns>(values, count, p, alpha, c, o, o_stride);
    }
    if constexpr (NV > kFull) {
      BlockAccumulateColumns<Tag, G, NV - kFull>(values, count, p, alpha, kFull, o, o_stride);
    }
  } else {
    int c = 0;
    for (; c + kDecodeColumns <= nv; c += kDecodeColumns) {
      BlockAccumulateColumns<Tag, G, kDecodeColumns>(values, count, p, alpha, c, o, o_stride);
    }
    for (; c < nv; ++c) BlockAccumulateColumns<Tag, G, 1>(values, count, p, alpha, c, o, o_stride);
  }
}

// Touches every cache line of [p, p + bytes) so the next block's rows are
// on their way while this block computes.
inline void PrefetchRow(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(c + i);
}

}  // namespace kvc::kernels::KVC_CPU_NS

#endif  // KVC_KERNELS_CPU_ISA_DECODE_BLOCK_H_
