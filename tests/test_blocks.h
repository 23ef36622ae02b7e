// Test helpers: deterministic, valid blocks of any shape.
#ifndef KVC_TESTS_TEST_BLOCKS_H_
#define KVC_TESTS_TEST_BLOCKS_H_

#include <cstdint>
#include <string>

#include "cachesvc/block_key.h"
#include "cachesvc/cached_block.h"
#include "kvcache/v1/cache.pb.h"

namespace kvc::testing {

struct BlockSpec {
  std::string tenant = "t1";
  std::string model = "m";
  uint32_t layer = 0;
  uint64_t seed = 1;  // selects the hash and the payload bytes
  uint32_t block_tokens = 16;
  uint32_t num_kv_heads = 2;
  uint32_t head_dim = 8;
  kvcache::v1::DType dtype = kvcache::v1::DTYPE_FP16;
};

// A valid block (correct shape and checksum) whose key hash and payload are
// derived from spec.seed, so two calls with one spec give equal blocks.
kvcache::v1::Block MakeBlockProto(const BlockSpec& spec);
BlockKey MakeKey(const BlockSpec& spec);
// MakeBlockProto + CachedBlock::FromProto with default limits; aborts on error.
BlockPtr MakeBlock(const BlockSpec& spec);

// A block of about `kv_bytes` bytes of k+v (fp16, 8 heads of dim 128).
BlockSpec SpecOfSize(uint64_t kv_bytes, uint64_t seed, std::string tenant = "t1");

}  // namespace kvc::testing

#endif  // KVC_TESTS_TEST_BLOCKS_H_
