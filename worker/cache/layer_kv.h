// The resident KV of one layer of one sequence: a pool of slots, each the
// pre-RoPE key and the value of one token for every KV head, stored as
// kernels::KvPool expects ([slots][Hkv][D], page size 1). Policies decide
// which token sits in which slot; this class only stores and grows.
#ifndef KVC_WORKER_CACHE_LAYER_KV_H_
#define KVC_WORKER_CACHE_LAYER_KV_H_

#include <cstddef>
#include <cstdint>
#include "absl/status/status.h"
#include "common/mapped_buffer.h"
#include "kernels/types.h"

namespace kvc::cache {

class LayerKv {
 public:
  LayerKv(int32_t num_kv_heads, int32_t head_dim, kernels::DType dtype);

  // Makes room for `slots` slots (keeps the contents; grows geometrically).
  // ResourceExhausted when the memory cannot be had.
  absl::Status Reserve(int64_t slots);
  // Takes `k` and `v` (rows [slots][Hkv][D] of this pool's dtype, each at
  // least slots rows long) as the pool's storage, replacing what it held:
  // rows arrive where they will be attended, with no copy. INVALID_ARGUMENT
  // when a buffer is too short.
  absl::Status Adopt(MappedBuffer k, MappedBuffer v, int64_t slots);
  // Writes token rows k[i], v[i] ([Hkv][D] fp32 each) into slots[i].
  // REQUIRES: every slot < capacity().
  void Write(const int32_t* slots, int64_t n, const float* k, const float* v);
  // Writes n consecutive slots from `first`.
  void WriteRange(int64_t first, int64_t n, const float* k, const float* v);
  // Writes one KV head's rows (k, v: [D] fp32) into `slot`, leaving the
  // other heads' rows of that slot alone. REQUIRES: slot < capacity().
  void WriteHead(int64_t slot, int32_t head, const float* k, const float* v);
  // Copies n slots of `src` from src_slot on into this pool from dst_slot
  // on, as stored (no conversion). REQUIRES: same heads, head_dim and
  // dtype; the ranges within both capacities.
  void CopyRows(const LayerKv& src, int64_t src_slot, int64_t dst_slot, int64_t n);
  // Copies KV head `head` of src's slot into this pool's slot, as stored.
  void CopyHead(const LayerKv& src, int64_t src_slot, int64_t dst_slot, int32_t head);
  // Moves n slots from `from` to `to` (overlap allowed).
  void MoveRows(int64_t from, int64_t to, int64_t n);
  // Writable fp32 rows from `slot` on, for a producer that fills them in
  // place (a fetch from the cache service); nullptr unless the dtype is fp32.
  // REQUIRES: slot < capacity().
  float* MutableF32K(int64_t slot) { return MutableF32(k_, slot); }
  float* MutableF32V(int64_t slot) { return MutableF32(v_, slot); }
  // Copies slot `from` to slot `to` (keys and values).
  void Move(int64_t from, int64_t to);
  // Copies only KV head `head` of slot `from` to slot `to` (policies whose
  // heads keep different tokens). REQUIRES: both < capacity().
  void MoveHead(int64_t from, int64_t to, int32_t head);
  // Frees every slot from `slots` on (keeps the first `slots`); no-op when
  // capacity() <= slots.
  void Shrink(int64_t slots);
  // Drops the values of slots [first, first + n): their whole pages go back
  // to the kernel, the rest of their bytes are set to NaN (so reading a
  // dropped value is loud). Keys stay. Returns the bytes given back.
  // REQUIRES: first + n <= capacity().
  size_t DropValues(int64_t first, int64_t n);

  // The pool over every allocated slot, or over the first `slots` only (so
  // that per-slot arrays indexed [h * num_slots + slot] may be that short).
  kernels::KvPool Pool() const { return Pool(capacity_); }
  kernels::KvPool Pool(int64_t slots) const;
  int64_t capacity() const { return capacity_; }
  size_t slot_bytes() const { return row_elems_ * 2 * kernels::DTypeSize(dtype_); }
  kernels::DType dtype() const { return dtype_; }

 private:
  float* MutableF32(MappedBuffer& b, int64_t slot) {
    if (dtype_ != kernels::DType::kF32) return nullptr;
    return reinterpret_cast<float*>(b.data()) + static_cast<size_t>(slot) * row_elems_;
  }
  void Store(const float* src, uint8_t* dst) const;
  void StoreN(const float* src, size_t n, uint8_t* dst) const;

  int32_t num_kv_heads_, head_dim_;
  kernels::DType dtype_;
  size_t row_elems_;  // Hkv * D
  int64_t capacity_ = 0;
  // Anonymous mappings: growing moves page tables, not the rows
  // (common/mapped_buffer.h).
  MappedBuffer k_, v_;
};

}  // namespace kvc::cache

#endif  // KVC_WORKER_CACHE_LAYER_KV_H_
