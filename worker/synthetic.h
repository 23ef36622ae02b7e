// Synthetic KV blocks: a deterministic stand-in for a model's KV, for the
// command-line client, benchmarks and tests. A "sequence" is a token stream
// derived from a seed; its blocks are keyed by the real chained prefix hash
// of those tokens, and each payload is derived from (seed, layer, index), so
// a reader can regenerate and verify what it gets back.
#ifndef KVC_WORKER_SYNTHETIC_H_
#define KVC_WORKER_SYNTHETIC_H_

#include <cstdint>
#include <string>
#include <vector>

#include "cachesvc/block_key.h"
#include "kvcache/v1/cache.pb.h"

namespace kvc {

struct SyntheticSpec {
  std::string tenant = "default";
  std::string model = "synthetic";
  uint32_t layer = 0;
  uint64_t seq_seed = 1;
  uint32_t block_tokens = 16;
  uint32_t num_kv_heads = 8;
  uint32_t head_dim = 128;
  kvcache::v1::DType dtype = kvcache::v1::DTYPE_FP16;

  // Bytes of k plus v in one block.
  uint64_t BlockBytes() const;
};

// The chained hashes of blocks [0, n) of the sequence.
std::vector<Hash128> SyntheticChain(const SyntheticSpec& spec, uint32_t n);
// The keys of blocks [0, n) for spec.layer.
std::vector<BlockKey> SyntheticKeys(const SyntheticSpec& spec, uint32_t n);
// Block `index` with key `key` (from SyntheticKeys), payload and checksum set.
void SyntheticBlock(const SyntheticSpec& spec, uint32_t index, const BlockKey& key,
                    kvcache::v1::Block* out);

}  // namespace kvc

#endif  // KVC_WORKER_SYNTHETIC_H_
