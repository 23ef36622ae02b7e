#include "worker/cache/snapkv.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/attention.h"
#include "worker/cache/attend.h"

namespace kvc::cache {

namespace k = ::kvc::kernels;

absl::Status SnapKvOptions::Validate() const {
  if (budget < 1 || budget > INT32_MAX / 2) {
    return absl::InvalidArgumentError(absl::StrCat("snapkv: budget ", budget, " must be >= 1"));
  }
  if (window < 1 || window > budget) {
    return absl::InvalidArgumentError(
        absl::StrCat("snapkv: window ", window, " not in [1, budget ", budget, "]"));
  }
  KVC_RETURN_IF_ERROR(CheckPoolKernel("snapkv", pool_kernel));
  KVC_RETURN_IF_ERROR(CheckKvDtype("snapkv", kv_dtype));
  return absl::OkStatus();
}

SnapKv::SnapKv(const model::ModelConfig& config, const SnapKvOptions& options)
    : config_(config), options_(options) {
  layers_.reserve(config.n_layers);
  for (int32_t l = 0; l < config.n_layers; ++l) {
    layers_.push_back(
        Layer{HeadwiseKv(config.n_kv_heads, config.head_dim(), options.kv_dtype), {}, false, 0, 0});
  }
}

absl::StatusOr<std::unique_ptr<SnapKv>> SnapKv::Create(const model::ModelConfig& config,
                                                       const SnapKvOptions& options) {
  KVC_RETURN_IF_ERROR(options.Validate());
  return std::unique_ptr<SnapKv>(new SnapKv(config, options));
}

std::string SnapKv::name() const {
  return absl::StrCat("snapkv(B=", options_.budget, ",w=", options_.window,
                      ",pool=", options_.pool_kernel, options_.compact_positions ? ",compact" : "",
                      ")");
}

void SnapKv::KeepWindowQueries(Layer& layer, const float* q, int64_t n) const {
  const size_t row = static_cast<size_t>(config_.n_heads) * config_.head_dim();
  const size_t keep = std::min<size_t>(options_.window, layer.window_q.size() / row + n);
  const size_t from_chunk = std::min<size_t>(keep, n), from_old = keep - from_chunk;
  std::vector<float>& w = layer.window_q;
  w.erase(w.begin(), w.end() - from_old * row);
  w.insert(w.end(), q + (n - from_chunk) * row, q + n * row);
}

absl::Status SnapKv::Attend(const k::ExecContext& ctx, const model::AttendArgs& a) {
  KVC_RETURN_IF_ERROR(CheckAttendArgs(config_, a));
  Layer& layer = layers_[a.layer];
  if (a.first_position < layer.next_position) {
    return absl::InvalidArgumentError(absl::StrCat("snapkv: chunk at position ", a.first_position,
                                                   " does not follow position ",
                                                   layer.next_position - 1));
  }
  if (!layer.compressed && a.num_tokens == 1 && layer.kv.size() > 0) {
    KVC_RETURN_IF_ERROR(CompressLayer(ctx, a.layer));
  }
  const int64_t n = a.num_tokens, past = layer.kv.size();
  KVC_RETURN_IF_ERROR(layer.kv.Append(n, a.k, a.v, a.first_position));
  if (!layer.compressed) KeepWindowQueries(layer, a.q, n);
  query_positions_.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    query_positions_[i] =
        static_cast<int32_t>(options_.compact_positions ? past + i : a.first_position + i);
  }
  KVC_RETURN_IF_ERROR(AttendGather(ctx, config_, a.q, n, layer.kv.Pool(),
                                   layer.kv.Gather(options_.compact_positions),
                                   query_positions_.data(), k::ScoreAccum{}, a.out, a.lse));
  layer.seen += n;
  layer.next_position = a.first_position + n;

  if (a.layer == 0) stats_.attended_last_step = 0;
  const int64_t pairs = n * past + n * (n + 1) / 2;
  stats_.attended_last_step += pairs;
  stats_.attended_total += pairs;
  return absl::OkStatus();
}

absl::Status SnapKv::Compress(const k::ExecContext& ctx) {
  for (int32_t l = 0; l < config_.n_layers; ++l) {
    if (!layers_[l].compressed) KVC_RETURN_IF_ERROR(CompressLayer(ctx, l));
  }
  return absl::OkStatus();
}

absl::Status SnapKv::CompressLayer(const k::ExecContext& ctx, int32_t l) {
  Layer& layer = layers_[l];
  layer.compressed = true;
  const int64_t len = layer.kv.size(), b = options_.budget, w = options_.window;
  if (len <= b) {
    layer.window_q = {};
    return absl::OkStatus();
  }
  // Every head still holds the whole prompt, entry i = the i-th token; the
  // window is entries [len - w, len) (len > b >= w, so all w were kept).
  const int32_t hkv = config_.n_kv_heads;
  scores_.assign(static_cast<size_t>(hkv) * len, 0.0f);
  out_.resize(layer.window_q.size());
  query_positions_.resize(w);
  for (int64_t i = 0; i < w; ++i) {
    query_positions_[i] = options_.compact_positions ? static_cast<int32_t>(len - w + i)
                                                     : layer.kv.position(0, len - w + i);
  }
  const k::ScoreAccum accum{
      k::ScoreMode::kSum, k::GroupReduce::kSum, 0.999f, 0, scores_.data(), nullptr};
  KVC_RETURN_IF_ERROR(AttendGather(ctx, config_, layer.window_q.data(), w, layer.kv.Pool(),
                                   layer.kv.Gather(options_.compact_positions),
                                   query_positions_.data(), accum, out_.data()));

  // Per head: pooled votes over the prefix before the window, top B - w.
  const int64_t prefix = len - w, top = b - w, half = options_.pool_kernel / 2;
  keep_.resize(static_cast<size_t>(hkv) * b);
  pooled_.resize(prefix);
  order_.resize(prefix);
  for (int32_t h = 0; h < hkv; ++h) {
    const float* s = scores_.data() + h * len;
    for (int64_t t = 0; t < prefix; ++t) {
      const int64_t lo = std::max<int64_t>(0, t - half),
                    hi = std::min<int64_t>(prefix - 1, t + half);
      pooled_[t] = *std::max_element(s + lo, s + hi + 1);
    }
    std::iota(order_.begin(), order_.end(), 0);
    const float* p = pooled_.data();
    const auto better = [p](int32_t x, int32_t y) {
      return p[x] > p[y] || (p[x] == p[y] && x < y);
    };
    std::nth_element(order_.begin(), order_.begin() + top, order_.end(), better);
    int32_t* row = keep_.data() + h * b;
    std::copy_n(order_.begin(), top, row);
    std::sort(row, row + top);
    std::iota(row + top, row + b, static_cast<int32_t>(prefix));
  }
  layer.kv.Retain(keep_, b);
  layer.kv.Shrink();
  layer.window_q = {};
  ++compressions_;
  return absl::OkStatus();
}

PolicyStats SnapKv::stats() const {
  PolicyStats s = stats_;
  if (layers_.empty()) return s;
  s.tokens_seen = layers_.back().seen;
  s.resident_bytes = 0;
  for (const Layer& l : layers_) {
    s.resident_tokens = std::max(s.resident_tokens, l.kv.size());
    // Keys and values, a position per (token, head), and the window's queries.
    s.resident_bytes +=
        static_cast<size_t>(l.kv.size()) * (l.kv.slot_bytes() + 4u * config_.n_kv_heads) +
        l.window_q.size() * sizeof(float);
  }
  return s;
}

}  // namespace kvc::cache
