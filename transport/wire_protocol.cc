#include "transport/wire_protocol.h"

#include <cstring>

#include "absl/base/internal/endian.h"
#include "absl/strings/str_cat.h"

namespace kvc::ucx {

const char* OpName(Op op) {
  switch (op) {
    case Op::kHello: return "hello";
    case Op::kHelloReply: return "hello_reply";
    case Op::kPut: return "put";
    case Op::kPutReply: return "put_reply";
    case Op::kGet: return "get";
    case Op::kGetBlock: return "get_block";
    case Op::kGetFailed: return "get_failed";
  }
  return "unknown";
}

FrameHeader::Bytes FrameHeader::Encode() const {
  Bytes b{};
  char* p = b.data();
  absl::little_endian::Store32(p + 0, kProtocolMagic);
  p[4] = static_cast<char>(kProtocolVersion);
  p[5] = static_cast<char>(op);
  absl::little_endian::Store64(p + 8, request_id);
  absl::little_endian::Store32(p + 16, status);
  absl::little_endian::Store32(p + 20, index);
  absl::little_endian::Store32(p + 24, tier);
  return b;
}

absl::StatusOr<FrameHeader> FrameHeader::Decode(const void* data, size_t length) {
  if (length != kFrameHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("UCX frame header is ", length, " bytes; protocol v1 needs ", kFrameHeaderBytes));
  }
  const char* p = static_cast<const char*>(data);
  if (absl::little_endian::Load32(p) != kProtocolMagic) {
    return absl::InvalidArgumentError("UCX frame header has a bad magic (not a kvcache peer)");
  }
  const uint8_t version = static_cast<uint8_t>(p[4]);
  if (version != kProtocolVersion) {
    return absl::InvalidArgumentError(absl::StrCat("UCX protocol version ", version, " is not supported (this side speaks ",
                                                   kProtocolVersion, ")"));
  }
  const uint8_t op = static_cast<uint8_t>(p[5]);
  if (op < static_cast<uint8_t>(Op::kHello) || op > static_cast<uint8_t>(Op::kGetFailed)) {
    return absl::InvalidArgumentError(absl::StrCat("UCX frame has unknown op ", op));
  }
  FrameHeader h;
  h.op = static_cast<Op>(op);
  h.request_id = absl::little_endian::Load64(p + 8);
  h.status = absl::little_endian::Load32(p + 16);
  h.index = absl::little_endian::Load32(p + 20);
  h.tier = absl::little_endian::Load32(p + 24);
  return h;
}

std::string EncodeHelloReply(absl::string_view tenant, absl::string_view worker_address) {
  std::string out(4, '\0');
  absl::little_endian::Store32(out.data(), static_cast<uint32_t>(tenant.size()));
  absl::StrAppend(&out, tenant, worker_address);
  return out;
}

absl::StatusOr<HelloReply> DecodeHelloReply(absl::string_view payload) {
  if (payload.size() < 4) return absl::InvalidArgumentError("UCX HELLO reply is shorter than 4 bytes");
  const uint32_t n = absl::little_endian::Load32(payload.data());
  if (n > payload.size() - 4) return absl::InvalidArgumentError("UCX HELLO reply tenant length is out of range");
  return HelloReply{std::string(payload.substr(4, n)), std::string(payload.substr(4 + n))};
}

absl::Status ReplyStatus(const FrameHeader& h, absl::string_view payload) {
  if (h.status == 0) return absl::OkStatus();
  const auto code = h.status <= 16 ? static_cast<absl::StatusCode>(h.status) : absl::StatusCode::kUnknown;
  return absl::Status(code, payload);
}

}  // namespace kvc::ucx
