#include "worker/synthetic.h"

#include <cstring>

#include "common/hash.h"

namespace kvc {
namespace {

size_t ElemBytes(kvcache::v1::DType d) { return d == kvcache::v1::DTYPE_FP32 ? 4 : 2; }

uint64_t Mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

void Fill(uint64_t seed, std::string* out, size_t n) {
  out->resize(n);
  uint64_t x = Mix(seed) | 1;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(out->data() + i, &x, 8);
  }
  for (; i < n; ++i) (*out)[i] = static_cast<char>(Mix(x + i));
}

}  // namespace

uint64_t SyntheticSpec::BlockBytes() const {
  return 2ull * block_tokens * num_kv_heads * head_dim * ElemBytes(dtype);
}

std::vector<Hash128> SyntheticChain(const SyntheticSpec& spec, uint32_t n) {
  std::vector<Hash128> chain;
  chain.reserve(n);
  Hash128 parent;
  std::vector<int32_t> tokens(spec.block_tokens);
  for (uint32_t b = 0; b < n; ++b) {
    for (uint32_t i = 0; i < spec.block_tokens; ++i) {
      tokens[i] = static_cast<int32_t>(Mix(spec.seq_seed * 1'000'003 + uint64_t{b} * spec.block_tokens + i) % 32000);
    }
    parent = ChainHash(parent, tokens);
    chain.push_back(parent);
  }
  return chain;
}

std::vector<BlockKey> SyntheticKeys(const SyntheticSpec& spec, uint32_t n) {
  std::vector<BlockKey> keys;
  keys.reserve(n);
  for (const Hash128& h : SyntheticChain(spec, n)) {
    keys.push_back(BlockKey{spec.tenant, spec.model, spec.layer, h});
  }
  return keys;
}

void SyntheticBlock(const SyntheticSpec& spec, uint32_t index, const BlockKey& key, kvcache::v1::Block* out) {
  key.ToProto(out->mutable_key());
  out->set_dtype(spec.dtype);
  out->set_block_tokens(spec.block_tokens);
  out->set_num_kv_heads(spec.num_kv_heads);
  out->set_head_dim(spec.head_dim);
  out->clear_positions();
  for (uint32_t i = 0; i < spec.block_tokens; ++i) {
    out->add_positions(static_cast<int32_t>(uint64_t{index} * spec.block_tokens + i));
  }
  const size_t n = spec.BlockBytes() / 2;
  const uint64_t seed = spec.seq_seed * 0x9e3779b97f4a7c15ULL ^ (uint64_t{spec.layer} << 40) ^ index;
  Fill(seed, out->mutable_k(), n);
  Fill(seed ^ 0x5555555555555555ULL, out->mutable_v(), n);
  out->set_checksum(BlockChecksum(out->k(), out->v()));
}

}  // namespace kvc
