// LessFold and LessCombine on the GPU (less.h), in double like the
// reference (kernels/ref/less.cc): the feature-map MLP, the per-call sums and
// the log-space combination; fp32 only where the state and outputs are
// stored. The MLP is evaluated by one block per vector: a warp per hidden
// unit / output, lanes over the inputs.
//
// LessFold: one block per KV head looping over its evicted tokens, so the
// state update needs no atomics; the call's sums are kept in shared memory
// and added to the fp32 state once, as the reference does.
// LessCombine: one block per (token, query head) row.
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace kvc::kernels::cuda {
namespace {

constexpr int kFoldThreads = 256;
constexpr int kCombineThreads = 128;
constexpr int kFoldTokens = 16;  // evicted tokens whose psi is held at once

__device__ __forceinline__ double Gelu(double x) {  // tanh form
  const double c = 0.7978845608028654;              // sqrt(2 / pi)
  return 0.5 * x * (1.0 + tanh(c * (x + 0.044715 * x * x * x)));
}
__device__ __forceinline__ double EluPlusOne(double y) { return y > 0.0 ? y + 1.0 : exp(y); }

// out[r] = f(x)[r], r < out_dim, for x = x_s[0..in_dim). Every thread of the
// block calls it; ends synchronised. hidden_s: [max(hidden, 1)] doubles.
__device__ void FeatureMapBlock(const FeatureMap& f, const float* x_s, double* hidden_s,
                                double* out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (f.hidden > 0) {
    for (int32_t j = warp; j < f.hidden; j += warps) {
      const float* w = f.w1 + static_cast<int64_t>(j) * f.in_dim;
      double acc = 0.0;
      for (int32_t c = lane; c < f.in_dim; c += 32) acc += static_cast<double>(w[c]) * x_s[c];
      acc = WarpSum(acc);
      if (lane == 0) hidden_s[j] = Gelu(acc + static_cast<double>(f.b1[j]));
    }
    __syncthreads();
  }
  const int32_t cols = f.hidden > 0 ? f.hidden : f.in_dim;
  double sq = 0.0;  // |x|^2, for the kExp map's shift
  if (f.sq_norm_coeff != 0.0f) {
    for (int32_t c = lane; c < f.in_dim; c += 32) sq += static_cast<double>(x_s[c]) * x_s[c];
    sq = WarpSum(sq);
  }
  const double shift = static_cast<double>(f.sq_norm_coeff) * sq;
  for (int32_t r = warp; r < f.out_dim; r += warps) {
    const float* w = f.w2 + static_cast<int64_t>(r) * cols;
    double acc = 0.0;
    if (f.hidden > 0) {
      for (int32_t c = lane; c < cols; c += 32) acc += static_cast<double>(w[c]) * hidden_s[c];
    } else {
      for (int32_t c = lane; c < cols; c += 32) acc += static_cast<double>(w[c]) * x_s[c];
    }
    acc = WarpSum(acc);
    const double y = acc + static_cast<double>(f.b2[r]) - shift;
    if (lane == 0) out[r] = f.activation == FeatureActivation::kExp ? exp(y) : EluPlusOne(y);
  }
  __syncthreads();
}

// Dynamic shared memory of the fold kernel, in bytes from the start.
struct FoldSmem {
  size_t acc_h, acc_z, psi, hidden, x, bytes;
  __host__ __device__ FoldSmem(int32_t rank, int32_t head_dim, int32_t hidden_dim) {
    acc_h = 0;
    acc_z = acc_h + sizeof(double) * rank * head_dim;
    psi = acc_z + sizeof(double) * rank;
    hidden = psi + sizeof(double) * kFoldTokens * rank;
    x = hidden + sizeof(double) * (hidden_dim > 0 ? hidden_dim : 1);
    bytes = x + sizeof(float) * head_dim;
  }
};

__global__ void __launch_bounds__(kFoldThreads)
    LessFoldKernel(LessState state, FeatureMap psi, DType dtype, const void* k, const void* v,
                   int64_t max_tokens, const int32_t* count, double sign) {
  const int32_t h = blockIdx.x, rank = state.rank, dim = state.head_dim;
  const FoldSmem L(rank, dim, psi.hidden);
  extern __shared__ __align__(16) unsigned char smem[];
  double* acc_h = reinterpret_cast<double*>(smem + L.acc_h);
  double* acc_z = reinterpret_cast<double*>(smem + L.acc_z);
  double* psi_s = reinterpret_cast<double*>(smem + L.psi);
  double* hidden_s = reinterpret_cast<double*>(smem + L.hidden);
  float* x_s = reinterpret_cast<float*>(smem + L.x);

  int64_t tokens = count != nullptr ? count[h] : max_tokens;
  tokens = tokens < 0 ? 0 : (tokens > max_tokens ? max_tokens : tokens);
  for (int32_t e = threadIdx.x; e < rank * dim; e += blockDim.x) acc_h[e] = 0.0;
  for (int32_t r = threadIdx.x; r < rank; r += blockDim.x) acc_z[r] = 0.0;
  __syncthreads();

  for (int64_t t0 = 0; t0 < tokens; t0 += kFoldTokens) {
    const int tn = static_cast<int>(tokens - t0 < kFoldTokens ? tokens - t0 : kFoldTokens);
    for (int tt = 0; tt < tn; ++tt) {
      const int64_t row = (static_cast<int64_t>(h) * max_tokens + t0 + tt) * dim;
      for (int32_t d = threadIdx.x; d < dim; d += blockDim.x)
        x_s[d] = LoadElement(k, dtype, row + d);
      __syncthreads();
      FeatureMapBlock(psi, x_s, hidden_s, psi_s + tt * rank);
    }
    for (int32_t e = threadIdx.x; e < rank * dim; e += blockDim.x) {
      const int32_t r = e / dim, d = e - r * dim;
      double sum = 0.0;
      for (int tt = 0; tt < tn; ++tt) {
        const int64_t row = (static_cast<int64_t>(h) * max_tokens + t0 + tt) * dim;
        sum += psi_s[tt * rank + r] * static_cast<double>(LoadElement(v, dtype, row + d));
      }
      acc_h[e] += sum;
    }
    for (int32_t r = threadIdx.x; r < rank; r += blockDim.x) {
      for (int tt = 0; tt < tn; ++tt) acc_z[r] += psi_s[tt * rank + r];
    }
    __syncthreads();
  }
  float* state_h = state.h + static_cast<int64_t>(h) * rank * dim;
  float* state_z = state.z + static_cast<int64_t>(h) * rank;
  for (int32_t e = threadIdx.x; e < rank * dim; e += blockDim.x) {
    state_h[e] = static_cast<float>(static_cast<double>(state_h[e]) + sign * acc_h[e]);
  }
  for (int32_t r = threadIdx.x; r < rank; r += blockDim.x) {
    state_z[r] = static_cast<float>(static_cast<double>(state_z[r]) + sign * acc_z[r]);
  }
}

struct CombineSmem {
  size_t phi, hidden, x, bytes;
  __host__ __device__ CombineSmem(int32_t rank, int32_t head_dim, int32_t hidden_dim) {
    phi = 0;
    hidden = phi + sizeof(double) * rank;
    x = hidden + sizeof(double) * (hidden_dim > 0 ? hidden_dim : 1);
    bytes = x + sizeof(float) * head_dim;
  }
};

__global__ void __launch_bounds__(kCombineThreads)
    LessCombineKernel(LessState state, FeatureMap phi, const float* q, const float* sparse_out,
                      const float* sparse_lse, int32_t num_q_heads, float* out) {
  const int64_t row = blockIdx.x;
  const int32_t rank = state.rank, dim = state.head_dim;
  const int32_t kv_head =
      static_cast<int32_t>(row % num_q_heads) / (num_q_heads / state.num_kv_heads);
  const float* state_h = state.h + static_cast<int64_t>(kv_head) * rank * dim;
  const float* state_z = state.z + static_cast<int64_t>(kv_head) * rank;
  const float* sparse = sparse_out + row * dim;
  float* o = out + row * dim;

  bool empty = true;  // nothing folded: the sparse output, bit for bit
  for (int32_t r = 0; r < rank; ++r) empty = empty && state_z[r] == 0.0f;
  if (empty) {
    for (int32_t d = threadIdx.x; d < dim; d += blockDim.x) o[d] = sparse[d];
    return;
  }
  const CombineSmem L(rank, dim, phi.hidden);
  extern __shared__ __align__(16) unsigned char smem[];
  double* phi_s = reinterpret_cast<double*>(smem + L.phi);
  double* hidden_s = reinterpret_cast<double*>(smem + L.hidden);
  float* x_s = reinterpret_cast<float*>(smem + L.x);
  for (int32_t d = threadIdx.x; d < dim; d += blockDim.x) x_s[d] = q[row * dim + d];
  __syncthreads();
  FeatureMapBlock(phi, x_s, hidden_s, phi_s);

  double phi_z = 0.0;
  for (int32_t r = 0; r < rank; ++r) phi_z += phi_s[r] * static_cast<double>(state_z[r]);
  phi_z = fmax(phi_z, 1e-6);
  const double lse = sparse_lse[row];
  const double m = fmax(lse, log(phi_z));
  const double low_scale = exp(-m), sparse_scale = exp(lse - m);
  const double denom = phi_z * low_scale + sparse_scale;
  for (int32_t d = threadIdx.x; d < dim; d += blockDim.x) {
    double phi_h = 0.0;
    for (int32_t r = 0; r < rank; ++r)
      phi_h += phi_s[r] * static_cast<double>(state_h[r * dim + d]);
    o[d] = static_cast<float>((phi_h * low_scale + sparse_scale * static_cast<double>(sparse[d])) /
                              denom);
  }
}

}  // namespace

absl::Status LessFold(const ExecContext& ctx, const LessFoldArgs& a) {
  if (a.max_tokens == 0) return absl::OkStatus();
  const size_t smem = FoldSmem(a.state.rank, a.state.head_dim, a.psi.hidden).bytes;
  if (absl::Status s =
          AllowSharedMemory(reinterpret_cast<const void*>(&LessFoldKernel), smem, "LessFoldKernel");
      !s.ok()) {
    return s;
  }
  LessFoldKernel<<<static_cast<unsigned>(a.state.num_kv_heads), kFoldThreads, smem,
                   StreamOf(ctx)>>>(a.state, a.psi, a.dtype, a.k, a.v, a.max_tokens, a.count,
                   a.subtract ? -1.0 : 1.0);
  return LaunchStatus("LessFoldKernel");
}

absl::Status LessCombine(const ExecContext& ctx, const LessCombineArgs& a) {
  const int64_t rows = a.num_tokens * a.num_q_heads;
  if (rows > 0x7fffffff)
    return absl::UnimplementedError("LessCombine (CUDA): more than 2^31 - 1 rows");
  const size_t smem = CombineSmem(a.state.rank, a.state.head_dim, a.phi.hidden).bytes;
  if (absl::Status s = AllowSharedMemory(reinterpret_cast<const void*>(&LessCombineKernel), smem,
                                         "LessCombineKernel");
      !s.ok()) {
    return s;
  }
  LessCombineKernel<<<static_cast<unsigned>(rows), kCombineThreads, smem, StreamOf(ctx)>>>(
      a.state, a.phi, a.q, a.sparse_out, a.sparse_lse, a.num_q_heads, a.out);
  return LaunchStatus("LessCombineKernel");
}

}  // namespace kvc::kernels::cuda
