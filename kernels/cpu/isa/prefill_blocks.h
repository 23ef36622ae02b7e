// Register-blocked inner loops of the prefill attention pass, in the
// transposed-score layout: a query tile's rows are stored transposed once
// per task (qt [padded_dim][rows_pad]), key tiles stay row-major
// (kr [kKeyTile][padded_dim], no transpose per tile), and the scores of a
// tile are st [kKeyTile][rows_pad] = K Q^T, so the online softmax runs
// along the keys with every row in its own vector lane (no horizontal
// reductions).
#ifndef KVC_KERNELS_CPU_ISA_PREFILL_BLOCKS_H_
#define KVC_KERNELS_CPU_ISA_PREFILL_BLOCKS_H_

#include <cstdint>

#include "kernels/cpu/isa/isa.h"
#include "kernels/cpu/isa/prefill_tiles.h"
#include "kernels/cpu/isa/simd.h"

namespace kvc::kernels::KVC_CPU_NS {

// Keys per S^T block (each holds kRowVecs accumulators).
inline constexpr int kRowVecs = kNativeLanes == 16 ? 4 : 1;
inline constexpr int kScoreKeys = kAccBudget / kRowVecs > 6 ? 6 : kAccBudget / kRowVecs;

// st[c][r0 ..) = kr[c] . qt[:, r0 ..] for RK keys and CV row vectors.
template <int RK, int CV>
inline void ScoreBlockT(const float* kr, int64_t padded, const float* qt, int64_t rows_pad,
                        int d_head, float* st) {
  v16f acc[RK][CV];
#pragma GCC unroll 8
  for (int k = 0; k < RK; ++k) {
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v) acc[k][v] = Zero();
  }
  for (int d = 0; d < d_head; ++d) {
    v16f q[CV];
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v) q[v] = Load(qt + d * rows_pad + v * kLanes);
#pragma GCC unroll 8
    for (int k = 0; k < RK; ++k) {
      const v16f kb = Splat(kr[k * padded + d]);
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) acc[k][v] = Fma(kb, q[v], acc[k][v]);
    }
  }
#pragma GCC unroll 8
  for (int k = 0; k < RK; ++k) {
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v) Store(st + k * rows_pad + v * kLanes, acc[k][v]);
  }
}

template <int RK, int CV>
inline void ScoreKeysRest(int rest, const float* kr, int64_t padded, const float* qt,
                          int64_t rows_pad, int d_head, float* st) {
  if constexpr (RK > 1) {
    if (rest == RK - 1) return ScoreBlockT<RK - 1, CV>(kr, padded, qt, rows_pad, d_head, st);
    ScoreKeysRest<RK - 1, CV>(rest, kr, padded, qt, rows_pad, d_head, st);
  }
}

// All `count` keys against CV row vectors starting at row r0.
template <int CV>
inline void ScoreRowVectors(const float* kr, int64_t padded, int count, const float* qt,
                            int64_t rows_pad, int d_head, float* st) {
  int c = 0;
  for (; c + kScoreKeys <= count; c += kScoreKeys) {
    ScoreBlockT<kScoreKeys, CV>(kr + c * padded, padded, qt, rows_pad, d_head, st + c * rows_pad);
  }
  ScoreKeysRest<kScoreKeys, CV>(count - c, kr + c * padded, padded, qt, rows_pad, d_head,
                                st + c * rows_pad);
}

// st [count][rows_pad] = kr [count][padded] qt [padded][rows_pad].
inline void ScoreTileT(const float* kr, int64_t padded, int count, const float* qt,
                       int64_t rows_pad, int d_head, float* st) {
  const int nv = static_cast<int>(rows_pad / kLanes);
  int v = 0;
  for (; v + kRowVecs <= nv; v += kRowVecs) {
    ScoreRowVectors<kRowVecs>(kr, padded, count, qt + v * kLanes, rows_pad, d_head,
                              st + v * kLanes);
  }
  for (; v < nv; ++v) {
    ScoreRowVectors<1>(kr, padded, count, qt + v * kLanes, rows_pad, d_head, st + v * kLanes);
  }
}

// o[r][c0 ..) = alpha[r] * o[r] + sum_{j < count} pt[j][r] * vt[j] for R
// rows and NV output vectors. pt: probabilities, key-major (stride rows_pad).
template <int R, int NV>
inline void AccumulateBlock(const float* pt, int64_t rows_pad, const float* alpha, const float* vt,
                            int64_t padded, int count, float* o) {
  v16f acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const v16f a = Splat(alpha[r]);
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = Load(o + r * padded + v * kLanes) * a;
  }
  for (int j = 0; j < count; ++j) {
    v16f w[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) w[v] = Load(vt + j * padded + v * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const v16f pb = Splat(pt[j * rows_pad + r]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = Fma(pb, w[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) Store(o + r * padded + v * kLanes, acc[r][v]);
  }
}

// Rows per PV block for NV vectors of output columns.
template <int NV>
inline constexpr int kPvRows = kAccBudget / NV > 8 ? 8
                                                   : (kAccBudget / NV > 0 ? kAccBudget / NV : 1);

template <int R, int NV>
inline void AccumulateRest(int rest, const float* pt, int64_t rows_pad, const float* alpha,
                           const float* vt, int64_t padded, int count, float* o) {
  if constexpr (R > 1) {
    if (rest == R - 1) {
      return AccumulateBlock<R - 1, NV>(pt, rows_pad, alpha, vt, padded, count, o);
    }
    AccumulateRest<R - 1, NV>(rest, pt, rows_pad, alpha, vt, padded, count, o);
  }
}

template <int NV>
inline void AccumulateColumns(const float* pt, int64_t rows_pad, const float* alpha,
                              const float* vt, int64_t padded, int rows, int count, float* o) {
  constexpr int kRows = kPvRows<NV>;
  int r = 0;
  for (; r + kRows <= rows; r += kRows) {
    AccumulateBlock<kRows, NV>(pt + r, rows_pad, alpha + r, vt, padded, count, o + r * padded);
  }
  AccumulateRest<kRows, NV>(rows - r, pt + r, rows_pad, alpha + r, vt, padded, count,
                            o + r * padded);
}

// O [rows][padded] = alpha * O + P V with P given key-major as
// pt [count][rows_pad] and V as vt [count][padded]; column chunks of at
// most 4 vectors (3 for head dim 48).
inline void AccumulateTile(const float* pt, int64_t rows_pad, const float* alpha, const float* vt,
                           int padded, int rows, int count, float* o) {
  const int nv = padded / kLanes;
  if (nv == 3) return AccumulateColumns<3>(pt, rows_pad, alpha, vt, padded, rows, count, o);
  int c = 0;
  for (; c + 4 <= nv; c += 4) {
    AccumulateColumns<4>(pt, rows_pad, alpha, vt + c * kLanes, padded, rows, count, o + c * kLanes);
  }
  const int rest = nv - c;
  const float* vc = vt + c * kLanes;
  float* oc = o + c * kLanes;
  if (rest == 3) AccumulateColumns<3>(pt, rows_pad, alpha, vc, padded, rows, count, oc);
  if (rest == 2) AccumulateColumns<2>(pt, rows_pad, alpha, vc, padded, rows, count, oc);
  if (rest == 1) AccumulateColumns<1>(pt, rows_pad, alpha, vc, padded, rows, count, oc);
}

// kr[c] = rotated key of entry j0 + c as a padded fp32 row, c < count.
// scratch: at least KeyTileScratch floats.
template <class Tag, RopeStyle kRope>
void LoadKeyRowsAs(const ListSource& src, int64_t j0, int count, const AttentionSetup& setup,
                   float* kr, float* scratch) {
  const int d_head = setup.head_dim, padded = setup.padded_dim, half = d_head / 2;
  const auto* base = static_cast<const typename Tag::Storage*>(src.k);
  float* expanded = scratch;            // [2][padded]
  float* pair = expanded + 2 * padded;  // [head_dim]: cos | sin
  for (int c = 0; c < count; ++c) {
    const int64_t j = j0 + c;
    if constexpr (kRope != RopeStyle::kNone) setup.rope.Angles(src.positions[j], pair, pair + half);
    const int64_t off = src.rows.SlotOffset(src.indices[j]) + src.head_offset;
    KeyRow<Tag, kRope>(base + off, d_head, padded, pair, expanded, kr + int64_t{c} * padded);
  }
}

template <class Tag>
void LoadKeyRows(const ListSource& src, int64_t j0, int count, const AttentionSetup& setup,
                 float* kr, float* scratch) {
  if (src.positions == nullptr || setup.style == RopeStyle::kNone) {
    return LoadKeyRowsAs<Tag, RopeStyle::kNone>(src, j0, count, setup, kr, scratch);
  }
  if (setup.style == RopeStyle::kHalf) {
    return LoadKeyRowsAs<Tag, RopeStyle::kHalf>(src, j0, count, setup, kr, scratch);
  }
  return LoadKeyRowsAs<Tag, RopeStyle::kInterleaved>(src, j0, count, setup, kr, scratch);
}

}  // namespace kvc::kernels::KVC_CPU_NS

#endif  // KVC_KERNELS_CPU_ISA_PREFILL_BLOCKS_H_
