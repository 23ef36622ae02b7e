// LESS (kernel 7): a constant-size low-rank state per KV head absorbs every
// token the sparse policy evicts, so evicted tokens still contribute to
// attention (ALGORITHMS.md §3).
//
//   H += psi(k_s)^T v_s,  z += psi(k_s)   for every evicted token s
//   a = [phi(q) H + sum_{s in cache} e^{l_s} v_s] / [phi(q) z + sum_{s in cache} e^{l_s}]
//
// where l_s are the sparse attention's logits. The sparse part enters as
// the (out, lse) state Decode/Prefill return, so the combination is done in
// log space: with m = max(lse, log(phi(q) z)),
//   a = [phi(q) H e^{-m} + e^{lse-m} out] / [phi(q) z e^{-m} + e^{lse-m}],
// phi(q) z clamped below at 1e-6. A KV head whose state is empty (every z
// entry 0: nothing folded, as psi > 0) contributes nothing, so the output
// equals sparse attention exactly (the clamp would otherwise perturb it).
// phi and psi see q and k as given (this project passes pre-RoPE vectors:
// positions are re-assigned by the cascade, the state must not depend on them).
#ifndef KVC_KERNELS_LESS_H_
#define KVC_KERNELS_LESS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/types.h"

namespace kvc::kernels {

// A non-negative feature map R^D -> R^R, strictly positive:
//   f(x) = act(w2 g(x) + b2 - sq_norm_coeff |x|^2),
//   g(x) = gelu(w1 x + b1) if hidden > 0, else x,
//   act = elu(.) + 1 (kEluPlusOne) or exp (kExp).
// hidden = 0 is a fixed map (a projection); hidden > 0 is LESS's trained
// two-layer MLP (GELU, tanh form). Weights are fp32, row-major.
enum class FeatureActivation : uint8_t { kEluPlusOne = 0, kExp = 1 };
struct FeatureMap {
  int32_t in_dim = 0;   // D
  int32_t hidden = 0;   // 0 = none
  int32_t out_dim = 0;  // R
  const float* w1 = nullptr;  // [hidden][D]
  const float* b1 = nullptr;  // [hidden]
  const float* w2 = nullptr;  // [R][hidden > 0 ? hidden : D]
  const float* b2 = nullptr;  // [R]
  FeatureActivation activation = FeatureActivation::kEluPlusOne;
  float sq_norm_coeff = 0.0f;  // >= 0; of the input x
};

// Owns the weights of a feature map (host memory).
struct FeatureMapWeights {
  int32_t in_dim = 0, hidden = 0, out_dim = 0;
  std::vector<float> w1, b1, w2, b2;
  FeatureActivation activation = FeatureActivation::kEluPlusOne;
  float sq_norm_coeff = 0.0f;
  FeatureMap View() const {
    return FeatureMap{in_dim, hidden, out_dim, w1.empty() ? nullptr : w1.data(),
                      b1.empty() ? nullptr : b1.data(), w2.data(), b2.data(), activation, sq_norm_coeff};
  }
};
// The fixed map used without trained kernels: w2 ~ N(0, 1/D) from `seed`,
// b2 = 0, no hidden layer.
FeatureMapWeights RandomFeatureMap(int32_t head_dim, int32_t rank, uint64_t seed);
// Positive random features (Performer's FAVOR+): f(x) = exp(w2 x - |x|^2 /
// (2 sqrt(D)) - ln(R) / 2) with w2 ~ N(0, 1/sqrt(D)) from `seed`, so that
// f(q) . f(k) is an unbiased estimate of exp(q . k / sqrt(D)), the softmax
// weight the sparse part uses: the state then stands for the evicted
// tokens' share of the softmax on the same scale.
FeatureMapWeights PositiveRandomFeatureMap(int32_t head_dim, int32_t rank, uint64_t seed);

// f(x) in fp64 on the host, exactly the reference's formula (for callers
// that need phi outside the kernels, e.g. a combined normaliser).
// x: [in_dim] host floats; returns [out_dim].
std::vector<double> EvaluateFeatureMap(const FeatureMap& f, const float* x);

// Per KV head: H [R][D] and z [R], fp32, zero-initialised by the caller.
struct LessState {
  int32_t num_kv_heads = 0;
  int32_t rank = 0;  // R
  int32_t head_dim = 0;
  float* h = nullptr;  // [Hkv][R][D]
  float* z = nullptr;  // [Hkv][R]
};

// Folds evicted tokens into the state: for head h, the first count[h] rows
// of k[h] / v[h] (the CascadeInsert eviction layout).
struct LessFoldArgs {
  LessState state;
  FeatureMap psi;
  DType dtype = DType::kF32;      // of k and v
  const void* k = nullptr;        // [Hkv][max_tokens][D]
  const void* v = nullptr;        // [Hkv][max_tokens][D]
  int64_t max_tokens = 0;
  const int32_t* count = nullptr; // [Hkv], each <= max_tokens; nullptr = max_tokens for all
  // Removes the tokens instead (H -= psi(k)^T v, z -= psi(k)): tokens folded
  // before that a policy now attends exactly (worker/cache/combined.h). The
  // state is linear in its tokens, so a fold and an unfold of the same rows
  // cancel up to fp32 rounding of the state.
  bool subtract = false;
};
absl::Status LessFold(const ExecContext& ctx, const LessFoldArgs& args);

// Combines sparse attention states with the low-rank state, rows
// (token, query head) with query head h using KV head h / g.
struct LessCombineArgs {
  LessState state;
  FeatureMap phi;
  const float* q = nullptr;           // [num_tokens][Hq][D], as phi should see it
  const float* sparse_out = nullptr;  // [num_tokens][Hq][D]
  const float* sparse_lse = nullptr;  // [num_tokens][Hq]
  int64_t num_tokens = 0;
  int32_t num_q_heads = 0;
  float* out = nullptr;  // [num_tokens][Hq][D]
};
absl::Status LessCombine(const ExecContext& ctx, const LessCombineArgs& args);

}  // namespace kvc::kernels

#endif  // KVC_KERNELS_LESS_H_
