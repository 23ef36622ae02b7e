// A sequence's KV as the cache service stores it: blocks of `block_tokens`
// consecutive tokens of one layer, named by the chained hash of the tokens
// from the start of the sequence up to the block's end (common/hash.h), so
// a block is shared by every sequence with the same prefix.
//
// EncodeKvBlock writes the serialized kvcache.v1.Block straight from the
// model's fp32 KV rows (one copy, converting to the block's dtype; the
// checksum computed on the way); DecodeKvBlock reads a received block back
// into fp32 rows after checking that its shape is the one expected.
#ifndef KVC_WORKER_KV_BLOCK_CODEC_H_
#define KVC_WORKER_KV_BLOCK_CODEC_H_

#include <cstdint>
#include <span>
#include <string_view>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cachesvc/block_key.h"
#include "cachesvc/block_view.h"
#include "common/hash.h"

namespace kvc {

// The layout every block of one model shares: k and v are each
// [block_tokens][num_kv_heads][head_dim] of `dtype` (a kvcache.v1.DType
// value: fp32, fp16 or bf16), keys before RoPE.
struct KvBlockShape {
  int32_t block_tokens = 64;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int dtype = 1;  // DTYPE_FP32

  // Elements of one of k, v.
  int64_t elements() const { return int64_t{block_tokens} * num_kv_heads * head_dim; }
  // Bytes of one of k, v.
  int64_t bytes() const;
  // INVALID_ARGUMENT naming the field when a size is not positive or the
  // dtype unknown.
  absl::Status Validate() const;
};

// The parent of a sequence's first block for KV computed by `kv_origin`
// (cache::CachePolicy::kv_origin): all zero for "dense" (full attention,
// the chain every client computes), else the chained hash of the origin's
// bytes. So a sequence loads and rehydrates only KV computed the way its
// own policy computes it: a sparse policy's KV of layers past the first
// differs from full attention's for the same tokens.
Hash128 ChainRoot(std::string_view kv_origin);

// The chained hash of every whole block of `tokens` (a partial last block
// has none) from `root`: hashes[i] covers tokens [0, (i + 1) * block_tokens).
std::vector<Hash128> PrefixHashes(std::span<const int32_t> tokens, int32_t block_tokens, const Hash128& root = {});

// The serialized block of `block_tokens` tokens at original positions
// first_position, first_position + 1, ...; k and v are fp32 rows
// [block_tokens][num_kv_heads][head_dim].
std::string EncodeKvBlock(const BlockKey& key, const KvBlockShape& shape, int64_t first_position, const float* k,
                          const float* v);

// Writes the block's k and v as fp32 rows into k_out, v_out (shape.elements()
// floats each). INVALID_ARGUMENT naming the field when the block's shape,
// dtype or token count differ from `shape`; DATA_LOSS when the checksum does
// not match its bytes.
absl::Status DecodeKvBlock(const BlockView& block, const KvBlockShape& shape, float* k_out, float* v_out);

}  // namespace kvc

#endif  // KVC_WORKER_KV_BLOCK_CODEC_H_
