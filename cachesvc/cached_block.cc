#include "cachesvc/cached_block.h"

#include "cachesvc/block_view.h"

#include "absl/strings/str_cat.h"
#include "common/hash.h"
#include "common/status_macros.h"
#include "kvcache/v1/cache.pb.h"

namespace kvc {

size_t DTypeBytes(int dtype) {
  switch (dtype) {
    case kvcache::v1::DTYPE_FP32: return 4;
    case kvcache::v1::DTYPE_FP16: return 2;
    case kvcache::v1::DTYPE_BF16: return 2;
    default: return 0;
  }
}

namespace {

absl::Status ValidateId(absl::string_view field, absl::string_view s, const Limits& limits) {
  if (s.empty()) return absl::InvalidArgumentError(absl::StrCat("key.", field, " is empty"));
  if (s.size() > limits.max_key_string_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("key.", field, " is ", s.size(),
                                                   " bytes; limit max_key_string_bytes is ",
                                                   limits.max_key_string_bytes));
  }
  for (unsigned char c : s) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(
          absl::StrCat("key.", field, " has a byte 0x", absl::Hex(c),
                       " outside printable ASCII (0x21..0x7e)"));
    }
  }
  return absl::OkStatus();
}

// Shape checks shared by the put path and the read-back path.
absl::Status CheckShape(const BlockView& b) {
  const size_t elem = DTypeBytes(b.dtype);
  if (elem == 0) {
    return absl::InvalidArgumentError(absl::StrCat("dtype ", b.dtype, " is not one of FP32, FP16, BF16"));
  }
  if (b.block_tokens == 0 || b.num_kv_heads == 0 || b.head_dim == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shape [block_tokens=", b.block_tokens, ", num_kv_heads=", b.num_kv_heads,
        ", head_dim=", b.head_dim, "] has a zero dimension"));
  }
  const uint64_t want = uint64_t{b.block_tokens} * b.num_kv_heads * b.head_dim * elem;
  if (b.k.size() != want || b.v.size() != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        "payload does not match shape: [block_tokens=", b.block_tokens, ", num_kv_heads=",
        b.num_kv_heads, ", head_dim=", b.head_dim, "] x ", elem, "-byte dtype needs ", want,
        " bytes each for k and v; got k=", b.k.size(), " v=", b.v.size()));
  }
  if (b.positions != b.block_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("positions has ", b.positions,
                                                   " entries; block_tokens is ", b.block_tokens));
  }
  return absl::OkStatus();
}

absl::Status ValidateKeyStrings(const BlockKey& key, const Limits& limits) {
  KVC_RETURN_IF_ERROR(ValidateId("tenant", key.tenant, limits));
  return ValidateId("model", key.model, limits);
}

}  // namespace

absl::Status ValidateKey(const kvcache::v1::BlockKey& key, const Limits& limits) {
  KVC_RETURN_IF_ERROR(ValidateId("tenant", key.tenant(), limits));
  return ValidateId("model", key.model(), limits);
}

absl::Status ValidateBlock(const BlockView& b, const Limits& limits) {
  if (!b.has_key) return absl::InvalidArgumentError("block has no key");
  KVC_RETURN_IF_ERROR(ValidateKeyStrings(b.key, limits));
  const uint64_t bytes = uint64_t{b.k.size()} + b.v.size();
  if (bytes > limits.max_block_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("block is ", bytes,
                                                     " bytes of k+v; limit max_block_bytes is ",
                                                     limits.max_block_bytes));
  }
  KVC_RETURN_IF_ERROR(CheckShape(b));
  const uint64_t sum = BlockChecksum(b.k, b.v);
  if (sum != b.checksum) {
    return absl::InvalidArgumentError(
        absl::StrCat("checksum mismatch: block says 0x", absl::Hex(b.checksum),
                     ", XXH3-64 of k then v is 0x", absl::Hex(sum)));
  }
  return absl::OkStatus();
}

absl::Status ValidateBlock(const kvcache::v1::Block& block, const Limits& limits) {
  return ValidateBlock(BlockView::Of(block), limits);
}

absl::StatusOr<BlockPtr> CachedBlock::FromProto(const kvcache::v1::Block& block,
                                                const Limits& limits) {
  KVC_RETURN_IF_ERROR(ValidateBlock(block, limits));
  std::string wire;
  if (!block.SerializeToString(&wire)) return absl::InternalError("cannot serialize block");
  return BlockPtr(new CachedBlock(BlockKey::FromProto(block.key()), std::move(wire), block.checksum()));
}

absl::StatusOr<BlockPtr> CachedBlock::FromRequest(std::string wire, const Limits& limits) {
  KVC_ASSIGN_OR_RETURN(BlockView view, BlockView::Parse(wire));
  KVC_RETURN_IF_ERROR(ValidateBlock(view, limits));
  BlockKey key = std::move(view.key);
  const uint64_t checksum = view.checksum;
  return BlockPtr(new CachedBlock(std::move(key), std::move(wire), checksum));
}

absl::StatusOr<BlockPtr> CachedBlock::FromWire(std::string wire) {
  absl::StatusOr<BlockView> view = BlockView::Parse(wire);
  if (!view.ok()) return absl::DataLossError("stored block does not parse");
  if (!view->has_key) return absl::DataLossError("stored block has no key");
  Limits any_length;
  any_length.max_key_string_bytes = 65535;
  if (absl::Status s = ValidateKeyStrings(view->key, any_length); !s.ok()) {
    return absl::DataLossError(absl::StrCat("stored block has a bad key: ", s.message()));
  }
  if (absl::Status s = CheckShape(*view); !s.ok()) {
    return absl::DataLossError(absl::StrCat("stored block is malformed: ", s.message()));
  }
  const uint64_t sum = BlockChecksum(view->k, view->v);
  if (sum != view->checksum) {
    return absl::DataLossError(absl::StrCat("stored block fails its checksum: recorded 0x",
                                            absl::Hex(view->checksum), ", computed 0x",
                                            absl::Hex(sum)));
  }
  BlockKey key = std::move(view->key);
  const uint64_t checksum = view->checksum;
  return BlockPtr(new CachedBlock(std::move(key), std::move(wire), checksum));
}

absl::Status CachedBlock::ToProto(kvcache::v1::Block* out) const {
  if (!out->ParseFromString(wire_)) return absl::InternalError("cannot parse own wire bytes");
  return absl::OkStatus();
}

}  // namespace kvc
