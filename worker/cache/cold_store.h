// Where a policy's full context Cf lives when the worker does not keep it:
// the cache service (worker/kv: the blocks a WriteThroughCache wrote). A
// policy that attends the whole context now and then (RefreshKV's full
// steps) rehydrates it from here and keeps locally only its hot set and the
// tokens the store does not hold yet.
#ifndef KVC_WORKER_CACHE_COLD_STORE_H_
#define KVC_WORKER_CACHE_COLD_STORE_H_

#include <cstdint>
#include <span>

#include "absl/status/status.h"

namespace kvc::cache {

// Not thread-safe towards one policy; the policy calls it from its Attend.
class ColdKvStore {
 public:
  virtual ~ColdKvStore() = default;
  // Tokens [0, stored_tokens(layer)) of `layer` can be fetched: the store
  // acknowledged them. Non-decreasing.
  virtual int64_t stored_tokens(int32_t layer) const = 0;
  // Writes tokens [0, n) of `layer` as fp32 rows ([n][Hkv][D] each, keys
  // before RoPE) into k and v. REQUIRES: n <= stored_tokens(layer). An error
  // (the store unreachable, a block lost) fails the step that needed them.
  virtual absl::Status Fetch(int32_t layer, int64_t n, float* k, float* v) = 0;
  // A hint: Fetch(layer, n, ...) is likely to come soon (the next layer of
  // a refresh step), so its transfer may start now and overlap the caller's
  // compute. REQUIRES: n <= stored_tokens(layer). Default: nothing.
  virtual void Prefetch(int32_t layer, int64_t n) {
    (void)layer;
    (void)n;
  }
  // The store's unit: tokens [b * block_tokens(), (b + 1) * block_tokens())
  // are block b. stored_tokens() is a multiple of it.
  virtual int32_t block_tokens() const = 0;
  // Writes the rows of blocks `blocks` of `layer` (each below
  // stored_tokens(layer) / block_tokens()), one after the other in the
  // order given, into k and v ([blocks.size() * block_tokens()][Hkv][D]
  // each). Errors as Fetch.
  virtual absl::Status FetchBlocks(int32_t layer, std::span<const int64_t> blocks, float* k, float* v) = 0;
};

}  // namespace kvc::cache

#endif  // KVC_WORKER_CACHE_COLD_STORE_H_
