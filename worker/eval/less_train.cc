#include "worker/eval/less_train.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvc::eval {
namespace {

namespace k = ::kvc::kernels;

constexpr double kMinPhiZ = 1e-6;  // LessCombine's clamp

double Gelu(double x) {  // tanh form, as kernels/ref/less.cc
  const double c = 0.7978845608028654;
  return 0.5 * x * (1.0 + std::tanh(c * (x + 0.044715 * x * x * x)));
}
double GeluGrad(double x) {
  const double c = 0.7978845608028654;
  const double t = std::tanh(c * (x + 0.044715 * x * x * x));
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x);
}

// A map's trainable weights as one fp64 vector [w1 | b1 | w2 | b2].
struct MapShape {
  int32_t d = 0, hidden = 0, r = 0;
  k::FeatureActivation act = k::FeatureActivation::kExp;
  double sq_norm_coeff = 0;
  int32_t inner() const { return hidden > 0 ? hidden : d; }
  size_t w1() const { return 0; }
  size_t b1() const { return static_cast<size_t>(hidden) * d; }
  size_t w2() const { return b1() + hidden; }
  size_t b2() const { return w2() + static_cast<size_t>(r) * inner(); }
  size_t size() const { return b2() + r; }
};

// One evaluation's intermediates, reused across calls.
struct MapCache {
  std::vector<double> x, pre1, g, f, dact, dg;
};

void Forward(const MapShape& m, const double* p, const float* x_in, MapCache* c) {
  const int32_t d = m.d, h = m.hidden, inner = m.inner();
  c->x.assign(x_in, x_in + d);
  double sq = 0;
  for (double e : c->x) sq += e * e;
  if (h > 0) {
    c->pre1.resize(h);
    c->g.resize(h);
    for (int32_t j = 0; j < h; ++j) {
      const double* w = p + m.w1() + static_cast<size_t>(j) * d;
      double acc = p[m.b1() + j];
      for (int32_t i = 0; i < d; ++i) acc += w[i] * c->x[i];
      c->pre1[j] = acc;
      c->g[j] = Gelu(acc);
    }
  } else {
    c->g = c->x;
  }
  c->f.resize(m.r);
  c->dact.resize(m.r);
  for (int32_t r = 0; r < m.r; ++r) {
    const double* w = p + m.w2() + static_cast<size_t>(r) * inner;
    double y = p[m.b2() + r] - m.sq_norm_coeff * sq;
    for (int32_t j = 0; j < inner; ++j) y += w[j] * c->g[j];
    if (m.act == k::FeatureActivation::kExp) {
      c->f[r] = c->dact[r] = std::exp(y);
    } else {
      c->f[r] = y > 0 ? y + 1 : std::exp(y);
      c->dact[r] = y > 0 ? 1.0 : std::exp(y);
    }
  }
}

// grad += d(df . f)/d(weights), at the point of the last Forward into c.
void Backward(const MapShape& m, const double* p, MapCache* c, const double* df, double* grad) {
  const int32_t d = m.d, h = m.hidden, inner = m.inner();
  if (h > 0) c->dg.assign(h, 0.0);
  for (int32_t r = 0; r < m.r; ++r) {
    const double dy = df[r] * c->dact[r];
    if (dy == 0) continue;
    grad[m.b2() + r] += dy;
    double* gw = grad + m.w2() + static_cast<size_t>(r) * inner;
    for (int32_t j = 0; j < inner; ++j) gw[j] += dy * c->g[j];
    if (h > 0) {
      const double* w = p + m.w2() + static_cast<size_t>(r) * inner;
      for (int32_t j = 0; j < h; ++j) c->dg[j] += dy * w[j];
    }
  }
  for (int32_t j = 0; j < h; ++j) {
    const double dpre = c->dg[j] * GeluGrad(c->pre1[j]);
    if (dpre == 0) continue;
    grad[m.b1() + j] += dpre;
    double* gw = grad + m.w1() + static_cast<size_t>(j) * d;
    for (int32_t i = 0; i < d; ++i) gw[i] += dpre * c->x[i];
  }
}

MapShape ShapeOf(const k::FeatureMap& f) {
  return MapShape{f.in_dim, f.hidden, f.out_dim, f.activation, f.sq_norm_coeff};
}
std::vector<double> ParamsOf(const k::FeatureMap& f) {
  const MapShape m = ShapeOf(f);
  std::vector<double> p(m.size());
  std::copy(f.w1, f.w1 + m.b1(), p.begin());
  std::copy(f.b1, f.b1 + m.hidden, p.begin() + m.b1());
  std::copy(f.w2, f.w2 + (m.b2() - m.w2()), p.begin() + m.w2());
  std::copy(f.b2, f.b2 + m.r, p.begin() + m.b2());
  return p;
}
k::FeatureMapWeights WeightsOf(const MapShape& m, const double* p) {
  k::FeatureMapWeights w;
  w.in_dim = m.d;
  w.hidden = m.hidden;
  w.out_dim = m.r;
  w.w1.assign(p + m.w1(), p + m.b1());
  w.b1.assign(p + m.b1(), p + m.w2());
  w.w2.assign(p + m.w2(), p + m.b2());
  w.b2.assign(p + m.b2(), p + m.size());
  w.activation = m.act;
  w.sq_norm_coeff = static_cast<float>(m.sq_norm_coeff);
  return w;
}

// One layer's loss and its gradient (the header's formula).
class LayerProblem {
 public:
  LayerProblem(const LessSamples& s, int32_t layer, const MapShape& phi, const MapShape& psi)
      : s_(s), l_(s.layers[layer]), phi_(phi), psi_(psi) {
    const model::ModelConfig& c = s.config;
    hq_ = c.n_heads;
    hkv_ = c.n_kv_heads;
    d_ = c.head_dim();
    group_ = hq_ / hkv_;
    chunks_ = s.num_chunks;
    chunk_begin_.assign(chunks_ + 1, s.num_tokens);
    for (int64_t t = s.num_tokens - 1; t >= 0; --t) chunk_begin_[s.chunk_of[t]] = t;
    chunk_begin_[chunks_] = s.num_tokens;
    for (int32_t ch = chunks_ - 1; ch >= 0; --ch)
      chunk_begin_[ch] = std::min(chunk_begin_[ch], chunk_begin_[ch + 1]);
    // Per head, the folded tokens grouped by fold chunk (CSR).
    folded_begin_.assign(hkv_, std::vector<int64_t>(chunks_ + 1, 0));
    folded_.resize(hkv_);
    first_visible_.assign(hkv_, chunks_);
    for (int32_t h = 0; h < hkv_; ++h) {
      const int32_t* fc = &l_.fold_chunk[static_cast<size_t>(h) * s.num_tokens];
      std::vector<int64_t>& begin = folded_begin_[h];
      for (int64_t t = 0; t < s.num_tokens; ++t) {
        if (fc[t] >= 0) ++begin[fc[t] + 1];
      }
      for (int32_t ch = 0; ch < chunks_; ++ch) begin[ch + 1] += begin[ch];
      folded_[h].resize(begin[chunks_]);
      std::vector<int64_t> at(begin.begin(), begin.end() - 1);
      for (int64_t t = 0; t < s.num_tokens; ++t) {
        if (fc[t] >= 0) {
          folded_[h][at[fc[t]]++] = t;
          first_visible_[h] = std::min(first_visible_[h], fc[t] + 1);
        }
      }
      for (int32_t ch = first_visible_[h]; ch < chunks_; ++ch) {
        rows_ += (chunk_begin_[ch + 1] - chunk_begin_[ch]) * group_;
      }
    }
  }

  int64_t rows() const { return rows_; }

  // Mean |o - y|^2 over the rows.
  double SparseLoss() const {
    double sum = 0;
    ForEachRow([&](int64_t row) {
      for (int32_t e = 0; e < d_; ++e) {
        const double diff =
            static_cast<double>(l_.sparse_out[row * d_ + e]) - l_.target[row * d_ + e];
        sum += diff * diff;
      }
    });
    return rows_ > 0 ? sum / rows_ : 0.0;
  }

  // The loss at (phi_p, psi_p); grad ([phi | psi], overwritten) when not
  // null; *log_share = mean over rows of log(max(phi(q) z, 1e-6)) - lse.
  double Pass(const double* phi_p, const double* psi_p, double* grad, double* log_share) {
    if (rows_ == 0) {
      if (log_share != nullptr) *log_share = 0;
      if (grad != nullptr) std::fill_n(grad, phi_.size() + psi_.size(), 0.0);
      return 0.0;
    }
    const int32_t R = phi_.r, D = d_;
    double* phi_grad = grad;
    double* psi_grad = grad != nullptr ? grad + phi_.size() : nullptr;
    if (grad != nullptr) std::fill_n(grad, phi_.size() + psi_.size(), 0.0);
    const double scale = 1.0 / rows_;
    double loss = 0, share = 0;
    std::vector<double> H(static_cast<size_t>(R) * D), z(R), hv(D), a(D), g(D), dhv(D), du(R);
    std::vector<double> GH, Gz;
    for (int32_t h = 0; h < hkv_; ++h) {
      std::fill(H.begin(), H.end(), 0.0);
      std::fill(z.begin(), z.end(), 0.0);
      if (grad != nullptr) {
        GH.assign(static_cast<size_t>(chunks_) * R * D, 0.0);
        Gz.assign(static_cast<size_t>(chunks_) * R, 0.0);
      }
      for (int32_t ch = 0; ch < chunks_; ++ch) {
        if (ch > 0) {
          for (int64_t i = folded_begin_[h][ch - 1]; i < folded_begin_[h][ch]; ++i) {
            const int64_t t = folded_[h][i];
            Forward(psi_, psi_p, &l_.k[(t * hkv_ + h) * D], &psi_cache_);
            const float* v = &l_.v[(t * hkv_ + h) * D];
            for (int32_t r = 0; r < R; ++r) {
              z[r] += psi_cache_.f[r];
              for (int32_t e = 0; e < D; ++e) H[r * D + e] += psi_cache_.f[r] * v[e];
            }
          }
        }
        if (ch < first_visible_[h]) continue;
        for (int64_t t = chunk_begin_[ch]; t < chunk_begin_[ch + 1]; ++t) {
          for (int32_t qh = h * group_; qh < (h + 1) * group_; ++qh) {
            const int64_t row = t * hq_ + qh;
            Forward(phi_, phi_p, &l_.q[row * D], &phi_cache_);
            const std::vector<double>& u = phi_cache_.f;
            double n = 0;
            for (int32_t r = 0; r < R; ++r) n += u[r] * z[r];
            std::fill(hv.begin(), hv.end(), 0.0);
            for (int32_t r = 0; r < R; ++r) {
              for (int32_t e = 0; e < D; ++e) hv[e] += u[r] * H[r * D + e];
            }
            const double lse = l_.sparse_lse[row];
            const double cl = std::exp(-lse), nc = std::max(n, kMinPhiZ), den = cl * nc + 1.0;
            const float* o = &l_.sparse_out[row * D];
            const float* y = &l_.target[row * D];
            double ga = 0;
            for (int32_t e = 0; e < D; ++e) {
              a[e] = (cl * hv[e] + o[e]) / den;
              const double err = a[e] - y[e];
              loss += err * err;
              g[e] = 2.0 * err * scale;
              ga += g[e] * a[e];
            }
            share += std::log(nc) - lse;
            if (grad == nullptr) continue;
            for (int32_t e = 0; e < D; ++e) dhv[e] = cl * g[e] / den;
            const double dn = n > kMinPhiZ ? -cl * ga / den : 0.0;
            double* gh = &GH[static_cast<size_t>(ch) * R * D];
            double* gz = &Gz[static_cast<size_t>(ch) * R];
            for (int32_t r = 0; r < R; ++r) {
              double acc = dn * z[r];
              for (int32_t e = 0; e < D; ++e) {
                acc += dhv[e] * H[r * D + e];
                gh[r * D + e] += u[r] * dhv[e];
              }
              gz[r] += u[r] * dn;
              du[r] = acc;
            }
            Backward(phi_, phi_p, &phi_cache_, du.data(), phi_grad);
          }
        }
      }
      if (grad == nullptr) continue;
      // Token s folded after chunk f is seen by chunks f+1 ..: its gradient
      // is the suffix sum of the per-chunk gradients of H and z.
      std::vector<double> SH(static_cast<size_t>(R) * D, 0.0), Sz(R, 0.0), df(R);
      for (int32_t ch = chunks_ - 1; ch >= 1; --ch) {
        for (size_t i = 0; i < SH.size(); ++i) SH[i] += GH[static_cast<size_t>(ch) * R * D + i];
        for (int32_t r = 0; r < R; ++r) Sz[r] += Gz[static_cast<size_t>(ch) * R + r];
        for (int64_t i = folded_begin_[h][ch - 1]; i < folded_begin_[h][ch]; ++i) {
          const int64_t t = folded_[h][i];
          Forward(psi_, psi_p, &l_.k[(t * hkv_ + h) * D], &psi_cache_);
          const float* v = &l_.v[(t * hkv_ + h) * D];
          for (int32_t r = 0; r < R; ++r) {
            double acc = Sz[r];
            for (int32_t e = 0; e < D; ++e) acc += SH[r * D + e] * v[e];
            df[r] = acc;
          }
          Backward(psi_, psi_p, &psi_cache_, df.data(), psi_grad);
        }
      }
    }
    if (log_share != nullptr) *log_share = share * scale;
    return loss * scale;
  }

 private:
  template <typename F>
  void ForEachRow(F f) const {
    for (int32_t h = 0; h < hkv_; ++h) {
      for (int32_t ch = first_visible_[h]; ch < chunks_; ++ch) {
        for (int64_t t = chunk_begin_[ch]; t < chunk_begin_[ch + 1]; ++t) {
          for (int32_t qh = h * group_; qh < (h + 1) * group_; ++qh) f(t * hq_ + qh);
        }
      }
    }
  }

  const LessSamples& s_;
  const LessLayerSamples& l_;
  MapShape phi_, psi_;
  int32_t hq_ = 0, hkv_ = 0, d_ = 0, group_ = 1, chunks_ = 0;
  std::vector<int64_t> chunk_begin_;                // [chunks + 1]
  std::vector<std::vector<int64_t>> folded_begin_;  // [Hkv][chunks + 1]
  std::vector<std::vector<int64_t>> folded_;        // [Hkv][folded tokens], by fold chunk
  std::vector<int32_t> first_visible_;              // [Hkv]
  int64_t rows_ = 0;
  MapCache phi_cache_, psi_cache_;
};

// The initial weights of one map (the header's choice).
std::vector<double> InitialMap(const MapShape& m, uint64_t seed) {
  std::vector<double> p(m.size(), 0.0);
  std::mt19937_64 rng(seed);
  if (m.hidden == 0) {
    const k::FeatureMapWeights w = m.act == k::FeatureActivation::kExp
                                       ? k::PositiveRandomFeatureMap(m.d, m.r, seed)
                                       : k::RandomFeatureMap(m.d, m.r, seed);
    std::copy(w.w2.begin(), w.w2.end(), p.begin() + m.w2());
    std::copy(w.b2.begin(), w.b2.end(), p.begin() + m.b2());
    return p;
  }
  std::normal_distribution<double> n1(0.0, 1.0 / std::sqrt(static_cast<double>(m.d)));
  std::normal_distribution<double> n2(0.0, 1.0 / std::sqrt(static_cast<double>(m.hidden)));
  for (size_t i = m.w1(); i < m.b1(); ++i) p[i] = n1(rng);
  for (size_t i = m.w2(); i < m.b2(); ++i) p[i] = n2(rng);
  if (m.act == k::FeatureActivation::kExp) {
    for (size_t i = m.b2(); i < m.size(); ++i) p[i] = -0.5 * std::log(static_cast<double>(m.r));
  }
  return p;
}

struct Adam {
  explicit Adam(size_t n) : m(n, 0.0), v(n, 0.0) {}
  void Step(double lr, const std::vector<double>& g, std::vector<double>* p) {
    ++t;
    const double b1 = 0.9, b2 = 0.999, c1 = 1 - std::pow(b1, t), c2 = 1 - std::pow(b2, t);
    for (size_t i = 0; i < g.size(); ++i) {
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      (*p)[i] -= lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + 1e-12);
    }
  }
  std::vector<double> m, v;
  int t = 0;
};

}  // namespace

absl::Status LessTrainOptions::Validate() const {
  auto bad = [](const std::string& why) {
    return absl::InvalidArgumentError("less-train: " + why);
  };
  if (rank < 1 || rank > 256) return bad(absl::StrCat("rank ", rank, " not in [1, 256]"));
  if (hidden < 0 || hidden > cache::kLessKernelsMaxHidden)
    return bad(absl::StrCat("hidden ", hidden, " not in [0, 4096]"));
  if (steps < 0) return bad(absl::StrCat("steps ", steps, " < 0"));
  if (!(learning_rate > 0)) return bad(absl::StrCat("learning rate ", learning_rate, " not > 0"));
  if (!(initial_share > 0 && initial_share < 1))
    return bad(absl::StrCat("initial share ", initial_share, " not in (0, 1)"));
  if (threads < 1) return bad(absl::StrCat("threads ", threads, " < 1"));
  if (validation_every < 1) return bad(absl::StrCat("validation_every ", validation_every, " < 1"));
  return absl::OkStatus();
}

namespace {

// One layer's problems over several streams: the loss is the mean over all
// their rows (each stream's mean weighted by its rows).
class LayerSet {
 public:
  LayerSet(absl::Span<const LessSamples* const> samples, int32_t layer, const MapShape& phi,
           const MapShape& psi) {
    for (const LessSamples* s : samples) {
      problems_.push_back(std::make_unique<LayerProblem>(*s, layer, phi, psi));
      rows_ += problems_.back()->rows();
    }
  }
  int64_t rows() const { return rows_; }
  double SparseLoss() const {
    double sum = 0;
    for (const auto& p : problems_) sum += p->SparseLoss() * p->rows();
    return rows_ > 0 ? sum / rows_ : 0.0;
  }
  // As LayerProblem::Pass; grad (when not null) sized [phi | psi].
  double Pass(const double* phi_p, const double* psi_p, std::vector<double>* grad,
              double* log_share) {
    double loss = 0, share = 0;
    if (grad != nullptr) {
      std::fill(grad->begin(), grad->end(), 0.0);
      one_.resize(grad->size());
    }
    for (const auto& p : problems_) {
      if (p->rows() == 0) continue;
      const double w = static_cast<double>(p->rows()) / rows_;
      double sh = 0;
      loss += w * p->Pass(phi_p, psi_p, grad != nullptr ? one_.data() : nullptr, &sh);
      share += w * sh;
      if (grad != nullptr) {
        for (size_t i = 0; i < one_.size(); ++i) (*grad)[i] += w * one_[i];
      }
    }
    if (log_share != nullptr) *log_share = share;
    return loss;
  }

 private:
  std::vector<std::unique_ptr<LayerProblem>> problems_;
  int64_t rows_ = 0;
  std::vector<double> one_;
};

absl::Status CheckSamples(absl::Span<const LessSamples* const> samples,
                          const model::ModelConfig& c) {
  for (const LessSamples* s : samples) {
    const model::ModelConfig& o = s->config;
    if (o.dim != c.dim || o.n_layers != c.n_layers || o.n_heads != c.n_heads ||
        o.n_kv_heads != c.n_kv_heads || s->layers.size() != static_cast<size_t>(c.n_layers) ||
        s->num_tokens < 1) {
      return absl::InvalidArgumentError("less-train: samples of different models, or empty");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LessTrainResult> FitLessKernels(absl::Span<const LessSamples* const> train,
                                               absl::Span<const LessSamples* const> validation,
                                               const LessTrainOptions& options) {
  KVC_RETURN_IF_ERROR(options.Validate());
  if (train.empty()) return absl::InvalidArgumentError("less-train: no training samples");
  const model::ModelConfig& c = train[0]->config;
  KVC_RETURN_IF_ERROR(CheckSamples(train, c));
  KVC_RETURN_IF_ERROR(CheckSamples(validation, c));
  const int32_t d = c.head_dim();
  if (options.init != nullptr) {
    KVC_RETURN_IF_ERROR(options.init->Validate());
    KVC_RETURN_IF_ERROR(options.init->CheckMatches(c));
    if (options.init->rank != options.rank) {
      return absl::InvalidArgumentError(absl::StrCat("less-train: rank ", options.rank,
                                                     " but the initial kernels have rank ",
                                                     options.init->rank));
    }
  }
  MapShape shape{d, options.hidden, options.rank, options.activation, 0.0};
  if (options.hidden == 0 && options.activation == k::FeatureActivation::kExp) {
    shape.sq_norm_coeff = 0.5 / std::sqrt(static_cast<double>(d));  // as PositiveRandomFeatureMap
  }
  LessTrainResult result;
  result.kernels.dim = c.dim;
  result.kernels.n_layers = c.n_layers;
  result.kernels.n_kv_heads = c.n_kv_heads;
  result.kernels.head_dim = d;
  result.kernels.rank = options.rank;
  result.kernels.layers.resize(c.n_layers);
  result.layers.resize(c.n_layers);

  std::mutex progress_mu;
  int64_t steps_done = 0;
  auto fit_layer = [&](int32_t layer) {
    // phi and psi start as the same map (a softmax estimate for exp), or as
    // the given kernels' maps of this layer.
    MapShape phi_shape = shape, psi_shape = shape;
    std::vector<double> p;
    if (options.init != nullptr) {
      const k::FeatureMap phi = options.init->layers[layer].phi.View(),
                          psi = options.init->layers[layer].psi.View();
      phi_shape = ShapeOf(phi);
      psi_shape = ShapeOf(psi);
      p = ParamsOf(phi);
      const std::vector<double> q = ParamsOf(psi);
      p.insert(p.end(), q.begin(), q.end());
    } else {
      const std::vector<double> init = InitialMap(shape, options.seed + 1000 * layer);
      p = init;
      p.insert(p.end(), init.begin(), init.end());
    }
    LayerSet fit_set(train, layer, phi_shape, psi_shape),
        check_set(validation, layer, phi_shape, psi_shape);
    const bool validate = check_set.rows() > 0;
    LessLayerFit& fit = result.layers[layer];
    fit.rows = fit_set.rows();
    fit.sparse_loss = fit_set.SparseLoss();
    fit.validation_rows = check_set.rows();
    fit.validation_sparse_loss = check_set.SparseLoss();
    const size_t phi_size = phi_shape.size();
    if (options.init == nullptr && shape.act == k::FeatureActivation::kExp && fit.rows > 0) {
      double log_share = 0;
      fit_set.Pass(p.data(), p.data() + phi_size, nullptr, &log_share);
      const double shift = std::log(options.initial_share) - log_share;
      for (int32_t r = 0; r < shape.r; ++r)
        p[phi_size + shape.b2() + r] += shift;  // psi scales by e^shift
    }
    std::vector<double> grad(p.size()), best(p);
    double best_score = std::numeric_limits<double>::infinity();
    Adam adam(p.size());
    for (int32_t step = 0; step <= options.steps; ++step) {
      const double loss = fit_set.Pass(p.data(), p.data() + phi_size, &grad, nullptr);
      if (!std::isfinite(loss)) break;  // diverged: keep the best so far
      // The returned maps are the step with the lowest validation loss
      // (checked every validation_every steps and at the last), or the
      // lowest training loss without validation samples.
      const bool check =
          validate && (step % options.validation_every == 0 || step == options.steps);
      const double held =
          check ? check_set.Pass(p.data(), p.data() + phi_size, nullptr, nullptr) : 0.0;
      if (step == 0) {
        fit.initial_loss = loss;
        fit.validation_initial_loss = held;
      }
      const double score =
          validate ? (check ? held : std::numeric_limits<double>::infinity()) : loss;
      if (score < best_score) {
        best_score = score;
        best = p;
        fit.final_loss = loss;
        fit.validation_final_loss = held;
        fit.best_step = step;
      }
      if (step == options.steps) break;
      adam.Step(options.learning_rate, grad, &p);
      if (options.progress) {
        std::lock_guard<std::mutex> lock(progress_mu);
        options.progress(++steps_done);
      }
    }
    if (!std::isfinite(best_score)) fit.final_loss = fit.initial_loss;
    result.kernels.layers[layer].phi = WeightsOf(phi_shape, best.data());
    result.kernels.layers[layer].psi = WeightsOf(psi_shape, best.data() + phi_size);
  };
  std::atomic<int32_t> next{0};
  std::vector<std::thread> workers;
  const int32_t n_threads = std::min(options.threads, c.n_layers);
  for (int32_t i = 0; i < n_threads; ++i) {
    workers.emplace_back([&] {
      for (int32_t l = next++; l < c.n_layers; l = next++) fit_layer(l);
    });
  }
  for (std::thread& t : workers) t.join();
  KVC_RETURN_IF_ERROR(result.kernels.Validate());
  return result;
}

double LessLayerLoss(const LessSamples& samples, int32_t layer, const k::FeatureMap& phi,
                     const k::FeatureMap& psi) {
  LayerProblem problem(samples, layer, ShapeOf(phi), ShapeOf(psi));
  const std::vector<double> pp = ParamsOf(phi), sp = ParamsOf(psi);
  return problem.Pass(pp.data(), sp.data(), nullptr, nullptr);
}

}  // namespace kvc::eval

namespace kvc::eval {

double LessLayerLossAndGradient(const LessSamples& samples, int32_t layer,
                                const kernels::FeatureMap& phi, const kernels::FeatureMap& psi,
                                std::vector<double>* grad) {
  LayerProblem problem(samples, layer, ShapeOf(phi), ShapeOf(psi));
  const std::vector<double> pp = ParamsOf(phi), sp = ParamsOf(psi);
  grad->assign(pp.size() + sp.size(), 0.0);
  return problem.Pass(pp.data(), sp.data(), grad->data(), nullptr);
}

}  // namespace kvc::eval
