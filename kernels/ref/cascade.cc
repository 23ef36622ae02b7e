// The cascading KV cache, reference path: ALGORITHMS.md §1 read literally.
// Each token walks the sub-caches 0..C-1 carrying whole entries (key and
// value bytes, score, position) by value, one case per branch of the spec.
// Written independently of internal/cascade_logic.h (the optimised paths'
// shared code) so that the two check each other.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "kernels/ref/ref_kernels.h"

namespace kvc::kernels::ref {
namespace {

// Everything a slot holds.
struct Entry {
  std::vector<uint8_t> k, v;  // one row each, in the state's dtype
  float score = 0.0f;
  int32_t position = 0;
};

// The slots of one KV head of a CascadeState.
class HeadSlots {
 public:
  HeadSlots(const CascadeState& state, int32_t head)
      : state_(state),
        head_(head),
        row_bytes_(static_cast<size_t>(state.head_dim) * DTypeSize(state.dtype)) {}

  Entry Read(int32_t slot) const {
    Entry e;
    e.k.assign(KeyRow(slot), KeyRow(slot) + row_bytes_);
    e.v.assign(ValueRow(slot), ValueRow(slot) + row_bytes_);
    e.score = state_.scores[ScoreIndex(slot)];
    e.position = state_.positions[ScoreIndex(slot)];
    return e;
  }
  void Write(int32_t slot, const Entry& e) {
    std::memcpy(KeyRow(slot), e.k.data(), row_bytes_);
    std::memcpy(ValueRow(slot), e.v.data(), row_bytes_);
    state_.scores[ScoreIndex(slot)] = e.score;
    state_.positions[ScoreIndex(slot)] = e.position;
  }
  float Score(int32_t slot) const { return state_.scores[ScoreIndex(slot)]; }
  int32_t& RingStart(int32_t i) {
    return state_.ring_start[head_ * state_.config.num_subcaches + i];
  }
  int32_t& RingCount(int32_t i) {
    return state_.ring_count[head_ * state_.config.num_subcaches + i];
  }
  // Slot of the entry `age` places after the oldest of sub-cache i.
  int32_t RingSlot(int32_t i, int32_t age) {
    const int32_t w = state_.config.subcache_slots;
    return state_.config.num_sinks + i * w + (RingStart(i) + age) % w;
  }

 private:
  uint8_t* KeyRow(int32_t slot) const { return static_cast<uint8_t*>(state_.k) + RowOffset(slot); }
  uint8_t* ValueRow(int32_t slot) const {
    return static_cast<uint8_t*>(state_.v) + RowOffset(slot);
  }
  size_t RowOffset(int32_t slot) const {
    return (static_cast<size_t>(slot) * state_.num_kv_heads + head_) * row_bytes_;
  }
  size_t ScoreIndex(int32_t slot) const {
    return static_cast<size_t>(head_) * state_.config.total_slots() + slot;
  }

  const CascadeState& state_;
  const int32_t head_;
  const size_t row_bytes_;
};

// Pushes the t-th token (1-based) into one head; returns the token that left, if any.
std::optional<Entry> Push(HeadSlots& head, const CascadeConfig& config, int64_t t, Entry token) {
  const int32_t S = config.num_sinks, C = config.num_subcaches, w = config.subcache_slots;
  const int64_t W = config.window();
  // 1. The first S tokens fill the sinks.
  if (t <= S) {
    head.Write(static_cast<int32_t>(t - 1), token);
    return std::nullopt;
  }
  for (int32_t i = 0; i < C; ++i) {
    // 2. Eager fill while t - 1 <= W + S; 3. then every 2^i-th token.
    const bool accepting = t - 1 <= W + S || (t - 1 - S) % (int64_t{1} << i) == 0;
    const int32_t count = head.RingCount(i);
    if (accepting && count < w) {
      head.Write(head.RingSlot(i, count), token);
      ++head.RingCount(i);
      return std::nullopt;
    }
    if (accepting) {
      // Full: the token takes the oldest slot, the evicted entry moves on.
      const int32_t oldest = head.RingSlot(i, 0);
      Entry evicted = head.Read(oldest);
      head.Write(oldest, token);
      head.RingStart(i) = (head.RingStart(i) + 1) % w;
      token = std::move(evicted);
      continue;
    }
    if (count == 0) {
      head.Write(head.RingSlot(i, 0), token);
      ++head.RingCount(i);
      return std::nullopt;
    }
    // Not accepting, non-empty: overwrite the most recently added entry if
    // the incoming score is at least its score, else drop the incoming one.
    const int32_t newest = head.RingSlot(i, count - 1);
    if (token.score >= head.Score(newest)) {
      Entry overwritten = head.Read(newest);
      head.Write(newest, token);
      return overwritten;
    }
    return token;
  }
  // Carried out of the last sub-cache.
  return token;
}

}  // namespace

absl::Status CascadeInsert(const ExecContext& ctx, const CascadeInsertArgs& args) {
  CascadeState& state = *args.state;
  const int32_t hkv = state.num_kv_heads, dim = state.head_dim;
  const size_t elem = DTypeSize(state.dtype);
  const size_t row_bytes = static_cast<size_t>(dim) * elem;
  const int64_t n = args.num_tokens;
  // An empty chunk passes validation with any buffer null, evicted_count included.
  if (n == 0) {
    if (args.evicted_count != nullptr) std::fill_n(args.evicted_count, hkv, 0);
    return absl::OkStatus();
  }
  const auto* in_k = static_cast<const uint8_t*>(args.k);
  const auto* in_v = static_cast<const uint8_t*>(args.v);
  for (int32_t h = 0; h < hkv; ++h) {
    HeadSlots head(state, h);
    int32_t evicted = 0;
    for (int64_t j = 0; j < n; ++j) {
      Entry token;
      const size_t in_offset = (static_cast<size_t>(j) * hkv + h) * row_bytes;
      token.k.assign(in_k + in_offset, in_k + in_offset + row_bytes);
      token.v.assign(in_v + in_offset, in_v + in_offset + row_bytes);
      token.score = args.scores[h * n + j];
      token.position = args.positions[j];
      std::optional<Entry> left =
          Push(head, state.config, state.tokens_seen + j + 1, std::move(token));
      if (!left.has_value()) continue;
      const size_t row = static_cast<size_t>(h) * n + evicted;
      if (args.evicted_k != nullptr) {
        std::memcpy(static_cast<uint8_t*>(args.evicted_k) + row * row_bytes, left->k.data(),
                    row_bytes);
      }
      if (args.evicted_v != nullptr) {
        std::memcpy(static_cast<uint8_t*>(args.evicted_v) + row * row_bytes, left->v.data(),
                    row_bytes);
      }
      if (args.evicted_scores != nullptr) args.evicted_scores[row] = left->score;
      if (args.evicted_positions != nullptr) args.evicted_positions[row] = left->position;
      ++evicted;
    }
    args.evicted_count[h] = evicted;
  }
  return absl::OkStatus();
}

absl::Status CascadeGather(const ExecContext& ctx, const CascadeGatherArgs& args) {
  const CascadeState& state = *args.state;
  const CascadeConfig& config = state.config;
  const int64_t sinks = state.tokens_seen < config.num_sinks ? state.tokens_seen : config.num_sinks;
  int32_t n = 0;
  args.indptr[0] = 0;
  for (int32_t h = 0; h < state.num_kv_heads; ++h) {
    const int32_t* slot_positions = state.positions + static_cast<size_t>(h) * config.total_slots();
    auto emit = [&](int32_t slot) {
      args.indices[n] = slot;
      args.positions[n] = args.original_positions ? slot_positions[slot] : n - args.indptr[h];
      ++n;
    };
    for (int32_t s = 0; s < sinks; ++s) emit(s);
    // Oldest sub-cache first; each ring from its start.
    for (int32_t i = config.num_subcaches - 1; i >= 0; --i) {
      const int32_t start = state.ring_start[h * config.num_subcaches + i];
      const int32_t count = state.ring_count[h * config.num_subcaches + i];
      for (int32_t age = 0; age < count; ++age) {
        emit(config.num_sinks + i * config.subcache_slots + (start + age) % config.subcache_slots);
      }
    }
    args.indptr[h + 1] = n;
  }
  return absl::OkStatus();
}

}  // namespace kvc::kernels::ref
