#include "worker/cache/token_select.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/cache/attend.h"

namespace kvc::cache {

namespace k = ::kvc::kernels;

absl::Status TokenSelectOptions::Validate() const {
  if (n_init < 0 || n_local < 0 || k < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenselect: n_init ", n_init, " and n_local ", n_local, " must be >= 0, k ", k, " >= 1"));
  }
  KVC_RETURN_IF_ERROR(CheckPoolKernel("tokenselect", pool_kernel));
  KVC_RETURN_IF_ERROR(CheckKvDtype("tokenselect", kv_dtype));
  if (lse_block < 0) return absl::InvalidArgumentError(absl::StrCat("tokenselect: lse_block ", lse_block, " < 0"));
  if (!(theta >= -1.0f && theta <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("tokenselect: theta ", theta, " not in [-1, 1]"));
  }
  return absl::OkStatus();
}

absl::Status AppendBlockLse(const k::ExecContext& ctx, const float* qbar, int32_t num_q_heads, const k::KvPool& pool,
                            int64_t first, int64_t begin, int64_t end, int64_t block, std::vector<int64_t>* ids,
                            std::vector<float>* lse) {
  const size_t row = static_cast<size_t>(pool.num_kv_heads) * pool.head_dim * k::DTypeSize(pool.dtype);
  for (int64_t b = begin / block; b * block < end; ++b) {
    const int64_t lo = std::max(begin, b * block), hi = std::min(end, (b + 1) * block);
    if (lo >= hi) continue;
    k::TokenSelectArgs s;
    s.qbar = qbar;
    s.num_q_heads = num_q_heads;
    s.pool = k::KvPool::Contiguous(static_cast<const uint8_t*>(pool.k) + (lo - first) * row, nullptr, pool.dtype,
                                   hi - lo, pool.num_kv_heads, pool.head_dim);
    s.num_candidates = hi - lo;
    ids->push_back(b);
    lse->resize(lse->size() + num_q_heads);
    KVC_RETURN_IF_ERROR(k::TokenSelectLse(ctx, s, lse->data() + lse->size() - num_q_heads));
  }
  return absl::OkStatus();
}

TokenSelectPolicy::TokenSelectPolicy(const model::ModelConfig& config, const TokenSelectOptions& options)
    : config_(config), options_(options), length_(config.n_layers, 0) {
  for (int32_t l = 0; l < config.n_layers; ++l) {
    layers_.emplace_back(config.n_kv_heads, config.head_dim(), options.kv_dtype);
    selection_cache_.emplace_back(options.theta);
  }
}

absl::StatusOr<std::unique_ptr<TokenSelectPolicy>> TokenSelectPolicy::Create(const model::ModelConfig& config,
                                                                             const TokenSelectOptions& options) {
  KVC_RETURN_IF_ERROR(options.Validate());
  return std::unique_ptr<TokenSelectPolicy>(new TokenSelectPolicy(config, options));
}

absl::Status TokenSelectPolicy::SetColdStore(ColdKvStore* cold) {
  for (const int64_t n : length_) {
    if (n > 0) return absl::FailedPreconditionError("tokenselect: cold store set after the first token");
  }
  cold_.clear();
  if (cold == nullptr) return absl::OkStatus();
  for (int32_t l = 0; l < config_.n_layers; ++l) cold_.emplace_back(cold, l);
  return absl::OkStatus();
}

ColdValueStats TokenSelectPolicy::cold_stats() const {
  ColdValueStats s;
  for (const ColdValues& c : cold_) s += c.stats();
  return s;
}

std::string TokenSelectPolicy::name() const {
  return absl::StrCat("tokenselect(init=", options_.n_init, ",k=", options_.k, ",local=", options_.n_local, ")");
}

absl::Status TokenSelectPolicy::Attend(const k::ExecContext& ctx, const model::AttendArgs& a) {
  KVC_RETURN_IF_ERROR(CheckAttendArgs(config_, a));
  int64_t& past = length_[a.layer];
  if (a.first_position != past) {
    return absl::InvalidArgumentError(absl::StrCat("tokenselect: chunk at position ", a.first_position,
                                                   " does not follow the ", past, " tokens held"));
  }
  const int64_t n = a.num_tokens;
  LayerKv& kv = layers_[a.layer];
  KVC_RETURN_IF_ERROR(kv.Reserve(past + n));
  kv.WriteRange(past, n, a.k, a.v);
  const k::KvPool pool = kv.Pool(past + n);

  slots_.clear();
  positions_.clear();
  const int64_t budget = options_.budget();
  if (past <= budget) {
    // Everything is attended, at original positions.
    slots_.resize(past + n);
    std::iota(slots_.begin(), slots_.end(), 0);
    positions_ = slots_;
    selection_cache_[a.layer].Clear();
    if (!cold_.empty()) KVC_RETURN_IF_ERROR(cold_[a.layer].EnsureAll(kv));  // nothing is dropped this early
  } else {
    // Candidates [n_init, past - n_local): pick k by the soft vote.
    const int32_t hq = config_.n_heads, d = config_.head_dim();
    qbar_.resize(static_cast<size_t>(hq) * d);
    k::FingerprintArgs f;
    f.q = a.q;
    f.num_q = n;
    f.num_q_heads = hq;
    f.head_dim = d;
    f.rope = ModelRope(config_);
    f.base_position = options_.n_local;
    f.qbar = qbar_.data();
    KVC_RETURN_IF_ERROR(k::QueryFingerprint(ctx, f));
    k::SelectionCache& cache = selection_cache_[a.layer];
    if (cache.ShouldReuse(qbar_)) {
      ++hits_;
    } else {
      const int64_t begin = options_.n_init, end = past - options_.n_local;
      selected_.resize(options_.k);
      k::TokenSelectArgs s;
      s.qbar = qbar_.data();
      s.num_q_heads = hq;
      s.pool = pool;
      s.num_candidates = end;  // candidates are slots [0, end); eligible [begin, end)
      s.select_begin = begin;
      s.select_end = end;
      s.pool_kernel = options_.pool_kernel;
      s.k = options_.k;
      s.selected = selected_.data();
      if (options_.lse_block > 0) {
        // The normaliser block by block (TokenSelectOptions::lse_block).
        lse_ids_.clear();
        lse_.clear();
        KVC_RETURN_IF_ERROR(AppendBlockLse(ctx, qbar_.data(), hq, pool, 0, begin, end, options_.lse_block,
                                           &lse_ids_, &lse_));
        global_lse_.resize(hq);
        k::CombineLse(lse_, hq, global_lse_.data());
        s.global_lse = global_lse_.data();
      }
      KVC_RETURN_IF_ERROR(k::TokenSelect(ctx, s));
      cache.Store(qbar_, selected_);
      ++selections_;
    }
    for (int32_t i = 0; i < options_.n_init; ++i) slots_.push_back(i);
    const std::vector<int32_t>& selection = cache.selection();
    absl::Status fetched = absl::OkStatus();
    if (!cold_.empty()) fetched = cold_[a.layer].Ensure(kv, selection);
    if (fetched.ok()) {
      slots_.insert(slots_.end(), selection.begin(), selection.end());
    } else {
      // The store cannot return them now: this step attends the selected
      // tokens that are in memory (the next step tries again).
      ++short_selections_;
      last_cold_error_ = fetched;
      for (const int32_t t : selection) {
        if (cold_[a.layer].Resident(t)) slots_.push_back(t);
      }
    }
    for (int64_t i = past - options_.n_local; i < past + n; ++i) slots_.push_back(static_cast<int32_t>(i));
    positions_.resize(slots_.size());
    std::iota(positions_.begin(), positions_.end(), 0);
  }
  const int64_t count = static_cast<int64_t>(slots_.size());
  query_positions_.resize(n);
  for (int64_t i = 0; i < n; ++i) query_positions_[i] = positions_[count - n + i];
  KVC_RETURN_IF_ERROR(
      AttendCausal(ctx, config_, a, pool, slots_.data(), positions_.data(), count, query_positions_.data()));
  past += n;
  if (!cold_.empty() && n == 1 && past > budget) {
    // Decode: keep the values the next step reads unless it selects anew
    // (the sinks, the selection, the local window), drop the rest of what
    // the store holds.
    const std::vector<int32_t>& selection = selection_cache_[a.layer].selection();
    keep_.clear();
    for (int32_t i = 0; i < options_.n_init; ++i) keep_.push_back(i);
    keep_.insert(keep_.end(), selection.begin(), selection.end());
    for (int64_t t = std::max<int64_t>(0, past - options_.n_local); t < past; ++t) keep_.push_back(static_cast<int32_t>(t));
    cold_[a.layer].Trim(kv, past, keep_);
  }

  if (a.layer == 0) stats_.attended_last_step = 0;
  const int64_t pairs = n * (count - n) + n * (n + 1) / 2;
  stats_.attended_last_step += pairs;
  stats_.attended_total += pairs;
  return absl::OkStatus();
}

PolicyStats TokenSelectPolicy::stats() const {
  PolicyStats s = stats_;
  s.tokens_seen = length_.empty() ? 0 : length_.back();
  // The whole pool is held (the candidates); the hot set attended per step
  // is n_init + k + n_local + the chunk.
  s.resident_tokens = s.tokens_seen;
  s.resident_bytes = 0;
  for (int32_t l = 0; l < config_.n_layers; ++l) s.resident_bytes += length_[l] * layers_[l].slot_bytes();
  if (!cold_.empty()) {
    // Without the values given back to the kernel.
    const ColdValueStats c = cold_stats();
    s.resident_bytes -= std::min(s.resident_bytes, c.dropped_bytes);
  }
  return s;
}

}  // namespace kvc::cache
