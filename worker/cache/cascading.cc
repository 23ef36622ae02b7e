#include "worker/cache/cascading.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/attention.h"
#include "kernels/dtype.h"
#include "worker/cache/attend.h"

namespace kvc::cache {

namespace k = ::kvc::kernels;

namespace {

// count fp32 values as `dtype` at dst.
void StoreRows(k::DType dtype, const float* src, int64_t count, uint8_t* dst) {
  if (dtype == k::DType::kF32) {
    std::memcpy(dst, src, static_cast<size_t>(count) * sizeof(float));
    return;
  }
  auto* out = reinterpret_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < count; ++i) {
    out[i] = dtype == k::DType::kBF16 ? k::FloatToBF16(src[i]) : k::FloatToF16(src[i]);
  }
}

}  // namespace

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

void CascadeStorage::Init(const k::CascadeConfig& config, k::DType dtype, int32_t num_kv_heads, int32_t head_dim) {
  const size_t slots = config.total_slots(), heads = num_kv_heads;
  k.assign(slots * heads * head_dim * k::DTypeSize(dtype), 0);
  v.assign(k.size(), 0);
  scores.assign(slots * heads, 0.0f);
  positions.assign(slots * heads, 0);
  ring_start.assign(static_cast<size_t>(config.num_subcaches) * heads, 0);
  ring_count.assign(static_cast<size_t>(config.num_subcaches) * heads, 0);
  state = k::CascadeState{};
  state.config = config;
  state.dtype = dtype;
  state.num_kv_heads = num_kv_heads;
  state.head_dim = head_dim;
  state.k = k.data();
  state.v = v.data();
  state.scores = scores.data();
  state.positions = positions.data();
  state.ring_start = ring_start.data();
  state.ring_count = ring_count.data();
}

absl::StatusOr<k::CascadeConfig> MakeCascadeConfig(const CascadingOptions& options) {
  KVC_RETURN_IF_ERROR(options.Validate());
  k::CascadeConfig cc;
  cc.num_sinks = options.num_sinks;
  cc.num_subcaches = options.num_subcaches;
  cc.subcache_slots = options.window / options.num_subcaches;
  KVC_RETURN_IF_ERROR(cc.Validate());
  return cc;
}

Cascading::Cascading(const model::ModelConfig& config, const CascadingOptions& options)
    : config_(config), options_(options) {}

size_t Cascading::row_bytes() const {
  return static_cast<size_t>(config_.n_kv_heads) * config_.head_dim() * k::DTypeSize(options_.kv_dtype);
}

absl::StatusOr<std::unique_ptr<Cascading>> Cascading::Create(const model::ModelConfig& config,
                                                             const CascadingOptions& options) {
  KVC_RETURN_IF_ERROR(options.Validate());
  auto p = std::unique_ptr<Cascading>(new Cascading(config, options));
  KVC_ASSIGN_OR_RETURN(p->cascade_, MakeCascadeConfig(options));
  const int32_t hkv = config.n_kv_heads, slots = p->cascade_.total_slots();
  p->layers_.resize(config.n_layers);
  // k and v grow by a chunk's rows on the first Attend.
  for (Layer& l : p->layers_) l.Init(p->cascade_, options.kv_dtype, hkv, config.head_dim());
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
  const int32_t hkv = config_.n_kv_heads, d = config_.head_dim();
  const int64_t slots = cascade_.total_slots(), all = slots + n;

  // The chunk's keys and values in the cache's dtype, in the slots after
  // the cascade's own: one pool holds [cache | chunk].
  const size_t row = row_bytes();
  if (layer.k.size() < all * row) {
    try {
      layer.k.resize(all * row);
      layer.v.resize(all * row);
    } catch (const std::bad_alloc&) {
      return absl::ResourceExhaustedError(absl::StrCat("cascading: cannot allocate a chunk of ", n, " tokens"));
    }
    st.k = layer.k.data();
    st.v = layer.v.data();
  }
  StoreRows(options_.kv_dtype, a.k, n * hkv * d, layer.k.data() + slots * row);
  StoreRows(options_.kv_dtype, a.v, n * hkv * d, layer.v.data() + slots * row);
  const k::KvPool pool = k::KvPool::Contiguous(layer.k.data(), layer.v.data(), options_.kv_dtype, all, hkv, d);

  // One list per KV head: what the cache holds, in age order, then the
  // chunk; the chunk's queries sit where its keys do.
  const int64_t cached = k::CascadeStoredTokens(cascade_, st.tokens_seen);
  KVC_RETURN_IF_ERROR(k::CascadeGather(
      ctx, {&st, options_.original_positions, gather_ptr_.data(), gather_idx_.data(), gather_pos_.data()}));
  chunk_pos_.resize(n);
  orig_pos_.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    orig_pos_[i] = static_cast<int32_t>(a.first_position + i);
    chunk_pos_[i] = options_.original_positions ? orig_pos_[i] : static_cast<int32_t>(cached + i);
  }
  list_ptr_.resize(hkv + 1);
  list_idx_.resize(static_cast<size_t>(gather_ptr_[hkv]) + static_cast<size_t>(hkv) * n);
  list_pos_.resize(list_idx_.size());
  list_ptr_[0] = 0;
  for (int32_t h = 0; h < hkv; ++h) {
    int32_t at = list_ptr_[h];
    for (int32_t e = gather_ptr_[h]; e < gather_ptr_[h + 1]; ++e, ++at) {
      list_idx_[at] = gather_idx_[e];
      list_pos_[at] = gather_pos_[e];
    }
    for (int64_t i = 0; i < n; ++i, ++at) {
      list_idx_[at] = static_cast<int32_t>(slots + i);
      list_pos_[at] = chunk_pos_[i];
    }
    list_ptr_[h + 1] = at;
  }

  // Attention over [cache | chunk (causal)] in one call, and the EMA scores
  // of both under its lse (the kernel's second pass over the keys): the
  // cache's scores, then zeros for the chunk's tokens, [Hkv][slots + n].
  k::PrefillArgs p;
  p.q = a.q;
  p.q_positions = chunk_pos_.data();
  p.num_q = n;
  p.num_q_heads = config_.n_heads;
  p.kv = pool;
  p.gather = k::KvGather{list_ptr_.data(), list_idx_.data(), list_pos_.data(), true};
  p.causal = true;
  p.rope = ModelRope(config_);
  p.out = a.out;
  p.lse = a.lse;
  chunk_scores_.assign(static_cast<size_t>(hkv) * n, 0.0f);
  if (scored()) {
    call_scores_.resize(static_cast<size_t>(hkv) * all);
    for (int32_t h = 0; h < hkv; ++h) {
      std::copy_n(st.scores + h * slots, slots, call_scores_.begin() + h * all);
      std::fill_n(call_scores_.begin() + h * all + slots, n, 0.0f);
    }
    p.accum = k::ScoreAccum{k::ScoreMode::kEma, k::GroupReduce::kMax, options_.beta, 0, call_scores_.data(), nullptr};
  }
  KVC_RETURN_IF_ERROR(PrefillOrDecode(ctx, p));
  if (scored()) {
    for (int32_t h = 0; h < hkv; ++h) {
      std::copy_n(call_scores_.begin() + h * all, slots, st.scores + h * slots);
      std::copy_n(call_scores_.begin() + h * all + slots, n, chunk_scores_.begin() + h * n);
    }
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
  ins.k = layer.k.data() + slots * row;
  ins.v = layer.v.data() + slots * row;
  ins.scores = chunk_scores_.data();
  ins.positions = orig_pos_.data();
  ins.num_tokens = n;
  ins.evicted_k = ev.k.data();
  ins.evicted_v = ev.v.data();
  ins.evicted_positions = ev.positions.data();
  ins.evicted_count = ev.count.data();
  KVC_RETURN_IF_ERROR(k::CascadeInsert(ctx, ins));

  if (a.layer == 0) stats_.attended_last_step = 0;
  const int64_t pairs = n * cached + n * (n + 1) / 2;
  stats_.attended_last_step += pairs;
  stats_.attended_total += pairs;
  return absl::OkStatus();
}

size_t Cascading::bytes_per_token() const {
  return (2 * row_bytes() + (scored() ? 8u : 4u) * config_.n_kv_heads) * config_.n_layers;
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
