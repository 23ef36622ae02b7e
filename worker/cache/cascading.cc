#include "worker/cache/cascading.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/attention.h"
#include "worker/cache/attend.h"

namespace kvc::cache {

namespace k = ::kvc::kernels;

absl::Status CascadingOptions::Validate() const {
  if (num_sinks < 0) return absl::InvalidArgumentError(absl::StrCat("cascading: sinks ", num_sinks, " < 0"));
  if (num_subcaches < 1 || num_subcaches > 30) {
    return absl::InvalidArgumentError(absl::StrCat("cascading: sub-caches ", num_subcaches, " not in [1, 30]"));
  }
  if (window < num_subcaches || window % num_subcaches != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cascading: window ", window,
                                                   " must be a positive multiple of the ", num_subcaches,
                                                   " sub-caches"));
  }
  if (!(beta > 0.0f && beta < 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("cascading: beta ", beta, " not in (0, 1)"));
  }
  KVC_RETURN_IF_ERROR(CheckKvDtype("cascading", kv_dtype));
  return absl::OkStatus();
}

Cascading::Cascading(const model::ModelConfig& config, const CascadingOptions& options)
    : config_(config), options_(options), chunk_(config.n_kv_heads, config.head_dim(), options.kv_dtype) {}

absl::StatusOr<std::unique_ptr<Cascading>> Cascading::Create(const model::ModelConfig& config,
                                                             const CascadingOptions& options) {
  KVC_RETURN_IF_ERROR(options.Validate());
  auto p = std::unique_ptr<Cascading>(new Cascading(config, options));
  k::CascadeConfig& cc = p->cascade_;
  cc.num_sinks = options.num_sinks;
  cc.num_subcaches = options.num_subcaches;
  cc.subcache_slots = options.window / options.num_subcaches;
  KVC_RETURN_IF_ERROR(cc.Validate());
  const int32_t hkv = config.n_kv_heads, slots = cc.total_slots();
  const size_t bytes = static_cast<size_t>(slots) * hkv * config.head_dim() * k::DTypeSize(options.kv_dtype);
  p->layers_.resize(config.n_layers);
  for (Layer& l : p->layers_) {
    l.k.assign(bytes, 0);
    l.v.assign(bytes, 0);
    l.scores.assign(static_cast<size_t>(slots) * hkv, 0.0f);
    l.positions.assign(static_cast<size_t>(slots) * hkv, 0);
    l.ring_start.assign(static_cast<size_t>(cc.num_subcaches) * hkv, 0);
    l.ring_count.assign(static_cast<size_t>(cc.num_subcaches) * hkv, 0);
    k::CascadeState& st = l.state;
    st.config = cc;
    st.dtype = options.kv_dtype;
    st.num_kv_heads = hkv;
    st.head_dim = config.head_dim();
    st.k = l.k.data();
    st.v = l.v.data();
    st.scores = l.scores.data();
    st.positions = l.positions.data();
    st.ring_start = l.ring_start.data();
    st.ring_count = l.ring_count.data();
  }
  p->gather_ptr_.resize(hkv + 1);
  p->gather_idx_.resize(static_cast<size_t>(slots) * hkv);
  p->gather_pos_.resize(static_cast<size_t>(slots) * hkv);
  return p;
}

std::string Cascading::name() const {
  if (!scored()) return absl::StrCat("streaming(S=", options_.num_sinks, ",W=", options_.window, ")");
  return absl::StrCat("cascading(S=", options_.num_sinks, ",C=", options_.num_subcaches, ",W=", options_.window, ")");
}

absl::Status Cascading::Attend(const k::ExecContext& ctx, const model::AttendArgs& a) {
  KVC_RETURN_IF_ERROR(CheckAttendArgs(config_, a));
  Layer& layer = layers_[a.layer];
  k::CascadeState& st = layer.state;
  if (a.first_position < st.tokens_seen) {
    return absl::InvalidArgumentError(absl::StrCat("cascading: chunk at position ", a.first_position,
                                                   " overlaps the ", st.tokens_seen, " tokens already pushed"));
  }
  const int64_t n = a.num_tokens;
  const int32_t hkv = config_.n_kv_heads, hq = config_.n_heads, d = config_.head_dim();

  // The chunk's keys and values in the cache's dtype.
  KVC_RETURN_IF_ERROR(chunk_.Reserve(n));
  chunk_.WriteRange(0, n, a.k, a.v);
  const k::KvPool chunk_pool = chunk_.Pool(n);

  // What the cache holds, in age order, and the positions of the chunk.
  const int64_t cached = k::CascadeStoredTokens(cascade_, st.tokens_seen);
  KVC_RETURN_IF_ERROR(k::CascadeGather(
      ctx, {&st, options_.original_positions, gather_ptr_.data(), gather_idx_.data(), gather_pos_.data()}));
  chunk_ptr_ = {0, static_cast<int32_t>(n)};
  chunk_idx_.resize(n);
  std::iota(chunk_idx_.begin(), chunk_idx_.end(), 0);
  chunk_pos_.resize(n);
  orig_pos_.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    orig_pos_[i] = static_cast<int32_t>(a.first_position + i);
    chunk_pos_[i] = options_.original_positions ? orig_pos_[i] : static_cast<int32_t>(cached + i);
  }

  // Attention over [cache] and [chunk (causal)], merged exactly.
  const size_t rows = static_cast<size_t>(n) * hq;
  lse_.resize(rows);
  k::PrefillArgs cache;
  cache.q = a.q;
  cache.q_positions = chunk_pos_.data();
  cache.num_q = n;
  cache.num_q_heads = hq;
  cache.kv = st.AsPool();
  cache.gather = k::KvGather{gather_ptr_.data(), gather_idx_.data(), gather_pos_.data(), true};
  cache.causal = false;
  cache.rope = ModelRope(config_);
  k::PrefillArgs own = cache;
  own.kv = chunk_pool;
  own.gather = k::KvGather{chunk_ptr_.data(), chunk_idx_.data(), chunk_pos_.data(), false};
  own.causal = true;
  if (cached == 0) {
    own.out = a.out;
    own.lse = lse_.data();
    KVC_RETURN_IF_ERROR(PrefillOrDecode(ctx, own));
  } else {
    parts_out_.resize(2 * rows * d);
    parts_lse_.resize(2 * rows);
    cache.out = parts_out_.data();
    cache.lse = parts_lse_.data();
    own.out = parts_out_.data() + rows * d;
    own.lse = parts_lse_.data() + rows;
    KVC_RETURN_IF_ERROR(PrefillOrDecode(ctx, cache));
    KVC_RETURN_IF_ERROR(PrefillOrDecode(ctx, own));
    KVC_RETURN_IF_ERROR(k::MergeStates(
        ctx, {parts_out_.data(), parts_lse_.data(), 2, static_cast<int64_t>(rows), d, a.out, lse_.data()}));
  }

  // EMA scores of the cache and of the chunk's tokens under the merged
  // normaliser (a second, scores-only pass over the keys).
  chunk_scores_.assign(static_cast<size_t>(hkv) * n, 0.0f);
  if (scored()) {
    const k::ScoreAccum accum{k::ScoreMode::kEma, k::GroupReduce::kMax, options_.beta, 0, st.scores, lse_.data()};
    if (cached > 0) {
      cache.out = nullptr;
      cache.lse = nullptr;
      cache.accum = accum;
      KVC_RETURN_IF_ERROR(PrefillOrDecode(ctx, cache));
    }
    own.out = nullptr;
    own.lse = nullptr;
    own.accum = accum;
    own.accum.scores = chunk_scores_.data();
    KVC_RETURN_IF_ERROR(PrefillOrDecode(ctx, own));
  }

  // Push the chunk; keep what left, per head.
  Evictions& ev = evictions_;
  ev.layer = a.layer;
  ev.dtype = options_.kv_dtype;
  ev.stride = n;
  ev.count.assign(hkv, 0);
  const size_t ev_bytes = static_cast<size_t>(hkv) * n * d * k::DTypeSize(options_.kv_dtype);
  ev.k.resize(ev_bytes);
  ev.v.resize(ev_bytes);
  ev.positions.resize(static_cast<size_t>(hkv) * n);
  k::CascadeInsertArgs ins;
  ins.state = &st;
  ins.k = chunk_pool.k;
  ins.v = chunk_pool.v;
  ins.scores = chunk_scores_.data();
  ins.positions = orig_pos_.data();
  ins.num_tokens = n;
  ins.evicted_k = ev.k.data();
  ins.evicted_v = ev.v.data();
  ins.evicted_positions = ev.positions.data();
  ins.evicted_count = ev.count.data();
  KVC_RETURN_IF_ERROR(k::CascadeInsert(ctx, ins));

  if (a.lse != nullptr) std::copy(lse_.begin(), lse_.end(), a.lse);

  if (a.layer == 0) stats_.attended_last_step = 0;
  const int64_t pairs = n * cached + n * (n + 1) / 2;
  stats_.attended_last_step += pairs;
  stats_.attended_total += pairs;
  return absl::OkStatus();
}

size_t Cascading::bytes_per_token() const {
  return (chunk_.slot_bytes() + (scored() ? 8u : 4u) * config_.n_kv_heads) * config_.n_layers;
}

PolicyStats Cascading::stats() const {
  PolicyStats s = stats_;
  if (layers_.empty()) return s;
  const int64_t seen = layers_.back().state.tokens_seen;
  s.tokens_seen = seen;
  s.resident_tokens = k::CascadeStoredTokens(cascade_, seen);
  // Keys and values of the stored tokens, plus a score and a position per
  // (slot, head) when scored.
  s.resident_bytes = static_cast<size_t>(s.resident_tokens) * bytes_per_token();
  return s;
}

}  // namespace kvc::cache
