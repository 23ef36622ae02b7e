#include "worker/cache/refresh_kv.h"

#include <algorithm>
#include <cmath>
#include <new>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/attention.h"
#include "worker/cache/attend.h"

namespace kvc::cache {

namespace k = ::kvc::kernels;

absl::Status RefreshKvOptions::Validate() const {
  if (k < 1 || k > INT32_MAX / 2) {
    return absl::InvalidArgumentError(absl::StrCat("refreshkv: k ", k, " must be >= 1"));
  }
  if (stride < 1)
    return absl::InvalidArgumentError(absl::StrCat("refreshkv: stride ", stride, " must be >= 1"));
  if (mode != RefreshMode::kFixed && mode != RefreshMode::kSimilarity) {
    return absl::InvalidArgumentError("refreshkv: unknown mode");
  }
  if (!(threshold >= -1.0f && threshold <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("refreshkv: threshold ", threshold, " not in [-1, 1]"));
  }
  KVC_RETURN_IF_ERROR(CheckPoolKernel("refreshkv", pool_kernel));
  KVC_RETURN_IF_ERROR(CheckKvDtype("refreshkv", kv_dtype));
  return absl::OkStatus();
}

bool RefreshScheduler::NextStepIsFull(const std::vector<float>& query_mean) {
  ++since_refresh_;
  if (since_refresh_ % options_.stride != 0) return false;
  if (options_.mode == RefreshMode::kFixed || reference_.empty()) return true;
  double dot = 0, qq = 0, rr = 0;
  for (size_t d = 0; d < query_mean.size(); ++d) {
    dot += static_cast<double>(query_mean[d]) * reference_[d];
    qq += static_cast<double>(query_mean[d]) * query_mean[d];
    rr += static_cast<double>(reference_[d]) * reference_[d];
  }
  const double denom = std::sqrt(qq * rr);
  const double cosine = denom > 0 ? dot / denom : 0.0;
  return !(cosine > options_.threshold);
}

void RefreshScheduler::Refreshed(const std::vector<float>& query_mean) {
  reference_ = query_mean;
  since_refresh_ = 0;
}

RefreshKv::Layer::Layer(const model::ModelConfig& config, const RefreshKvOptions& options)
    : kv(config.n_kv_heads, config.head_dim(), options.kv_dtype),
      hot(config.n_kv_heads),
      scheduler(options),
      hot_kv(config.n_kv_heads, config.head_dim(), options.kv_dtype) {}

RefreshKv::RefreshKv(const model::ModelConfig& config, const RefreshKvOptions& options)
    : config_(config), options_(options), full_kv_(config.n_kv_heads, config.head_dim(), options.kv_dtype) {
  layers_.reserve(config.n_layers);
  for (int32_t l = 0; l < config.n_layers; ++l) layers_.emplace_back(config, options);
}

absl::Status RefreshKv::SetColdStore(ColdKvStore* cold) {
  for (const Layer& l : layers_) {
    if (!l.positions.empty()) return absl::FailedPreconditionError("refreshkv: cold store set after the first token");
  }
  cold_ = cold;
  if (cold_ == nullptr) return absl::OkStatus();
  const int32_t hkv = config_.n_kv_heads;
  for (Layer& l : layers_) {
    KVC_RETURN_IF_ERROR(l.hot_kv.Reserve(int64_t{options_.k} + 1));
    l.hot_slot.assign(hkv, {});
    l.free_slots.assign(hkv, {});
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<RefreshKv>> RefreshKv::Create(const model::ModelConfig& config,
                                                             const RefreshKvOptions& options) {
  KVC_RETURN_IF_ERROR(options.Validate());
  return std::unique_ptr<RefreshKv>(new RefreshKv(config, options));
}

std::string RefreshKv::name() const {
  return absl::StrCat(
      "refreshkv(hot=", options_.k, ",S=", options_.stride,
      options_.mode == RefreshMode::kFixed ? ",fixed" : absl::StrCat(",sim=", options_.threshold),
      ",pool=", options_.pool_kernel, options_.compact_positions ? ",compact" : "", ")");
}

std::vector<int32_t> RefreshKv::partial_cache(int32_t layer, int32_t kv_head) const {
  const Layer& l = layers_[layer];
  std::vector<int32_t> p;
  for (const int32_t slot : l.hot[kv_head]) p.push_back(l.positions[slot]);
  return p;
}

void RefreshKv::QueryMean(const float* q, int64_t i) {
  const int32_t hq = config_.n_heads, d = config_.head_dim();
  query_mean_.assign(d, 0.0f);
  const float* row = q + i * hq * d;
  for (int32_t h = 0; h < hq; ++h) {
    for (int32_t x = 0; x < d; ++x) query_mean_[x] += row[h * d + x];
  }
  for (float& x : query_mean_) x /= static_cast<float>(hq);
}

absl::Status RefreshKv::Attend(const k::ExecContext& ctx, const model::AttendArgs& a) {
  KVC_RETURN_IF_ERROR(CheckAttendArgs(config_, a));
  Layer& layer = layers_[a.layer];
  if (a.first_position < layer.next_position) {
    return absl::InvalidArgumentError(absl::StrCat("refreshkv: chunk at position ",
                                                   a.first_position, " does not follow position ",
                                                   layer.next_position - 1));
  }
  const int64_t n = a.num_tokens, past = static_cast<int64_t>(layer.positions.size()),
                total = past + n;
  if (total > INT32_MAX) return absl::InvalidArgumentError("refreshkv: too many tokens");
  KVC_RETURN_IF_ERROR(layer.kv.Reserve(total - layer.local_first));
  layer.kv.WriteRange(past - layer.local_first, n, a.k, a.v);
  for (int64_t i = 0; i < n; ++i)
    layer.positions.push_back(static_cast<int32_t>(a.first_position + i));
  layer.next_position = a.first_position + n;

  QueryMean(a.q, n - 1);
  int64_t pairs = 0;
  bool full = n > 1 || layer.scheduler.NextStepIsFull(query_mean_);
  if (full && layer.local_first > 0) {
    // Rehydrate Cf. A decode step whose store cannot answer stays a partial
    // step over the local hot set (generation goes on; the next due check
    // tries again); a prefill chunk cannot do without it.
    const absl::Status s = Rehydrate(a.layer, layer, total);
    if (!s.ok()) {
      if (n > 1) return s;
      ++refreshes_skipped_;
      last_cold_error_ = s;
      full = false;
    }
  }
  if (full) {
    KVC_RETURN_IF_ERROR(FullAttend(ctx, a, layer, total));
    if (n == 1) ++full_steps_;
    pairs = n * past + n * (n + 1) / 2;
  } else {
    pairs = static_cast<int64_t>(layer.hot.front().size()) + 1;
    KVC_RETURN_IF_ERROR(PartialAttend(ctx, a, layer, total));
    ++partial_steps_;
  }
  if (cold_ != nullptr && n == 1) KVC_RETURN_IF_ERROR(Trim(a.layer, layer, total));
  if (a.layer == 0) stats_.attended_last_step = 0;
  stats_.attended_last_step += pairs;
  stats_.attended_total += pairs;
  return absl::OkStatus();
}

absl::Status RefreshKv::FullAttend(const k::ExecContext& ctx, const model::AttendArgs& a,
                                   Layer& layer, int64_t total) {
  const int64_t n = a.num_tokens, past = total - n;
  indptr_ = {0, static_cast<int32_t>(total)};
  indices_.resize(total);
  std::iota(indices_.begin(), indices_.end(), 0);
  if (options_.compact_positions) {
    gather_positions_ = indices_;
  } else {
    gather_positions_ = layer.positions;
  }
  query_positions_.resize(n);
  for (int64_t i = 0; i < n; ++i) query_positions_[i] = gather_positions_[past + i];
  scores_.assign(static_cast<size_t>(config_.n_kv_heads) * total, 0.0f);
  // The last query's probabilities, normalised by the attention pass's lse.
  const k::ScoreAccum accum{
      k::ScoreMode::kSum, k::GroupReduce::kMax, 0.999f, n - 1, scores_.data(), nullptr};
  const k::KvGather gather{indptr_.data(), indices_.data(), gather_positions_.data(), false};
  // Cf: local (slot = token), or rehydrated from the cold store (Attend).
  const LayerKv* cf = layer.local_first > 0 ? &full_kv_ : &layer.kv;
  KVC_RETURN_IF_ERROR(AttendGather(ctx, config_, a.q, n, cf->Pool(total), gather, query_positions_.data(), accum,
                                   a.out, a.lse));
  Rebuild(layer, total);
  if (cold_ != nullptr) KVC_RETURN_IF_ERROR(FillHot(layer, *cf));
  layer.scheduler.Refreshed(query_mean_);
  return absl::OkStatus();
}

absl::Status RefreshKv::Rehydrate(int32_t l, Layer& layer, int64_t total) {
  const int64_t stored = layer.local_first;
  const size_t row = static_cast<size_t>(config_.n_kv_heads) * config_.head_dim();
  KVC_RETURN_IF_ERROR(full_kv_.Reserve(total));
  // fp32 KV: fetched straight into the rehydration pool; otherwise through
  // fp32 scratch, converted on the way in.
  float* k = full_kv_.MutableF32K(0);
  float* v = full_kv_.MutableF32V(0);
  if (k == nullptr) {
    try {
      fetch_k_.resize(stored * row);
      fetch_v_.resize(stored * row);
    } catch (const std::bad_alloc&) {
      return absl::ResourceExhaustedError(absl::StrCat("refreshkv: no memory to rehydrate ", stored, " tokens"));
    }
    k = fetch_k_.data();
    v = fetch_v_.data();
  }
  // The next layer's context streams in while this layer attends (it will
  // likely refresh on this step too; a fetch it does not use is kept for
  // when it does: blocks never change).
  if (l + 1 < config_.n_layers && layers_[l + 1].local_first > 0) cold_->Prefetch(l + 1, layers_[l + 1].local_first);
  const absl::Status fetched = cold_->Fetch(l, stored, k, v);
  if (!fetched.ok()) {
    return absl::Status(fetched.code(), absl::StrCat("refreshkv: rehydrating layer ", l, ": ", fetched.message()));
  }
  if (k == fetch_k_.data()) full_kv_.WriteRange(0, stored, k, v);
  full_kv_.CopyRows(layer.kv, 0, stored, total - stored);
  rehydrated_tokens_ += stored;
  return absl::OkStatus();
}

absl::Status RefreshKv::FillHot(Layer& layer, const LayerKv& cf) {
  const int32_t slots = options_.k + 1;
  for (int32_t h = 0; h < config_.n_kv_heads; ++h) {
    const std::deque<int32_t>& hot = layer.hot[h];
    layer.hot_slot[h].clear();
    for (size_t i = 0; i < hot.size(); ++i) {
      layer.hot_kv.CopyHead(cf, hot[i], static_cast<int64_t>(i), h);
      layer.hot_slot[h].push_back(static_cast<int32_t>(i));
    }
    std::vector<int32_t>& free = layer.free_slots[h];
    free.clear();
    for (int32_t s = slots - 1; s >= static_cast<int32_t>(hot.size()); --s) free.push_back(s);
  }
  return absl::OkStatus();
}

absl::Status RefreshKv::Trim(int32_t l, Layer& layer, int64_t total) {
  const int64_t stored = std::min(cold_->stored_tokens(l), total);
  if (stored <= layer.local_first) return absl::OkStatus();
  const int64_t keep = total - stored;
  layer.kv.MoveRows(stored - layer.local_first, 0, keep);
  layer.local_first = stored;
  // Give back the prompt's rows once (not on every step).
  if (layer.kv.capacity() > 2 * keep + 1024) layer.kv.Shrink(std::max<int64_t>(2 * keep, 256));
  return absl::OkStatus();
}

absl::Status RefreshKv::PartialAttend(const k::ExecContext& ctx, const model::AttendArgs& a, Layer& layer,
                                      int64_t total) {
  const int32_t hkv = config_.n_kv_heads;
  const int32_t token = static_cast<int32_t>(total - 1);
  const int64_t m = static_cast<int64_t>(layer.hot.front().size()), per_list = m + 1;
  // Rows: Cf's (slot = token), or with a cold store the hot set's own pool
  // (the new token's rows copied into a free slot of each head).
  const bool cold = cold_ != nullptr;
  indptr_.resize(hkv + 1);
  indices_.resize(static_cast<size_t>(hkv) * per_list);
  gather_positions_.resize(indices_.size());
  for (int32_t h = 0; h < hkv; ++h) {
    int32_t slot = token;
    token_slot_.clear();
    if (cold) {
      if (layer.free_slots[h].empty()) return absl::InternalError("refreshkv: hot set has no free slot");
      slot = layer.free_slots[h].back();
      layer.free_slots[h].pop_back();
      layer.hot_kv.CopyHead(layer.kv, token - layer.local_first, slot, h);
      for (size_t i = 0; i < layer.hot[h].size(); ++i) token_slot_.emplace_back(layer.hot[h][i], layer.hot_slot[h][i]);
      layer.hot_slot[h].push_back(slot);
    } else {
      for (const int32_t t : layer.hot[h]) token_slot_.emplace_back(t, t);
    }
    // Cp in token order (compact positions keep it), then the new token.
    std::sort(token_slot_.begin(), token_slot_.end());
    token_slot_.emplace_back(token, slot);
    indptr_[h] = static_cast<int32_t>(h * per_list);
    for (int64_t j = 0; j < per_list; ++j) {
      indices_[h * per_list + j] = token_slot_[j].second;
      gather_positions_[h * per_list + j] =
          options_.compact_positions ? static_cast<int32_t>(j) : layer.positions[token_slot_[j].first];
    }
    layer.hot[h].push_back(token);
  }
  indptr_[hkv] = static_cast<int32_t>(hkv * per_list);
  query_positions_.assign(1, options_.compact_positions ? static_cast<int32_t>(m) : layer.positions[token]);
  const k::KvGather gather{indptr_.data(), indices_.data(), gather_positions_.data(), true};
  const k::KvPool pool = cold ? layer.hot_kv.Pool(int64_t{options_.k} + 1) : layer.kv.Pool(total);
  KVC_RETURN_IF_ERROR(
      AttendGather(ctx, config_, a.q, 1, pool, gather, query_positions_.data(), k::ScoreAccum{}, a.out, a.lse));
  // Cp keeps at most K: the front (lowest score, or oldest appended) goes.
  for (int32_t h = 0; h < hkv; ++h) {
    if (static_cast<int64_t>(layer.hot[h].size()) <= options_.k) continue;
    layer.hot[h].pop_front();
    if (cold) {
      layer.free_slots[h].push_back(layer.hot_slot[h].front());
      layer.hot_slot[h].pop_front();
    }
  }
  return absl::OkStatus();
}

void RefreshKv::Rebuild(Layer& layer, int64_t total) {
  const int64_t keep = std::min<int64_t>(options_.k, total), half = options_.pool_kernel / 2;
  pooled_.resize(total);
  order_.resize(total);
  for (int32_t h = 0; h < config_.n_kv_heads; ++h) {
    const float* s = scores_.data() + h * total;
    for (int64_t t = 0; t < total; ++t) {
      const int64_t lo = std::max<int64_t>(0, t - half),
                    hi = std::min<int64_t>(total - 1, t + half);
      pooled_[t] = *std::max_element(s + lo, s + hi + 1);
    }
    std::iota(order_.begin(), order_.end(), 0);
    const float* p = pooled_.data();
    // Preference: higher pooled score, then the older token.
    const auto better = [p](int32_t x, int32_t y) {
      return p[x] > p[y] || (p[x] == p[y] && x < y);
    };
    if (keep < total) std::nth_element(order_.begin(), order_.begin() + keep, order_.end(), better);
    std::sort(order_.begin(), order_.begin() + keep, better);
    // Cp in eviction order: the least preferred first.
    layer.hot[h].assign(order_.rend() - keep, order_.rend());
  }
}

PolicyStats RefreshKv::stats() const {
  PolicyStats s = stats_;
  if (layers_.empty()) return s;
  s.tokens_seen = static_cast<int64_t>(layers_.back().positions.size());
  s.resident_bytes = 0;
  for (const Layer& l : layers_) {
    const int64_t tokens = static_cast<int64_t>(l.positions.size());
    if (cold_ == nullptr) {
      // Cf holds every token: |Cf| is resident; the hot set per step is K.
      s.resident_tokens = std::max(s.resident_tokens, tokens);
      s.resident_bytes += static_cast<size_t>(tokens) * (l.kv.slot_bytes() + 4u) +
                          l.hot.size() * l.hot.front().size() * 4u;
    } else {
      // The tokens the store does not hold yet and the hot set's rows.
      const int64_t local = tokens - l.local_first;
      s.resident_tokens = std::max<int64_t>(s.resident_tokens, local + static_cast<int64_t>(l.hot.front().size()));
      s.resident_bytes += static_cast<size_t>(l.kv.capacity() + l.hot_kv.capacity()) * l.kv.slot_bytes() +
                          static_cast<size_t>(tokens) * 4u + l.hot.size() * l.hot.front().size() * 8u;
    }
  }
  // The rehydration buffer (one layer's Cf, while full steps need it).
  s.resident_bytes += static_cast<size_t>(full_kv_.capacity()) * full_kv_.slot_bytes() +
                      (fetch_k_.capacity() + fetch_v_.capacity()) * sizeof(float);
  return s;
}

}  // namespace kvc::cache
