// Linear (kernels/dense.h), optimised CPU path: y = x W^T with W [n][k].
//
// Every output is computed by one thread, in an order fixed by (m, n, k)
// alone: the work is split over output columns (and rows, for a batch),
// never inside a dot product, so results do not depend on the thread count.
// Two tilings, chosen by m:
//  - decode, m <= kGemvMaxRows: tiles of one x row by kVecLanes W rows.
//    Lanes run along k: an accumulator per W row gathers kVecLanes strided
//    partial sums, and ReduceLanes (native_vec.h) turns the kVecLanes
//    accumulators into kVecLanes outputs at once. W is read straight from
//    memory in its dtype, once per call (further rows of x find the tile in
//    L1), with the next tile prefetched: bandwidth-bound.
//  - a batch: register tiles of kTileRows rows of x by kPanelCols outputs
//    (12 x 32 on v4, 6 x 16 on v3). Lanes run along the outputs: for each
//    d < k, the tile adds x[i][d] (a broadcast, read from x in place) times
//    a row of a W^T panel ([k][kPanelCols], W transposed and widened to fp32
//    once per task, or read from the caller's LinearPack, laid out once per
//    model) to kTileRows x kTileVecs accumulators. FMA-bound.
// The two tilings sum in different orders, so a row may differ in its last
// bits between m = 1 and a batch (as dense.h says).
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "kernels/cpu/isa/cpu_kernels.h"
#include "kernels/cpu/isa/native_vec.h"
#include "kernels/cpu/isa/simd.h"
#include "kernels/thread_pool.h"

namespace kvc::kernels::KVC_CPU_NS {
namespace {

// Rows of x up to which the decode tiling is used: it reads each W tile
// from memory once and applies it to every row from L1, at about half the
// FMA rate of the batch tiles, which is free while W streams from DRAM (and
// the batch tiles would compute a mostly empty panel of rows).
constexpr int64_t kGemvMaxRows = 8;
// Batch tiles: kTileRows rows of x by kTileVecs vectors of outputs, every
// accumulator in a register (24 + 2 of 32 zmm on v4, 12 + 2 of 16 ymm on
// v3); 12 x 32 measured 5% faster than 16 x 16 or 14 x 32 on Zen 5.
#if defined(__AVX512F__)
constexpr int kTileRows = 12, kTileVecs = 2;
#else
constexpr int kTileRows = 6, kTileVecs = 2;
#endif
constexpr int kPanelCols = kTileVecs * kVecLanes;  // W rows per W^T panel
constexpr int64_t kMaxPanelsPerTask = 4;
constexpr int64_t kTasksPerThread = 4;
// Below this many multiply-adds a call runs on the calling thread: a pool
// call costs a few microseconds even with its workers spinning (from 64K
// up, a decode GEMV of stories15M, both threads stream W faster).
constexpr int64_t kMinParallelMacs = int64_t{1} << 16;

ThreadPool& PoolOf(const ExecContext& ctx) {
  return ctx.pool != nullptr ? *ctx.pool : DefaultThreadPool();
}

// A per-thread fp32 scratch (a worker's W^T panels) of at least n floats,
// reused across calls; null when it cannot be allocated.
float* PanelScratch(size_t n) {
  thread_local AlignedFloats buf;
  thread_local size_t capacity = 0;
  if (capacity < n) {
    buf = AllocateFloats(n);
    capacity = buf != nullptr ? n : 0;
  }
  return buf.get();
}

// Writes the first `count` lanes of `sums` to y (adding y's values when
// accumulating).
inline void StoreOutputs(float* y, VecF sums, int count, bool accumulate) {
  if (count == kVecLanes) {
    if (accumulate) sums += LoadVec(y);
    StoreVec(y, sums);
  } else {
    if (accumulate) sums += LoadVecTail(y, count);
    StoreVecTail(y, sums, count);
  }
}

// ---- Decode: one x row by kVecLanes W rows ------------------------------------

// y[j0 .. j0 + count) for x row `x`; w_rows[t] is W row j0 + t (rows past
// the last repeat it; their sums are dropped). `prefetch`, when not null, is
// the next tile's W block (kVecLanes x k elements, contiguous): a chunk of
// it is prefetched per chunk of this tile, so the whole block is on its way
// when this tile ends. The rows of a tile are read interleaved, half a line
// of each per chunk for bf16, a pattern the hardware prefetchers follow
// poorly (bf16 decode reached 55% of the read bandwidth without this).
template <class W>
inline void GemvTile(const float* x, const typename W::T* const* w_rows, int32_t k, float* y,
                     int count, bool accumulate, const char* prefetch) {
  constexpr int kChunkBytes = kVecLanes * kVecLanes * sizeof(typename W::T);
  VecF acc[kVecLanes] = {};
  int32_t d = 0;
  for (; d + kVecLanes <= k; d += kVecLanes) {
    if (prefetch != nullptr) {
      for (int b = 0; b < kChunkBytes; b += 64) __builtin_prefetch(prefetch + b);
      prefetch += kChunkBytes;
    }
    const VecF xv = LoadVec(x + d);
    for (int t = 0; t < kVecLanes; ++t) acc[t] += xv * W::Load(w_rows[t] + d);
  }
  if (d < k) {
    const int tail = k - d;
    const VecF xv = LoadVecTail(x + d, tail);
    for (int t = 0; t < kVecLanes; ++t) acc[t] += xv * W::LoadTail(w_rows[t] + d, tail);
  }
  StoreOutputs(y, ReduceLanes(acc), count, accumulate);
}

// Column groups [g_begin, g_end) of kVecLanes outputs, for every row of x.
template <class W>
void GemvGroups(const LinearArgs& a, int64_t g_begin, int64_t g_end) {
  const auto* w = static_cast<const typename W::T*>(a.w);
  for (int64_t g = g_begin; g < g_end; ++g) {
    const int32_t j0 = static_cast<int32_t>(g * kVecLanes);
    const int count = std::min(kVecLanes, a.n - j0);
    const typename W::T* rows[kVecLanes];
    for (int t = 0; t < kVecLanes; ++t) {
      rows[t] = w + static_cast<int64_t>(std::min(j0 + t, a.n - 1)) * a.k;
    }
    // Only the first row reads W from memory; the others find it in L1.
    // bf16 only: fp32 decode measured 5-10% slower with the prefetch.
    constexpr bool kPrefetchW = sizeof(typename W::T) < sizeof(float);
    const char* next = j0 + kVecLanes < a.n ? reinterpret_cast<const char*>(
                                                  w + (j0 + int64_t{kVecLanes}) * a.k)
                                            : nullptr;
    for (int64_t i = 0; i < a.m; ++i) {
      GemvTile<W>(a.x + i * a.k, rows, a.k, a.y + i * a.n + j0, count, a.accumulate,
                  i == 0 && kPrefetchW ? next : nullptr);
    }
  }
}

// ---- Batch: kTileRows rows of x by a W^T panel -----------------------------------

// W^T panel g: W rows [g * kPanelCols, +kPanelCols) as [k][kPanelCols] fp32,
// zero past row n. dst: k * kPanelCols floats.
template <class W>
void PackWPanel(const LinearArgs& a, int64_t g, float* dst) {
  const auto* w = static_cast<const typename W::T*>(a.w);
  for (int v = 0; v < kTileVecs; ++v) {
    const int64_t j0 = g * kPanelCols + v * kVecLanes;
    const int rows = static_cast<int>(std::clamp<int64_t>(a.n - j0, 0, kVecLanes));
    for (int32_t d = 0; d < a.k; d += kVecLanes) {
      const int width = std::min(kVecLanes, a.k - d);
      VecF block[kVecLanes];
      for (int r = 0; r < kVecLanes; ++r) {
        const typename W::T* src = w + (j0 + r) * a.k + d;
        block[r] = r >= rows                 ? VecF{}
                   : width == kVecLanes ? W::Load(src)
                                        : W::LoadTail(src, width);
      }
      Transpose(block);
      for (int c = 0; c < width; ++c) {
        StoreVec(dst + static_cast<int64_t>(d + c) * kPanelCols + v * kVecLanes, block[c]);
      }
    }
  }
}

// y[i0 + r][j0 + c] for r < rows, c < cols: `x` points at x row i0 (row
// stride k), `wt` at a W^T panel (row stride ld floats), `y` at (i0, j0)
// (row stride n). kRows <= kTileRows rows are computed (rows past `rows`
// repeat the last one; their sums are dropped); the caller picks the
// smallest kRows that covers rows.
template <int kRows>
inline void Tile(const float* x, const float* wt, int64_t ld, int32_t k, int32_t n, float* y,
                 int rows, int cols, bool accumulate) {
  VecF acc[kRows][kTileVecs] = {};
  const float* xr[kRows];
  for (int r = 0; r < kRows; ++r) xr[r] = x + static_cast<int64_t>(std::min(r, rows - 1)) * k;
  for (int32_t d = 0; d < k; ++d) {
    VecF wv[kTileVecs];
    for (int v = 0; v < kTileVecs; ++v) {
      wv[v] = LoadVec(wt + d * ld + v * kVecLanes);
    }
    for (int r = 0; r < kRows; ++r) {
      const VecF xb = SplatVec(xr[r][d]);
      for (int v = 0; v < kTileVecs; ++v) acc[r][v] += xb * wv[v];
    }
  }
  for (int r = 0; r < std::min(rows, kRows); ++r) {
    float* yr = y + static_cast<int64_t>(r) * n;
    for (int v = 0; v < kTileVecs; ++v) {
      const int c = cols - v * kVecLanes;
      if (c <= 0) break;
      StoreOutputs(yr + v * kVecLanes, acc[r][v], std::min(c, kVecLanes), accumulate);
    }
  }
}

// A LinearPack panel holds kPacked of this ISA's W^T panels side by side.
constexpr int kPacked = LinearPack::kPanelCols / kPanelCols;
static_assert(kPacked * kPanelCols == LinearPack::kPanelCols);

// W^T panels [g_begin, g_end) against row panels [p_begin, p_end) of x
// (kTileRows rows each); each row panel is reused from L1 by every W^T
// panel. The panels are read from a.pack when there is one, else laid out
// into `wt` (scratch for g_end - g_begin W^T panels) first.
template <class W>
void GemmPanels(const LinearArgs& a, int64_t g_begin, int64_t g_end, int64_t p_begin,
                int64_t p_end, float* wt) {
  const int64_t panel_floats = static_cast<int64_t>(a.k) * kPanelCols;
  int64_t ld = kPanelCols;
  auto panel = [&](int64_t g) { return wt + (g - g_begin) * panel_floats; };
  if (a.pack != nullptr) {
    ld = LinearPack::kPanelCols;
  } else {
    for (int64_t g = g_begin; g < g_end; ++g) PackWPanel<W>(a, g, panel(g));
  }
  auto panel_of = [&](int64_t g) -> const float* {
    if (a.pack == nullptr) return panel(g);
    return a.pack->panels.get() + (g / kPacked) * a.k * ld + (g % kPacked) * kPanelCols;
  };
  for (int64_t p = p_begin; p < p_end; ++p) {
    const int64_t i0 = p * kTileRows;
    const int rows = static_cast<int>(std::min<int64_t>(kTileRows, a.m - i0));
    const float* xp = a.x + i0 * a.k;
    for (int64_t g = g_begin; g < g_end; ++g) {
      const int64_t j0 = g * kPanelCols;
      const int cols = static_cast<int>(std::min<int64_t>(kPanelCols, a.n - j0));
      const float* wp = panel_of(g);
      float* y = a.y + i0 * a.n + j0;
      if (rows <= kTileRows / 4) {
        Tile<kTileRows / 4>(xp, wp, ld, a.k, a.n, y, rows, cols, a.accumulate);
      } else if (rows <= kTileRows / 2) {
        Tile<kTileRows / 2>(xp, wp, ld, a.k, a.n, y, rows, cols, a.accumulate);
      } else {
        Tile<kTileRows>(xp, wp, ld, a.k, a.n, y, rows, cols, a.accumulate);
      }
    }
  }
}

absl::Status Gemm(ThreadPool& pool, bool parallel, const LinearArgs& a) {
  const int64_t x_panels = (a.m + kTileRows - 1) / kTileRows;
  // Tasks: up to kMaxPanelsPerTask W^T panels by a range of row panels,
  // about kTasksPerThread per thread. Only speed depends on this split.
  const int64_t w_panels = (a.n + kPanelCols - 1) / kPanelCols;
  const int64_t target = parallel ? kTasksPerThread * pool.num_threads() : 1;
  const int64_t panels_per_task = std::clamp<int64_t>(w_panels / target, 1, kMaxPanelsPerTask);
  const int64_t col_tasks = (w_panels + panels_per_task - 1) / panels_per_task;
  // Rows split too when there are few column tasks, into a task count that
  // is a multiple of the thread count where the rows allow it.
  int64_t row_tasks = (target + col_tasks - 1) / col_tasks;
  if (parallel) {
    while ((col_tasks * row_tasks) % pool.num_threads() != 0 && row_tasks < x_panels) ++row_tasks;
  }
  row_tasks = std::clamp<int64_t>(row_tasks, 1, x_panels);
  const int64_t panels_per_row_task = (x_panels + row_tasks - 1) / row_tasks;
  const size_t wt_floats = static_cast<size_t>(panels_per_task) * a.k * kPanelCols;
  std::atomic<bool> out_of_memory{false};
  pool.ParallelFor(col_tasks * row_tasks, 1, [&](int64_t begin, int64_t end) {
    float* wt = a.pack != nullptr ? nullptr : PanelScratch(wt_floats);
    if (wt == nullptr && a.pack == nullptr) {
      out_of_memory.store(true, std::memory_order_relaxed);
      return;
    }
    for (int64_t t = begin; t < end; ++t) {
      const int64_t g = t / row_tasks * panels_per_task, p = t % row_tasks * panels_per_row_task;
      const int64_t g_end = std::min(w_panels, g + panels_per_task);
      const int64_t p_end = std::min(x_panels, p + panels_per_row_task);
      if (a.w_dtype == DType::kBF16) {
        GemmPanels<WeightBF16>(a, g, g_end, p, p_end, wt);
      } else {
        GemmPanels<WeightF32>(a, g, g_end, p, p_end, wt);
      }
    }
  });
  if (out_of_memory.load()) {
    return absl::ResourceExhaustedError("Linear (CPU): cannot allocate W^T panels");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Linear(const ExecContext& ctx, const LinearArgs& a) {
  ThreadPool& pool = PoolOf(ctx);
  const int64_t macs = a.m * a.n * a.k;
  const bool parallel = macs >= kMinParallelMacs && pool.num_threads() > 1;
  if (a.m <= kGemvMaxRows) {
    const int64_t groups = (a.n + kVecLanes - 1) / kVecLanes;
    // About 8 ranges per thread: contiguous W streams, balanced ends.
    const int64_t grain =
        parallel ? std::max<int64_t>(1, groups / (8 * pool.num_threads())) : groups;
    pool.ParallelFor(groups, grain, [&](int64_t begin, int64_t end) {
      if (a.w_dtype == DType::kBF16) {
        GemvGroups<WeightBF16>(a, begin, end);
      } else {
        GemvGroups<WeightF32>(a, begin, end);
      }
    });
    return absl::OkStatus();
  }
  return Gemm(pool, parallel, a);
}

}  // namespace kvc::kernels::KVC_CPU_NS
