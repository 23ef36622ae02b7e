#include "kernels/internal/validate.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvc::kernels::internal {
namespace {

absl::Status Invalid(absl::string_view kernel, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(kernel, ": ", what));
}

// A byte range of one argument, for the null and overlap checks.
struct Range {
  const char* name;
  const void* ptr;
  size_t bytes;
};

bool Overlap(const Range& a, const Range& b) {
  if (a.ptr == nullptr || b.ptr == nullptr || a.bytes == 0 || b.bytes == 0) return false;
  const auto* pa = static_cast<const char*>(a.ptr);
  const auto* pb = static_cast<const char*>(b.ptr);
  return pa < pb + b.bytes && pb < pa + a.bytes;
}

// Every output must be disjoint from every input and from the other outputs.
absl::Status CheckDisjoint(absl::string_view kernel, std::initializer_list<Range> outputs,
                           std::initializer_list<Range> inputs) {
  for (auto o = outputs.begin(); o != outputs.end(); ++o) {
    for (const Range& i : inputs) {
      if (Overlap(*o, i)) {
        return Invalid(kernel, absl::StrCat("output ", o->name, " overlaps input ", i.name));
      }
    }
    for (auto p = o + 1; p != outputs.end(); ++p) {
      if (Overlap(*o, *p)) {
        return Invalid(kernel, absl::StrCat("outputs ", o->name, " and ", p->name, " overlap"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckHeads(absl::string_view kernel, int32_t num_q_heads, int32_t num_kv_heads) {
  if (num_kv_heads <= 0) return Invalid(kernel, absl::StrCat("num_kv_heads must be > 0, got ", num_kv_heads));
  if (num_q_heads <= 0) return Invalid(kernel, absl::StrCat("num_q_heads must be > 0, got ", num_q_heads));
  if (num_q_heads % num_kv_heads != 0) {
    return Invalid(kernel, absl::StrCat("num_q_heads (", num_q_heads, ") is not a multiple of num_kv_heads (",
                                        num_kv_heads, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckRope(absl::string_view kernel, const Rope& rope, int32_t head_dim) {
  if (rope.style != RopeStyle::kNone && rope.style != RopeStyle::kInterleaved && rope.style != RopeStyle::kHalf) {
    return Invalid(kernel, absl::StrCat("unknown rope.style ", static_cast<int>(rope.style)));
  }
  if (rope.style != RopeStyle::kNone) {
    if (!(rope.theta > 0) || !std::isfinite(rope.theta)) {
      return Invalid(kernel, absl::StrCat("rope.theta must be finite and > 0, got ", rope.theta));
    }
    if (head_dim % 2 != 0) return Invalid(kernel, absl::StrCat("RoPE needs an even head_dim, got ", head_dim));
  }
  return absl::OkStatus();
}

absl::Status CheckScale(absl::string_view kernel, float scale) {
  if (!std::isfinite(scale) || scale < 0) {
    return Invalid(kernel, absl::StrCat("scale must be finite and >= 0 (0 = 1/sqrt(head_dim)), got ", scale));
  }
  return absl::OkStatus();
}

absl::Status CheckPool(absl::string_view kernel, const KvPool& pool, bool needs_v) {
  if (!IsValidDType(pool.dtype)) {
    return Invalid(kernel, absl::StrCat("kv.dtype: unknown dtype ", static_cast<int>(pool.dtype)));
  }
  if (pool.layout != KvLayout::kNHD && pool.layout != KvLayout::kHND) {
    return Invalid(kernel, absl::StrCat("kv.layout: unknown layout ", static_cast<int>(pool.layout)));
  }
  if (pool.head_dim <= 0 || pool.head_dim > 1024) {
    return Invalid(kernel, absl::StrCat("kv.head_dim must be in [1, 1024], got ", pool.head_dim));
  }
  if (pool.num_kv_heads <= 0) return Invalid(kernel, absl::StrCat("kv.num_kv_heads must be > 0, got ", pool.num_kv_heads));
  if (pool.page_size <= 0) return Invalid(kernel, absl::StrCat("kv.page_size must be > 0, got ", pool.page_size));
  if (pool.num_pages < 0) return Invalid(kernel, absl::StrCat("kv.num_pages must be >= 0, got ", pool.num_pages));
  if (pool.num_slots() > (int64_t{1} << 31) - 1) {
    return Invalid(kernel, absl::StrCat("kv pool has ", pool.num_slots(), " slots; slot ids are int32"));
  }
  if (pool.num_slots() > 0) {
    if (pool.k == nullptr) return Invalid(kernel, "kv.k is null");
    if (needs_v && pool.v == nullptr) return Invalid(kernel, "kv.v is null");
    if (needs_v && Overlap({"kv.k", pool.k, pool.bytes()}, {"kv.v", pool.v, pool.bytes()})) {
      return Invalid(kernel, "kv.k and kv.v overlap");
    }
  }
  return absl::OkStatus();
}

// The CSR lists: shape always; contents when they are host memory.
// `total` receives indptr[num_lists].
absl::Status CheckGather(absl::string_view kernel, const KvGather& g, const KvPool& pool, int64_t num_lists,
                         bool needs_positions, bool host, int64_t min_list_len, int64_t* total) {
  *total = 0;
  if (g.indptr == nullptr) return Invalid(kernel, "gather.indptr is null");
  if (needs_positions && g.positions == nullptr) {
    return Invalid(kernel, "gather.positions is null but rope.style needs key positions");
  }
  if (!host) {
    // Device-resident lists: only the pointers can be checked here.
    if (g.indices == nullptr) return Invalid(kernel, "gather.indices is null");
    *total = -1;
    return absl::OkStatus();
  }
  if (g.indptr[0] != 0) return Invalid(kernel, absl::StrCat("gather.indptr[0] must be 0, got ", g.indptr[0]));
  for (int64_t l = 0; l < num_lists; ++l) {
    const int64_t len = int64_t{g.indptr[l + 1]} - g.indptr[l];
    if (len < 0) {
      return Invalid(kernel, absl::StrCat("gather.indptr decreases at list ", l, " (", g.indptr[l], " -> ",
                                          g.indptr[l + 1], ")"));
    }
    if (len < min_list_len) {
      return Invalid(kernel, absl::StrCat("causal: list ", l, " has ", len, " entries, fewer than the ",
                                          min_list_len, " queries of the chunk"));
    }
  }
  *total = g.indptr[num_lists];
  if (*total > 0 && g.indices == nullptr) return Invalid(kernel, "gather.indices is null");
  for (int64_t e = 0; e < *total; ++e) {
    if (g.indices[e] < 0 || g.indices[e] >= pool.num_slots()) {
      return Invalid(kernel, absl::StrCat("gather.indices[", e, "] = ", g.indices[e], " is outside the pool's ",
                                          pool.num_slots(), " slots"));
    }
    if (needs_positions && g.positions[e] < 0) {
      return Invalid(kernel, absl::StrCat("gather.positions[", e, "] = ", g.positions[e], " is negative"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckAccum(absl::string_view kernel, const ScoreAccum& a, const KvGather& g, const KvPool& pool,
                        int64_t num_lists, int64_t num_q, bool host) {
  if (a.mode == ScoreMode::kNone) return absl::OkStatus();
  if (a.mode != ScoreMode::kEma && a.mode != ScoreMode::kSum) {
    return Invalid(kernel, absl::StrCat("accum.mode: unknown mode ", static_cast<int>(a.mode)));
  }
  if (a.group_reduce != GroupReduce::kMax && a.group_reduce != GroupReduce::kSum) {
    return Invalid(kernel, absl::StrCat("accum.group_reduce: unknown value ", static_cast<int>(a.group_reduce)));
  }
  if (a.scores == nullptr) return Invalid(kernel, "accum.scores is null");
  if (a.mode == ScoreMode::kEma && !(a.beta > 0 && a.beta < 1)) {
    return Invalid(kernel, absl::StrCat("accum.beta must be in (0, 1), got ", a.beta));
  }
  if (a.first_query < 0 || a.first_query > num_q) {
    return Invalid(kernel, absl::StrCat("accum.first_query must be in [0, ", num_q, "], got ", a.first_query));
  }
  if (!host) return absl::OkStatus();
  // No (slot, KV head) twice: the scores would be updated twice. When each
  // KV head is gathered by one list only (a single sequence), strictly
  // increasing lists prove it without the bitmap (a decode step over a
  // long context pays a linear scan, not a bitmap of every slot).
  const bool one_list_per_head = num_lists == 1 || (g.per_kv_head && num_lists == pool.num_kv_heads);
  if (one_list_per_head) {
    bool increasing = true;
    for (int64_t l = 0; l < num_lists && increasing; ++l) {
      for (int64_t e = g.indptr[l] + 1; e < g.indptr[l + 1]; ++e) increasing &= g.indices[e - 1] < g.indices[e];
    }
    if (increasing) return absl::OkStatus();
  }
  const int64_t slots = pool.num_slots();
  std::vector<bool> seen(static_cast<size_t>(slots) * pool.num_kv_heads, false);
  for (int64_t l = 0; l < num_lists; ++l) {
    const int32_t h0 = g.per_kv_head ? static_cast<int32_t>(l % pool.num_kv_heads) : 0;
    const int32_t h1 = g.per_kv_head ? h0 + 1 : pool.num_kv_heads;
    for (int64_t e = g.indptr[l]; e < g.indptr[l + 1]; ++e) {
      for (int32_t h = h0; h < h1; ++h) {
        std::vector<bool>::reference bit = seen[static_cast<size_t>(h) * slots + g.indices[e]];
        if (bit) {
          return Invalid(kernel, absl::StrCat("score accumulation: slot ", g.indices[e], " of KV head ", h,
                                              " is gathered twice"));
        }
        bit = true;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidatePrefill(const PrefillArgs& a, Backend backend) {
  constexpr absl::string_view k = "Prefill";
  const bool host = backend != Backend::kCuda;
  KVC_RETURN_IF_ERROR(CheckPool(k, a.kv, /*needs_v=*/true));
  KVC_RETURN_IF_ERROR(CheckHeads(k, a.num_q_heads, a.kv.num_kv_heads));
  KVC_RETURN_IF_ERROR(CheckRope(k, a.rope, a.kv.head_dim));
  KVC_RETURN_IF_ERROR(CheckScale(k, a.scale));
  if (a.num_q < 0) return Invalid(k, absl::StrCat("num_q must be >= 0, got ", a.num_q));
  if (a.num_q == 0) return absl::OkStatus();
  if (a.q == nullptr) return Invalid(k, "q is null");
  if (a.out == nullptr && (a.accum.mode == ScoreMode::kNone || a.accum.lse == nullptr)) {
    return Invalid(k, "out is null (allowed only for a scores-only call: accum.mode and accum.lse set)");
  }
  if (a.rope.style != RopeStyle::kNone && a.q_positions == nullptr) {
    return Invalid(k, "q_positions is null but rope.style needs query positions");
  }
  const int64_t num_lists = a.gather.per_kv_head ? a.kv.num_kv_heads : 1;
  int64_t total = 0;
  KVC_RETURN_IF_ERROR(CheckGather(k, a.gather, a.kv, num_lists, a.rope.style != RopeStyle::kNone, host,
                                  a.causal ? a.num_q : 0, &total));
  KVC_RETURN_IF_ERROR(CheckAccum(k, a.accum, a.gather, a.kv, num_lists, a.num_q, host));
  const size_t rows = static_cast<size_t>(a.num_q) * a.num_q_heads;
  const size_t qbytes = rows * a.kv.head_dim * sizeof(float);
  const size_t sbytes = static_cast<size_t>(a.kv.num_slots()) * a.kv.num_kv_heads * sizeof(float);
  return CheckDisjoint(k,
                       {{"out", a.out, qbytes}, {"lse", a.lse, rows * sizeof(float)},
                        {"accum.scores", a.accum.mode == ScoreMode::kNone ? nullptr : a.accum.scores, sbytes}},
                       {{"q", a.q, qbytes}, {"kv.k", a.kv.k, a.kv.bytes()}, {"kv.v", a.kv.v, a.kv.bytes()},
                        {"accum.lse", a.accum.lse, rows * sizeof(float)}});
}

absl::Status ValidateDecode(const DecodeArgs& a, Backend backend) {
  constexpr absl::string_view k = "Decode";
  const bool host = backend != Backend::kCuda;
  KVC_RETURN_IF_ERROR(CheckPool(k, a.kv, /*needs_v=*/true));
  KVC_RETURN_IF_ERROR(CheckHeads(k, a.num_q_heads, a.kv.num_kv_heads));
  KVC_RETURN_IF_ERROR(CheckRope(k, a.rope, a.kv.head_dim));
  KVC_RETURN_IF_ERROR(CheckScale(k, a.scale));
  if (a.batch < 0) return Invalid(k, absl::StrCat("batch must be >= 0, got ", a.batch));
  if (a.batch == 0) return absl::OkStatus();
  if (a.q == nullptr) return Invalid(k, "q is null");
  if (a.out == nullptr && (a.accum.mode == ScoreMode::kNone || a.accum.lse == nullptr)) {
    return Invalid(k, "out is null (allowed only for a scores-only call: accum.mode and accum.lse set)");
  }
  if (a.rope.style != RopeStyle::kNone && a.q_positions == nullptr) {
    return Invalid(k, "q_positions is null but rope.style needs query positions");
  }
  const int64_t num_lists = static_cast<int64_t>(a.batch) * (a.gather.per_kv_head ? a.kv.num_kv_heads : 1);
  int64_t total = 0;
  KVC_RETURN_IF_ERROR(
      CheckGather(k, a.gather, a.kv, num_lists, a.rope.style != RopeStyle::kNone, host, 0, &total));
  KVC_RETURN_IF_ERROR(CheckAccum(k, a.accum, a.gather, a.kv, num_lists, 1, host));
  const size_t rows = static_cast<size_t>(a.batch) * a.num_q_heads;
  const size_t qbytes = rows * a.kv.head_dim * sizeof(float);
  const size_t sbytes = static_cast<size_t>(a.kv.num_slots()) * a.kv.num_kv_heads * sizeof(float);
  return CheckDisjoint(k,
                       {{"out", a.out, qbytes}, {"lse", a.lse, rows * sizeof(float)},
                        {"accum.scores", a.accum.mode == ScoreMode::kNone ? nullptr : a.accum.scores, sbytes}},
                       {{"q", a.q, qbytes}, {"kv.k", a.kv.k, a.kv.bytes()}, {"kv.v", a.kv.v, a.kv.bytes()},
                        {"accum.lse", a.accum.lse, rows * sizeof(float)}});
}

absl::Status ValidateMergeStates(const MergeStatesArgs& a) {
  constexpr absl::string_view k = "MergeStates";
  if (a.num_states < 1) return Invalid(k, absl::StrCat("num_states must be >= 1, got ", a.num_states));
  if (a.num_rows < 0) return Invalid(k, absl::StrCat("num_rows must be >= 0, got ", a.num_rows));
  if (a.head_dim <= 0) return Invalid(k, absl::StrCat("head_dim must be > 0, got ", a.head_dim));
  if (a.num_rows == 0) return absl::OkStatus();
  if (a.v == nullptr || a.lse == nullptr) return Invalid(k, "v or lse is null");
  if (a.out == nullptr) return Invalid(k, "out is null");
  const size_t rows = static_cast<size_t>(a.num_rows);
  return CheckDisjoint(k, {{"out", a.out, rows * a.head_dim * 4}, {"out_lse", a.out_lse, rows * 4}},
                       {{"v", a.v, rows * a.num_states * a.head_dim * 4}, {"lse", a.lse, rows * a.num_states * 4}});
}

absl::Status ValidateFingerprint(const FingerprintArgs& a) {
  constexpr absl::string_view k = "QueryFingerprint";
  if (a.num_q < 1) return Invalid(k, absl::StrCat("num_q must be >= 1, got ", a.num_q));
  if (a.num_q_heads <= 0) return Invalid(k, absl::StrCat("num_q_heads must be > 0, got ", a.num_q_heads));
  if (a.head_dim <= 0) return Invalid(k, absl::StrCat("head_dim must be > 0, got ", a.head_dim));
  KVC_RETURN_IF_ERROR(CheckRope(k, a.rope, a.head_dim));
  if (a.base_position < 0) return Invalid(k, absl::StrCat("base_position must be >= 0, got ", a.base_position));
  if (a.q == nullptr || a.qbar == nullptr) return Invalid(k, "q or qbar is null");
  const size_t row = static_cast<size_t>(a.num_q_heads) * a.head_dim * 4;
  return CheckDisjoint(k, {{"qbar", a.qbar, row}}, {{"q", a.q, row * a.num_q}});
}

absl::Status ValidateTokenSelect(const TokenSelectArgs& a, Backend backend, bool for_lse) {
  constexpr absl::string_view k = "TokenSelect";
  KVC_RETURN_IF_ERROR(CheckPool(k, a.pool, /*needs_v=*/false));
  KVC_RETURN_IF_ERROR(CheckHeads(k, a.num_q_heads, a.pool.num_kv_heads));
  KVC_RETURN_IF_ERROR(CheckScale(k, a.scale));
  if (a.qbar == nullptr) return Invalid(k, "qbar is null");
  if (a.num_candidates < 0) return Invalid(k, absl::StrCat("num_candidates must be >= 0, got ", a.num_candidates));
  if (a.candidates == nullptr && a.num_candidates > a.pool.num_slots()) {
    return Invalid(k, absl::StrCat("num_candidates (", a.num_candidates, ") exceeds the pool's ",
                                   a.pool.num_slots(), " slots"));
  }
  const int64_t end = a.select_end < 0 ? a.num_candidates : a.select_end;
  if (a.select_begin < 0 || a.select_begin > end || end > a.num_candidates) {
    return Invalid(k, absl::StrCat("eligible range [", a.select_begin, ", ", a.select_end,
                                   ") is not inside the ", a.num_candidates, " candidates"));
  }
  if (backend != Backend::kCuda && a.candidates != nullptr) {
    for (int64_t i = 0; i < a.num_candidates; ++i) {
      if (a.candidates[i] < 0 || a.candidates[i] >= a.pool.num_slots()) {
        return Invalid(k, absl::StrCat("candidates[", i, "] = ", a.candidates[i], " is outside the pool's ",
                                       a.pool.num_slots(), " slots"));
      }
    }
  }
  if (a.pool_kernel < 0 || (a.pool_kernel > 1 && a.pool_kernel % 2 == 0)) {
    return Invalid(k, absl::StrCat("pool_kernel must be 0, 1 or odd, got ", a.pool_kernel));
  }
  // CUDA needs the workspace; the CPU path uses one when given (otherwise its
  // own scratch), so a given one must be large enough on every backend.
  const size_t ws_needed = TokenSelectWorkspaceBytes(a.num_candidates, a.num_q_heads);
  if ((backend == Backend::kCuda || a.workspace != nullptr) &&
      (a.workspace == nullptr || a.workspace_bytes < ws_needed)) {
    return Invalid(k, absl::StrCat(a.workspace == nullptr ? "CUDA needs a workspace: " : "", "workspace of ",
                                   a.workspace_bytes, " bytes is smaller than the ", ws_needed,
                                   " needed (TokenSelectWorkspaceBytes)"));
  }
  if (for_lse) return absl::OkStatus();
  const int64_t eligible = end - a.select_begin;
  if (a.k < 1 || a.k > eligible) {
    return Invalid(k, absl::StrCat("k = ", a.k, " must be in [1, ", eligible, "] (the eligible candidates)"));
  }
  if (a.selected == nullptr) return Invalid(k, "selected is null");
  const size_t kb = static_cast<size_t>(a.k) * 4, nb = static_cast<size_t>(a.num_candidates) * 4;
  const size_t hb = static_cast<size_t>(a.num_q_heads) * 4;
  return CheckDisjoint(
      k, {{"selected", a.selected, kb}, {"selected_scores", a.selected_scores, kb}, {"scores", a.scores, nb}},
      {{"qbar", a.qbar, hb * a.pool.head_dim},
       {"pool.k", a.pool.k, a.pool.bytes()},
       {"candidates", a.candidates, nb},
       {"global_lse", a.global_lse, hb},
       {"workspace", a.workspace, a.workspace_bytes}});
}

absl::Status ValidateCascadeInsert(const CascadeInsertArgs& a) {
  constexpr absl::string_view k = "CascadeInsert";
  if (a.state == nullptr) return Invalid(k, "state is null");
  const CascadeState& s = *a.state;
  KVC_RETURN_IF_ERROR(s.config.Validate());
  if (!IsValidDType(s.dtype)) return Invalid(k, absl::StrCat("state.dtype: unknown dtype ", static_cast<int>(s.dtype)));
  if (s.num_kv_heads <= 0 || s.head_dim <= 0) {
    return Invalid(k, absl::StrCat("state has ", s.num_kv_heads, " KV heads of dim ", s.head_dim));
  }
  if (!s.k || !s.v || !s.scores || !s.positions || !s.ring_start || !s.ring_count) {
    return Invalid(k, "a state buffer (k, v, scores, positions, ring_start, ring_count) is null");
  }
  if (s.tokens_seen < 0) return Invalid(k, absl::StrCat("state.tokens_seen is negative: ", s.tokens_seen));
  if (a.num_tokens < 0) return Invalid(k, absl::StrCat("num_tokens must be >= 0, got ", a.num_tokens));
  if (s.tokens_seen + a.num_tokens > (int64_t{1} << 62)) return Invalid(k, "token count overflows");
  if (a.num_tokens == 0) return absl::OkStatus();
  if (!a.k || !a.v || !a.scores || !a.positions) return Invalid(k, "k, v, scores or positions is null");
  if (a.evicted_count == nullptr) return Invalid(k, "evicted_count is null");
  const size_t n = static_cast<size_t>(a.num_tokens), h = s.num_kv_heads;
  const size_t row = static_cast<size_t>(s.head_dim) * DTypeSize(s.dtype);
  const size_t slots = s.config.total_slots();
  return CheckDisjoint(
      k,
      {{"state.k", s.k, slots * h * row}, {"state.v", s.v, slots * h * row},
       {"state.scores", s.scores, slots * h * 4}, {"state.positions", s.positions, slots * h * 4},
       {"state.ring_start", s.ring_start, h * s.config.num_subcaches * 4},
       {"state.ring_count", s.ring_count, h * s.config.num_subcaches * 4},
       {"evicted_k", a.evicted_k, h * n * row}, {"evicted_v", a.evicted_v, h * n * row},
       {"evicted_scores", a.evicted_scores, h * n * 4}, {"evicted_positions", a.evicted_positions, h * n * 4},
       {"evicted_count", a.evicted_count, h * 4}},
      {{"k", a.k, n * h * row}, {"v", a.v, n * h * row}, {"scores", a.scores, n * h * 4},
       {"positions", a.positions, n * 4}});
}

absl::Status ValidateCascadeGather(const CascadeGatherArgs& a) {
  constexpr absl::string_view k = "CascadeGather";
  if (a.state == nullptr) return Invalid(k, "state is null");
  KVC_RETURN_IF_ERROR(a.state->config.Validate());
  if (a.state->num_kv_heads <= 0) return Invalid(k, "state has no KV heads");
  if (!a.state->positions || !a.state->ring_start || !a.state->ring_count) {
    return Invalid(k, "a state buffer (positions, ring_start, ring_count) is null");
  }
  if (!a.indptr || !a.indices || !a.positions) return Invalid(k, "indptr, indices or positions is null");
  const size_t cap = static_cast<size_t>(a.state->num_kv_heads) * a.state->config.total_slots() * 4;
  return CheckDisjoint(k,
                       {{"indptr", a.indptr, (a.state->num_kv_heads + 1) * 4u},
                        {"indices", a.indices, cap},
                        {"positions", a.positions, cap}},
                       {{"state.positions", a.state->positions, cap}});
}

namespace {
absl::Status CheckLessState(absl::string_view k, const LessState& s, const FeatureMap& f, absl::string_view map) {
  if (s.num_kv_heads <= 0 || s.rank <= 0 || s.head_dim <= 0) {
    return Invalid(k, absl::StrCat("state has ", s.num_kv_heads, " heads, rank ", s.rank, ", dim ", s.head_dim));
  }
  if (s.h == nullptr || s.z == nullptr) return Invalid(k, "state.h or state.z is null");
  if (f.in_dim != s.head_dim || f.out_dim != s.rank) {
    return Invalid(k, absl::StrCat(map, " maps ", f.in_dim, " -> ", f.out_dim, " but the state needs ",
                                   s.head_dim, " -> ", s.rank));
  }
  if (f.hidden < 0) return Invalid(k, absl::StrCat(map, ".hidden must be >= 0, got ", f.hidden));
  if (f.activation != FeatureActivation::kEluPlusOne && f.activation != FeatureActivation::kExp) {
    return Invalid(k, absl::StrCat(map, ".activation: unknown value ", static_cast<int>(f.activation)));
  }
  if (!(f.sq_norm_coeff >= 0.0f) || !std::isfinite(f.sq_norm_coeff)) {
    return Invalid(k, absl::StrCat(map, ".sq_norm_coeff must be finite and >= 0, got ", f.sq_norm_coeff));
  }
  if (f.w2 == nullptr || f.b2 == nullptr) return Invalid(k, absl::StrCat(map, ".w2 or .b2 is null"));
  if (f.hidden > 0 && (f.w1 == nullptr || f.b1 == nullptr)) {
    return Invalid(k, absl::StrCat(map, ".w1 or .b1 is null with hidden = ", f.hidden));
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status ValidateLessFold(const LessFoldArgs& a, Backend backend) {
  constexpr absl::string_view k = "LessFold";
  KVC_RETURN_IF_ERROR(CheckLessState(k, a.state, a.psi, "psi"));
  if (!IsValidDType(a.dtype)) return Invalid(k, absl::StrCat("dtype: unknown dtype ", static_cast<int>(a.dtype)));
  if (a.max_tokens < 0) return Invalid(k, absl::StrCat("max_tokens must be >= 0, got ", a.max_tokens));
  if (a.max_tokens == 0) return absl::OkStatus();
  if (a.k == nullptr || a.v == nullptr) return Invalid(k, "k or v is null");
  if (a.count != nullptr && backend != Backend::kCuda) {
    for (int32_t h = 0; h < a.state.num_kv_heads; ++h) {
      if (a.count[h] < 0 || a.count[h] > a.max_tokens) {
        return Invalid(k, absl::StrCat("count[", h, "] = ", a.count[h], " is outside [0, ", a.max_tokens, "]"));
      }
    }
  }
  const size_t heads = a.state.num_kv_heads, tok = static_cast<size_t>(a.max_tokens);
  const size_t row = static_cast<size_t>(a.state.head_dim) * DTypeSize(a.dtype);
  return CheckDisjoint(k,
                       {{"state.h", a.state.h, heads * a.state.rank * a.state.head_dim * 4},
                        {"state.z", a.state.z, heads * a.state.rank * 4}},
                       {{"k", a.k, heads * tok * row}, {"v", a.v, heads * tok * row}});
}

absl::Status ValidateLessCombine(const LessCombineArgs& a) {
  constexpr absl::string_view k = "LessCombine";
  KVC_RETURN_IF_ERROR(CheckLessState(k, a.state, a.phi, "phi"));
  KVC_RETURN_IF_ERROR(CheckHeads(k, a.num_q_heads, a.state.num_kv_heads));
  if (a.num_tokens < 0) return Invalid(k, absl::StrCat("num_tokens must be >= 0, got ", a.num_tokens));
  if (a.num_tokens == 0) return absl::OkStatus();
  if (!a.q || !a.sparse_out || !a.sparse_lse || !a.out) return Invalid(k, "q, sparse_out, sparse_lse or out is null");
  const size_t rows = static_cast<size_t>(a.num_tokens) * a.num_q_heads;
  const size_t vb = rows * a.state.head_dim * 4;
  return CheckDisjoint(k, {{"out", a.out, vb}},
                       {{"q", a.q, vb}, {"sparse_out", a.sparse_out, vb}, {"sparse_lse", a.sparse_lse, rows * 4},
                        {"state.h", a.state.h, static_cast<size_t>(a.state.num_kv_heads) * a.state.rank * a.state.head_dim * 4}});
}

namespace {
// The metadata view (shape and pointers); `pages_needed` must fit its capacity.
absl::Status CheckQuestMeta(absl::string_view k, const QuestMeta& m, int64_t pages_needed) {
  if (m.num_kv_heads <= 0) return Invalid(k, absl::StrCat("meta.num_kv_heads must be > 0, got ", m.num_kv_heads));
  if (m.head_dim <= 0 || m.head_dim > 1024) {
    return Invalid(k, absl::StrCat("meta.head_dim must be in [1, 1024], got ", m.head_dim));
  }
  if (m.page_size <= 0) return Invalid(k, absl::StrCat("meta.page_size must be > 0, got ", m.page_size));
  if (m.max_pages < 0) return Invalid(k, absl::StrCat("meta.max_pages must be >= 0, got ", m.max_pages));
  if (pages_needed > m.max_pages) {
    return Invalid(k, absl::StrCat("meta.max_pages (", m.max_pages, ") is below the ", pages_needed, " pages needed"));
  }
  if (pages_needed > 0 && (m.min == nullptr || m.max == nullptr)) return Invalid(k, "meta.min or meta.max is null");
  const size_t bytes = static_cast<size_t>(m.max_pages) * m.num_kv_heads * m.head_dim * 4;
  if (Overlap({"meta.min", m.min, bytes}, {"meta.max", m.max, bytes})) return Invalid(k, "meta.min and meta.max overlap");
  return absl::OkStatus();
}
}  // namespace

absl::Status ValidateQuestUpdate(const QuestUpdateArgs& a) {
  constexpr absl::string_view k = "QuestUpdatePages";
  KVC_RETURN_IF_ERROR(CheckPool(k, a.pool, /*needs_v=*/false));
  KVC_RETURN_IF_ERROR(CheckRope(k, a.rope, a.pool.head_dim));
  if (a.num_tokens < 0 || a.num_tokens > a.pool.num_slots()) {
    return Invalid(k, absl::StrCat("num_tokens (", a.num_tokens, ") is outside [0, ", a.pool.num_slots(),
                                   "] (the pool's slots)"));
  }
  if (a.first_new < 0 || a.first_new > a.num_tokens) {
    return Invalid(k, absl::StrCat("first_new (", a.first_new, ") is outside [0, num_tokens = ", a.num_tokens, "]"));
  }
  if (a.meta.num_kv_heads != a.pool.num_kv_heads || a.meta.head_dim != a.pool.head_dim) {
    return Invalid(k, absl::StrCat("meta has ", a.meta.num_kv_heads, " heads of dim ", a.meta.head_dim,
                                   " but the pool ", a.pool.num_kv_heads, " of dim ", a.pool.head_dim));
  }
  const int64_t page = a.meta.page_size > 0 ? a.meta.page_size : 1;
  KVC_RETURN_IF_ERROR(CheckQuestMeta(k, a.meta, (a.num_tokens + page - 1) / page));
  const size_t bytes = static_cast<size_t>(a.meta.max_pages) * a.meta.num_kv_heads * a.meta.head_dim * 4;
  return CheckDisjoint(k, {{"meta.min", a.meta.min, bytes}, {"meta.max", a.meta.max, bytes}},
                       {{"pool.k", a.pool.k, a.pool.bytes()}});
}

absl::Status ValidateQuestSelect(const QuestSelectArgs& a, Backend backend) {
  constexpr absl::string_view k = "QuestSelect";
  KVC_RETURN_IF_ERROR(CheckHeads(k, a.num_q_heads, a.meta.num_kv_heads));
  KVC_RETURN_IF_ERROR(CheckRope(k, a.rope, a.meta.head_dim));
  if (a.q_position < 0) return Invalid(k, absl::StrCat("q_position must be >= 0, got ", a.q_position));
  if (a.num_pages < 1) return Invalid(k, absl::StrCat("num_pages must be >= 1, got ", a.num_pages));
  if (a.num_pages > (int64_t{1} << 31) - 1) {
    return Invalid(k, absl::StrCat("num_pages (", a.num_pages, ") exceeds 2^31 - 1; page ids are int32"));
  }
  KVC_RETURN_IF_ERROR(CheckQuestMeta(k, a.meta, a.num_pages));
  if (a.k < 1 || a.k > a.num_pages) {
    return Invalid(k, absl::StrCat("k = ", a.k, " must be in [1, ", a.num_pages, "] (num_pages)"));
  }
  if (a.q == nullptr) return Invalid(k, "q is null");
  if (a.scores == nullptr) return Invalid(k, "scores is null");
  if (a.selected == nullptr) return Invalid(k, "selected is null");
  const size_t ws_needed = QuestWorkspaceBytes(a.num_pages, a.num_q_heads, a.meta.head_dim);
  if ((backend == Backend::kCuda || a.workspace != nullptr) &&
      (a.workspace == nullptr || a.workspace_bytes < ws_needed)) {
    return Invalid(k, absl::StrCat(a.workspace == nullptr ? "CUDA needs a workspace: " : "", "workspace of ",
                                   a.workspace_bytes, " bytes is smaller than the ", ws_needed,
                                   " needed (QuestWorkspaceBytes)"));
  }
  const size_t hkv = a.meta.num_kv_heads;
  const size_t meta_bytes = static_cast<size_t>(a.meta.max_pages) * hkv * a.meta.head_dim * 4;
  const Range q{"q", a.q, static_cast<size_t>(a.num_q_heads) * a.meta.head_dim * 4};
  const Range mn{"meta.min", a.meta.min, meta_bytes}, mx{"meta.max", a.meta.max, meta_bytes};
  return CheckDisjoint(k,
                       {{"scores", a.scores, hkv * a.num_pages * 4},
                        {"selected", a.selected, hkv * a.k * 4},
                        {"workspace", a.workspace, a.workspace_bytes}},
                       {q, mn, mx});
}

absl::Status ValidateLinear(const LinearArgs& a) {
  constexpr absl::string_view k = "Linear";
  if (a.k <= 0) return Invalid(k, absl::StrCat("k must be > 0, got ", a.k));
  if (a.n <= 0) return Invalid(k, absl::StrCat("n must be > 0, got ", a.n));
  if (a.m < 0) return Invalid(k, absl::StrCat("m must be >= 0, got ", a.m));
  if (a.w_dtype != DType::kF32 && a.w_dtype != DType::kBF16) {
    return Invalid(k, absl::StrCat("w_dtype must be f32 or bf16, got ", DTypeName(a.w_dtype), " (",
                                   static_cast<int>(a.w_dtype), ")"));
  }
  if (a.w == nullptr) return Invalid(k, "w is null");
  if (a.pack != nullptr &&
      (a.pack->n != a.n || a.pack->k != a.k || a.pack->w_dtype != a.w_dtype || a.pack->panels == nullptr)) {
    return Invalid(k, absl::StrCat("pack was made for n=", a.pack->n, " k=", a.pack->k, " ",
                                   DTypeName(a.pack->w_dtype), ", not n=", a.n, " k=", a.k, " ",
                                   DTypeName(a.w_dtype)));
  }
  if (a.m == 0) return absl::OkStatus();
  if (a.x == nullptr) return Invalid(k, "x is null");
  if (a.y == nullptr) return Invalid(k, "y is null");
  const size_t m = static_cast<size_t>(a.m);
  return CheckDisjoint(k, {{"y", a.y, m * a.n * 4}},
                       {{"x", a.x, m * a.k * 4},
                        {"w", a.w, static_cast<size_t>(a.n) * a.k * DTypeSize(a.w_dtype)}});
}

absl::Status ValidateRmsNorm(const RmsNormArgs& a) {
  constexpr absl::string_view k = "RmsNorm";
  if (a.dim <= 0) return Invalid(k, absl::StrCat("dim must be > 0, got ", a.dim));
  if (a.rows < 0) return Invalid(k, absl::StrCat("rows must be >= 0, got ", a.rows));
  if (!(a.eps > 0) || !std::isfinite(a.eps)) {
    return Invalid(k, absl::StrCat("eps must be finite and > 0, got ", a.eps));
  }
  if (a.weight == nullptr) return Invalid(k, "weight is null");
  if (a.rows == 0) return absl::OkStatus();
  if (a.x == nullptr) return Invalid(k, "x is null");
  if (a.out == nullptr) return Invalid(k, "out is null");
  const size_t bytes = static_cast<size_t>(a.rows) * a.dim * 4;
  return CheckDisjoint(k, {{"out", a.out, bytes}},
                       {{"x", a.x, bytes}, {"weight", a.weight, static_cast<size_t>(a.dim) * 4}});
}

absl::Status ValidateSwiGlu(const SwiGluArgs& a) {
  constexpr absl::string_view k = "SwiGlu";
  if (a.count < 0) return Invalid(k, absl::StrCat("count must be >= 0, got ", a.count));
  if (a.count == 0) return absl::OkStatus();
  if (a.gate == nullptr) return Invalid(k, "gate is null");
  if (a.up == nullptr) return Invalid(k, "up is null");
  if (a.out == nullptr) return Invalid(k, "out is null");
  const size_t bytes = static_cast<size_t>(a.count) * 4;
  return CheckDisjoint(k, {{"out", a.out, bytes}}, {{"gate", a.gate, bytes}, {"up", a.up, bytes}});
}

}  // namespace kvc::kernels::internal
