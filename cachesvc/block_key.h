// BlockKey: the identity of one block of KV for one layer.
#ifndef KVC_CACHESVC_BLOCK_KEY_H_
#define KVC_CACHESVC_BLOCK_KEY_H_

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "common/hash.h"

namespace kvcache::v1 {
class BlockKey;
}

namespace kvc {

struct BlockKey {
  std::string tenant;  // tenant namespace
  std::string model;   // model id
  uint32_t layer = 0;  // decoder layer
  Hash128 hash;        // chained prefix hash

  friend bool operator==(const BlockKey&, const BlockKey&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const BlockKey& k) {
    return H::combine(std::move(h), k.tenant, k.model, k.layer, k.hash);
  }

  // Byte encoding used as the RocksDB key. Keys of one tenant, then one model,
  // then one layer are contiguous: u16 BE len, tenant, u16 BE len, model,
  // u32 BE layer, u64 BE hash.hi, u64 BE hash.lo.
  std::string Encode() const;
  // REQUIRES nothing of `bytes`: malformed input gives INVALID_ARGUMENT.
  static absl::StatusOr<BlockKey> Decode(absl::string_view bytes);

  // A 64-bit hash for sharding; stable across processes and builds.
  uint64_t ShardHash() const;

  // "tenant/model/L<layer>/<hash hex>", for logs and error messages.
  std::string DebugString() const;

  static BlockKey FromProto(const kvcache::v1::BlockKey& p);
  void ToProto(kvcache::v1::BlockKey* p) const;
};

}  // namespace kvc

#endif  // KVC_CACHESVC_BLOCK_KEY_H_
