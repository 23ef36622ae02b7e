#include "tests/test_blocks.h"

#include <cstdlib>
#include <iostream>

#include "common/hash.h"

namespace kvc::testing {

BlockKey MakeKey(const BlockSpec& spec) {
  BlockKey k;
  k.tenant = spec.tenant;
  k.model = spec.model;
  k.layer = spec.layer;
  const int32_t tokens[2] = {static_cast<int32_t>(spec.seed), static_cast<int32_t>(spec.seed >> 32)};
  k.hash = ChainHash(Hash128{}, tokens);
  return k;
}

kvcache::v1::Block MakeBlockProto(const BlockSpec& spec) {
  kvcache::v1::Block b;
  MakeKey(spec).ToProto(b.mutable_key());
  b.set_dtype(spec.dtype);
  b.set_block_tokens(spec.block_tokens);
  b.set_num_kv_heads(spec.num_kv_heads);
  b.set_head_dim(spec.head_dim);
  for (uint32_t i = 0; i < spec.block_tokens; ++i) {
    b.add_positions(static_cast<int32_t>(spec.seed * spec.block_tokens + i));
  }
  const size_t n = size_t{spec.block_tokens} * spec.num_kv_heads * spec.head_dim *
                   DTypeBytes(spec.dtype);
  std::string k(n, '\0'), v(n, '\0');
  uint64_t x = spec.seed * 0x9e3779b97f4a7c15ULL + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    k[i] = static_cast<char>(x);
    v[i] = static_cast<char>(x >> 8);
  }
  b.set_checksum(BlockChecksum(k, v));
  b.set_k(std::move(k));
  b.set_v(std::move(v));
  return b;
}

BlockPtr MakeBlock(const BlockSpec& spec) {
  auto b = CachedBlock::FromProto(MakeBlockProto(spec), Limits{});
  if (!b.ok()) {
    std::cerr << "MakeBlock: " << b.status() << "\n";
    std::abort();
  }
  return *b;
}

BlockSpec SpecOfSize(uint64_t kv_bytes, uint64_t seed, std::string tenant) {
  BlockSpec s;
  s.tenant = std::move(tenant);
  s.seed = seed;
  s.num_kv_heads = 8;
  s.head_dim = 128;
  s.dtype = kvcache::v1::DTYPE_FP16;
  const uint64_t per_token = 2ull * 8 * 128 * 2;  // k and v
  s.block_tokens = static_cast<uint32_t>(std::max<uint64_t>(1, kv_bytes / per_token));
  return s;
}

}  // namespace kvc::testing
