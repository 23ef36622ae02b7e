#include "cachesvc/block_view.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>

#include "kvcache/v1/cache.pb.h"

namespace kvc {
namespace {

using google::protobuf::io::CodedInputStream;
using WFL = google::protobuf::internal::WireFormatLite;

// Reads a length-delimited field as a view into the underlying array.
bool ReadView(CodedInputStream* in, const char* base, absl::string_view* out) {
  uint32_t len;
  if (!in->ReadVarint32(&len)) return false;
  const int pos = in->CurrentPosition();
  if (!in->Skip(static_cast<int>(len))) return false;
  *out = absl::string_view(base + pos, len);
  return true;
}

bool ParseHash(absl::string_view bytes, Hash128* h) {
  CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()), static_cast<int>(bytes.size()));
  while (uint32_t tag = in.ReadTag()) {
    uint64_t v;
    switch (tag) {
      case (1 << 3) | WFL::WIRETYPE_FIXED64:
        if (!in.ReadLittleEndian64(&v)) return false;
        h->hi = v;
        break;
      case (2 << 3) | WFL::WIRETYPE_FIXED64:
        if (!in.ReadLittleEndian64(&v)) return false;
        h->lo = v;
        break;
      default:
        if (!WFL::SkipField(&in, tag)) return false;
    }
  }
  return in.ConsumedEntireMessage();
}

bool ParseKey(absl::string_view bytes, BlockKey* key) {
  CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()), static_cast<int>(bytes.size()));
  absl::string_view s;
  while (uint32_t tag = in.ReadTag()) {
    switch (tag) {
      case (1 << 3) | WFL::WIRETYPE_LENGTH_DELIMITED:
        if (!ReadView(&in, bytes.data(), &s)) return false;
        key->tenant.assign(s.data(), s.size());
        break;
      case (2 << 3) | WFL::WIRETYPE_LENGTH_DELIMITED:
        if (!ReadView(&in, bytes.data(), &s)) return false;
        key->model.assign(s.data(), s.size());
        break;
      case (3 << 3) | WFL::WIRETYPE_VARINT:
        if (!in.ReadVarint32(&key->layer)) return false;
        break;
      case (4 << 3) | WFL::WIRETYPE_LENGTH_DELIMITED:
        if (!ReadView(&in, bytes.data(), &s) || !ParseHash(s, &key->hash)) return false;
        break;
      default:
        if (!WFL::SkipField(&in, tag)) return false;
    }
  }
  return in.ConsumedEntireMessage();
}

bool CountPackedVarints(absl::string_view bytes, uint64_t* count) {
  CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()), static_cast<int>(bytes.size()));
  while (in.CurrentPosition() < static_cast<int>(bytes.size())) {
    uint32_t v;
    if (!in.ReadVarint32(&v)) return false;
    ++*count;
  }
  return true;
}

}  // namespace

absl::StatusOr<BlockView> BlockView::Parse(absl::string_view wire) {
  if (wire.size() > static_cast<size_t>(INT32_MAX)) return absl::InvalidArgumentError("block over 2 GiB");
  BlockView b;
  CodedInputStream in(reinterpret_cast<const uint8_t*>(wire.data()), static_cast<int>(wire.size()));
  in.SetTotalBytesLimit(INT32_MAX);
  absl::string_view s;
  uint32_t u32;
  bool ok = true;
  while (ok) {
    const uint32_t tag = in.ReadTag();
    if (tag == 0) break;
    switch (tag) {
      case (1 << 3) | WFL::WIRETYPE_LENGTH_DELIMITED:
        // A repeated submessage merges into the earlier one, as in protobuf.
        ok = ReadView(&in, wire.data(), &s) && ParseKey(s, &b.key);
        b.has_key = ok;
        break;
      case (2 << 3) | WFL::WIRETYPE_VARINT:
        ok = in.ReadVarint32(&u32);
        b.dtype = static_cast<int>(u32);
        break;
      case (3 << 3) | WFL::WIRETYPE_VARINT:
        ok = in.ReadVarint32(&b.block_tokens);
        break;
      case (4 << 3) | WFL::WIRETYPE_VARINT:
        ok = in.ReadVarint32(&b.num_kv_heads);
        break;
      case (5 << 3) | WFL::WIRETYPE_VARINT:
        ok = in.ReadVarint32(&b.head_dim);
        break;
      case (6 << 3) | WFL::WIRETYPE_LENGTH_DELIMITED:  // packed positions
        ok = ReadView(&in, wire.data(), &s) && CountPackedVarints(s, &b.positions);
        break;
      case (6 << 3) | WFL::WIRETYPE_VARINT:  // one unpacked position
        ok = in.ReadVarint32(&u32);
        ++b.positions;
        break;
      case (7 << 3) | WFL::WIRETYPE_LENGTH_DELIMITED:
        ok = ReadView(&in, wire.data(), &b.k);
        break;
      case (8 << 3) | WFL::WIRETYPE_LENGTH_DELIMITED:
        ok = ReadView(&in, wire.data(), &b.v);
        break;
      case (9 << 3) | WFL::WIRETYPE_FIXED64:
        ok = in.ReadLittleEndian64(&b.checksum);
        break;
      default:
        ok = WFL::SkipField(&in, tag);
    }
  }
  if (!ok || !in.ConsumedEntireMessage()) {
    return absl::InvalidArgumentError("bytes are not a well-formed kvcache.v1.Block");
  }
  return b;
}

BlockView BlockView::Of(const kvcache::v1::Block& block) {
  BlockView b;
  b.has_key = block.has_key();
  if (b.has_key) b.key = BlockKey::FromProto(block.key());
  b.dtype = block.dtype();
  b.block_tokens = block.block_tokens();
  b.num_kv_heads = block.num_kv_heads();
  b.head_dim = block.head_dim();
  b.positions = static_cast<uint64_t>(block.positions_size());
  b.k = block.k();
  b.v = block.v();
  b.checksum = block.checksum();
  return b;
}

}  // namespace kvc
