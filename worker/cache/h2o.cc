#include "worker/cache/h2o.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/cache/attend.h"

namespace kvc::cache {

namespace k = ::kvc::kernels;

absl::Status H2OOptions::Validate() const {
  if (heavy < 0 || recent < 0 || budget() < 1) {
    return absl::InvalidArgumentError(absl::StrCat("h2o: heavy ", heavy, " and recent ", recent,
                                                   " must be >= 0 with a sum >= 1"));
  }
  if (budget() > INT32_MAX / 2)
    return absl::InvalidArgumentError(absl::StrCat("h2o: budget ", budget(), " too large"));
  if (group_reduce != k::GroupReduce::kSum && group_reduce != k::GroupReduce::kMax) {
    return absl::InvalidArgumentError("h2o: unknown group reduction");
  }
  KVC_RETURN_IF_ERROR(CheckKvDtype("h2o", kv_dtype));
  return absl::OkStatus();
}

H2O::H2O(const model::ModelConfig& config, const H2OOptions& options)
    : config_(config), options_(options) {
  layers_.reserve(config.n_layers);
  for (int32_t l = 0; l < config.n_layers; ++l) {
    layers_.push_back(
        Layer{HeadwiseKv(config.n_kv_heads, config.head_dim(), options.kv_dtype), {}, 0, 0});
  }
}

absl::StatusOr<std::unique_ptr<H2O>> H2O::Create(const model::ModelConfig& config,
                                                 const H2OOptions& options) {
  KVC_RETURN_IF_ERROR(options.Validate());
  return std::unique_ptr<H2O>(new H2O(config, options));
}

std::string H2O::name() const {
  return absl::StrCat("h2o(heavy=", options_.heavy, ",recent=", options_.recent,
                      options_.group_reduce == k::GroupReduce::kMax ? ",max" : "",
                      options_.compact_positions ? ",compact" : "", ")");
}

std::vector<float> H2O::kept_scores(int32_t layer, int32_t kv_head) const {
  const Layer& l = layers_[layer];
  const auto first = l.scores.begin() + kv_head * l.kv.size();
  return std::vector<float>(first, first + l.kv.size());
}

absl::Status H2O::Attend(const k::ExecContext& ctx, const model::AttendArgs& a) {
  KVC_RETURN_IF_ERROR(CheckAttendArgs(config_, a));
  Layer& layer = layers_[a.layer];
  if (a.first_position < layer.next_position) {
    return absl::InvalidArgumentError(absl::StrCat("h2o: chunk at position ", a.first_position,
                                                   " does not follow position ",
                                                   layer.next_position - 1));
  }
  const int64_t n = a.num_tokens, past = layer.kv.size(), total = past + n;
  const int32_t hkv = config_.n_kv_heads;
  KVC_RETURN_IF_ERROR(layer.kv.Append(n, a.k, a.v, a.first_position));

  // Scores of this call's pool ([Hkv][total]): the kept tokens' so far, 0
  // for the chunk's.
  call_scores_.assign(static_cast<size_t>(hkv) * total, 0.0f);
  for (int32_t h = 0; h < hkv; ++h) {
    std::copy_n(layer.scores.begin() + h * past, past, call_scores_.begin() + h * total);
  }
  query_positions_.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    query_positions_[i] =
        static_cast<int32_t>(options_.compact_positions ? past + i : a.first_position + i);
  }
  const k::ScoreAccum accum{
      k::ScoreMode::kSum, options_.group_reduce, 0.999f, 0, call_scores_.data(), nullptr};
  KVC_RETURN_IF_ERROR(AttendGather(ctx, config_, a.q, n, layer.kv.Pool(),
                                   layer.kv.Gather(options_.compact_positions),
                                   query_positions_.data(), accum, a.out, a.lse));

  evictions_.layer = a.layer;
  evictions_.dtype = options_.kv_dtype;
  evictions_.stride = 0;
  evictions_.count.assign(hkv, 0);
  if (total > options_.budget()) {
    const int64_t b = options_.budget();
    ChooseKept(total);
    ReportEvictions(layer, total);
    layer.kv.Retain(keep_, b);
    layer.scores.resize(static_cast<size_t>(hkv) * b);
    for (int32_t h = 0; h < hkv; ++h) {
      for (int64_t j = 0; j < b; ++j)
        layer.scores[h * b + j] = call_scores_[h * total + keep_[h * b + j]];
    }
  } else {
    layer.scores.swap(call_scores_);
  }
  layer.seen += n;
  layer.next_position = a.first_position + n;

  if (a.layer == 0) stats_.attended_last_step = 0;
  const int64_t pairs = n * past + n * (n + 1) / 2;
  stats_.attended_last_step += pairs;
  stats_.attended_total += pairs;
  return absl::OkStatus();
}

void H2O::ReportEvictions(const Layer& layer, int64_t total) {
  const int32_t hkv = config_.n_kv_heads, d = config_.head_dim();
  const int64_t b = options_.budget(), evicted = total - b;
  const size_t row = static_cast<size_t>(d) * k::DTypeSize(options_.kv_dtype);
  const k::KvPool pool = layer.kv.Pool();
  Evictions& ev = evictions_;
  ev.stride = evicted;
  ev.count.assign(hkv, static_cast<int32_t>(evicted));
  ev.k.resize(static_cast<size_t>(hkv) * evicted * row);
  ev.v.resize(ev.k.size());
  ev.positions.resize(static_cast<size_t>(hkv) * evicted);
  const auto* pool_k = static_cast<const uint8_t*>(pool.k);
  const auto* pool_v = static_cast<const uint8_t*>(pool.v);
  for (int32_t h = 0; h < hkv; ++h) {
    // The entries of [0, total) not in head h's keep row (ascending).
    const int32_t* kept = keep_.data() + h * b;
    int64_t next = 0, out = static_cast<int64_t>(h) * evicted;
    for (int32_t j = 0; j < total; ++j) {
      if (next < b && kept[next] == j) {
        ++next;
        continue;
      }
      const size_t src = static_cast<size_t>(pool.Offset(j, h)) * k::DTypeSize(options_.kv_dtype);
      std::copy_n(pool_k + src, row, ev.k.data() + out * row);
      std::copy_n(pool_v + src, row, ev.v.data() + out * row);
      ev.positions[out++] = layer.kv.position(h, j);
    }
  }
}

void H2O::ChooseKept(int64_t total) {
  const int32_t hkv = config_.n_kv_heads;
  const int64_t b = options_.budget(), recent = options_.recent, heavy = options_.heavy;
  const int64_t old = total - recent;  // entries [0, old) compete; old > heavy since total > b
  keep_.resize(static_cast<size_t>(hkv) * b);
  order_.resize(old);
  for (int32_t h = 0; h < hkv; ++h) {
    const float* s = call_scores_.data() + h * total;
    std::iota(order_.begin(), order_.end(), 0);
    // Entries are in position order, so the lower index is the older token.
    const auto better = [s](int32_t x, int32_t y) {
      return s[x] > s[y] || (s[x] == s[y] && x < y);
    };
    std::nth_element(order_.begin(), order_.begin() + heavy, order_.end(), better);
    int32_t* row = keep_.data() + h * b;
    std::copy_n(order_.begin(), heavy, row);
    std::sort(row, row + heavy);
    std::iota(row + heavy, row + b, static_cast<int32_t>(old));
  }
}

PolicyStats H2O::stats() const {
  PolicyStats s = stats_;
  if (layers_.empty()) return s;
  s.tokens_seen = layers_.back().seen;
  s.resident_bytes = 0;
  for (const Layer& l : layers_) {
    s.resident_tokens = std::max(s.resident_tokens, l.kv.size());
    // Keys and values, plus a score and a position per (token, head).
    s.resident_bytes +=
        static_cast<size_t>(l.kv.size()) * (l.kv.slot_bytes() + 8u * config_.n_kv_heads);
  }
  return s;
}

}  // namespace kvc::cache
