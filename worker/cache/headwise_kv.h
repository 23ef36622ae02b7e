// The resident KV of one layer when every KV head keeps its own tokens (H2O,
// SnapKV). Every head keeps the same number of tokens, size(), so the slots
// stay compact per head: slot j of head h holds head h's j-th kept token in
// order of original position ([slots][Hkv][D] as kernels::KvPool expects;
// a slot mixes the tokens of different heads once the heads differ).
// Eviction compacts each head's rows in place (LayerKv::MoveHead), so there
// are no per-head slot lists or free lists: the gather list is 0..size()-1
// for every head, and only the original positions differ per head.
//
// Not thread-safe.
#ifndef KVC_WORKER_CACHE_HEADWISE_KV_H_
#define KVC_WORKER_CACHE_HEADWISE_KV_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/types.h"
#include "worker/cache/layer_kv.h"

namespace kvc::cache {

class HeadwiseKv {
 public:
  HeadwiseKv(int32_t num_kv_heads, int32_t head_dim, kernels::DType dtype);

  int64_t size() const { return size_; }
  int32_t num_kv_heads() const { return num_kv_heads_; }
  // Original position of head `h`'s j-th kept token.
  int32_t position(int32_t h, int64_t j) const { return positions_[h][j]; }
  const std::vector<int32_t>& positions(int32_t h) const { return positions_[h]; }
  // Bytes of keys and values of one kept token (all heads).
  size_t slot_bytes() const { return kv_.slot_bytes(); }

  // Appends n tokens (k, v: [n][Hkv][D] fp32) at original positions
  // first_position + i to every head. ResourceExhausted when the memory
  // cannot be had.
  absl::Status Append(int64_t n, const float* k, const float* v, int64_t first_position);
  // Keeps of head h the entries keep[h * m + j], j < m (strictly ascending
  // indices into [0, size())), and drops the rest: size() becomes m.
  void Retain(const std::vector<int32_t>& keep, int64_t m);
  // Frees the slots beyond size() (after a one-off compression).
  void Shrink() { kv_.Shrink(size_); }

  // The pool over the kept slots.
  kernels::KvPool Pool() const { return kv_.Pool(size_); }
  // The gather over every kept token: keys at j (compact: one shared list)
  // or at their original positions (one list per head, unless every head
  // still keeps the same tokens). Views into this object, valid until the
  // next non-const call.
  kernels::KvGather Gather(bool compact);

 private:
  int32_t num_kv_heads_;
  LayerKv kv_;
  int64_t size_ = 0;
  bool uniform_ = true;                          // every head keeps the same tokens
  std::vector<std::vector<int32_t>> positions_;  // [Hkv][size]
  std::vector<int32_t> indptr_, indices_, gather_positions_;
};

}  // namespace kvc::cache

#endif  // KVC_WORKER_CACHE_HEADWISE_KV_H_
