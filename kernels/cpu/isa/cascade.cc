// The cascading KV cache, optimised CPU path: the shared per-head logic
// (internal/cascade_logic.h, also what the CUDA path runs) with KV heads
// spread over the thread pool. Heads are independent: each owns its slots,
// scores, ring metadata and eviction rows.
#include <cstdint>

#include "kernels/cpu/isa/cpu_kernels.h"
#include "kernels/internal/cascade_logic.h"
#include "kernels/thread_pool.h"

namespace kvc::kernels::KVC_CPU_NS {
namespace {

ThreadPool& PoolOf(const ExecContext& ctx) {
  return ctx.pool != nullptr ? *ctx.pool : DefaultThreadPool();
}

internal::CascadeHead HeadOf(const CascadeState& state, int32_t h) {
  const CascadeConfig& config = state.config;
  const int64_t row_bytes = static_cast<int64_t>(state.head_dim) * DTypeSize(state.dtype);
  internal::CascadeHead head;
  head.num_sinks = config.num_sinks;
  head.num_subcaches = config.num_subcaches;
  head.subcache_slots = config.subcache_slots;
  // k and v may be null for a gather, which reads neither.
  head.k = state.k != nullptr ? static_cast<unsigned char*>(state.k) + h * row_bytes : nullptr;
  head.v = state.v != nullptr ? static_cast<unsigned char*>(state.v) + h * row_bytes : nullptr;
  head.slot_stride = row_bytes * state.num_kv_heads;
  head.row_bytes = row_bytes;
  head.scores = state.scores + static_cast<int64_t>(h) * config.total_slots();
  head.positions = state.positions + static_cast<int64_t>(h) * config.total_slots();
  head.ring_start = state.ring_start + static_cast<int64_t>(h) * config.num_subcaches;
  head.ring_count = state.ring_count + static_cast<int64_t>(h) * config.num_subcaches;
  return head;
}

// Pushes the chunk into KV head h and records its evictions.
void InsertHead(const CascadeInsertArgs& args, int32_t h) {
  const CascadeState& state = *args.state;
  const internal::CascadeHead head = HeadOf(state, h);
  const int64_t n = args.num_tokens, row_bytes = head.row_bytes;
  const int64_t in_stride = row_bytes * state.num_kv_heads;
  const auto* in_k = static_cast<const unsigned char*>(args.k) + h * row_bytes;
  const auto* in_v = static_cast<const unsigned char*>(args.v) + h * row_bytes;
  auto* out_k = static_cast<unsigned char*>(args.evicted_k);
  auto* out_v = static_cast<unsigned char*>(args.evicted_v);
  int32_t evicted = 0;
  for (int64_t j = 0; j < n; ++j) {
    internal::CascadeIncoming in;
    in.k = in_k + j * in_stride;
    in.v = in_v + j * in_stride;
    in.score = args.scores[h * n + j];
    in.position = args.positions[j];
    const int64_t row = h * n + evicted;
    internal::CascadeEvictedRow out;
    out.k = out_k != nullptr ? out_k + row * row_bytes : nullptr;
    out.v = out_v != nullptr ? out_v + row * row_bytes : nullptr;
    out.score = args.evicted_scores != nullptr ? args.evicted_scores + row : nullptr;
    out.position = args.evicted_positions != nullptr ? args.evicted_positions + row : nullptr;
    if (internal::CascadePushToken(head, state.tokens_seen + j + 1, in, out)) ++evicted;
  }
  args.evicted_count[h] = evicted;
}

}  // namespace

absl::Status CascadeInsert(const ExecContext& ctx, const CascadeInsertArgs& args) {
  // An empty chunk passes validation with any buffer null, evicted_count included.
  if (args.num_tokens == 0) {
    if (args.evicted_count != nullptr) {
      for (int32_t h = 0; h < args.state->num_kv_heads; ++h) args.evicted_count[h] = 0;
    }
    return absl::OkStatus();
  }
  PoolOf(ctx).ParallelFor(args.state->num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t h = begin; h < end; ++h) InsertHead(args, static_cast<int32_t>(h));
  });
  return absl::OkStatus();
}

absl::Status CascadeGather(const ExecContext& ctx, const CascadeGatherArgs& args) {
  const CascadeState& state = *args.state;
  // Every head stores the same number of entries (ring metadata depends only
  // on the token count), but each head's list is sized from its own rings.
  args.indptr[0] = 0;
  for (int32_t h = 0; h < state.num_kv_heads; ++h) {
    const internal::CascadeHead head = HeadOf(state, h);
    int64_t n = state.tokens_seen < head.num_sinks ? state.tokens_seen : head.num_sinks;
    for (int32_t i = 0; i < head.num_subcaches; ++i) n += head.ring_count[i];
    args.indptr[h + 1] = args.indptr[h] + static_cast<int32_t>(n);
  }
  PoolOf(ctx).ParallelFor(state.num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t h = begin; h < end; ++h) {
      const int32_t first = args.indptr[h];
      internal::CascadeGatherHead(HeadOf(state, static_cast<int32_t>(h)), state.tokens_seen,
                                  args.original_positions, args.indices + first,
                                  args.positions + first);
    }
  });
  return absl::OkStatus();
}

}  // namespace kvc::kernels::KVC_CPU_NS
