#include "worker/cache/layer_kv.h"

#include <unistd.h>

#include <algorithm>
#include <utility>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/dtype.h"

namespace kvc::cache {

LayerKv::LayerKv(int32_t num_kv_heads, int32_t head_dim, kernels::DType dtype)
    : num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      dtype_(dtype),
      row_elems_(static_cast<size_t>(num_kv_heads) * head_dim) {}

absl::Status LayerKv::Reserve(int64_t slots) {
  if (slots <= capacity_) return absl::OkStatus();
  const int64_t grown = std::max<int64_t>(slots, capacity_ + capacity_ / 2);
  const size_t bytes = static_cast<size_t>(grown) * row_elems_ * kernels::DTypeSize(dtype_);
  absl::Status k = k_.Resize(bytes);
  absl::Status v = k.ok() ? v_.Resize(bytes) : k;
  if (!v.ok()) {
    // Keep the two the same length (a shrink back cannot fail).
    k_.Resize(static_cast<size_t>(capacity_) * row_elems_ * kernels::DTypeSize(dtype_)).IgnoreError();
    return absl::ResourceExhaustedError(
        absl::StrCat("KV of ", grown, " slots (", 2 * bytes, " bytes) cannot be allocated: ", v.message()));
  }
  capacity_ = grown;
  return absl::OkStatus();
}

void LayerKv::StoreN(const float* src, size_t n, uint8_t* dst) const {
  switch (dtype_) {
    case kernels::DType::kF32:
      std::memcpy(dst, src, n * sizeof(float));
      break;
    case kernels::DType::kBF16: {
      auto* d = reinterpret_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = kernels::FloatToBF16(src[i]);
      break;
    }
    case kernels::DType::kF16: {
      auto* d = reinterpret_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = kernels::FloatToF16(src[i]);
      break;
    }
  }
}

absl::Status LayerKv::Adopt(MappedBuffer k, MappedBuffer v, int64_t slots) {
  const size_t row_bytes = row_elems_ * kernels::DTypeSize(dtype_);
  if (slots < 0 || k.size() < static_cast<size_t>(slots) * row_bytes || v.size() < static_cast<size_t>(slots) * row_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("KV: buffers of ", k.size(), " and ", v.size(),
                                                   " bytes cannot hold ", slots, " slots"));
  }
  const int64_t capacity = static_cast<int64_t>(std::min(k.size(), v.size()) / row_bytes);
  k_ = std::move(k);
  v_ = std::move(v);
  capacity_ = capacity;
  return absl::OkStatus();
}

void LayerKv::Store(const float* src, uint8_t* dst) const { StoreN(src, row_elems_, dst); }

void LayerKv::Write(const int32_t* slots, int64_t n, const float* k, const float* v) {
  const size_t row_bytes = row_elems_ * kernels::DTypeSize(dtype_);
  for (int64_t i = 0; i < n; ++i) {
    Store(k + i * row_elems_, k_.data() + slots[i] * row_bytes);
    Store(v + i * row_elems_, v_.data() + slots[i] * row_bytes);
  }
}

void LayerKv::WriteRange(int64_t first, int64_t n, const float* k, const float* v) {
  const size_t row_bytes = row_elems_ * kernels::DTypeSize(dtype_);
  for (int64_t i = 0; i < n; ++i) {
    Store(k + i * row_elems_, k_.data() + (first + i) * row_bytes);
    Store(v + i * row_elems_, v_.data() + (first + i) * row_bytes);
  }
}

void LayerKv::WriteHead(int64_t slot, int32_t head, const float* k, const float* v) {
  const size_t elem = kernels::DTypeSize(dtype_);
  const size_t at = static_cast<size_t>(slot) * row_elems_ * elem + static_cast<size_t>(head) * head_dim_ * elem;
  StoreN(k, head_dim_, k_.data() + at);
  StoreN(v, head_dim_, v_.data() + at);
}

void LayerKv::CopyRows(const LayerKv& src, int64_t src_slot, int64_t dst_slot, int64_t n) {
  const size_t row_bytes = row_elems_ * kernels::DTypeSize(dtype_);
  std::memcpy(k_.data() + dst_slot * row_bytes, src.k_.data() + src_slot * row_bytes, n * row_bytes);
  std::memcpy(v_.data() + dst_slot * row_bytes, src.v_.data() + src_slot * row_bytes, n * row_bytes);
}

void LayerKv::CopyHead(const LayerKv& src, int64_t src_slot, int64_t dst_slot, int32_t head) {
  const size_t elem = kernels::DTypeSize(dtype_);
  const size_t row_bytes = row_elems_ * elem, head_bytes = static_cast<size_t>(head_dim_) * elem;
  const size_t from = src_slot * row_bytes + head * head_bytes, to = dst_slot * row_bytes + head * head_bytes;
  std::memcpy(k_.data() + to, src.k_.data() + from, head_bytes);
  std::memcpy(v_.data() + to, src.v_.data() + from, head_bytes);
}

void LayerKv::MoveRows(int64_t from, int64_t to, int64_t n) {
  const size_t row_bytes = row_elems_ * kernels::DTypeSize(dtype_);
  std::memmove(k_.data() + to * row_bytes, k_.data() + from * row_bytes, n * row_bytes);
  std::memmove(v_.data() + to * row_bytes, v_.data() + from * row_bytes, n * row_bytes);
}

void LayerKv::Move(int64_t from, int64_t to) {
  const size_t row_bytes = row_elems_ * kernels::DTypeSize(dtype_);
  std::memmove(k_.data() + to * row_bytes, k_.data() + from * row_bytes, row_bytes);
  std::memmove(v_.data() + to * row_bytes, v_.data() + from * row_bytes, row_bytes);
}

void LayerKv::MoveHead(int64_t from, int64_t to, int32_t head) {
  const size_t elem = kernels::DTypeSize(dtype_);
  const size_t row_bytes = row_elems_ * elem, head_bytes = static_cast<size_t>(head_dim_) * elem;
  const size_t src = from * row_bytes + head * head_bytes, dst = to * row_bytes + head * head_bytes;
  std::memmove(k_.data() + dst, k_.data() + src, head_bytes);
  std::memmove(v_.data() + dst, v_.data() + src, head_bytes);
}

void LayerKv::Shrink(int64_t slots) {
  if (slots >= capacity_) return;
  const size_t bytes = static_cast<size_t>(slots) * row_elems_ * kernels::DTypeSize(dtype_);
  // Shrinking a mapping only unmaps its tail; it cannot fail.
  k_.Resize(bytes).IgnoreError();
  v_.Resize(bytes).IgnoreError();
  capacity_ = slots;
}

size_t LayerKv::DropValues(int64_t first, int64_t n) {
  if (n <= 0) return 0;
  const size_t elem = kernels::DTypeSize(dtype_), row_bytes = row_elems_ * elem;
  const size_t begin = static_cast<size_t>(first) * row_bytes, bytes = static_cast<size_t>(n) * row_bytes;
  const size_t given = v_.Discard(begin, bytes);
  // The bytes on pages kept (the range's ends): NaN in every dtype (all
  // exponent and top mantissa bits set, per element).
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t whole_begin = (begin + page - 1) / page * page;
  const size_t whole_end = given == 0 ? whole_begin : whole_begin + given;
  const auto poison = [&](size_t from, size_t to) {
    for (size_t at = from; at + elem <= to; at += elem) {
      if (elem == 4) {
        const uint32_t nan = 0x7fc00000u;
        std::memcpy(v_.data() + at, &nan, 4);
      } else {
        const uint16_t nan = dtype_ == kernels::DType::kBF16 ? 0x7fc0u : 0x7e00u;
        std::memcpy(v_.data() + at, &nan, 2);
      }
    }
  };
  if (given == 0) {
    poison(begin, begin + bytes);
  } else {
    poison(begin, whole_begin);
    poison(whole_end, begin + bytes);
  }
  return given;
}

kernels::KvPool LayerKv::Pool(int64_t slots) const {
  return kernels::KvPool::Contiguous(k_.data(), v_.data(), dtype_, slots, num_kv_heads_, head_dim_);
}

}  // namespace kvc::cache
