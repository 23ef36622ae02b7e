#include "worker/cache/combined.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/attention.h"
#include "worker/cache/attend.h"

namespace kvc::cache {

namespace k = ::kvc::kernels;

absl::Status CombinedOptions::Validate() const {
  KVC_RETURN_IF_ERROR(hot.Validate());
  if (select_k < 0) return absl::InvalidArgumentError(absl::StrCat("combined: k ", select_k, " < 0"));
  if (!(theta >= -1.0f && theta <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("combined: theta ", theta, " not in [-1, 1]"));
  }
  KVC_RETURN_IF_ERROR(CheckPoolKernel("combined", select_pool));
  if (less) KVC_RETURN_IF_ERROR(less_options.Validate());
  if (refresh) KVC_RETURN_IF_ERROR(refresh_options.Validate());
  return absl::OkStatus();
}

Combined::Layer::Layer(const model::ModelConfig& config, const CombinedOptions& options)
    : pool(config.n_kv_heads, config.head_dim(), options.hot.kv_dtype),
      selection_cache(options.theta),
      folded(config.n_kv_heads, 0),
      scheduler(options.refresh_options) {}

Combined::Combined(const model::ModelConfig& config, const CombinedOptions& options)
    : config_(config), options_(options) {}

absl::StatusOr<std::unique_ptr<Combined>> Combined::Create(const model::ModelConfig& config,
                                                           const CombinedOptions& options) {
  KVC_RETURN_IF_ERROR(options.Validate());
  auto p = std::unique_ptr<Combined>(new Combined(config, options));
  KVC_ASSIGN_OR_RETURN(p->cascade_, MakeCascadeConfig(options.hot));
  const LessOptions& lo = options.less_options;
  p->map_ = lo.positive_features ? k::PositiveRandomFeatureMap(config.head_dim(), lo.rank, lo.seed)
                                 : k::RandomFeatureMap(config.head_dim(), lo.rank, lo.seed);
  const int32_t hkv = config.n_kv_heads, slots = p->cascade_.total_slots();
  p->layers_.reserve(config.n_layers);
  for (int32_t i = 0; i < config.n_layers; ++i) {
    p->layers_.emplace_back(config, options);
    Layer& l = p->layers_.back();
    l.store.Init(p->cascade_, options.hot.kv_dtype, hkv, config.head_dim());
    if (options.less) {
      l.less_h.assign(static_cast<size_t>(hkv) * lo.rank * config.head_dim(), 0.0f);
      l.less_z.assign(static_cast<size_t>(hkv) * lo.rank, 0.0f);
    }
  }
  p->gather_ptr_.resize(hkv + 1);
  p->gather_idx_.resize(static_cast<size_t>(slots) * hkv);
  p->gather_pos_.resize(static_cast<size_t>(slots) * hkv);
  return p;
}

std::string Combined::name() const {
  const CascadingOptions& h = options_.hot;
  std::string s = absl::StrCat("combined(S=", h.num_sinks, ",C=", h.num_subcaches, ",W=", h.window,
                               ",k=", options_.select_k);
  if (options_.less) {
    absl::StrAppend(&s, ",less=", options_.less_options.positive_features ? "exp" : "elu", "/",
                    options_.less_options.rank);
  }
  if (options_.refresh) {
    const RefreshKvOptions& r = options_.refresh_options;
    absl::StrAppend(&s, ",refresh=",
                    r.mode == RefreshMode::kFixed ? "fixed" : absl::StrCat("sim", r.threshold), "/", r.stride,
                    options_.refresh_output_hot ? "/hot" : "");
  }
  return s + ")";
}

std::vector<int32_t> Combined::hot_set(int32_t layer, int32_t kv_head) const {
  const Layer& l = layers_[layer];
  std::vector<int32_t> ptr(config_.n_kv_heads + 1), idx(gather_idx_.size()), pos(gather_pos_.size());
  const absl::Status s = k::CascadeGather(k::ExecContext{}, {&l.store.state, true, ptr.data(), idx.data(), pos.data()});
  if (!s.ok()) return {};
  return std::vector<int32_t>(pos.begin() + ptr[kv_head], pos.begin() + ptr[kv_head + 1]);
}

k::LessState Combined::LessView(Layer& layer) {
  return k::LessState{config_.n_kv_heads, options_.less_options.rank, config_.head_dim(), layer.less_h.data(),
                      layer.less_z.data()};
}

absl::Status Combined::GrowFlags(Layer& layer, int64_t tokens) {
  if (tokens <= layer.flag_capacity) return absl::OkStatus();
  const int64_t cap = std::max<int64_t>({tokens, 2 * layer.flag_capacity, 1024});
  const int32_t hkv = config_.n_kv_heads;
  std::vector<uint8_t> hot;
  try {
    hot.assign(static_cast<size_t>(hkv) * cap, 0);
    layer.in_selection.resize(cap, 0);
    layer.evicted_any.resize(cap, 0);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("combined: no memory for ", cap, " tokens' flags"));
  }
  for (int32_t h = 0; h < hkv; ++h) {
    std::memcpy(hot.data() + static_cast<size_t>(h) * cap,
                layer.hot.data() + static_cast<size_t>(h) * layer.flag_capacity, layer.flag_capacity);
  }
  layer.hot = std::move(hot);
  layer.flag_capacity = cap;
  return absl::OkStatus();
}

absl::Status Combined::Attend(const k::ExecContext& ctx, const model::AttendArgs& a) {
  KVC_RETURN_IF_ERROR(CheckAttendArgs(config_, a));
  Layer& layer = layers_[a.layer];
  if (a.first_position != layer.length) {
    return absl::InvalidArgumentError(absl::StrCat("combined: chunk at position ", a.first_position,
                                                   " does not follow the ", layer.length, " tokens held"));
  }
  const int64_t n = a.num_tokens, past = layer.length;
  if (past + n > INT32_MAX) return absl::InvalidArgumentError("combined: too many tokens");
  KVC_RETURN_IF_ERROR(layer.pool.Reserve(past + n));
  KVC_RETURN_IF_ERROR(GrowFlags(layer, past + n));
  layer.pool.WriteRange(past, n, a.k, a.v);

  // A full step only once the hot set has evicted something (before, every
  // step sees the whole context anyway).
  const bool evicting = k::CascadeStoredTokens(cascade_, past) < past;
  bool full = false;
  if (n == 1 && options_.refresh && evicting) {
    const int32_t hq = config_.n_heads, d = config_.head_dim();
    query_mean_.assign(d, 0.0f);
    for (int32_t h = 0; h < hq; ++h) {
      for (int32_t x = 0; x < d; ++x) query_mean_[x] += a.q[h * d + x];
    }
    for (float& x : query_mean_) x /= static_cast<float>(hq);
    full = layer.scheduler.NextStepIsFull(query_mean_);
  }
  if (full && !cold_.empty()) {
    // Rehydrate Cf's values; the next layer's transfer starts meanwhile (it
    // is likely full too). A store that cannot answer makes this step sparse.
    if (a.layer + 1 < config_.n_layers) cold_[a.layer + 1].Prefetch();
    const absl::Status s = cold_[a.layer].EnsureAll(layer.pool);
    if (!s.ok()) {
      ++refreshes_skipped_;
      last_cold_error_ = s;
      full = false;
    }
  }
  int64_t pairs = 0;
  if (full) {
    KVC_RETURN_IF_ERROR(FullAttend(ctx, a, layer));
    ++full_steps_;
    pairs = past + 1 + (options_.refresh_output_hot ? own_pos_.front() + 1 : 0);
  } else {
    KVC_RETURN_IF_ERROR(SparseAttend(ctx, a, layer));
    pairs = n * static_cast<int64_t>(own_pos_.empty() ? 0 : own_pos_.front()) + n * (n + 1) / 2;
  }
  // Decode: the values of the selection stay (the next step reads them
  // unless it selects anew); those of the rest of what the store holds go.
  if (!cold_.empty() && n == 1) cold_[a.layer].Trim(layer.pool, layer.length, layer.selected);
  if (a.layer == 0) stats_.attended_last_step = 0;
  stats_.attended_last_step += pairs;
  stats_.attended_total += pairs;
  return absl::OkStatus();
}

absl::Status Combined::SetColdStore(ColdKvStore* cold) {
  for (const Layer& l : layers_) {
    if (l.length > 0) return absl::FailedPreconditionError("combined: cold store set after the first token");
  }
  cold_.clear();
  if (cold == nullptr) return absl::OkStatus();
  for (int32_t l = 0; l < config_.n_layers; ++l) cold_.emplace_back(cold, l);
  return absl::OkStatus();
}

ColdValueStats Combined::cold_stats() const {
  ColdValueStats s;
  for (const ColdValues& c : cold_) s += c.stats();
  return s;
}

absl::Status Combined::Fingerprint(const k::ExecContext& ctx, const float* q, int64_t num_q) {
  const int32_t hq = config_.n_heads, d = config_.head_dim();
  qbar_.resize(static_cast<size_t>(hq) * d);
  k::FingerprintArgs f;
  f.q = q;
  f.num_q = num_q;
  f.num_q_heads = hq;
  f.head_dim = d;
  f.rope = ModelRope(config_);
  f.base_position = kSelectDistance;
  f.qbar = qbar_.data();
  return k::QueryFingerprint(ctx, f);
}

void Combined::CollectCandidates(const Layer& layer) {
  candidates_.clear();
  for (int64_t t = 0; t < layer.length; ++t) {
    if (layer.evicted_any[t]) candidates_.push_back(static_cast<int32_t>(t));
  }
}

absl::Status Combined::Select(const k::ExecContext& ctx, const model::AttendArgs& a, Layer& layer) {
  const int32_t hq = config_.n_heads;
  KVC_RETURN_IF_ERROR(Fingerprint(ctx, a.q, a.num_tokens));
  if (layer.selection_cache.ShouldReuse(qbar_)) {
    ++selection_hits_;
    return absl::OkStatus();
  }
  const int64_t past = layer.length;
  CollectCandidates(layer);
  const int64_t num = static_cast<int64_t>(candidates_.size());
  if (num <= options_.select_k) {
    next_ = candidates_;
  } else {
    next_.resize(options_.select_k);
    k::TokenSelectArgs s;
    s.qbar = qbar_.data();
    s.num_q_heads = hq;
    s.pool = layer.pool.Pool(past);
    s.candidates = candidates_.data();
    s.num_candidates = num;
    s.pool_kernel = options_.select_pool;
    s.k = options_.select_k;
    s.selected = next_.data();
    KVC_RETURN_IF_ERROR(k::TokenSelect(ctx, s));
    for (int32_t& c : next_) c = candidates_[c];
  }
  if (!cold_.empty()) {
    // The values of the tokens coming into S (unfolded, then attended).
    coming_.clear();
    std::set_difference(next_.begin(), next_.end(), layer.selected.begin(), layer.selected.end(),
                        std::back_inserter(coming_));
    const int32_t l = static_cast<int32_t>(&layer - layers_.data());
    if (const absl::Status s = cold_[l].Ensure(layer.pool, coming_); !s.ok()) {
      // Without the store: those not in memory stay out of S (in the LESS
      // state, as any evicted token nobody selected).
      ++short_selections_;
      last_cold_error_ = s;
      next_.erase(std::remove_if(next_.begin(), next_.end(), [&](int32_t t) { return !cold_[l].Resident(t); }),
                  next_.end());
    }
  }
  KVC_RETURN_IF_ERROR(ChangeSelection(ctx, layer, next_));
  layer.selection_cache.Store(qbar_, layer.selected);
  ++selections_;
  return absl::OkStatus();
}

absl::Status Combined::ChangeSelection(const k::ExecContext& ctx, Layer& layer, const std::vector<int32_t>& next) {
  std::vector<int32_t> leaving, coming;
  std::set_difference(layer.selected.begin(), layer.selected.end(), next.begin(), next.end(),
                      std::back_inserter(leaving));
  std::set_difference(next.begin(), next.end(), layer.selected.begin(), layer.selected.end(),
                      std::back_inserter(coming));
  for (const int32_t t : leaving) layer.in_selection[t] = 0;
  for (const int32_t t : coming) layer.in_selection[t] = 1;
  layer.selected = next;
  if (!options_.less) return absl::OkStatus();
  KVC_RETURN_IF_ERROR(FoldTokens(ctx, layer, leaving, /*subtract=*/false));
  return FoldTokens(ctx, layer, coming, /*subtract=*/true);
}

absl::Status Combined::FoldTokens(const k::ExecContext& ctx, Layer& layer, const std::vector<int32_t>& tokens,
                                  bool subtract) {
  if (tokens.empty()) return absl::OkStatus();
  const int32_t hkv = config_.n_kv_heads, d = config_.head_dim();
  const size_t row = static_cast<size_t>(d) * k::DTypeSize(options_.hot.kv_dtype);
  const int64_t m = static_cast<int64_t>(tokens.size());
  fold_k_.resize(static_cast<size_t>(hkv) * m * row);
  fold_v_.resize(fold_k_.size());
  fold_count_.assign(hkv, 0);
  const k::KvPool pool = layer.pool.Pool(layer.length);
  const uint8_t* pk = static_cast<const uint8_t*>(pool.k);
  const uint8_t* pv = static_cast<const uint8_t*>(pool.v);
  int64_t total = 0;
  for (int32_t h = 0; h < hkv; ++h) {
    for (const int32_t t : tokens) {
      if (!Evicted(layer, h, t)) continue;
      const size_t src = (static_cast<size_t>(t) * hkv + h) * row;
      const size_t dst = (static_cast<size_t>(h) * m + fold_count_[h]) * row;
      std::memcpy(fold_k_.data() + dst, pk + src, row);
      std::memcpy(fold_v_.data() + dst, pv + src, row);
      ++fold_count_[h];
      ++total;
    }
  }
  if (total == 0) return absl::OkStatus();
  k::LessFoldArgs f;
  f.state = LessView(layer);
  f.psi = map_.View();
  f.dtype = options_.hot.kv_dtype;
  f.k = fold_k_.data();
  f.v = fold_v_.data();
  f.max_tokens = m;
  f.count = fold_count_.data();
  f.subtract = subtract;
  KVC_RETURN_IF_ERROR(k::LessFold(ctx, f));
  const int32_t r = options_.less_options.rank;
  for (int32_t h = 0; h < hkv; ++h) {
    layer.folded[h] += subtract ? -fold_count_[h] : fold_count_[h];
    if (layer.folded[h] < 0) return absl::InternalError("combined: unfolded a token that was never folded");
    if (layer.folded[h] == 0) {
      // Exactly empty again (not a rounding residue): sparse attention, bit for bit.
      std::fill_n(layer.less_h.begin() + static_cast<size_t>(h) * r * d, static_cast<size_t>(r) * d, 0.0f);
      std::fill_n(layer.less_z.begin() + static_cast<size_t>(h) * r, r, 0.0f);
    }
  }
  return absl::OkStatus();
}

absl::Status Combined::SparseAttend(const k::ExecContext& ctx, const model::AttendArgs& a, Layer& layer,
                                    bool select) {
  const int64_t n = a.num_tokens, past = layer.length;
  const int32_t hkv = config_.n_kv_heads, hq = config_.n_heads, d = config_.head_dim();
  k::CascadeState& st = layer.store.state;
  const bool evicting = k::CascadeStoredTokens(cascade_, past) < past;
  if (select && options_.select_k > 0 && evicting) KVC_RETURN_IF_ERROR(Select(ctx, a, layer));

  // Per head: the hot list (age order = token order) merged with the
  // selected tokens that head has evicted, at compact positions
  // right-aligned to Q = the longest list.
  KVC_RETURN_IF_ERROR(
      k::CascadeGather(ctx, {&st, true, gather_ptr_.data(), gather_idx_.data(), gather_pos_.data()}));
  hot_ptr_.assign(1, 0);
  sel_ptr_.assign(1, 0);
  hot_idx_.clear();
  hot_pos_.clear();
  sel_idx_.clear();
  sel_pos_.clear();
  int64_t longest = 0;
  sel_count_.assign(hkv, 0);
  std::vector<int32_t>& sel_count = sel_count_;
  for (int32_t h = 0; h < hkv; ++h) {
    int32_t c = 0;
    for (const int32_t t : layer.selected) c += Evicted(layer, h, t) ? 1 : 0;
    sel_count[h] = c;
    longest = std::max<int64_t>(longest, gather_ptr_[h + 1] - gather_ptr_[h] + c);
  }
  for (int32_t h = 0; h < hkv; ++h) {
    const int32_t begin = gather_ptr_[h], end = gather_ptr_[h + 1];
    const int64_t len = end - begin + sel_count[h];
    int64_t rank = longest - len;
    int32_t i = begin;
    auto next_selected = layer.selected.begin();
    while (i < end || next_selected != layer.selected.end()) {
      // Skip selected tokens this head still holds hot.
      while (next_selected != layer.selected.end() && !Evicted(layer, h, *next_selected)) ++next_selected;
      const bool take_hot =
          i < end && (next_selected == layer.selected.end() || gather_pos_[i] < *next_selected);
      if (take_hot) {
        hot_idx_.push_back(gather_idx_[i]);
        hot_pos_.push_back(static_cast<int32_t>(rank++));
        ++i;
      } else if (next_selected != layer.selected.end()) {
        sel_idx_.push_back(*next_selected);
        sel_pos_.push_back(static_cast<int32_t>(rank++));
        ++next_selected;
      }
    }
    hot_ptr_.push_back(static_cast<int32_t>(hot_idx_.size()));
    sel_ptr_.push_back(static_cast<int32_t>(sel_idx_.size()));
  }
  own_idx_.resize(n);
  own_pos_.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    own_idx_[i] = static_cast<int32_t>(i);
    own_pos_[i] = static_cast<int32_t>(longest + i);
  }

  // The chunk's slots of Cf as a pool of its own (slots 0..n-1), so its
  // scores index [Hkv][n].
  const size_t row_bytes = layer.pool.slot_bytes() / 2;
  const k::KvPool full_pool = layer.pool.Pool(past + n);
  const k::KvPool chunk_pool = k::KvPool::Contiguous(
      static_cast<const uint8_t*>(full_pool.k) + past * row_bytes,
      static_cast<const uint8_t*>(full_pool.v) + past * row_bytes, full_pool.dtype, n, hkv, d);

  const size_t rows = static_cast<size_t>(n) * hq;
  merged_out_.resize(rows * d);
  merged_lse_.resize(rows);
  k::PrefillArgs hot;
  hot.q = a.q;
  hot.q_positions = own_pos_.data();
  hot.num_q = n;
  hot.num_q_heads = hq;
  hot.kv = st.AsPool();
  hot.gather = k::KvGather{hot_ptr_.data(), hot_idx_.data(), hot_pos_.data(), true};
  hot.causal = false;
  hot.rope = ModelRope(config_);
  k::PrefillArgs sel = hot;
  sel.kv = full_pool;
  sel.gather = k::KvGather{sel_ptr_.data(), sel_idx_.data(), sel_pos_.data(), true};
  k::PrefillArgs own = hot;
  own.kv = chunk_pool;
  own.gather = k::KvGather{nullptr, own_idx_.data(), own_pos_.data(), false};
  const int32_t own_ptr[2] = {0, static_cast<int32_t>(n)};
  own.gather.indptr = own_ptr;
  own.causal = true;

  const bool any_hot = !hot_idx_.empty(), any_sel = !sel_idx_.empty();
  const int32_t parts = 1 + (any_hot ? 1 : 0) + (any_sel ? 1 : 0);
  if (parts == 1) {
    own.out = merged_out_.data();
    own.lse = merged_lse_.data();
    KVC_RETURN_IF_ERROR(PrefillOrDecode(ctx, own));
  } else {
    parts_out_.resize(parts * rows * d);
    parts_lse_.resize(parts * rows);
    int32_t p = 0;
    for (k::PrefillArgs* part : {&hot, &sel, &own}) {
      if ((part == &hot && !any_hot) || (part == &sel && !any_sel)) continue;
      part->out = parts_out_.data() + p * rows * d;
      part->lse = parts_lse_.data() + p * rows;
      KVC_RETURN_IF_ERROR(PrefillOrDecode(ctx, *part));
      ++p;
    }
    KVC_RETURN_IF_ERROR(k::MergeStates(
        ctx, {parts_out_.data(), parts_lse_.data(), parts, static_cast<int64_t>(rows), d, merged_out_.data(),
              merged_lse_.data()}));
  }

  // EMA scores of the hot set and first scores of the chunk under the
  // merged normaliser (scores-only passes).
  chunk_scores_.assign(static_cast<size_t>(hkv) * n, 0.0f);
  if (options_.hot.num_subcaches > 1) {
    const k::ScoreAccum accum{k::ScoreMode::kEma, k::GroupReduce::kMax, options_.hot.beta, 0, st.scores,
                              merged_lse_.data()};
    if (any_hot) {
      hot.out = nullptr;
      hot.lse = nullptr;
      hot.accum = accum;
      KVC_RETURN_IF_ERROR(PrefillOrDecode(ctx, hot));
    }
    own.out = nullptr;
    own.lse = nullptr;
    own.accum = accum;
    own.accum.scores = chunk_scores_.data();
    KVC_RETURN_IF_ERROR(PrefillOrDecode(ctx, own));
  }

  // The evicted tokens nobody selected, through the LESS state.
  const bool state_empty =
      !options_.less || std::all_of(layer.folded.begin(), layer.folded.end(), [](int64_t f) { return f == 0; });
  if (state_empty) {
    std::copy(merged_out_.begin(), merged_out_.end(), a.out);
    if (a.lse != nullptr) std::copy(merged_lse_.begin(), merged_lse_.end(), a.lse);
  } else {
    k::LessCombineArgs c;
    c.state = LessView(layer);
    c.phi = map_.View();
    c.q = a.q;
    c.sparse_out = merged_out_.data();
    c.sparse_lse = merged_lse_.data();
    c.num_tokens = n;
    c.num_q_heads = hq;
    c.out = a.out;
    KVC_RETURN_IF_ERROR(k::LessCombine(ctx, c));
    if (a.lse != nullptr) {
      LessCombinedLse(map_.View(), layer.less_z.data(), options_.less_options.rank, config_, a.q,
                      merged_lse_.data(), n, a.lse);
    }
  }
  return Push(ctx, layer, past, n);
}

absl::Status Combined::FullAttend(const k::ExecContext& ctx, const model::AttendArgs& a, Layer& layer) {
  const int64_t past = layer.length, total = past + 1;
  const int32_t hkv = config_.n_kv_heads, hq = config_.n_heads;
  k::CascadeState& st = layer.store.state;

  // Every token at its original position; the query's probabilities per KV
  // head (max over its group) into full_scores_ [Hkv][total].
  sel_ptr_ = {0, static_cast<int32_t>(total)};
  sel_idx_.resize(total);
  std::iota(sel_idx_.begin(), sel_idx_.end(), 0);
  own_pos_.assign(1, static_cast<int32_t>(past));
  full_scores_.assign(static_cast<size_t>(hkv) * total, 0.0f);
  merged_lse_.resize(hq);
  const bool hot_output = options_.refresh_output_hot;
  if (hot_output) merged_out_.resize(static_cast<size_t>(hq) * config_.head_dim());
  const k::ScoreAccum accum{k::ScoreMode::kSum, k::GroupReduce::kMax, 0.999f, 0, full_scores_.data(), nullptr};
  const k::KvGather gather{sel_ptr_.data(), sel_idx_.data(), sel_idx_.data(), false};
  KVC_RETURN_IF_ERROR(AttendGather(ctx, config_, a.q, 1, layer.pool.Pool(total), gather, own_pos_.data(), accum,
                                   hot_output ? merged_out_.data() : a.out, merged_lse_.data()));
  if (a.lse != nullptr && !hot_output) std::copy(merged_lse_.begin(), merged_lse_.end(), a.lse);

  // The hot set's EMA from the same probabilities (one query: s <- beta s +
  // (1 - beta) P), and the new token's first score.
  const float beta = options_.hot.beta;
  chunk_scores_.assign(hkv, 0.0f);
  if (options_.hot.num_subcaches > 1 && !hot_output) {
    KVC_RETURN_IF_ERROR(
        k::CascadeGather(ctx, {&st, true, gather_ptr_.data(), gather_idx_.data(), gather_pos_.data()}));
    const int32_t slots = cascade_.total_slots();
    for (int32_t h = 0; h < hkv; ++h) {
      const float* p = full_scores_.data() + static_cast<size_t>(h) * total;
      for (int32_t i = gather_ptr_[h]; i < gather_ptr_[h + 1]; ++i) {
        float& s = st.scores[static_cast<size_t>(h) * slots + gather_idx_[i]];
        s = beta * s + (1.0f - beta) * p[gather_pos_[i]];
      }
      chunk_scores_[h] = (1.0f - beta) * p[past];
    }
  }

  // S from this step's probabilities: max over heads, pooled along token
  // order over the candidates, the top select_k (equal: the older).
  if (options_.select_k > 0) {
    CollectCandidates(layer);
    const int64_t num = static_cast<int64_t>(candidates_.size());
    if (num <= options_.select_k) {
      next_ = candidates_;
    } else {
      // Max over heads, then a max pool of width refresh_pool along the
      // candidates (shifted maxima: vectorisable, no per-element bounds).
      std::vector<float>& raw = raw_scores_;
      raw.assign(num, 0.0f);
      for (int32_t h = 0; h < hkv; ++h) {
        const float* p = full_scores_.data() + static_cast<size_t>(h) * total;
        for (int64_t c = 0; c < num; ++c) raw[c] = std::max(raw[c], p[candidates_[c]]);
      }
      pooled_ = raw;
      const int64_t half = std::min<int64_t>(options_.refresh_options.pool_kernel / 2, num - 1);
      for (int64_t sh = 1; sh <= half; ++sh) {
        for (int64_t c = sh; c < num; ++c) pooled_[c] = std::max(pooled_[c], raw[c - sh]);
        for (int64_t c = 0; c + sh < num; ++c) pooled_[c] = std::max(pooled_[c], raw[c + sh]);
      }
      // The top select_k (equal scores: the older), in linear time.
      std::vector<int32_t>& order = order_;
      order.resize(num);
      std::iota(order.begin(), order.end(), 0);
      std::nth_element(order.begin(), order.begin() + options_.select_k, order.end(), [&](int32_t x, int32_t y) {
        return pooled_[x] > pooled_[y] || (pooled_[x] == pooled_[y] && x < y);
      });
      next_.resize(options_.select_k);
      for (int32_t i = 0; i < options_.select_k; ++i) next_[i] = candidates_[order[i]];
      std::sort(next_.begin(), next_.end());
    }
    KVC_RETURN_IF_ERROR(ChangeSelection(ctx, layer, next_));
    // Reuse it while the query stays close to this one.
    KVC_RETURN_IF_ERROR(Fingerprint(ctx, a.q, 1));
    layer.selection_cache.Store(qbar_, layer.selected);
  }
  layer.scheduler.Refreshed(query_mean_);
  // The output over the rebuilt hot set (which also updates its scores and
  // pushes the token), or the full attention already written.
  if (hot_output) return SparseAttend(ctx, a, layer, /*select=*/false);
  return Push(ctx, layer, past, 1);
}

absl::Status Combined::Push(const k::ExecContext& ctx, Layer& layer, int64_t first, int64_t n) {
  const int32_t hkv = config_.n_kv_heads, d = config_.head_dim();
  const size_t row_bytes = layer.pool.slot_bytes() / 2;
  const k::KvPool pool = layer.pool.Pool(first + n);
  Evictions& ev = evictions_;
  ev.layer = -1;  // scratch only: what leaves is folded here, not reported
  ev.dtype = options_.hot.kv_dtype;
  ev.stride = n;
  ev.count.assign(hkv, 0);
  const size_t ev_row = static_cast<size_t>(d) * k::DTypeSize(options_.hot.kv_dtype);
  ev.k.resize(static_cast<size_t>(hkv) * n * ev_row);
  ev.v.resize(ev.k.size());
  ev.positions.resize(static_cast<size_t>(hkv) * n);
  orig_pos_.resize(n);
  for (int64_t i = 0; i < n; ++i) orig_pos_[i] = static_cast<int32_t>(first + i);
  k::CascadeInsertArgs ins;
  ins.state = &layer.store.state;
  ins.k = static_cast<const uint8_t*>(pool.k) + first * row_bytes;
  ins.v = static_cast<const uint8_t*>(pool.v) + first * row_bytes;
  ins.scores = chunk_scores_.data();
  ins.positions = orig_pos_.data();
  ins.num_tokens = n;
  ins.evicted_k = ev.k.data();
  ins.evicted_v = ev.v.data();
  ins.evicted_positions = ev.positions.data();
  ins.evicted_count = ev.count.data();
  KVC_RETURN_IF_ERROR(k::CascadeInsert(ctx, ins));

  const size_t cap = layer.flag_capacity;
  for (int32_t h = 0; h < hkv; ++h) {
    std::fill_n(layer.hot.begin() + h * cap + first, n, uint8_t{1});
    for (int32_t i = 0; i < ev.count[h]; ++i) {
      const int32_t p = ev.positions[static_cast<size_t>(h) * n + i];
      layer.hot[h * cap + p] = 0;
      layer.evicted_any[p] = 1;
    }
  }
  layer.length = first + n;
  if (!options_.less) return absl::OkStatus();

  // Fold what left, except the selected tokens (attended exactly; folded
  // when they leave S).
  int64_t total = 0;
  for (int32_t h = 0; h < hkv; ++h) {
    int32_t kept = 0;
    for (int32_t i = 0; i < ev.count[h]; ++i) {
      const size_t src = static_cast<size_t>(h) * n + i;
      if (layer.in_selection[ev.positions[src]]) continue;
      const size_t dst = static_cast<size_t>(h) * n + kept;
      if (dst != src) {
        std::memmove(ev.k.data() + dst * ev_row, ev.k.data() + src * ev_row, ev_row);
        std::memmove(ev.v.data() + dst * ev_row, ev.v.data() + src * ev_row, ev_row);
        ev.positions[dst] = ev.positions[src];
      }
      ++kept;
    }
    ev.count[h] = kept;
    total += kept;
  }
  if (total == 0) return absl::OkStatus();
  k::LessFoldArgs f;
  f.state = LessView(layer);
  f.psi = map_.View();
  f.dtype = ev.dtype;
  f.k = ev.k.data();
  f.v = ev.v.data();
  f.max_tokens = n;
  f.count = ev.count.data();
  KVC_RETURN_IF_ERROR(k::LessFold(ctx, f));
  for (int32_t h = 0; h < hkv; ++h) layer.folded[h] += ev.count[h];
  return absl::OkStatus();
}

PolicyStats Combined::stats() const {
  PolicyStats s = stats_;
  if (layers_.empty()) return s;
  s.tokens_seen = layers_.back().length;
  // Attended per step: the hot set and the selection; held: all of it.
  int64_t selected = 0;
  for (const Layer& l : layers_) {
    selected = std::max<int64_t>(selected, static_cast<int64_t>(l.selected.size()));
    s.resident_bytes += l.length * l.pool.slot_bytes() + l.hot.size() + l.in_selection.size() + l.evicted_any.size() + l.store.k.size() +
                        l.store.v.size() + (l.store.scores.size() + l.store.positions.size()) * 4 +
                        (l.less_h.size() + l.less_z.size()) * sizeof(float);
  }
  s.resident_bytes -= std::min(s.resident_bytes, cold_stats().dropped_bytes);  // values given back
  s.resident_tokens = k::CascadeStoredTokens(cascade_, s.tokens_seen) + selected;
  return s;
}

}  // namespace kvc::cache
