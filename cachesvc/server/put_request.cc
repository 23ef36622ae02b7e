#include "cachesvc/server/put_request.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include "absl/strings/str_cat.h"

namespace kvc {
namespace {

using google::protobuf::io::CodedInputStream;
using WFL = google::protobuf::internal::WireFormatLite;

// Appends `len` bytes from `in` to `out` chunk by chunk (no zero-fill, one copy).
bool AppendBytes(CodedInputStream* in, uint32_t len, std::string* out) {
  out->reserve(out->size() + len);
  while (len > 0) {
    const void* data;
    int size;
    if (!in->GetDirectBufferPointer(&data, &size)) return false;
    const uint32_t n = std::min<uint32_t>(len, static_cast<uint32_t>(size));
    out->append(static_cast<const char*>(data), n);
    in->Skip(static_cast<int>(n));
    len -= n;
  }
  return true;
}

// The PutRequest parser both entry points share. `total` is the message's
// length, so a declared block length is checked before it is reserved.
absl::StatusOr<RawPutRequest> ParsePutRequest(CodedInputStream& in, size_t total, const Limits& limits) {
  in.SetTotalBytesLimit(INT32_MAX);
  RawPutRequest req;
  const auto bad = [] { return absl::InvalidArgumentError("PutRequest does not parse"); };
  while (const uint32_t tag = in.ReadTag()) {
    switch (tag) {
      case (1 << 3) | WFL::WIRETYPE_LENGTH_DELIMITED: {
        if (req.blocks.size() == limits.max_batch_blocks) {
          return absl::InvalidArgumentError(absl::StrCat("Put blocks has more than ", limits.max_batch_blocks,
                                                         " entries; limit max_batch_blocks is ",
                                                         limits.max_batch_blocks));
        }
        uint32_t len;
        if (!in.ReadVarint32(&len)) return bad();
        // Never trust a length before the bytes exist: reserve() below would.
        if (len > total - static_cast<size_t>(in.CurrentPosition())) return bad();
        std::string& wire = req.blocks.emplace_back();
        if (!AppendBytes(&in, len, &wire)) return bad();
        break;
      }
      case (2 << 3) | WFL::WIRETYPE_VARINT: {
        uint32_t v;
        if (!in.ReadVarint32(&v)) return bad();
        req.write_through = v != 0;
        break;
      }
      default:
        if (!WFL::SkipField(&in, tag)) return bad();
    }
  }
  if (!in.ConsumedEntireMessage()) return bad();
  return req;
}

}  // namespace

absl::StatusOr<RawPutRequest> ReadPutRequest(const grpc::ByteBuffer& raw, const Limits& limits) {
  grpc::ByteBuffer copy(raw);  // shares the slices
  grpc::ProtoBufferReader reader(&copy);
  if (!reader.status().ok()) return absl::InvalidArgumentError("PutRequest buffer is unreadable");
  CodedInputStream in(&reader);
  return ParsePutRequest(in, raw.Length(), limits);
}

absl::StatusOr<RawPutRequest> ReadPutRequest(absl::string_view flat, const Limits& limits) {
  if (flat.size() > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat("PutRequest of ", flat.size(), " bytes is over 2 GiB"));
  }
  CodedInputStream in(reinterpret_cast<const uint8_t*>(flat.data()), static_cast<int>(flat.size()));
  return ParsePutRequest(in, flat.size(), limits);
}

}  // namespace kvc
