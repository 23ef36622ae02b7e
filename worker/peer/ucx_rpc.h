// Request and reply over UCX active messages, for the worker-to-worker peer
// link (context-parallel shards, worker/peer/context_shard.h): one AM per
// request (id kAmRpcRequest) and one per reply (kAmRpcReply), each with a
// 24-byte user header and the payload as AM data, large payloads by UCX
// rendezvous straight into the receiver's buffer. Header, little-endian:
//
//   offset size field
//        0    4 magic      0x5043564B ("KVCP")
//        4    1 version    1
//        5    1 op         the caller's (requests); echoed in replies
//        6    2 reserved   0
//        8    4 status     absl::StatusCode of a reply (0 = OK); 0 on requests
//       12    4 reserved   0
//       16    8 request id chosen by the client, echoed by the reply
//
// A reply with an error status carries the message as its payload.
//
// The server runs a handler per request on a pool of its own threads (never
// on the progress thread) and answers on the endpoint the request came by;
// a client that goes away costs only its own requests. A client's calls fail
// with UNAVAILABLE, naming the peer, once its endpoint breaks (the peer
// died, the link is gone) or a call exceeds its deadline.
#ifndef KVC_WORKER_PEER_UCX_RPC_H_
#define KVC_WORKER_PEER_UCX_RPC_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "transport/ucx_context.h"

namespace kvc::peer {

inline constexpr uint16_t kAmRpcRequest = 21;
inline constexpr uint16_t kAmRpcReply = 22;

// What a handler answers: a status and, when OK, the reply payload. Op 0 is
// reserved (the connect probe, answered by the server itself).
using RpcHandler = std::function<absl::StatusOr<std::string>(uint8_t op, absl::string_view payload)>;

struct RpcServerOptions {
  std::string listen_address = "127.0.0.1:0";  // host:port; port 0 picks one
  ucx::UcxOptions ucx;
  int threads = 2;                          // handler threads
  uint64_t max_request_bytes = 1ull << 30;  // larger requests are refused (RESOURCE_EXHAUSTED)
};

class RpcServer {
 public:
  static absl::StatusOr<std::unique_ptr<RpcServer>> Start(const RpcServerOptions& options, RpcHandler handler);
  ~RpcServer();  // stops: closes every endpoint, finishes running handlers
  int port() const;
  // Connections open now.
  int connections() const;
  // Called (on the progress thread) when a connection ends, with its id:
  // state a handler kept for that client can go. Set before clients connect.
  void OnDisconnect(std::function<void(uint64_t connection)> fn);
  // The id of the connection the calling handler serves (0 outside one).
  static uint64_t CurrentConnection();

  class Impl;

 private:
  explicit RpcServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct RpcClientOptions {
  std::string address;  // the server's host:port
  ucx::UcxOptions ucx;
  absl::Duration connect_timeout = absl::Seconds(10);
  absl::Duration call_timeout = absl::Seconds(30);
};

// Thread-safe.
class RpcClient {
 public:
  static absl::StatusOr<std::unique_ptr<RpcClient>> Connect(const RpcClientOptions& options);
  ~RpcClient();
  // Sends a request; Wait() for its reply. Calls from many threads (or many
  // in flight from one) proceed concurrently.
  class Call;
  std::shared_ptr<Call> Send(uint8_t op, std::string payload);
  absl::StatusOr<std::string> Wait(const std::shared_ptr<Call>& call);
  absl::StatusOr<std::string> Roundtrip(uint8_t op, std::string payload) { return Wait(Send(op, std::move(payload))); }
  const std::string& address() const;
  // Bytes of payload sent and received so far.
  uint64_t bytes_sent() const;
  uint64_t bytes_received() const;

  class Impl;

 private:
  explicit RpcClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvc::peer

#endif  // KVC_WORKER_PEER_UCX_RPC_H_
