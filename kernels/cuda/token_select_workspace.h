// How the CUDA TokenSelect splits its caller-provided workspace
// (TokenSelectWorkspaceBytes: (Hq + 4) * N * 4 bytes + 1 MiB), and the
// exact top-k launcher that runs on part of it.
#ifndef KVC_KERNELS_CUDA_TOKEN_SELECT_WORKSPACE_H_
#define KVC_KERNELS_CUDA_TOKEN_SELECT_WORKSPACE_H_

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvc::kernels::cuda {

// Elements of the eligible range each block of the top-k scan covers.
inline constexpr int64_t kTopKScanTile = 1024;

// Radix-select state: a 256-bin histogram, then the key prefix found so far,
// its mask, and how many of the remaining keys are still to be taken.
struct RadixArea {
  static constexpr int kPrefix = 256, kMask = 257, kRemaining = 258, kWords = 260;
};

struct TokenSelectWorkspace {
  float* logits = nullptr;         // [Hq][N]
  float* score = nullptr;          // [N] raw soft-vote score
  float* pooled = nullptr;         // [N] pooled score (when the caller passes no `scores`)
  double* lse_partials = nullptr;  // [Hq][lse_blocks][2]: (max, sum of exp(x - max))
  int32_t lse_blocks = 0;
  float* lse = nullptr;       // [Hq]
  uint32_t* radix = nullptr;  // [RadixArea::kWords]
  // [4][scan_tiles]: per scan tile, count above / equal to the threshold,
  // then the exclusive offsets of the equal and the selected elements.
  uint32_t* scan = nullptr;
  int64_t scan_tiles = 0;
};

// Splits `workspace` for N candidates, Hq heads and `eligible` selectable
// candidates. InvalidArgument when it is too small or misaligned beyond
// repair, Unimplemented for more than 32768 heads.
absl::StatusOr<TokenSelectWorkspace> CarveTokenSelectWorkspace(void* workspace, size_t bytes,
                                                               int64_t n, int32_t num_q_heads,
                                                               int64_t eligible);

// selected[0..k) = the positions t in [begin, end) of the k largest
// pooled[t] (equal scores: lower t first), ascending; selected_scores (may
// be null) their pooled scores. Exact; 8 + 3 small kernels on `stream`.
// REQUIRES: 1 <= k <= end - begin <= 2^31 - 1; ws carved for this range.
absl::Status LaunchTopK(const float* pooled, int64_t begin, int64_t end, int64_t k,
                        int32_t* selected, float* selected_scores, const TokenSelectWorkspace& ws,
                        cudaStream_t stream);

}  // namespace kvc::kernels::cuda

#endif  // KVC_KERNELS_CUDA_TOKEN_SELECT_WORKSPACE_H_
