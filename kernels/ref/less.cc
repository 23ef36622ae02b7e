// LESS, reference path: the feature maps, the fold and the log-space
// combination of kernels/less.h, in double precision throughout (fp32 only
// where the state and outputs are stored).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/ref/ref_kernels.h"
#include "kernels/ref/ref_util.h"

namespace kvc::kernels::ref {
namespace {

double Gelu(double x) {                 // tanh form
  const double c = 0.7978845608028654;  // sqrt(2 / pi)
  return 0.5 * x * (1.0 + std::tanh(c * (x + 0.044715 * x * x * x)));
}

// elu(y) + 1 written as exp(y) below zero, so it stays strictly positive
// where elu(y) + 1 would round to 0.
double EluPlusOne(double y) { return y > 0.0 ? y + 1.0 : std::exp(y); }

// y = W x + b with W [rows][cols] row-major; b may be null (zero).
std::vector<double> Affine(const float* w, const float* b, const std::vector<double>& x,
                           int32_t rows) {
  const size_t cols = x.size();
  std::vector<double> y(rows);
  for (int32_t r = 0; r < rows; ++r) {
    double acc = b != nullptr ? b[r] : 0.0;
    for (size_t c = 0; c < cols; ++c) acc += static_cast<double>(w[r * cols + c]) * x[c];
    y[r] = acc;
  }
  return y;
}

// f(x) = act(w2 g(x) + b2 - c |x|^2), g = gelu(w1 x + b1) or the identity
// (less.h). x: [in_dim].
std::vector<double> ApplyFeatureMap(const FeatureMap& f, const std::vector<double>& x) {
  std::vector<double> g = x;
  if (f.hidden > 0) {
    g = Affine(f.w1, f.b1, x, f.hidden);
    for (double& e : g) e = Gelu(e);
  }
  double sq = 0.0;
  for (double e : x) sq += e * e;
  const double shift = static_cast<double>(f.sq_norm_coeff) * sq;
  std::vector<double> y = Affine(f.w2, f.b2, g, f.out_dim);
  for (double& e : y) e = f.activation == FeatureActivation::kExp ? std::exp(e - shift) : EluPlusOne(e - shift);
  return y;
}

std::vector<double> LoadRow(const void* base, DType dtype, int64_t row, int32_t dim) {
  std::vector<double> x(dim);
  for (int32_t d = 0; d < dim; ++d) x[d] = LoadElement(base, dtype, row * dim + d);
  return x;
}

}  // namespace

std::vector<double> EvaluateFeatureMapImpl(const FeatureMap& f, const float* x) {
  return ApplyFeatureMap(f, std::vector<double>(x, x + f.in_dim));
}

absl::Status LessFold(const ExecContext& ctx, const LessFoldArgs& args) {
  const LessState& s = args.state;
  const int32_t R = s.rank, D = s.head_dim;
  for (int32_t h = 0; h < s.num_kv_heads; ++h) {
    const int64_t count = args.count != nullptr ? args.count[h] : args.max_tokens;
    // This call's sum of psi(k)^T v and psi(k), added to the fp32 state once.
    std::vector<double> h_sum(static_cast<size_t>(R) * D, 0.0), z_sum(R, 0.0);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t row = h * args.max_tokens + i;
      const std::vector<double> psi =
          ApplyFeatureMap(args.psi, LoadRow(args.k, args.dtype, row, D));
      const std::vector<double> v = LoadRow(args.v, args.dtype, row, D);
      for (int32_t r = 0; r < R; ++r) {
        z_sum[r] += psi[r];
        for (int32_t d = 0; d < D; ++d) h_sum[r * D + d] += psi[r] * v[d];
      }
    }
    float* state_h = s.h + static_cast<size_t>(h) * R * D;
    float* state_z = s.z + static_cast<size_t>(h) * R;
    const double sign = args.subtract ? -1.0 : 1.0;
    for (int32_t r = 0; r < R; ++r) {
      state_z[r] = static_cast<float>(state_z[r] + sign * z_sum[r]);
      for (int32_t d = 0; d < D; ++d) {
        state_h[r * D + d] = static_cast<float>(state_h[r * D + d] + sign * h_sum[r * D + d]);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status LessCombine(const ExecContext& ctx, const LessCombineArgs& args) {
  const LessState& s = args.state;
  const int32_t R = s.rank, D = s.head_dim, Hq = args.num_q_heads;
  const int32_t group = Hq / s.num_kv_heads;
  for (int64_t t = 0; t < args.num_tokens; ++t) {
    for (int32_t qh = 0; qh < Hq; ++qh) {
      const int64_t row = t * Hq + qh;
      const float* sparse = args.sparse_out + row * D;
      float* out = args.out + row * D;
      const int32_t kvh = qh / group;
      const float* state_h = s.h + static_cast<size_t>(kvh) * R * D;
      const float* state_z = s.z + static_cast<size_t>(kvh) * R;
      // Nothing folded yet: the output is the sparse attention, bit for bit.
      if (std::all_of(state_z, state_z + R, [](float z) { return z == 0.0f; })) {
        std::copy(sparse, sparse + D, out);
        continue;
      }
      std::vector<double> q(args.q + row * D, args.q + row * D + D);
      const std::vector<double> phi = ApplyFeatureMap(args.phi, q);
      double phi_z = 0.0;
      for (int32_t r = 0; r < R; ++r) phi_z += phi[r] * state_z[r];
      phi_z = std::max(phi_z, 1e-6);
      const double lse = args.sparse_lse[row];
      const double m = std::max(lse, std::log(phi_z));
      const double low_scale = std::exp(-m), sparse_scale = std::exp(lse - m);
      const double denom = phi_z * low_scale + sparse_scale;
      for (int32_t d = 0; d < D; ++d) {
        double phi_h = 0.0;
        for (int32_t r = 0; r < R; ++r) phi_h += phi[r] * state_h[r * D + d];
        out[d] = static_cast<float>((phi_h * low_scale + sparse_scale * sparse[d]) / denom);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace kvc::kernels::ref
