#include "worker/cache/less.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/cache/attend.h"

namespace kvc::cache {

namespace k = ::kvc::kernels;

absl::Status LessOptions::Validate() const {
  if (rank < 1 || rank > 256)
    return absl::InvalidArgumentError(absl::StrCat("less: rank ", rank, " not in [1, 256]"));
  if (kernels != nullptr) {
    KVC_RETURN_IF_ERROR(kernels->Validate());
    if (kernels->rank != rank) {
      return absl::InvalidArgumentError(
          absl::StrCat("less: rank ", rank, " but the trained kernels have rank ", kernels->rank));
    }
  }
  return absl::OkStatus();
}

Less::Less(const model::ModelConfig& config, const LessOptions& options,
           std::unique_ptr<CachePolicy> inner)
    : config_(config),
      options_(options),
      inner_(std::move(inner)),
      map_(options.positive_features ? k::PositiveRandomFeatureMap(config.head_dim(), options.rank, options.seed)
                                     : k::RandomFeatureMap(config.head_dim(), options.rank, options.seed)),
      layers_(config.n_layers) {
  const size_t heads = config.n_kv_heads, r = options.rank;
  for (Layer& l : layers_) {
    l.h.assign(heads * r * config.head_dim(), 0.0f);
    l.z.assign(heads * r, 0.0f);
  }
}

absl::StatusOr<std::unique_ptr<Less>> Less::Create(const model::ModelConfig& config,
                                                   const LessOptions& options,
                                                   std::unique_ptr<CachePolicy> inner) {
  KVC_RETURN_IF_ERROR(options.Validate());
  if (inner == nullptr) return absl::InvalidArgumentError("less: no inner policy");
  if (options.kernels != nullptr) KVC_RETURN_IF_ERROR(options.kernels->CheckMatches(config));
  return std::unique_ptr<Less>(new Less(config, options, std::move(inner)));
}

k::FeatureMap Less::phi(int32_t layer) const {
  return options_.kernels != nullptr ? options_.kernels->layers[layer].phi.View() : map_.View();
}

k::FeatureMap Less::psi(int32_t layer) const {
  return options_.kernels != nullptr ? options_.kernels->layers[layer].psi.View() : map_.View();
}

k::LessState Less::State(int32_t layer) {
  Layer& l = layers_[layer];
  return k::LessState{config_.n_kv_heads, options_.rank, config_.head_dim(), l.h.data(),
                      l.z.data()};
}

absl::Status Less::Attend(const k::ExecContext& ctx, const model::AttendArgs& a) {
  KVC_RETURN_IF_ERROR(CheckAttendArgs(config_, a));
  const size_t rows = static_cast<size_t>(a.num_tokens) * config_.n_heads;
  sparse_out_.resize(rows * config_.head_dim());
  sparse_lse_.resize(rows);
  model::AttendArgs sparse = a;
  sparse.out = sparse_out_.data();
  sparse.lse = sparse_lse_.data();
  KVC_RETURN_IF_ERROR(inner_->Attend(ctx, sparse));

  // The state before this call's evictions: this chunk attended them in the cache.
  k::LessCombineArgs c;
  c.state = State(a.layer);
  c.phi = phi(a.layer);
  c.q = a.q;
  c.sparse_out = sparse_out_.data();
  c.sparse_lse = sparse_lse_.data();
  c.num_tokens = a.num_tokens;
  c.num_q_heads = config_.n_heads;
  c.out = a.out;
  KVC_RETURN_IF_ERROR(k::LessCombine(ctx, c));
  if (a.lse != nullptr) {
    LessCombinedLse(phi(a.layer), layers_[a.layer].z.data(), options_.rank, config_, a.q, sparse_lse_.data(),
                    a.num_tokens, a.lse);
  }

  const Evictions* ev = inner_->last_evictions();
  if (ev == nullptr) return absl::OkStatus();
  if (ev->layer != a.layer || static_cast<int32_t>(ev->count.size()) != config_.n_kv_heads) {
    return absl::InternalError(absl::StrCat("less: ", inner_->name(),
                                            " reported evictions of layer ", ev->layer,
                                            " after attending layer ", a.layer));
  }
  const int64_t count = std::accumulate(ev->count.begin(), ev->count.end(), int64_t{0});
  if (count == 0) return absl::OkStatus();
  k::LessFoldArgs f;
  f.state = State(a.layer);
  f.psi = psi(a.layer);
  f.dtype = ev->dtype;
  f.k = ev->k.data();
  f.v = ev->v.data();
  f.max_tokens = ev->stride;
  f.count = ev->count.data();
  KVC_RETURN_IF_ERROR(k::LessFold(ctx, f));
  folded_ += count;
  return absl::OkStatus();
}

void LessCombinedLse(const k::FeatureMap& phi, const float* z_all, int32_t rank, const model::ModelConfig& config,
                     const float* q, const float* sparse_lse, int64_t num_tokens, float* lse) {
  const int32_t hq = config.n_heads, d = config.head_dim();
  const int32_t group = hq / config.n_kv_heads;
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int32_t qh = 0; qh < hq; ++qh) {
      const size_t row = static_cast<size_t>(t) * hq + qh;
      const float* z = z_all + static_cast<size_t>(qh / group) * rank;
      const double sparse = sparse_lse[row];
      if (std::all_of(z, z + rank, [](float x) { return x == 0.0f; })) {
        lse[row] = static_cast<float>(sparse);
        continue;
      }
      const std::vector<double> f = k::EvaluateFeatureMap(phi, q + row * d);
      double phi_z = 0.0;
      for (int32_t i = 0; i < rank; ++i) phi_z += f[i] * z[i];
      const double low = std::log(std::max(phi_z, 1e-6));
      const double m = std::max(sparse, low);
      lse[row] = static_cast<float>(m + std::log(std::exp(sparse - m) + std::exp(low - m)));
    }
  }
}

PolicyStats Less::stats() const {
  PolicyStats s = inner_->stats();
  for (const Layer& l : layers_) s.resident_bytes += (l.h.size() + l.z.size()) * sizeof(float);
  return s;
}

}  // namespace kvc::cache
