// The kvcache UCX wire protocol (version 1), shared by the cache service's
// UCX listener (cachesvc/server/ucx_service.h) and UcxBlockClient
// (worker/kv/ucx_block_client.h).
//
// Every message is one UCX active message (ucp_am_send_nbx). Its AM *user
// header* is a FrameHeader: 32 bytes, fixed size, every field little-endian:
//
//   offset size field
//        0    4 magic       0x5543564B ("KVCU" read as LE bytes K V C U)
//        4    1 version     kProtocolVersion (1); a mismatch is refused
//        5    1 op          Op below
//        6    2 reserved    0
//        8    8 request_id  chosen by the client, echoed by every reply
//       16    4 status      absl::StatusCode of the reply (0 = OK); 0 on requests
//       20    4 index       kGetBlock: index of the key; kPutReply: blocks stored;
//                           kHello / kHelloReply: the session id (below)
//       24    4 tier        kGetBlock: 1 host, 2 disk, 0 none (kvcache.v1.Tier)
//       28    4 reserved    0
//
// The AM *data* is the payload; its length is the AM data length:
//
//   op            dir  payload
//   kHello        c→s  the "authorization" value, as gRPC metadata carries it
//                      ("Bearer <token>"; empty when auth is off). Must be the
//                      first message on an endpoint. Header `index`: 0 over
//                      the listener; over a worker-address endpoint, the
//                      session id (below), else it is refused FAILED_PRECONDITION.
//   kHelloReply   s→c  status OK: u32 LE tenant length, the tenant name ("" = any),
//                      then the server's ucp worker address (the rest); else
//                      the error message. Header `index`: over the listener,
//                      this connection's session id (non-zero). A client may
//                      open a second endpoint to that address (ucp_ep_create
//                      with REMOTE_ADDRESS) and HELLO again on it with the
//                      session id: UCX 1.13's listener path only uses
//                      transports on the listening device (tcp on lo), the
//                      worker address reaches shared memory too.
//   kPut          c→s  a serialized kvcache.v1.PutRequest (the bytes gRPC Put gets)
//   kPutReply     s→c  status, index = blocks stored; payload = error message
//   kGet          c→s  a serialized kvcache.v1.GetRequest
//   kGetBlock     s→c  one per key (any order; `index` says which): status OK and
//                      the block's stored wire bytes (a serialized kvcache.v1.Block),
//                      or status NOT_FOUND / DATA_LOSS / ... and the error message
//   kGetFailed    s→c  the whole Get failed (auth, limits, busy): status and message;
//                      no further kGetBlock of this request id is meaningful
//
// Sessions: a worker-address endpoint runs with UCX error mode NONE (shared
// memory offers no peer-failure detection worth its cost), so neither side
// would ever learn that the other died on it. Its HELLO names the listener
// connection (error mode PEER) it belongs to, and the server drops it when
// that connection fails or closes; the client likewise fails every call when
// its listener connection breaks. A server older than sessions replies with
// index 0 and a client then cannot open a worker-address endpoint.
//
// The header rides in the AM header rather than in the data so a receiver
// learns the request id, the op and the payload length from the rendezvous
// announcement, and can post the receive straight into the buffer it chose
// (ucp_am_recv_data_nbx) before a byte of payload moves. Client-to-server
// messages use AM id kAmIdRequest, server-to-client kAmIdReply.
#ifndef KVC_TRANSPORT_WIRE_PROTOCOL_H_
#define KVC_TRANSPORT_WIRE_PROTOCOL_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvc::ucx {

inline constexpr uint32_t kProtocolMagic = 0x5543564B;
inline constexpr uint8_t kProtocolVersion = 1;
inline constexpr uint16_t kAmIdRequest = 17;
inline constexpr uint16_t kAmIdReply = 18;
inline constexpr size_t kFrameHeaderBytes = 32;
// Largest kHello payload a server reads.
inline constexpr size_t kMaxHelloBytes = 4096;

enum class Op : uint8_t {
  kHello = 1,
  kHelloReply = 2,
  kPut = 3,
  kPutReply = 4,
  kGet = 5,
  kGetBlock = 6,
  kGetFailed = 7,
};
const char* OpName(Op op);

struct FrameHeader {
  Op op = Op::kHello;
  uint64_t request_id = 0;
  uint32_t status = 0;  // absl::StatusCode
  uint32_t index = 0;
  uint32_t tier = 0;

  using Bytes = std::array<char, kFrameHeaderBytes>;
  Bytes Encode() const;
  // INVALID_ARGUMENT naming what is wrong: length, magic, version or op.
  static absl::StatusOr<FrameHeader> Decode(const void* data, size_t length);
};

struct HelloReply {
  std::string tenant;
  std::string worker_address;
};
std::string EncodeHelloReply(absl::string_view tenant, absl::string_view worker_address);
absl::StatusOr<HelloReply> DecodeHelloReply(absl::string_view payload);

// The status a reply header and its payload describe.
absl::Status ReplyStatus(const FrameHeader& h, absl::string_view payload);

}  // namespace kvc::ucx

#endif  // KVC_TRANSPORT_WIRE_PROTOCOL_H_
