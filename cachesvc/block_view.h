// BlockView: the fields of a serialized kvcache.v1.Block that the service
// checks, read in place. k and v are views into the serialized bytes, so a
// block received from the network or read from disk is validated and
// checksummed without copying its payload.
#ifndef KVC_CACHESVC_BLOCK_VIEW_H_
#define KVC_CACHESVC_BLOCK_VIEW_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "cachesvc/block_key.h"

namespace kvcache::v1 {
class Block;
}

namespace kvc {

struct BlockView {
  bool has_key = false;
  BlockKey key;
  int dtype = 0;
  uint32_t block_tokens = 0;
  uint32_t num_kv_heads = 0;
  uint32_t head_dim = 0;
  uint64_t positions = 0;  // number of entries in `positions`
  absl::string_view k;     // views into the bytes the view was parsed from
  absl::string_view v;
  uint64_t checksum = 0;

  // Reads the protobuf wire format of a Block (packed or unpacked positions,
  // unknown fields skipped, last value wins as protobuf specifies).
  // INVALID_ARGUMENT when `wire` is not a well-formed Block. REQUIRES: `wire`
  // outlives the view.
  static absl::StatusOr<BlockView> Parse(absl::string_view wire);
  // A view of a parsed message. REQUIRES: `block` outlives the view.
  static BlockView Of(const kvcache::v1::Block& block);
};

}  // namespace kvc

#endif  // KVC_CACHESVC_BLOCK_VIEW_H_
