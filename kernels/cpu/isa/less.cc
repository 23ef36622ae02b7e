// LESS, optimised CPU path. Feature maps run in fp32 with 16-lane vector
// dot products; the fold accumulates one call's psi(k)^T v in fp64 (as the
// reference does) so the state does not depend on how tokens are chunked
// beyond one fp32 rounding per call. Fold is parallel over KV heads (each
// head's state has one writer), combine over (token, query head) rows.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>

#include "kernels/cpu/isa/cpu_kernels.h"
#include "kernels/dtype.h"
#include "kernels/thread_pool.h"

namespace kvc::kernels::KVC_CPU_NS {
namespace {

typedef float v16f __attribute__((vector_size(64)));

ThreadPool& PoolOf(const ExecContext& ctx) {
  return ctx.pool != nullptr ? *ctx.pool : DefaultThreadPool();
}

inline v16f LoadV16(const float* p) {
  v16f x;
  std::memcpy(&x, p, sizeof x);
  return x;
}

// sum_i a[i] * b[i] in fp32: two 16-lane accumulators, then the tail.
float Dot(const float* a, const float* b, int32_t n) {
  v16f acc0 = {}, acc1 = {};
  int32_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 += LoadV16(a + i) * LoadV16(b + i);
    acc1 += LoadV16(a + i + 16) * LoadV16(b + i + 16);
  }
  for (; i + 16 <= n; i += 16) acc0 += LoadV16(a + i) * LoadV16(b + i);
  acc0 += acc1;
  float sum = 0.0f;
  for (int lane = 0; lane < 16; ++lane) sum += acc0[lane];
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

float Gelu(float x) {                   // tanh form
  const float c = 0.7978845608028654f;  // sqrt(2 / pi)
  return 0.5f * x * (1.0f + std::tanh(c * (x + 0.044715f * x * x * x)));
}

// f(x) = act(w2 g(x) + b2 - c |x|^2) (less.h; elu + 1 as exp below zero,
// see ref/less.cc).
// x: [in_dim]; hidden: [f.hidden] scratch; out: [out_dim].
void ApplyFeatureMap(const FeatureMap& f, const float* x, float* hidden, float* out) {
  const float* g = x;
  int32_t g_dim = f.in_dim;
  if (f.hidden > 0) {
    for (int32_t j = 0; j < f.hidden; ++j) {
      const float pre = Dot(f.w1 + static_cast<int64_t>(j) * f.in_dim, x, f.in_dim);
      hidden[j] = Gelu(pre + (f.b1 != nullptr ? f.b1[j] : 0.0f));
    }
    g = hidden;
    g_dim = f.hidden;
  }
  const float shift = f.sq_norm_coeff != 0.0f ? f.sq_norm_coeff * Dot(x, x, f.in_dim) : 0.0f;
  for (int32_t r = 0; r < f.out_dim; ++r) {
    const float y = Dot(f.w2 + static_cast<int64_t>(r) * g_dim, g, g_dim) + (f.b2 != nullptr ? f.b2[r] : 0.0f) -
                    shift;
    out[r] = f.activation == FeatureActivation::kExp ? std::exp(y) : (y > 0.0f ? y + 1.0f : std::exp(y));
  }
}

// Row `row` of a [rows][dim] array of `dtype`, widened to fp32.
void LoadRow(const void* base, DType dtype, int64_t row, int32_t dim, float* out) {
  if (dtype == DType::kF32) {
    std::memcpy(out, static_cast<const float*>(base) + row * dim, dim * sizeof(float));
    return;
  }
  const uint16_t* in = static_cast<const uint16_t*>(base) + row * dim;
  if (dtype == DType::kBF16) {
    for (int32_t d = 0; d < dim; ++d) out[d] = BF16ToFloat(in[d]);
  } else {
    for (int32_t d = 0; d < dim; ++d) out[d] = F16ToFloat(in[d]);
  }
}

void FoldHead(const LessFoldArgs& args, int32_t h) {
  const LessState& s = args.state;
  const int32_t R = s.rank, D = s.head_dim;
  const int64_t count = args.count != nullptr ? args.count[h] : args.max_tokens;
  // Scratch: fp64 sums [R][D] and [R]; fp32 k, v rows, psi and the hidden layer.
  std::unique_ptr<double[]> h_sum(new double[static_cast<size_t>(R) * D + R]());
  double* z_sum = h_sum.get() + static_cast<size_t>(R) * D;
  std::unique_ptr<float[]> rows(new float[2 * D + R + std::max(args.psi.hidden, 0)]);
  float* k = rows.get();
  float* v = k + D;
  float* psi = v + D;
  float* hidden = psi + R;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t row = h * args.max_tokens + i;
    LoadRow(args.k, args.dtype, row, D, k);
    LoadRow(args.v, args.dtype, row, D, v);
    ApplyFeatureMap(args.psi, k, hidden, psi);
    for (int32_t r = 0; r < R; ++r) {
      const double p = psi[r];
      z_sum[r] += p;
      double* acc = h_sum.get() + static_cast<size_t>(r) * D;
      for (int32_t d = 0; d < D; ++d) acc[d] += p * v[d];
    }
  }
  float* state_h = s.h + static_cast<size_t>(h) * R * D;
  float* state_z = s.z + static_cast<size_t>(h) * R;
  const double sign = args.subtract ? -1.0 : 1.0;
  for (int32_t r = 0; r < R; ++r) state_z[r] = static_cast<float>(state_z[r] + sign * z_sum[r]);
  for (int64_t e = 0; e < static_cast<int64_t>(R) * D; ++e) {
    state_h[e] = static_cast<float>(state_h[e] + sign * h_sum[e]);
  }
}

// Rows [begin, end) of (token, query head); scratch as FoldHead's.
void CombineRows(const LessCombineArgs& args, int64_t begin, int64_t end) {
  const LessState& s = args.state;
  const int32_t R = s.rank, D = s.head_dim, Hq = args.num_q_heads;
  const int32_t group = Hq / s.num_kv_heads;
  std::unique_ptr<float[]> scratch(new float[D + R + std::max(args.phi.hidden, 0)]);
  float* numer = scratch.get();
  float* phi = numer + D;
  float* hidden = phi + R;
  for (int64_t row = begin; row < end; ++row) {
    const int32_t kvh = static_cast<int32_t>(row % Hq) / group;
    const float* sparse = args.sparse_out + row * D;
    float* out = args.out + row * D;
    const float* state_h = s.h + static_cast<size_t>(kvh) * R * D;
    const float* state_z = s.z + static_cast<size_t>(kvh) * R;
    // Nothing folded yet: the output is the sparse attention, bit for bit.
    if (std::all_of(state_z, state_z + R, [](float z) { return z == 0.0f; })) {
      std::memcpy(out, sparse, D * sizeof(float));
      continue;
    }
    ApplyFeatureMap(args.phi, args.q + row * D, hidden, phi);
    double phi_z = 0.0;
    for (int32_t r = 0; r < R; ++r) phi_z += static_cast<double>(phi[r]) * state_z[r];
    phi_z = std::max(phi_z, 1e-6);
    const double lse = args.sparse_lse[row];
    const double m = std::max(lse, std::log(phi_z));
    const double low_scale = std::exp(-m), sparse_scale = std::exp(lse - m);
    const double denom = phi_z * low_scale + sparse_scale;
    const float low_weight = static_cast<float>(low_scale / denom);
    const float sparse_weight = static_cast<float>(sparse_scale / denom);
    std::fill(numer, numer + D, 0.0f);
    for (int32_t r = 0; r < R; ++r) {
      const float p = phi[r];
      const float* hr = state_h + static_cast<size_t>(r) * D;
      for (int32_t d = 0; d < D; ++d) numer[d] += p * hr[d];
    }
    for (int32_t d = 0; d < D; ++d) out[d] = numer[d] * low_weight + sparse[d] * sparse_weight;
  }
}

}  // namespace

absl::Status LessFold(const ExecContext& ctx, const LessFoldArgs& args) {
  PoolOf(ctx).ParallelFor(args.state.num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t h = begin; h < end; ++h) FoldHead(args, static_cast<int32_t>(h));
  });
  return absl::OkStatus();
}

absl::Status LessCombine(const ExecContext& ctx, const LessCombineArgs& args) {
  ThreadPool& pool = PoolOf(ctx);
  const int64_t rows = args.num_tokens * args.num_q_heads;
  const int64_t grain = std::max<int64_t>(1, rows / (4 * pool.num_threads()));
  pool.ParallelFor(rows, grain, [&](int64_t begin, int64_t end) { CombineRows(args, begin, end); });
  return absl::OkStatus();
}

}  // namespace kvc::kernels::KVC_CPU_NS
