// The cache-policy interface of the worker: one object per sequence that
// holds the sequence's resident KV for every layer and decides, per layer
// and chunk, what is kept and what each query attends (ALGORITHMS.md).
#ifndef KVC_WORKER_CACHE_POLICY_H_
#define KVC_WORKER_CACHE_POLICY_H_

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/mapped_buffer.h"
#include "kernels/types.h"
#include "worker/cache/cold_store.h"
#include "worker/model/transformer.h"

namespace kvc::cache {

// Tokens that left one layer's hot set in a policy's last Attend call, per
// KV head: what a LESS state folds (worker/cache/less.h). Head h's i-th
// evicted token is row h * stride + i of k / v / positions, i < count[h].
struct Evictions {
  int32_t layer = -1;
  kernels::DType dtype = kernels::DType::kF32;  // of k and v (the policy's KV dtype)
  std::vector<int32_t> count;      // [Hkv]
  std::vector<uint8_t> k, v;       // [Hkv][stride][D], keys before RoPE
  std::vector<int32_t> positions;  // [Hkv][stride], original positions
  int64_t stride = 0;              // rows reserved per head
};

// What a policy holds and what its attention cost, over all layers.
struct PolicyStats {
  int64_t tokens_seen = 0;         // tokens of the sequence so far
  int64_t resident_tokens = 0;     // tokens with KV in the hot set (per layer, the largest)
  size_t resident_bytes = 0;       // bytes of KV (and any policy state) held, all layers
  // (query token, key token) pairs attended, summed over layers: in the
  // last chunk or decode step (the Attend calls since the last layer-0
  // call), and since the start.
  int64_t attended_last_step = 0;
  int64_t attended_total = 0;
};

class CachePolicy : public model::AttentionCache {
 public:
  virtual std::string name() const = 0;
  // What computed this sequence's KV, for sharing it through the cache
  // service: blocks are shared only between sequences of the same origin
  // (worker/kv/block_codec.h ChainRoot). "dense" for exact attention; a
  // policy whose attention is not exact gives its name, parameters
  // included, since from the second layer on its KV differs.
  virtual std::string kv_origin() const { return name(); }
  virtual PolicyStats stats() const = 0;
  // Upper bound on the bytes one more token can add (all layers): what the
  // cache manager reserves before a chunk is attended.
  virtual size_t bytes_per_token() const = 0;
  // The most tokens the policy ever holds per layer (its budget), or
  // INT64_MAX when it keeps every token.
  virtual int64_t max_resident_tokens() const { return std::numeric_limits<int64_t>::max(); }
  // What the last Attend call evicted from the hot set of layer
  // last_evictions()->layer (valid until the next Attend), or nullptr for a
  // policy that never evicts (or does not report it).
  virtual const Evictions* last_evictions() const { return nullptr; }
  // Appends n tokens of layer `layer` whose keys and values are already
  // known (a prefix loaded from the cache service) at original positions
  // first_position, first_position + 1, ...: k, v [n][Hkv][D] fp32, keys
  // before RoPE. Afterwards the policy is as if those tokens had been run
  // through the model. UNIMPLEMENTED for a policy whose state depends on
  // the tokens' queries as well (attention scores): such a sequence must
  // run its prefix through the model.
  // Keeps the full context in `cold` (which must outlive the policy)
  // instead of host memory, fetching it back when a step needs it
  // (cold_store.h). UNIMPLEMENTED for a policy that never attends the whole
  // context (it keeps only its hot set anyway) or does not support it yet.
  virtual absl::Status SetColdStore(ColdKvStore* cold) {
    (void)cold;
    return absl::UnimplementedError(absl::StrCat("policy ", name(), " does not rehydrate from a cold store"));
  }
  // Whether Load is implemented.
  virtual bool loads_prefix() const { return false; }
  // Load of the sequence's first n tokens of `layer` (before anything else
  // of that layer) from fp32 rows in k and v ([n][Hkv][D]), which the policy
  // may take as its storage instead of copying them.
  virtual absl::Status AdoptPrefix(int32_t layer, int64_t n, MappedBuffer k, MappedBuffer v) {
    return Load(layer, 0, n, reinterpret_cast<const float*>(k.data()), reinterpret_cast<const float*>(v.data()));
  }
  virtual absl::Status Load(int32_t layer, int64_t first_position, int64_t n, const float* k, const float* v) {
    (void)layer, (void)first_position, (void)n, (void)k, (void)v;
    return absl::UnimplementedError(absl::StrCat("policy ", name(), " cannot load a prefix's KV without its queries"));
  }
};

}  // namespace kvc::cache

#endif  // KVC_WORKER_CACHE_POLICY_H_
