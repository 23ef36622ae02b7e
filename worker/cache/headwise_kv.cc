#include "worker/cache/headwise_kv.h"

#include <algorithm>
#include <numeric>

#include "common/status_macros.h"

namespace kvc::cache {

HeadwiseKv::HeadwiseKv(int32_t num_kv_heads, int32_t head_dim, kernels::DType dtype)
    : num_kv_heads_(num_kv_heads), kv_(num_kv_heads, head_dim, dtype), positions_(num_kv_heads) {}

absl::Status HeadwiseKv::Append(int64_t n, const float* k, const float* v, int64_t first_position) {
  KVC_RETURN_IF_ERROR(kv_.Reserve(size_ + n));
  kv_.WriteRange(size_, n, k, v);
  for (std::vector<int32_t>& p : positions_) {
    for (int64_t i = 0; i < n; ++i) p.push_back(static_cast<int32_t>(first_position + i));
  }
  size_ += n;
  return absl::OkStatus();
}

void HeadwiseKv::Retain(const std::vector<int32_t>& keep, int64_t m) {
  for (int32_t h = 0; h < num_kv_heads_; ++h) {
    const int32_t* row = keep.data() + h * m;
    std::vector<int32_t>& pos = positions_[h];
    // Ascending sources: slot `src >= j` is read before anything overwrites it.
    for (int64_t j = 0; j < m; ++j) {
      if (row[j] == j) continue;
      kv_.MoveHead(row[j], j, h);
      pos[j] = pos[row[j]];
    }
    pos.resize(m);
    if (uniform_ && h > 0 && !std::equal(row, row + m, keep.data())) uniform_ = false;
  }
  size_ = m;
}

kernels::KvGather HeadwiseKv::Gather(bool compact) {
  const bool shared = compact || uniform_;
  const int32_t lists = shared ? 1 : num_kv_heads_;
  indptr_.resize(lists + 1);
  indices_.resize(static_cast<size_t>(lists) * size_);
  gather_positions_.resize(indices_.size());
  for (int32_t l = 0; l <= lists; ++l) indptr_[l] = static_cast<int32_t>(l * size_);
  for (int32_t l = 0; l < lists; ++l) {
    int32_t* idx = indices_.data() + l * size_;
    std::iota(idx, idx + size_, 0);
    int32_t* pos = gather_positions_.data() + l * size_;
    if (compact) {
      std::iota(pos, pos + size_, 0);
    } else {
      std::copy(positions_[l].begin(), positions_[l].end(), pos);
    }
  }
  return kernels::KvGather{indptr_.data(), indices_.data(), gather_positions_.data(), !shared};
}

}  // namespace kvc::cache
