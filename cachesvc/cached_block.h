// CachedBlock: an immutable, validated block as the tiers hold it.
//
// A block is kept as its serialized kvcache.v1.Block message (the "wire"
// bytes). The same bytes are the RocksDB value and the payload the Get stream
// sends, so moving a block between tiers or onto the network never
// re-encodes it. Blocks are shared by reference (BlockPtr); the bytes are
// never mutated after construction, so any thread may read them.
#ifndef KVC_CACHESVC_CACHED_BLOCK_H_
#define KVC_CACHESVC_CACHED_BLOCK_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "cachesvc/block_key.h"
#include "cachesvc/limits.h"

namespace kvcache::v1 {
class Block;
}

namespace kvc {

class CachedBlock;
using BlockPtr = std::shared_ptr<const CachedBlock>;

// Bytes charged against a budget per block on top of its wire bytes: the
// index entry, queue node and key copies.
inline constexpr size_t kBlockOverheadBytes = 256;

// Checks `block` against the wire contract: key fields present and within
// limits, a known dtype, k and v each exactly block_tokens * num_kv_heads *
// head_dim * sizeof(dtype) bytes, block_tokens positions, k+v within
// limits.max_block_bytes, and the checksum. The message names the field, the
// limit and what was sent. Codes: INVALID_ARGUMENT, or RESOURCE_EXHAUSTED for
// a block over the size limit.
absl::Status ValidateBlock(const kvcache::v1::Block& block, const Limits& limits);
struct BlockView;
absl::Status ValidateBlock(const BlockView& block, const Limits& limits);

// Checks a key's strings against the limits (non-empty, bounded, printable).
absl::Status ValidateKey(const kvcache::v1::BlockKey& key, const Limits& limits);

class CachedBlock {
 public:
  // Validates (ValidateBlock) and serializes `block`.
  static absl::StatusOr<BlockPtr> FromProto(const kvcache::v1::Block& block, const Limits& limits);
  // Adopts the serialized Block of a client request: the same checks as
  // FromProto, read in place (the payload is never copied).
  static absl::StatusOr<BlockPtr> FromRequest(std::string wire, const Limits& limits);
  // Adopts bytes read back from a tier: parses them and verifies the checksum.
  // DATA_LOSS when they do not parse, the shape is wrong or the checksum fails.
  static absl::StatusOr<BlockPtr> FromWire(std::string wire);

  const BlockKey& key() const { return key_; }
  // The serialized kvcache.v1.Block.
  const std::string& wire() const { return wire_; }
  uint64_t checksum() const { return checksum_; }
  // Bytes charged against tier budgets: wire size plus kBlockOverheadBytes.
  size_t charge() const { return wire_.size() + kBlockOverheadBytes; }

  // Parses the wire bytes back into a message (copies the payload).
  absl::Status ToProto(kvcache::v1::Block* out) const;

 private:
  CachedBlock(BlockKey key, std::string wire, uint64_t checksum)
      : key_(std::move(key)), wire_(std::move(wire)), checksum_(checksum) {}

  const BlockKey key_;
  const std::string wire_;
  const uint64_t checksum_;
};

// Size in bytes of one element of `dtype` (a kvcache.v1.DType value), or 0
// for an unknown or unspecified dtype.
size_t DTypeBytes(int dtype);

}  // namespace kvc

#endif  // KVC_CACHESVC_CACHED_BLOCK_H_
