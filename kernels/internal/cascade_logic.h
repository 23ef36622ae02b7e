// The cascading cache's insertion and gather for one KV head, written once
// over raw pointers so every optimised path produces the same slot contents:
// the CPU path runs it per head on a thread, the CUDA path one thread per
// head. No STL, no allocation; host and device (KVC_HOST_DEVICE).
//
// This implements ALGORITHMS.md §1 exactly as kernels/ref/cascade.cc does,
// but reorganised so that nothing needs a temporary token: the walk over the
// sub-caches is a chain of "accepting and full" sub-caches 0..j-1, each
// passing its oldest entry on to the next, ending at sub-cache j (or leaving
// the cache when j == C). The end of the chain is resolved first, then the
// chain is shifted from its deep end back to sub-cache 0, so each slot is
// read before it is overwritten.
#ifndef KVC_KERNELS_INTERNAL_CASCADE_LOGIC_H_
#define KVC_KERNELS_INTERNAL_CASCADE_LOGIC_H_

#include <cstdint>
#include <cstring>

#include "kernels/dtype.h"

namespace kvc::kernels::internal {

// One KV head of a CascadeState. Slot s's key row starts at
// k + s * slot_stride bytes (the state is [total_slots][Hkv][D], so
// slot_stride = Hkv * D * element size and k already points at this head).
struct CascadeHead {
  int32_t num_sinks = 0;       // S
  int32_t num_subcaches = 0;   // C
  int32_t subcache_slots = 0;  // w
  unsigned char* k = nullptr;
  unsigned char* v = nullptr;
  int64_t slot_stride = 0;        // bytes
  int64_t row_bytes = 0;          // D * element size
  float* scores = nullptr;        // [total_slots] of this head
  int32_t* positions = nullptr;   // [total_slots] of this head
  int32_t* ring_start = nullptr;  // [C] of this head
  int32_t* ring_count = nullptr;  // [C] of this head
};

// The token being pushed: its K and V rows (row_bytes each), its score and
// original position.
struct CascadeIncoming {
  const unsigned char* k = nullptr;
  const unsigned char* v = nullptr;
  float score = 0.0f;
  int32_t position = 0;
};

// Where the token that leaves (if any) is written; each pointer may be null
// (that field is not reported).
struct CascadeEvictedRow {
  unsigned char* k = nullptr;
  unsigned char* v = nullptr;
  float* score = nullptr;
  int32_t* position = nullptr;
};

// Whether sub-cache i accepts the t-th token (1-based, t > S): always during
// the eager fill (t - 1 <= W + S), then iff (t - 1 - S) mod 2^i == 0.
KVC_HOST_DEVICE bool CascadeAccepts(int64_t t, int32_t i, int32_t num_sinks, int64_t window) {
  if (t - 1 <= window + num_sinks) return true;
  const int64_t mask = (int64_t{1} << i) - 1;
  return ((t - 1 - num_sinks) & mask) == 0;
}

namespace cascade_detail {

// Slot id (in 0..total_slots-1) of ring entry `age` (0 = oldest) of sub-cache i.
KVC_HOST_DEVICE int32_t RingSlot(const CascadeHead& head, int32_t i, int32_t age) {
  const int32_t w = head.subcache_slots;
  return head.num_sinks + i * w + (head.ring_start[i] + age) % w;
}

// Copies a token into slot `dst`: from slot `src`, or the incoming token when src < 0.
KVC_HOST_DEVICE void MoveToSlot(const CascadeHead& head, int32_t dst, int32_t src,
                                const CascadeIncoming& in) {
  unsigned char* dk = head.k + dst * head.slot_stride;
  unsigned char* dv = head.v + dst * head.slot_stride;
  if (src < 0) {
    memcpy(dk, in.k, head.row_bytes);
    memcpy(dv, in.v, head.row_bytes);
    head.scores[dst] = in.score;
    head.positions[dst] = in.position;
  } else {
    memcpy(dk, head.k + src * head.slot_stride, head.row_bytes);
    memcpy(dv, head.v + src * head.slot_stride, head.row_bytes);
    head.scores[dst] = head.scores[src];
    head.positions[dst] = head.positions[src];
  }
}

// Reports the token in slot `src` (or the incoming one when src < 0) as leaving.
KVC_HOST_DEVICE void Evict(const CascadeHead& head, int32_t src, const CascadeIncoming& in,
                           const CascadeEvictedRow& out) {
  const unsigned char* sk = src < 0 ? in.k : head.k + src * head.slot_stride;
  const unsigned char* sv = src < 0 ? in.v : head.v + src * head.slot_stride;
  if (out.k != nullptr) memcpy(out.k, sk, head.row_bytes);
  if (out.v != nullptr) memcpy(out.v, sv, head.row_bytes);
  if (out.score != nullptr) *out.score = src < 0 ? in.score : head.scores[src];
  if (out.position != nullptr) *out.position = src < 0 ? in.position : head.positions[src];
}

}  // namespace cascade_detail

// Pushes the t-th token (1-based) into one head. Returns true when a token
// left the head (written to `out`): the incoming one dropped, a slot
// overwritten, or the entry carried out of the last sub-cache.
// REQUIRES: t == (tokens already pushed) + 1; the ring metadata is consistent.
KVC_HOST_DEVICE bool CascadePushToken(const CascadeHead& head, int64_t t, const CascadeIncoming& in,
                                      const CascadeEvictedRow& out) {
  using cascade_detail::Evict;
  using cascade_detail::MoveToSlot;
  using cascade_detail::RingSlot;
  const int32_t S = head.num_sinks, C = head.num_subcaches, w = head.subcache_slots;
  const int64_t window = static_cast<int64_t>(C) * w;
  if (t <= S) {
    MoveToSlot(head, static_cast<int32_t>(t - 1), -1, in);
    return false;
  }
  // Sub-caches 0..j-1 accept and are full: each takes the token from the
  // one before it and passes its oldest on.
  int32_t j = 0;
  while (j < C && CascadeAccepts(t, j, S, window) && head.ring_count[j] == w) ++j;
  // The token arriving at sub-cache j (or leaving when j == C).
  const int32_t arriving = j == 0 ? -1 : RingSlot(head, j - 1, 0);
  bool left = true;
  if (j == C) {
    Evict(head, arriving, in, out);
  } else if (CascadeAccepts(t, j, S, window) || head.ring_count[j] == 0) {
    // Accepting and not full, or not accepting and empty: append.
    MoveToSlot(head, RingSlot(head, j, head.ring_count[j]), arriving, in);
    ++head.ring_count[j];
    left = false;
  } else {
    // Not accepting, non-empty: the arriving token replaces the newest entry
    // if its score is at least as high; otherwise it is dropped.
    const int32_t newest = RingSlot(head, j, head.ring_count[j] - 1);
    const float arriving_score = arriving < 0 ? in.score : head.scores[arriving];
    if (arriving_score >= head.scores[newest]) {
      Evict(head, newest, in, out);
      MoveToSlot(head, newest, arriving, in);
    } else {
      Evict(head, arriving, in, out);
    }
  }
  // Shift the chain: sub-cache i's oldest slot takes the token from i-1 (the
  // incoming one for i = 0) and becomes its newest.
  for (int32_t i = j - 1; i >= 0; --i) {
    const int32_t src = i == 0 ? -1 : RingSlot(head, i - 1, 0);
    MoveToSlot(head, RingSlot(head, i, 0), src, in);
    head.ring_start[i] = (head.ring_start[i] + 1) % w;
  }
  return left;
}

// Writes one head's attention list in age order (sinks, then sub-caches
// C-1 down to 0, each ring oldest first): slot ids to `indices` and, to
// `positions`, 0..n-1 (cache-relative) or the stored original positions. Returns n = min(seen, S) +
// stored entries.
KVC_HOST_DEVICE int32_t CascadeGatherHead(const CascadeHead& head, int64_t seen,
                                          bool original_positions, int32_t* indices,
                                          int32_t* positions) {
  const int32_t sinks = seen < head.num_sinks ? static_cast<int32_t>(seen) : head.num_sinks;
  int32_t n = 0;
  for (int32_t s = 0; s < sinks; ++s, ++n) {
    indices[n] = s;
    positions[n] = original_positions ? head.positions[s] : n;
  }
  for (int32_t i = head.num_subcaches - 1; i >= 0; --i) {
    for (int32_t age = 0; age < head.ring_count[i]; ++age, ++n) {
      const int32_t slot = cascade_detail::RingSlot(head, i, age);
      indices[n] = slot;
      positions[n] = original_positions ? head.positions[slot] : n;
    }
  }
  return n;
}

}  // namespace kvc::kernels::internal

#endif  // KVC_KERNELS_INTERNAL_CASCADE_LOGIC_H_
