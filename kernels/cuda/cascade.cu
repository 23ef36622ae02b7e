// CascadeInsert and CascadeGather on the GPU (cascade.h).
//
// Insert runs kernels/internal/cascade_logic.h, the per-head insertion the
// CPU path also runs, on one thread per KV head, so the slot contents equal
// the CPU's exactly. Each head is a sequential walk over the incoming tokens
// (whether a token is kept depends on the scores already in the cache), so
// the parallelism is the number of KV heads; a chunk of a few thousand tokens
// costs on the order of a millisecond.
//
// Gather writes the age-ordered lists in parallel: one block per head, one
// thread per entry, each finding its sub-cache from the prefix of ring
// counts (the same order as CascadeGatherHead).
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/internal/cascade_logic.h"

namespace kvc::kernels::cuda {
namespace {

struct InsertParams {
  int32_t num_sinks, num_subcaches, subcache_slots, num_kv_heads;
  int64_t row_bytes;  // head_dim * element size
  unsigned char* k;
  unsigned char* v;
  float* scores;
  int32_t* positions;
  int32_t* ring_start;
  int32_t* ring_count;
  int64_t tokens_seen;
  const unsigned char* in_k;
  const unsigned char* in_v;
  const float* in_scores;
  const int32_t* in_positions;
  int64_t num_tokens;
  unsigned char* evicted_k;
  unsigned char* evicted_v;
  float* evicted_scores;
  int32_t* evicted_positions;
  int32_t* evicted_count;
};

__global__ void CascadeInsertKernel(const InsertParams p) {
  const int32_t h = blockIdx.x * blockDim.x + threadIdx.x;
  if (h >= p.num_kv_heads) return;
  const int32_t total = p.num_sinks + p.num_subcaches * p.subcache_slots;
  internal::CascadeHead head;
  head.num_sinks = p.num_sinks;
  head.num_subcaches = p.num_subcaches;
  head.subcache_slots = p.subcache_slots;
  head.k = p.k + h * p.row_bytes;
  head.v = p.v + h * p.row_bytes;
  head.slot_stride = p.num_kv_heads * p.row_bytes;
  head.row_bytes = p.row_bytes;
  head.scores = p.scores + static_cast<int64_t>(h) * total;
  head.positions = p.positions + static_cast<int64_t>(h) * total;
  head.ring_start = p.ring_start + h * p.num_subcaches;
  head.ring_count = p.ring_count + h * p.num_subcaches;
  const int64_t n = p.num_tokens;
  int32_t evicted = 0;
  for (int64_t j = 0; j < n; ++j) {
    internal::CascadeIncoming in;
    in.k = p.in_k + (j * p.num_kv_heads + h) * p.row_bytes;
    in.v = p.in_v + (j * p.num_kv_heads + h) * p.row_bytes;
    in.score = p.in_scores[h * n + j];
    in.position = p.in_positions[j];
    const int64_t row = h * n + evicted;
    internal::CascadeEvictedRow out;
    out.k = p.evicted_k != nullptr ? p.evicted_k + row * p.row_bytes : nullptr;
    out.v = p.evicted_v != nullptr ? p.evicted_v + row * p.row_bytes : nullptr;
    out.score = p.evicted_scores != nullptr ? p.evicted_scores + row : nullptr;
    out.position = p.evicted_positions != nullptr ? p.evicted_positions + row : nullptr;
    if (internal::CascadePushToken(head, p.tokens_seen + j + 1, in, out)) ++evicted;
  }
  p.evicted_count[h] = evicted;
}

constexpr int kMaxSubcaches = 30;  // CascadeConfig::Validate

__global__ void CascadeGatherKernel(int32_t num_sinks, int32_t num_subcaches,
                                    int32_t subcache_slots, int32_t num_kv_heads,
                                    const int32_t* state_positions, const int32_t* ring_start,
                                    const int32_t* ring_count, int64_t seen,
                                    bool original_positions, int32_t per_head, int32_t* indptr,
                                    int32_t* indices, int32_t* positions) {
  __shared__ int32_t prefix[kMaxSubcaches + 1];  // entries before sub-cache C-1-i's block, i = 0..C
  const int32_t h = blockIdx.x, c = num_subcaches;
  const int32_t total = num_sinks + c * subcache_slots;
  const int32_t sinks = seen < num_sinks ? static_cast<int32_t>(seen) : num_sinks;
  if (threadIdx.x == 0) {
    prefix[0] = sinks;
    for (int32_t idx = 0; idx < c; ++idx)
      prefix[idx + 1] = prefix[idx] + ring_count[h * c + (c - 1 - idx)];
  }
  if (blockIdx.x == 0) {
    for (int32_t i = threadIdx.x; i <= num_kv_heads; i += blockDim.x) indptr[i] = i * per_head;
  }
  __syncthreads();
  const int32_t n = min(prefix[c], per_head);
  const int64_t base = static_cast<int64_t>(h) * per_head;
  for (int32_t e = threadIdx.x; e < n; e += blockDim.x) {
    int32_t slot = e;
    if (e >= sinks) {
      int32_t idx = 0;
      while (e >= prefix[idx + 1]) ++idx;
      const int32_t i = c - 1 - idx;
      slot = num_sinks + i * subcache_slots +
             (ring_start[h * c + i] + (e - prefix[idx])) % subcache_slots;
    }
    indices[base + e] = slot;
    positions[base + e] =
        original_positions ? state_positions[static_cast<int64_t>(h) * total + slot] : e;
  }
}

}  // namespace

absl::Status CascadeInsert(const ExecContext& ctx, const CascadeInsertArgs& a) {
  if (a.num_tokens == 0) {
    // Nothing leaves; the counts (if given) still say so.
    const CascadeState& s = *a.state;
    if (a.evicted_count == nullptr) return absl::OkStatus();
    if (cudaError_t err =
            cudaMemsetAsync(a.evicted_count, 0, sizeof(int32_t) * s.num_kv_heads, StreamOf(ctx));
        err != cudaSuccess) {
      return absl::InternalError(
          absl::StrCat("CascadeInsert: cudaMemsetAsync: ", cudaGetErrorString(err)));
    }
    return absl::OkStatus();
  }
  const CascadeState& s = *a.state;
  InsertParams p;
  p.num_sinks = s.config.num_sinks;
  p.num_subcaches = s.config.num_subcaches;
  p.subcache_slots = s.config.subcache_slots;
  p.num_kv_heads = s.num_kv_heads;
  p.row_bytes = static_cast<int64_t>(s.head_dim) * static_cast<int64_t>(DTypeSize(s.dtype));
  p.k = static_cast<unsigned char*>(s.k);
  p.v = static_cast<unsigned char*>(s.v);
  p.scores = s.scores;
  p.positions = s.positions;
  p.ring_start = s.ring_start;
  p.ring_count = s.ring_count;
  p.tokens_seen = s.tokens_seen;
  p.in_k = static_cast<const unsigned char*>(a.k);
  p.in_v = static_cast<const unsigned char*>(a.v);
  p.in_scores = a.scores;
  p.in_positions = a.positions;
  p.num_tokens = a.num_tokens;
  p.evicted_k = static_cast<unsigned char*>(a.evicted_k);
  p.evicted_v = static_cast<unsigned char*>(a.evicted_v);
  p.evicted_scores = a.evicted_scores;
  p.evicted_positions = a.evicted_positions;
  p.evicted_count = a.evicted_count;
  constexpr int kThreads = 32;
  CascadeInsertKernel<<<static_cast<unsigned>(CeilDiv(s.num_kv_heads, kThreads)), kThreads, 0,
                        StreamOf(ctx)>>>(p);
  return LaunchStatus("CascadeInsertKernel");
}

absl::Status CascadeGather(const ExecContext& ctx, const CascadeGatherArgs& a) {
  const CascadeState& s = *a.state;
  const int64_t per_head = CascadeStoredTokens(s.config, s.tokens_seen);
  if (per_head * s.num_kv_heads > 0x7fffffff) {
    return absl::UnimplementedError("CascadeGather (CUDA): more than 2^31 - 1 entries in all");
  }
  CascadeGatherKernel<<<static_cast<unsigned>(s.num_kv_heads), 256, 0, StreamOf(ctx)>>>(
      s.config.num_sinks, s.config.num_subcaches, s.config.subcache_slots, s.num_kv_heads,
      s.positions, s.ring_start, s.ring_count, s.tokens_seen, a.original_positions,
      static_cast<int32_t>(per_head), a.indptr, a.indices, a.positions);
  return LaunchStatus("CascadeGatherKernel");
}

}  // namespace kvc::kernels::cuda
