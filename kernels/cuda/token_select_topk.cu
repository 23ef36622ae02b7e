// Exact top-k for the CUDA TokenSelect, without CUB, and the workspace
// layout it shares with token_select.cu.
//
// Selection order is the reference's: a larger ScoreOrderKey first (the
// float order, both zeros equal, NaN lowest), equal keys by lower position.
//  1. Radix select, 4 passes of 8 bits from the top: each pass histograms
//     the digit of the keys that match the prefix found so far (block
//     histograms in shared memory, added to one global histogram), then one
//     thread walks the bins from the top to the bin holding the k-th largest.
//     The result is the threshold key T and r, the number of keys equal to T
//     that are selected (those at the lowest positions).
//  2. A stable compaction in position order: per scan tile of 1024 elements
//     the counts above / equal to T, their exclusive offsets (one block), then
//     each element's rank gives its output index. The output is therefore
//     already sorted by position.
// Integer atomics only, so the result is deterministic.
#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/token_select_workspace.h"

namespace kvc::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kPerThread = kTopKScanTile / kThreads;  // consecutive elements per thread
static_assert(kPerThread * kThreads == kTopKScanTile, "scan tile = threads x elements");

// kernels/ref/token_select.cc ScoreOrderKey: a larger key is a larger score.
__device__ __forceinline__ uint32_t OrderKey(float score) {
  if (score != score) return 0;
  uint32_t bits = __float_as_uint(score);
  if (bits == 0x80000000u) bits = 0;  // -0 ties with +0
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__global__ void RadixInitKernel(uint32_t* radix, uint32_t k) {
  for (int i = threadIdx.x; i < 256; i += blockDim.x) radix[i] = 0;
  if (threadIdx.x == 0) {
    radix[RadixArea::kPrefix] = 0;
    radix[RadixArea::kMask] = 0;
    radix[RadixArea::kRemaining] = k;
  }
}

__global__ void __launch_bounds__(kThreads)
    RadixHistogramKernel(const float* pooled, int64_t begin, int64_t end, int shift,
                         uint32_t* radix) {
  __shared__ uint32_t hist[256];
  hist[threadIdx.x] = 0;
  __syncthreads();
  const uint32_t prefix = radix[RadixArea::kPrefix], mask = radix[RadixArea::kMask];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t t = begin + static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; t < end;
       t += stride) {
    const uint32_t key = OrderKey(pooled[t]);
    if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
  }
  __syncthreads();
  if (hist[threadIdx.x] != 0) atomicAdd(&radix[threadIdx.x], hist[threadIdx.x]);
}

// Picks the digit holding the k-th largest of the matching keys, extends the
// prefix, and clears the histogram for the next pass.
__global__ void RadixPickKernel(uint32_t* radix, int shift) {
  if (threadIdx.x == 0) {
    const uint32_t remaining = radix[RadixArea::kRemaining];
    uint32_t above = 0, digit = 0;
    for (int d = 255; d >= 0; --d) {
      if (above + radix[d] >= remaining) {
        digit = static_cast<uint32_t>(d);
        break;
      }
      above += radix[d];
    }
    radix[RadixArea::kPrefix] |= digit << shift;
    radix[RadixArea::kMask] |= 255u << shift;
    radix[RadixArea::kRemaining] = remaining - above;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < 256; i += blockDim.x) radix[i] = 0;
}

// Keys of this thread's kPerThread consecutive elements of scan tile
// blockIdx.x, compared with the threshold: bit u of *above / *equal.
__device__ __forceinline__ void Classify(const float* pooled, int64_t begin, int64_t end,
                                         uint32_t threshold, unsigned* above, unsigned* equal) {
  const int64_t first =
      begin + static_cast<int64_t>(blockIdx.x) * kTopKScanTile + threadIdx.x * kPerThread;
  *above = 0;
  *equal = 0;
#pragma unroll
  for (int u = 0; u < kPerThread; ++u) {
    const int64_t t = first + u;
    if (t >= end) break;
    const uint32_t key = OrderKey(pooled[t]);
    if (key > threshold) *above |= 1u << u;
    if (key == threshold) *equal |= 1u << u;
  }
}

__global__ void __launch_bounds__(kThreads)
    ScanCountKernel(const float* pooled, int64_t begin, int64_t end, const uint32_t* radix,
                    uint32_t* above_count, uint32_t* equal_count) {
  __shared__ uint32_t scratch[33];
  unsigned above, equal;
  Classify(pooled, begin, end, radix[RadixArea::kPrefix], &above, &equal);
  const uint32_t a = BlockSum<uint32_t>(__popc(above), scratch);
  const uint32_t e = BlockSum<uint32_t>(__popc(equal), scratch);
  if (threadIdx.x == 0) {
    above_count[blockIdx.x] = a;
    equal_count[blockIdx.x] = e;
  }
}

// One block: exclusive offsets of the equal keys and of the selected keys per
// scan tile. A tile selects all its keys above T and those equal keys whose
// global rank among the equal ones is below r.
__global__ void __launch_bounds__(1024)
    ScanOffsetsKernel(const uint32_t* above_count, const uint32_t* equal_count, int64_t tiles,
                      const uint32_t* radix, uint32_t* equal_offset, uint32_t* selected_offset) {
  __shared__ uint32_t scratch[33];
  const int64_t per = (tiles + blockDim.x - 1) / blockDim.x;
  const int64_t lo = min(tiles, per * threadIdx.x), hi = min(tiles, lo + per);
  const int64_t take_equal = radix[RadixArea::kRemaining];

  uint32_t local = 0, total;
  for (int64_t b = lo; b < hi; ++b) local += equal_count[b];
  uint32_t run = BlockExclusiveScan(local, &total, scratch);
  for (int64_t b = lo; b < hi; ++b) {
    equal_offset[b] = run;
    run += equal_count[b];
  }
  // Selected per tile: above + clamp(take_equal - equal_offset, 0, equal).
  local = 0;
  for (int64_t b = lo; b < hi; ++b) {
    const int64_t eq =
        max(int64_t{0}, min(static_cast<int64_t>(equal_count[b]), take_equal - equal_offset[b]));
    local += above_count[b] + static_cast<uint32_t>(eq);
  }
  run = BlockExclusiveScan(local, &total, scratch);
  for (int64_t b = lo; b < hi; ++b) {
    selected_offset[b] = run;
    const int64_t eq =
        max(int64_t{0}, min(static_cast<int64_t>(equal_count[b]), take_equal - equal_offset[b]));
    run += above_count[b] + static_cast<uint32_t>(eq);
  }
}

__global__ void __launch_bounds__(kThreads)
    CompactKernel(const float* pooled, int64_t begin, int64_t end, const uint32_t* radix,
                  const uint32_t* equal_offset, const uint32_t* selected_offset, int32_t* selected,
                  float* selected_scores) {
  __shared__ uint32_t scratch[33];
  unsigned above, equal;
  Classify(pooled, begin, end, radix[RadixArea::kPrefix], &above, &equal);
  const uint32_t take_equal = radix[RadixArea::kRemaining];
  uint32_t total;
  uint32_t equal_rank =
      equal_offset[blockIdx.x] + BlockExclusiveScan(__popc(equal), &total, scratch);
  unsigned chosen = above;
#pragma unroll
  for (int u = 0; u < kPerThread; ++u) {
    if (equal & (1u << u)) {
      if (equal_rank < take_equal) chosen |= 1u << u;
      ++equal_rank;
    }
  }
  uint32_t out = selected_offset[blockIdx.x] + BlockExclusiveScan(__popc(chosen), &total, scratch);
  const int64_t first =
      begin + static_cast<int64_t>(blockIdx.x) * kTopKScanTile + threadIdx.x * kPerThread;
#pragma unroll
  for (int u = 0; u < kPerThread; ++u) {
    if (chosen & (1u << u)) {
      selected[out] = static_cast<int32_t>(first + u);
      if (selected_scores != nullptr) selected_scores[out] = pooled[first + u];
      ++out;
    }
  }
}

size_t AlignUp(size_t x, size_t a) { return (x + a - 1) / a * a; }

}  // namespace

absl::StatusOr<TokenSelectWorkspace> CarveTokenSelectWorkspace(void* workspace, size_t bytes,
                                                               int64_t n, int32_t num_q_heads,
                                                               int64_t eligible) {
  constexpr size_t kFixed = size_t{1} << 20;  // TokenSelectWorkspaceBytes' fixed part
  constexpr size_t kPartialBytes = 512 * 1024;
  if (num_q_heads > 32768) {
    return absl::UnimplementedError(
        absl::StrCat("TokenSelect (CUDA): ", num_q_heads, " query heads (max 32768)"));
  }
  const uintptr_t start = reinterpret_cast<uintptr_t>(workspace);
  const uintptr_t base = AlignUp(start, 16);
  const size_t floats = (static_cast<size_t>(num_q_heads) + 4) * static_cast<size_t>(n);
  const uintptr_t fixed = AlignUp(base + floats * sizeof(float), 256);
  TokenSelectWorkspace ws;
  ws.logits = reinterpret_cast<float*>(base);
  ws.score = ws.logits + static_cast<size_t>(num_q_heads) * n;
  ws.pooled = ws.score + n;
  float* spare = ws.pooled + n;  // 2n floats

  const int64_t max_blocks =
      static_cast<int64_t>(kPartialBytes / (16 * static_cast<size_t>(num_q_heads)));
  ws.lse_blocks = static_cast<int32_t>(
      std::max<int64_t>(1, std::min<int64_t>({64, max_blocks, CeilDiv(eligible, 2048)})));
  size_t used = 0;
  ws.lse_partials = reinterpret_cast<double*>(fixed + used);
  used += AlignUp(16 * static_cast<size_t>(num_q_heads) * ws.lse_blocks, 256);
  ws.lse = reinterpret_cast<float*>(fixed + used);
  used += AlignUp(4 * static_cast<size_t>(num_q_heads), 256);
  ws.radix = reinterpret_cast<uint32_t*>(fixed + used);
  used += AlignUp(4 * RadixArea::kWords, 256);
  ws.scan_tiles = CeilDiv(eligible, kTopKScanTile);
  const size_t scan_bytes = 16 * static_cast<size_t>(ws.scan_tiles);
  size_t end = fixed + used;
  if (used + scan_bytes <= kFixed - 512) {
    ws.scan = reinterpret_cast<uint32_t*>(fixed + used);
    end += scan_bytes;
  } else {
    // Many tiles: 16 bytes per 1024 candidates fits the 8n spare bytes.
    ws.scan = reinterpret_cast<uint32_t*>(spare);
  }
  if (end - start > bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("TokenSelect (CUDA): workspace of ", bytes,
                     " bytes is too small; TokenSelectWorkspaceBytes gives the size"));
  }
  return ws;
}

absl::Status LaunchTopK(const float* pooled, int64_t begin, int64_t end, int64_t k,
                        int32_t* selected, float* selected_scores, const TokenSelectWorkspace& ws,
                        cudaStream_t stream) {
  const int64_t eligible = end - begin;
  RadixInitKernel<<<1, 256, 0, stream>>>(ws.radix, static_cast<uint32_t>(k));
  if (absl::Status s = LaunchStatus("TokenSelect RadixInitKernel"); !s.ok()) return s;
  const unsigned hist_blocks =
      static_cast<unsigned>(std::min<int64_t>(CeilDiv(eligible, kTopKScanTile), 2048));
  for (int shift = 24; shift >= 0; shift -= 8) {
    RadixHistogramKernel<<<hist_blocks, kThreads, 0, stream>>>(pooled, begin, end, shift, ws.radix);
    if (absl::Status s = LaunchStatus("TokenSelect RadixHistogramKernel"); !s.ok()) return s;
    RadixPickKernel<<<1, 256, 0, stream>>>(ws.radix, shift);
    if (absl::Status s = LaunchStatus("TokenSelect RadixPickKernel"); !s.ok()) return s;
  }
  const int64_t tiles = ws.scan_tiles;
  uint32_t* above_count = ws.scan;
  uint32_t* equal_count = ws.scan + tiles;
  uint32_t* equal_offset = ws.scan + 2 * tiles;
  uint32_t* selected_offset = ws.scan + 3 * tiles;
  ScanCountKernel<<<static_cast<unsigned>(tiles), kThreads, 0, stream>>>(
      pooled, begin, end, ws.radix, above_count, equal_count);
  if (absl::Status s = LaunchStatus("TokenSelect ScanCountKernel"); !s.ok()) return s;
  ScanOffsetsKernel<<<1, 1024, 0, stream>>>(above_count, equal_count, tiles, ws.radix, equal_offset,
                                            selected_offset);
  if (absl::Status s = LaunchStatus("TokenSelect ScanOffsetsKernel"); !s.ok()) return s;
  CompactKernel<<<static_cast<unsigned>(tiles), kThreads, 0, stream>>>(
      pooled, begin, end, ws.radix, equal_offset, selected_offset, selected, selected_scores);
  return LaunchStatus("TokenSelect CompactKernel");
}

}  // namespace kvc::kernels::cuda
