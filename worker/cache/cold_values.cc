#include "worker/cache/cold_values.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace kvc::cache {

ColdValueStats& ColdValueStats::operator+=(const ColdValueStats& o) {
  fetched_blocks += o.fetched_blocks;
  fetches += o.fetches;
  failed_fetches += o.failed_fetches;
  dropped_blocks += o.dropped_blocks;
  dropped_bytes += o.dropped_bytes;
  return *this;
}

void ColdValues::Undrop(int64_t b) {
  dropped_[b] = 0;
  --stats_.dropped_blocks;
  stats_.dropped_bytes -= given_[b];
  given_[b] = 0;
}

void ColdValues::Restore(LayerKv& kv, std::span<const int64_t> blocks) {
  const int64_t bt = store_->block_tokens();
  const size_t rows = static_cast<size_t>(bt) * (kv.slot_bytes() / 2 / kernels::DTypeSize(kv.dtype()));
  for (size_t i = 0; i < blocks.size(); ++i) {
    const int64_t b = blocks[i];
    // Keys come back too; they are the same bits as the resident ones.
    kv.WriteRange(b * bt, bt, k_.data() + i * rows, v_.data() + i * rows);
    Undrop(b);
  }
  stats_.fetched_blocks += static_cast<int64_t>(blocks.size());
  while (dropped_end_ > 0 && !dropped_[dropped_end_ - 1]) --dropped_end_;
}

absl::Status ColdValues::Ensure(LayerKv& kv, std::span<const int32_t> tokens) {
  const int64_t bt = store_->block_tokens();
  blocks_.clear();
  for (const int32_t t : tokens) {
    const int64_t b = t / bt;
    if (b < dropped_end_ && dropped_[b]) blocks_.push_back(b);
  }
  if (blocks_.empty()) return absl::OkStatus();
  std::sort(blocks_.begin(), blocks_.end());
  blocks_.erase(std::unique(blocks_.begin(), blocks_.end()), blocks_.end());
  const size_t floats = blocks_.size() * bt * (kv.slot_bytes() / 2 / kernels::DTypeSize(kv.dtype()));
  k_.resize(floats);
  v_.resize(floats);
  ++stats_.fetches;
  if (absl::Status s = store_->FetchBlocks(layer_, blocks_, k_.data(), v_.data()); !s.ok()) {
    ++stats_.failed_fetches;
    return s;
  }
  Restore(kv, blocks_);
  return absl::OkStatus();
}

absl::Status ColdValues::EnsureAll(LayerKv& kv) {
  if (dropped_end_ == 0) return absl::OkStatus();
  const int64_t bt = store_->block_tokens(), n = dropped_end_ * bt;
  const size_t floats = static_cast<size_t>(n) * (kv.slot_bytes() / 2 / kernels::DTypeSize(kv.dtype()));
  k_.resize(floats);
  v_.resize(floats);
  ++stats_.fetches;
  if (absl::Status s = store_->Fetch(layer_, n, k_.data(), v_.data()); !s.ok()) {
    ++stats_.failed_fetches;
    return s;
  }
  // Rows of blocks that were resident came back too; only the dropped
  // ones are written (k_/v_ hold all blocks, so restore in place order).
  blocks_.clear();
  for (int64_t b = 0; b < dropped_end_; ++b) {
    if (dropped_[b]) blocks_.push_back(b);
  }
  const size_t rows = static_cast<size_t>(bt) * (kv.slot_bytes() / 2 / kernels::DTypeSize(kv.dtype()));
  for (const int64_t b : blocks_) {
    kv.WriteRange(b * bt, bt, k_.data() + b * rows, v_.data() + b * rows);
    Undrop(b);
  }
  stats_.fetched_blocks += static_cast<int64_t>(blocks_.size());
  dropped_end_ = 0;
  return absl::OkStatus();
}

void ColdValues::Prefetch() const {
  if (dropped_end_ > 0) store_->Prefetch(layer_, dropped_end_ * store_->block_tokens());
}

void ColdValues::Trim(LayerKv& kv, int64_t length, std::span<const int32_t> keep) {
  const int64_t bt = store_->block_tokens();
  const int64_t stored = std::min(store_->stored_tokens(layer_), length) / bt;
  if (stored <= 0) return;
  if (static_cast<int64_t>(dropped_.size()) < stored) {
    dropped_.resize(stored, 0);
    given_.resize(stored, 0);
  }
  keep_.assign(stored, 0);
  for (const int32_t t : keep) {
    if (t / bt < stored) keep_[t / bt] = 1;
  }
  for (int64_t b = 0; b < stored; ++b) {
    if (dropped_[b] || keep_[b]) continue;
    given_[b] = static_cast<uint32_t>(kv.DropValues(b * bt, bt));
    stats_.dropped_bytes += given_[b];
    dropped_[b] = 1;
    ++stats_.dropped_blocks;
    dropped_end_ = std::max(dropped_end_, b + 1);
  }
}

}  // namespace kvc::cache
