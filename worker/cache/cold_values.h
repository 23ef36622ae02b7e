// The values of a policy's full context Cf kept in a ColdKvStore (the cache
// service) instead of host memory, for policies that pick from Cf token by
// token (TokenSelect, the combined policy): every key stays resident (the
// selection scores every candidate's key), while the values of blocks the
// store has acknowledged are dropped once no step needs them and fetched
// back, whole blocks at a time, when a selection or a full step does.
//
// Slot t of the layer's LayerKv stays token t; a dropped value reads as NaN
// or zero, so the policy must Ensure() every token whose value it reads.
// Not thread-safe; one per layer of one sequence.
#ifndef KVC_WORKER_CACHE_COLD_VALUES_H_
#define KVC_WORKER_CACHE_COLD_VALUES_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "worker/cache/cold_store.h"
#include "worker/cache/layer_kv.h"

namespace kvc::cache {

struct ColdValueStats {
  int64_t fetched_blocks = 0;  // blocks fetched back
  int64_t fetches = 0;         // calls that fetched something
  int64_t failed_fetches = 0;  // calls the store could not answer
  int64_t dropped_blocks = 0;  // blocks whose values are not resident now
  size_t dropped_bytes = 0;    // bytes given back to the kernel now
  ColdValueStats& operator+=(const ColdValueStats& o);
};

class ColdValues {
 public:
  ColdValues(ColdKvStore* store, int32_t layer) : store_(store), layer_(layer) {}

  // Whether token t's value is in memory.
  bool Resident(int64_t token) const {
    const int64_t b = token / store_->block_tokens();
    return b >= static_cast<int64_t>(dropped_.size()) || !dropped_[b];
  }
  // Makes the values of `tokens` (any order, each < kv.capacity())
  // resident: their dropped blocks are fetched in one batch. On an error
  // (the store unreachable) nothing is fetched and the error is returned:
  // the caller goes on without those tokens or fails its step.
  absl::Status Ensure(LayerKv& kv, std::span<const int32_t> tokens);
  // The same for every token (a full step): the store's leading blocks up
  // to the last dropped one come back in one Fetch, which takes what an
  // earlier Prefetch() started.
  absl::Status EnsureAll(LayerKv& kv);
  // Tells the store EnsureAll is likely soon (the layer before is taking a
  // full step), so the transfer overlaps that layer's compute.
  void Prefetch() const;
  // Drops the values of every acknowledged block among tokens [0, length)
  // that holds none of `keep` (ascending or not).
  void Trim(LayerKv& kv, int64_t length, std::span<const int32_t> keep);
  // Tokens up to the end of the last dropped block (0: none dropped).
  int64_t dropped_end() const { return dropped_end_ * store_->block_tokens(); }
  const ColdValueStats& stats() const { return stats_; }

 private:
  // Writes the fetched rows k_, v_ of `blocks` (in that order) into kv
  // and marks them resident.
  void Restore(LayerKv& kv, std::span<const int64_t> blocks);
  void Undrop(int64_t block);

  ColdKvStore* store_;
  int32_t layer_;
  std::vector<uint8_t> dropped_;  // [block]
  std::vector<uint32_t> given_;   // [block] bytes given back to the kernel
  int64_t dropped_end_ = 0;       // blocks: one past the last dropped
  std::vector<uint8_t> keep_;     // scratch [block]
  std::vector<int64_t> blocks_;   // scratch
  std::vector<float> k_, v_;      // fetched rows (scratch)
  ColdValueStats stats_;
};

}  // namespace kvc::cache

#endif  // KVC_WORKER_CACHE_COLD_VALUES_H_
