// The cascading KV cache (kernel 6): sinks plus C ring-buffer sub-caches that
// accept exponentially fewer tokens the older they are (ALGORITHMS.md §1).
//
// Storage of one (layer, sequence): total_slots() slots per KV head, laid out
// as a KvPool [total_slots][Hkv][D] (slot 0..S-1 the sinks, then sub-cache i
// at slots S + i*w .. S + (i+1)*w - 1 as a ring). Which token a slot holds
// differs per head (scores differ); how many are stored and where each ring
// starts is the same for every head, because whether a sub-cache accepts
// depends only on the token count.
#ifndef KVC_KERNELS_CASCADE_H_
#define KVC_KERNELS_CASCADE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/types.h"

namespace kvc::kernels {

struct CascadeConfig {
  int32_t num_sinks = 64;      // S: the first S tokens, never evicted
  int32_t num_subcaches = 4;   // C, 1..30
  int32_t subcache_slots = 0;  // w = W / C slots per sub-cache, >= 1
  int32_t total_slots() const { return num_sinks + num_subcaches * subcache_slots; }
  int64_t window() const { return static_cast<int64_t>(num_subcaches) * subcache_slots; }  // W
  absl::Status Validate() const;
};

// Pointers are device pointers for the CUDA backend. tokens_seen is host
// state: CascadeInsert advances it after the insertion has been issued.
struct CascadeState {
  CascadeConfig config;
  DType dtype = DType::kF32;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  void* k = nullptr;            // [total_slots][Hkv][D], pre-RoPE
  void* v = nullptr;            // [total_slots][Hkv][D]
  float* scores = nullptr;      // [Hkv][total_slots]
  int32_t* positions = nullptr; // [Hkv][total_slots], original token positions
  int32_t* ring_start = nullptr;  // [Hkv][C], slot offset (0..w-1) of each ring's oldest entry
  int32_t* ring_count = nullptr;  // [Hkv][C], entries stored
  int64_t tokens_seen = 0;      // t of the last pushed token (1-based count)

  KvPool AsPool() const {
    return KvPool::Contiguous(k, v, dtype, config.total_slots(), num_kv_heads, head_dim);
  }
};

// Pushes n tokens, one at a time in order, exactly as ALGORITHMS.md §1
// specifies, independently for every KV head. Each incoming token makes at
// most one token leave a head (the incoming one dropped, a slot overwritten,
// or one carried out of the last sub-cache); those are reported per head in
// the order they left, so LESS can fold them.
// REQUIRES: the state was zero-initialised (ring_start, ring_count, scores)
// before its first insert.
struct CascadeInsertArgs {
  CascadeState* state = nullptr;
  const void* k = nullptr;            // [n][Hkv][D], state dtype, pre-RoPE
  const void* v = nullptr;            // [n][Hkv][D]
  const float* scores = nullptr;      // [Hkv][n]: each new token's score after its chunk
  const int32_t* positions = nullptr; // [n] original positions
  int64_t num_tokens = 0;
  // Tokens that left the cache, per head, in order. Optional except count.
  void* evicted_k = nullptr;             // [Hkv][n][D]
  void* evicted_v = nullptr;             // [Hkv][n][D]
  float* evicted_scores = nullptr;       // [Hkv][n]
  int32_t* evicted_positions = nullptr;  // [Hkv][n]
  int32_t* evicted_count = nullptr;      // [Hkv]
};
absl::Status CascadeInsert(const ExecContext& ctx, const CascadeInsertArgs& args);

// The attention view of the cache in age order: sinks, then sub-caches from
// the oldest (C-1) to the newest (0), each ring oldest first. Writes Hkv
// per-head lists (per_kv_head gather) of n = min(seen, S) + stored entries:
// indptr [Hkv + 1], indices [Hkv][n] (slots of state.AsPool()) and positions
// [Hkv][n]: cache-relative 0..n-1 (original_positions = false), or each
// token's original position. Queries of the next chunk sit at positions
// n + i in the cache-relative scheme.
struct CascadeGatherArgs {
  const CascadeState* state = nullptr;
  bool original_positions = false;
  int32_t* indptr = nullptr;     // [Hkv + 1]
  int32_t* indices = nullptr;    // [Hkv * total_slots] capacity
  int32_t* positions = nullptr;  // [Hkv * total_slots] capacity
};
absl::Status CascadeGather(const ExecContext& ctx, const CascadeGatherArgs& args);
// Entries per head CascadeGather will write for a state that has seen `seen` tokens.
int64_t CascadeStoredTokens(const CascadeConfig& config, int64_t seen);

}  // namespace kvc::kernels

#endif  // KVC_KERNELS_CASCADE_H_
