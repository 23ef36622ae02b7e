#include "tests/naive_llama.h"

#include <algorithm>
#include <cmath>

namespace kvc::testing {
namespace {

// out[i] = sum_j w[i][j] x[j], W [n][d].
std::vector<double> MatVec(const float* w, const std::vector<double>& x, int n) {
  const size_t d = x.size();
  std::vector<double> out(n, 0.0);
  for (int i = 0; i < n; ++i) {
    double s = 0;
    for (size_t j = 0; j < d; ++j) s += static_cast<double>(w[i * d + j]) * x[j];
    out[i] = s;
  }
  return out;
}

std::vector<double> RmsNorm(const std::vector<double>& x, const float* w, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double inv = 1.0 / std::sqrt(ss / x.size() + eps);
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] * inv * w[i];
  return out;
}

// run.c: for each even i, head_dim = i % head_size, freq = 1 / theta^(head_dim / head_size).
void Rotate(std::vector<double>& v, int head_size, int64_t pos, double theta) {
  for (size_t i = 0; i + 1 < v.size(); i += 2) {
    const int hd = static_cast<int>(i % head_size);
    const double freq = 1.0 / std::pow(theta, static_cast<double>(hd) / head_size);
    const double angle = pos * freq, c = std::cos(angle), s = std::sin(angle);
    const double a = v[i], b = v[i + 1];
    v[i] = a * c - b * s;
    v[i + 1] = a * s + b * c;
  }
}

}  // namespace

NaiveLlama::NaiveLlama(const model::Checkpoint& checkpoint)
    : ckpt_(checkpoint), keys_(checkpoint.config().n_layers), values_(checkpoint.config().n_layers) {}

std::vector<float> NaiveLlama::Step(int32_t token) {
  const model::ModelConfig& c = ckpt_.config();
  const int d = c.dim, hs = c.head_dim(), kvd = c.kv_dim(), g = c.n_heads / c.n_kv_heads;
  std::vector<double> x(d);
  for (int i = 0; i < d; ++i) x[i] = ckpt_.tok_emb()[static_cast<size_t>(token) * d + i];
  for (int l = 0; l < c.n_layers; ++l) {
    const model::LayerWeights& w = ckpt_.layer(l);
    std::vector<double> xb = RmsNorm(x, w.rms_att, c.norm_eps);
    std::vector<double> q = MatVec(w.wq, xb, d), k = MatVec(w.wk, xb, kvd), v = MatVec(w.wv, xb, kvd);
    Rotate(q, hs, pos_, c.rope_theta);
    Rotate(k, hs, pos_, c.rope_theta);
    keys_[l].insert(keys_[l].end(), k.begin(), k.end());
    values_[l].insert(values_[l].end(), v.begin(), v.end());
    const int64_t n = pos_ + 1;
    std::vector<double> att(d, 0.0);
    for (int h = 0; h < c.n_heads; ++h) {
      const int kh = h / g;
      std::vector<double> score(n);
      for (int64_t t = 0; t < n; ++t) {
        double s = 0;
        for (int i = 0; i < hs; ++i) s += q[h * hs + i] * keys_[l][t * kvd + kh * hs + i];
        score[t] = s / std::sqrt(static_cast<double>(hs));
      }
      const double m = *std::max_element(score.begin(), score.end());
      double sum = 0;
      for (double& s : score) sum += (s = std::exp(s - m));
      for (int64_t t = 0; t < n; ++t) {
        for (int i = 0; i < hs; ++i) att[h * hs + i] += score[t] / sum * values_[l][t * kvd + kh * hs + i];
      }
    }
    const std::vector<double> o = MatVec(w.wo, att, d);
    for (int i = 0; i < d; ++i) x[i] += o[i];
    xb = RmsNorm(x, w.rms_ffn, c.norm_eps);
    std::vector<double> h1 = MatVec(w.w1, xb, c.hidden_dim), h3 = MatVec(w.w3, xb, c.hidden_dim);
    for (int i = 0; i < c.hidden_dim; ++i) h1[i] = h1[i] / (1.0 + std::exp(-h1[i])) * h3[i];
    const std::vector<double> f = MatVec(w.w2, h1, d);
    for (int i = 0; i < d; ++i) x[i] += f[i];
  }
  x = RmsNorm(x, ckpt_.rms_final(), c.norm_eps);
  const std::vector<double> logits = MatVec(ckpt_.classifier(), x, c.vocab_size);
  ++pos_;
  return std::vector<float>(logits.begin(), logits.end());
}

}  // namespace kvc::testing
