#include "kernels/less.h"

#include <cmath>
#include <random>

#include "common/status_macros.h"
#include "kernels/internal/backend.h"
#include "kernels/internal/validate.h"
#include "kernels/ref/ref_kernels.h"

namespace kvc::kernels {

std::vector<double> EvaluateFeatureMap(const FeatureMap& f, const float* x) {
  return ref::EvaluateFeatureMapImpl(f, x);
}

FeatureMapWeights PositiveRandomFeatureMap(int32_t head_dim, int32_t rank, uint64_t seed) {
  FeatureMapWeights w;
  w.in_dim = head_dim;
  w.hidden = 0;
  w.out_dim = rank;
  const double root_d = std::sqrt(static_cast<double>(head_dim));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, static_cast<float>(1.0 / std::sqrt(root_d)));
  w.w2.resize(static_cast<size_t>(rank) * head_dim);
  for (float& x : w.w2) x = normal(rng);
  w.b2.assign(rank, static_cast<float>(-0.5 * std::log(static_cast<double>(rank))));
  w.activation = FeatureActivation::kExp;
  w.sq_norm_coeff = static_cast<float>(0.5 / root_d);
  return w;
}

FeatureMapWeights RandomFeatureMap(int32_t head_dim, int32_t rank, uint64_t seed) {
  FeatureMapWeights w;
  w.in_dim = head_dim;
  w.hidden = 0;
  w.out_dim = rank;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f / std::sqrt(static_cast<float>(head_dim)));
  w.w2.resize(static_cast<size_t>(rank) * head_dim);
  for (float& x : w.w2) x = normal(rng);
  w.b2.assign(rank, 0.0f);
  return w;
}

absl::Status LessFold(const ExecContext& ctx, const LessFoldArgs& args) {
  KVC_ASSIGN_OR_RETURN(const internal::KernelTable* table, internal::KernelsFor(ctx));
  KVC_RETURN_IF_ERROR(internal::ValidateLessFold(args, ctx.backend));
  return table->less_fold(ctx, args);
}

absl::Status LessCombine(const ExecContext& ctx, const LessCombineArgs& args) {
  KVC_ASSIGN_OR_RETURN(const internal::KernelTable* table, internal::KernelsFor(ctx));
  KVC_RETURN_IF_ERROR(internal::ValidateLessCombine(args));
  if (args.num_tokens == 0) return absl::OkStatus();
  return table->less_combine(ctx, args);
}

}  // namespace kvc::kernels
