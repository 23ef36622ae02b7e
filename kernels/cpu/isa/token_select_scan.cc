// Tiles of kTC candidates x kTH query heads of one KV group (kTC * kTH =
// tile::kW accumulators, one per pair; see token_select_tile.h): each key
// vector is loaded and widened to fp32 once, in registers, and feeds the kTH
// heads; each query vector is read from L1 by the kTC candidates. A
// transposing reduction turns the accumulators into one vector of logits.
// Key rows are prefetched kPrefetchAhead candidates ahead, spread over the
// KV heads.
//
// Head dims 64, 128 and 256 have compiled-in loops (bf16 rows with the
// even/odd split of tile::LoadPair, the query permuted to match); other head
// dims go through rows widened into a small zero-padded buffer.
#include "kernels/cpu/isa/token_select_scan.h"

#include <algorithm>
#include <type_traits>

#include "kernels/cpu/isa/simd.h"
#include "kernels/cpu/isa/token_select_tile.h"

namespace kvc::kernels::KVC_CPU_NS {
namespace {

using tile::kW;
using tile::vw;

// KvPool::Offset(slot, 0); KV head h adds h * HeadStride(). NHD rows do not
// depend on the page size, and power-of-two pages need no division.
inline int64_t RowOffset(const KvPool& pool, int64_t slot) {
  const int64_t page_size = pool.page_size;
  if (pool.layout == KvLayout::kNHD || page_size == 1) {
    return slot * pool.num_kv_heads * pool.head_dim;
  }
  int64_t page, in_page;
  if ((page_size & (page_size - 1)) == 0) {
    page = slot >> __builtin_ctzll(page_size);
    in_page = slot & (page_size - 1);
  } else {
    page = slot / page_size;
    in_page = slot % page_size;
  }
  return (page * pool.num_kv_heads * page_size + in_page) * pool.head_dim;
}
inline int64_t HeadStride(const KvPool& pool) {
  return pool.layout == KvLayout::kNHD ? pool.head_dim
                                       : static_cast<int64_t>(pool.page_size) * pool.head_dim;
}
// Element offset of the row of candidate t, KV head 0.
inline int64_t CandidateRow(const LogitScan& s, int64_t t) {
  return RowOffset(*s.pool, s.candidates != nullptr ? s.candidates[t] : t);
}

inline bool FixedDim(int32_t head_dim) {
  return head_dim == 64 || head_dim == 128 || head_dim == 256;
}

// The tile's logits from key rows in storage type Tag, head dim kDim.
// rows[i]: candidate i's row of the group's KV head; q: the tile's first
// head in the scan query ([kTH][kDim]).
template <class Tag, int kDim, int kTH>
inline vw TileLogits(const typename Tag::Storage* const* rows, const float* q) {
  constexpr int kTC = kW / kTH;
  vw acc[kW];
  for (int a = 0; a < kW; ++a) acc[a] = vw{};
  for (int c2 = 0; c2 < kDim / (2 * kW); ++c2) {
    for (int i = 0; i < kTC; ++i) {
      vw ka, kb;
      tile::LoadPair<Tag>(rows[i], c2, &ka, &kb);
      for (int j = 0; j < kTH; ++j) {
        const float* qj = q + j * kDim + c2 * 2 * kW;
        acc[j * kTC + i] = tile::Fma(tile::Load(qj), ka, acc[j * kTC + i]);
        acc[j * kTC + i] = tile::Fma(tile::Load(qj + kW), kb, acc[j * kTC + i]);
      }
    }
  }
  return tile::TransposeReduce(acc);
}

// The same from rows widened to fp32 ([padded] each, zero tail), any dim.
template <int kTH>
inline vw TileLogitsWidened(const float* const* rows, const float* q, int32_t padded) {
  constexpr int kTC = kW / kTH;
  vw acc[kW];
  for (int a = 0; a < kW; ++a) acc[a] = vw{};
  for (int c = 0; c < padded / kW; ++c) {
    for (int i = 0; i < kTC; ++i) {
      const vw k = tile::Load(rows[i] + c * kW);
      for (int j = 0; j < kTH; ++j) {
        acc[j * kTC + i] = tile::Fma(tile::Load(q + j * padded + c * kW), k, acc[j * kTC + i]);
      }
    }
  }
  return tile::TransposeReduce(acc);
}

// How far ahead (in candidates) key rows are prefetched.
constexpr int kPrefetchAhead = 32;

// kDim: the head dim, or 0 for any (widened rows).
template <class Tag, int kDim, int kTH>
void Scan(const LogitScan& s, int64_t begin, int64_t end, float* logits, int64_t stride,
          float* widened) {
  using Storage = typename Tag::Storage;
  constexpr int kTC = kW / kTH;
  const KvPool& pool = *s.pool;
  const Storage* keys = static_cast<const Storage*>(pool.k);
  const int32_t num_kv = pool.num_kv_heads, group = s.num_q_heads / num_kv;
  const int32_t dim = pool.head_dim, padded = ScanPaddedDim(dim);
  const int64_t head_stride = HeadStride(pool);
  const size_t row_bytes = dim * sizeof(Storage);
  if constexpr (kDim == 0) {
    for (int i = 0; i < kTC; ++i) {
      std::fill(widened + i * padded + dim, widened + (i + 1) * padded, 0.0f);
    }
  }
  for (int64_t t0 = begin; t0 < end; t0 += kTC) {
    const int live = static_cast<int>(std::min<int64_t>(kTC, end - t0));
    int64_t first_row[kTC];
    // Lanes past `end` repeat the last candidate; their logits are dropped.
    for (int i = 0; i < kTC; ++i) first_row[i] = CandidateRow(s, t0 + std::min(i, live - 1));
    int64_t ahead_row[kTC] = {};
    const int64_t ahead = t0 + kPrefetchAhead;
    const int ahead_live = static_cast<int>(std::clamp<int64_t>(end - ahead, 0, kTC));
    for (int i = 0; i < ahead_live; ++i) ahead_row[i] = CandidateRow(s, ahead + i);
    float* out = logits + (t0 - begin);
    for (int32_t kv = 0; kv < num_kv; ++kv) {
      for (int i = 0; i < ahead_live; ++i) {
        const char* p = reinterpret_cast<const char*>(keys + ahead_row[i] + kv * head_stride);
        for (size_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(p + b);
      }
      const Storage* rows[kTC];
      const float* wrows[kTC];
      for (int i = 0; i < kTC; ++i) {
        rows[i] = keys + first_row[i] + kv * head_stride;
        if constexpr (kDim == 0) {
          wrows[i] = widened + std::min(i, live - 1) * padded;
          if (i < live) ConvertRow<Tag>(rows[i], dim, widened + i * padded);
        }
      }
      for (int32_t h0 = kv * group; h0 < (kv + 1) * group; h0 += kTH) {
        const float* q = s.query + static_cast<int64_t>(h0) * padded;
        vw l;
        if constexpr (kDim == 0) {
          l = TileLogitsWidened<kTH>(wrows, q, padded);
        } else {
          l = TileLogits<Tag, kDim, kTH>(rows, q);
        }
        float lanes[kW];
        memcpy(lanes, &l, sizeof lanes);
        for (int j = 0; j < kTH; ++j) {
          float* dst = out + (h0 + j) * stride;
          if (live == kTC) {
            memcpy(dst, lanes + j * kTC, sizeof(float) * kTC);
          } else {
            for (int i = 0; i < live; ++i) dst[i] = lanes[j * kTC + i];
          }
        }
      }
    }
  }
}

template <class Tag, int kDim>
void ScanWithTile(const LogitScan& s, int64_t begin, int64_t end, float* logits, int64_t stride,
                  float* widened) {
  // Query heads per tile: the largest of 8, 4, 2, 1 dividing the group
  // (and at most kW).
  const int32_t group = s.num_q_heads / s.pool->num_kv_heads;
  if (kW >= 8 && group % 8 == 0) {
    return Scan<Tag, kDim, std::min(8, kW)>(s, begin, end, logits, stride, widened);
  }
  if (group % 4 == 0) return Scan<Tag, kDim, 4>(s, begin, end, logits, stride, widened);
  if (group % 2 == 0) return Scan<Tag, kDim, 2>(s, begin, end, logits, stride, widened);
  return Scan<Tag, kDim, 1>(s, begin, end, logits, stride, widened);
}

}  // namespace

int32_t ScanPaddedDim(int32_t head_dim) { return (head_dim + kLanes - 1) / kLanes * kLanes; }

void PrepareScanQuery(const KvPool& pool, const float* qbar, int32_t num_q_heads, float scale,
                      float* out) {
  const int32_t dim = pool.head_dim, padded = ScanPaddedDim(dim);
  // Only the compiled-in head dims read bf16 rows by split pairs.
  const bool split = pool.dtype == DType::kBF16 && FixedDim(dim);
  for (int32_t h = 0; h < num_q_heads; ++h) {
    const float* q = qbar + static_cast<int64_t>(h) * dim;
    float* o = out + static_cast<int64_t>(h) * padded;
    for (int32_t i = 0; i < padded; ++i) {
      const int32_t src = split ? tile::SplitPairSource(i) : i;
      o[i] = src < dim ? q[src] * scale : 0.0f;
    }
  }
}

size_t ScanScratchFloats(const KvPool& pool) {
  return static_cast<size_t>(kW) * ScanPaddedDim(pool.head_dim);
}

void ScanLogits(const LogitScan& scan, int64_t begin, int64_t end, float* logits, int64_t stride,
                float* scratch) {
  VisitKvType(scan.pool->dtype, [&](auto tag) {
    using Tag = decltype(tag);
    switch (scan.pool->head_dim) {
      case 64:
        return ScanWithTile<Tag, 64>(scan, begin, end, logits, stride, scratch);
      case 128:
        return ScanWithTile<Tag, 128>(scan, begin, end, logits, stride, scratch);
      case 256:
        return ScanWithTile<Tag, 256>(scan, begin, end, logits, stride, scratch);
      default:
        return ScanWithTile<Tag, 0>(scan, begin, end, logits, stride, scratch);
    }
  });
}

}  // namespace kvc::kernels::KVC_CPU_NS
