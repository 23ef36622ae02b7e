// Tiles of the optimised CPU prefill: kKeyTile gathered keys converted to
// fp32 and rotated (KeyRow), either transposed ([padded_dim][kKeyTile], the
// score pass: S = Q K^T as a broadcast-FMA loop over keys in lanes) or
// row-major (the attention pass, prefill_blocks.h); value tiles
// ([kKeyTile][padded_dim]). Register blocks follow the register file of the
// ISA level (simd.h kNativeLanes).
#ifndef KVC_KERNELS_CPU_ISA_PREFILL_TILES_H_
#define KVC_KERNELS_CPU_ISA_PREFILL_TILES_H_

#include <algorithm>
#include <cstdint>

#include "kernels/cpu/isa/attention_common.h"
#include "kernels/cpu/isa/isa.h"
#include "kernels/cpu/isa/simd.h"

namespace kvc::kernels::KVC_CPU_NS {

inline constexpr int kKeyTile = 64;
inline constexpr int kKeyVecs = kKeyTile / kLanes;
// Accumulators (in v16f) a register block may hold: 24 of 32 zmm on v4,
// 6 v16f = 12 of 16 ymm on v3, 3 v16f = 12 of 16 xmm on v2.
inline constexpr int kAccBudget = kNativeLanes == 16 ? 24 : kNativeLanes == 8 ? 6 : 3;
// Query rows per block of S = Q K^T (each row holds kKeyVecs accumulators).
inline constexpr int kScoreRows = kAccBudget / kKeyVecs > 0 ? kAccBudget / kKeyVecs : 1;

// Queries per tile of the prefill passes: up to kMaxTileRows rows (queries
// x group) share each loaded key tile, fewer when that would leave threads
// without a tile.
inline constexpr int kMaxTileRows = 256;
inline int64_t PrefillQueryTile(int64_t num_q, int group, int num_kv_heads, int num_threads) {
  int64_t q_tile = std::max(1, kMaxTileRows / group);
  while (q_tile > 1 && num_kv_heads * ((num_q + q_tile - 1) / q_tile) < 2 * num_threads) {
    q_tile = (q_tile + 1) / 2;
  }
  return q_tile;
}

// Where the keys and values of one gathered list live, for one KV head.
struct ListSource {
  const void* k = nullptr;
  const void* v = nullptr;
  KvRows rows;
  int64_t head_offset = 0;             // kv_head * rows.head_stride
  const int32_t* indices = nullptr;    // the list's slots
  const int32_t* positions = nullptr;  // the list's positions; null = no key rotation
};

// In-register transpose of a 16 x 16 block: r[i][j] -> r[j][i]. Four
// butterfly stages; at distance b row i pairs with row i + b.
inline void Transpose16(v16f* r) {
#define KVC_STAGE(B, ...)                                 \
  for (int i = 0; i < 16; ++i) {                          \
    if (i & B) continue;                                  \
    const v16f x = r[i], y = r[i + B];                    \
    r[i] = __builtin_shufflevector(x, y, __VA_ARGS__);    \
    r[i + B] = __builtin_shufflevector(x, y, KVC_HI_##B); \
  }
#define KVC_HI_8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define KVC_HI_4 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define KVC_HI_2 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define KVC_HI_1 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31
#pragma GCC unroll 16
  KVC_STAGE(8, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23)
#pragma GCC unroll 16
  KVC_STAGE(4, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27)
#pragma GCC unroll 16
  KVC_STAGE(2, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29)
#pragma GCC unroll 16
  KVC_STAGE(1, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30)
#undef KVC_STAGE
#undef KVC_HI_8
#undef KVC_HI_4
#undef KVC_HI_2
#undef KVC_HI_1
}

// One key row as padded fp32 (pad lanes zero), rotated. In registers for
// whole-vector rows (kRope != kNone needs head_dim 64 or 128, see
// KeyVector); otherwise converted, then rotated by RotateRow.
template <class Tag, RopeStyle kRope>
inline void KeyRow(const typename Tag::Storage* key, int d_head, int padded, const float* pair,
                   float* expanded, float* row) {
  const int half = d_head / 2;
  if (d_head == padded && (kRope == RopeStyle::kNone || d_head == 64 || d_head == 128)) {
    if constexpr (kRope != RopeStyle::kNone)
      ExpandAngles(kRope, d_head, pair, pair + half, expanded);
    const int nv = padded / kLanes;
    for (int c = 0; c < nv; ++c)
      Store(row + c * kLanes, KeyVector<Tag, kRope>(key, expanded, c, nv));
    return;
  }
  ConvertRow<Tag>(key, d_head, row);
  for (int d = d_head; d < padded; ++d) row[d] = 0.0f;
  if constexpr (kRope != RopeStyle::kNone) RotateRow(kRope, d_head, pair, pair + half, row);
}

// kt[d][c] = rotated key of entry j0 + c, dim d, for c < count; columns
// count..kKeyTile-1 and rows head_dim..padded_dim-1 are zero.
// scratch: at least (kLanes + 2) * padded_dim + head_dim floats.
template <class Tag, RopeStyle kRope>
void LoadKeyTileAs(const ListSource& src, int64_t j0, int count, const AttentionSetup& setup,
                   float* kt, float* scratch) {
  const int d_head = setup.head_dim, padded = setup.padded_dim, half = d_head / 2;
  const auto* base = static_cast<const typename Tag::Storage*>(src.k);
  float* rows = scratch;                     // [16][padded]
  float* expanded = rows + kLanes * padded;  // [2][padded]
  float* pair = expanded + 2 * padded;       // [head_dim]: cos | sin
  for (int c0 = 0; c0 < kKeyTile; c0 += kLanes) {
    const int n = std::clamp(count - c0, 0, kLanes);
    for (int k = 0; k < kLanes; ++k) {
      float* row = rows + k * padded;
      if (k >= n) {
        for (int d = 0; d < padded; ++d) row[d] = 0.0f;
        continue;
      }
      const int64_t j = j0 + c0 + k;
      if constexpr (kRope != RopeStyle::kNone) {
        setup.rope.Angles(src.positions[j], pair, pair + half);
      }
      const int64_t off = src.rows.SlotOffset(src.indices[j]) + src.head_offset;
      KeyRow<Tag, kRope>(base + off, d_head, padded, pair, expanded, row);
    }
    for (int d0 = 0; d0 < padded; d0 += kLanes) {
      v16f r[kLanes];
      for (int k = 0; k < kLanes; ++k) r[k] = Load(rows + k * padded + d0);
      Transpose16(r);
      for (int t = 0; t < kLanes; ++t) Store(kt + (d0 + t) * kKeyTile + c0, r[t]);
    }
  }
}

template <class Tag>
void LoadKeyTile(const ListSource& src, int64_t j0, int count, const AttentionSetup& setup,
                 float* kt, float* scratch) {
  if (src.positions == nullptr || setup.style == RopeStyle::kNone) {
    return LoadKeyTileAs<Tag, RopeStyle::kNone>(src, j0, count, setup, kt, scratch);
  }
  if (setup.style == RopeStyle::kHalf) {
    return LoadKeyTileAs<Tag, RopeStyle::kHalf>(src, j0, count, setup, kt, scratch);
  }
  return LoadKeyTileAs<Tag, RopeStyle::kInterleaved>(src, j0, count, setup, kt, scratch);
}

// Floats of scratch LoadKeyTile needs.
inline int64_t KeyTileScratch(int padded, int d_head) {
  return int64_t{kLanes + 2} * padded + d_head;
}

// vt[c][:] = value of entry j0 + c as fp32 padded rows; rows count.. zero.
template <class Tag>
void LoadValueTile(const ListSource& src, int64_t j0, int count, const AttentionSetup& setup,
                   float* vt) {
  const int d_head = setup.head_dim, padded = setup.padded_dim;
  const auto* base = static_cast<const typename Tag::Storage*>(src.v);
  for (int c = 0; c < kKeyTile; ++c) {
    float* row = vt + static_cast<int64_t>(c) * padded;
    if (c < count) {
      const int64_t off = src.rows.SlotOffset(src.indices[j0 + c]) + src.head_offset;
      ConvertRow<Tag>(base + off, d_head, row);
      for (int d = d_head; d < padded; ++d) row[d] = 0.0f;
    } else {
      for (int d = 0; d < padded; ++d) row[d] = 0.0f;
    }
  }
}

// s[r][0..kKeyTile) = q[r] . kt[:, c] for R rows (q rows `q_stride` apart).
template <int R>
inline void ScoreBlock(const float* q, int64_t q_stride, const float* kt, int d_head, float* s) {
  v16f acc[R][kKeyVecs];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < kKeyVecs; ++v) acc[r][v] = Zero();
  }
  for (int d = 0; d < d_head; ++d) {
    v16f k[kKeyVecs];
#pragma GCC unroll 4
    for (int v = 0; v < kKeyVecs; ++v) k[v] = Load(kt + d * kKeyTile + v * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const v16f qb = Splat(q[r * q_stride + d]);
#pragma GCC unroll 4
      for (int v = 0; v < kKeyVecs; ++v) acc[r][v] = Fma(qb, k[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < kKeyVecs; ++v) Store(s + r * kKeyTile + v * kLanes, acc[r][v]);
  }
}

// The last rows of a tile: one ScoreBlock<rest>, rest < R.
template <int R>
inline void ScoreRest(int rest, const float* q, int64_t q_stride, const float* kt, int d_head,
                      float* s) {
  if constexpr (R > 1) {
    if (rest == R - 1) return ScoreBlock<R - 1>(q, q_stride, kt, d_head, s);
    ScoreRest<R - 1>(rest, q, q_stride, kt, d_head, s);
  }
}

// s [rows][kKeyTile] = Q [rows][padded_dim] K^T.
inline void ScoreTile(const float* q, int rows, int padded, const float* kt, int d_head, float* s) {
  int r = 0;
  for (; r + kScoreRows <= rows; r += kScoreRows) {
    ScoreBlock<kScoreRows>(q + int64_t{r} * padded, padded, kt, d_head, s + r * kKeyTile);
  }
  ScoreRest<kScoreRows>(rows - r, q + int64_t{r} * padded, padded, kt, d_head, s + r * kKeyTile);
}

}  // namespace kvc::kernels::KVC_CPU_NS

#endif  // KVC_KERNELS_CPU_ISA_PREFILL_TILES_H_
