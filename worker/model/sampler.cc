#include "worker/model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace kvc::model {

absl::Status SamplerOptions::Validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) {
    return absl::InvalidArgumentError(absl::StrCat("sampler: temperature ", temperature, " must be >= 0"));
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("sampler: top_p ", top_p, " must be in (0, 1]"));
  }
  if (seed == 0) return absl::InvalidArgumentError("sampler: seed must be non-zero");
  return absl::OkStatus();
}

Sampler::Sampler(const SamplerOptions& options) : options_(options), state_(options.seed) {}

float Sampler::NextUniform() {
  state_ ^= state_ >> 12;
  state_ ^= state_ << 25;
  state_ ^= state_ >> 27;
  const uint32_t u = static_cast<uint32_t>((state_ * 0x2545F4914F6CDD1Dull) >> 32);
  return static_cast<float>(u >> 8) / 16777216.0f;
}

int32_t ArgMax(absl::Span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

double LogProb(absl::Span<const float> logits, int32_t token) {
  double m = -INFINITY;
  for (float x : logits) m = std::max<double>(m, x);
  double sum = 0;
  for (float x : logits) sum += std::exp(static_cast<double>(x) - m);
  return static_cast<double>(logits[token]) - m - std::log(sum);
}

int32_t Sampler::Sample(absl::Span<const float> logits) {
  if (options_.temperature == 0.0f) return ArgMax(logits);
  const size_t n = logits.size();
  probs_.resize(n);
  float m = -INFINITY;
  for (float x : logits) m = std::max(m, x);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) {
    probs_[i] = std::exp((logits[i] - m) / options_.temperature);
    sum += probs_[i];
  }
  for (float& p : probs_) p = static_cast<float>(p / sum);
  const float coin = NextUniform();
  if (options_.top_p >= 1.0f) {
    float cdf = 0;
    for (size_t i = 0; i < n; ++i) {
      cdf += probs_[i];
      if (coin < cdf) return static_cast<int32_t>(i);
    }
    return static_cast<int32_t>(n - 1);
  }
  // Nucleus: the smallest set of most probable tokens whose mass exceeds
  // top_p; tokens below (1 - top_p) / (n - 1) can never be in it.
  const float cutoff = n > 1 ? (1.0f - options_.top_p) / static_cast<float>(n - 1) : 0.0f;
  order_.clear();
  for (size_t i = 0; i < n; ++i) {
    if (probs_[i] >= cutoff) order_.push_back(static_cast<int32_t>(i));
  }
  std::sort(order_.begin(), order_.end(), [&](int32_t a, int32_t b) {
    return probs_[a] != probs_[b] ? probs_[a] > probs_[b] : a < b;
  });
  float mass = 0;
  size_t last = order_.size() - 1;
  for (size_t i = 0; i < order_.size(); ++i) {
    mass += probs_[order_[i]];
    if (mass > options_.top_p) {
      last = i;
      break;
    }
  }
  const float r = coin * mass;
  float cdf = 0;
  for (size_t i = 0; i <= last; ++i) {
    cdf += probs_[order_[i]];
    if (r < cdf) return order_[i];
  }
  return order_[last];
}

}  // namespace kvc::model
