// Dense layers of the model runtime (worker/model): the linear projections,
// RMSNorm and the SwiGLU gate of a Llama-architecture transformer block.
// Activations are fp32; weights are fp32 (the llama2.c checkpoint) or bf16
// (a runtime option that halves the bytes a decode step reads).
//
// Conventions as in attention.h: row-major, validated once, outputs never
// alias inputs (overlap is InvalidArgument), nothing aborts.
#ifndef KVC_KERNELS_DENSE_H_
#define KVC_KERNELS_DENSE_H_

#include <cstdint>
#include <cstdlib>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/types.h"

namespace kvc::kernels {

// A Linear weight W [n][k] laid out once for the CPU path's batch tiling
// (m > 8 rows: prefill chunks), which otherwise re-lays W out on every call
// (a prefill chunk spent ~6% of its time there). Panels of kPanelCols W
// rows, each transposed and widened to fp32: panels[(p * k + d) *
// kPanelCols + c] = W[p * kPanelCols + c][d], zero for rows >= n. The
// layout is the same for every CPU ISA build; the reference and CUDA paths
// ignore a pack and read w. Immutable once made; thread-compatible.
struct LinearPack {
  static constexpr int32_t kPanelCols = 32;
  struct FreeDeleter {
    void operator()(float* p) const { std::free(p); }
  };

  int32_t n = 0, k = 0;
  DType w_dtype = DType::kF32;  // of the W it was made from
  std::unique_ptr<float[], FreeDeleter> panels;  // [ceil(n / kPanelCols)][k][kPanelCols], 64-byte aligned

  int64_t num_panels() const { return (n + kPanelCols - 1) / kPanelCols; }
  size_t bytes() const { return static_cast<size_t>(num_panels()) * k * kPanelCols * sizeof(float); }
};

// Packs W [n][k] of `w_dtype` (kF32 or kBF16) on the host. InvalidArgument
// for a bad shape, dtype or null w; ResourceExhausted when the panels cannot
// be allocated.
absl::StatusOr<LinearPack> PackLinear(const void* w, DType w_dtype, int32_t n, int32_t k);

// y[i][j] = sum_k x[i][k] * w[j][k] (+ y[i][j] when accumulate), for rows
// i < m: x W^T with W stored [n][k] (out x in, the llama2.c layout). The
// reference accumulates each dot product in fp64; the optimised paths in
// fp32, with results that do not depend on the thread count (a row may
// differ in its last bits between m = 1 and a batch, as the paths choose
// their tiling by m). accumulate = true is the residual add (y += x W^T)
// without a copy.
struct LinearArgs {
  const float* x = nullptr;  // [m][k]
  int64_t m = 0;             // rows (tokens), >= 0
  int32_t k = 0;             // input features, > 0
  int32_t n = 0;             // output features, > 0
  const void* w = nullptr;   // [n][k] of w_dtype
  DType w_dtype = DType::kF32;  // kF32 or kBF16
  float* y = nullptr;        // [m][n]
  bool accumulate = false;
  // Optional: PackLinear(w, w_dtype, n, k) of this same w (not checked
  // beyond n, k and w_dtype). The CPU path's batch tiling reads it instead
  // of re-laying W out; results are the same bits either way. w is still
  // required (decode and the other paths read it).
  const LinearPack* pack = nullptr;
};
absl::Status Linear(const ExecContext& ctx, const LinearArgs& args);

// out[i][:] = x[i][:] / sqrt(mean(x[i][:]^2) + eps) * weight[:], per row
// (mean and sum of squares in fp64 on the reference, fp32 elsewhere).
struct RmsNormArgs {
  const float* x = nullptr;       // [rows][dim]
  const float* weight = nullptr;  // [dim]
  int64_t rows = 0;
  int32_t dim = 0;
  float eps = 1e-5f;  // > 0
  float* out = nullptr;  // [rows][dim]
};
absl::Status RmsNorm(const ExecContext& ctx, const RmsNormArgs& args);

// out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i].
struct SwiGluArgs {
  const float* gate = nullptr;  // [count]
  const float* up = nullptr;    // [count]
  int64_t count = 0;
  float* out = nullptr;  // [count]
};
absl::Status SwiGlu(const ExecContext& ctx, const SwiGluArgs& args);

}  // namespace kvc::kernels

#endif  // KVC_KERNELS_DENSE_H_
