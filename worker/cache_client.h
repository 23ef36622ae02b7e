// CacheClient: the client of the cache service, as a worker (or a tool) uses it.
#ifndef KVC_WORKER_CACHE_CLIENT_H_
#define KVC_WORKER_CACHE_CLIENT_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cachesvc/block_key.h"
#include "kvcache/v1/cache.grpc.pb.h"

namespace kvc {

struct ClientOptions {
  // host:port of the service. Default "127.0.0.1:50051".
  std::string address = "127.0.0.1:50051";
  // Bearer token sent as "authorization" metadata; "" sends none. Default "".
  std::string token;
  // PEM root certificate(s); non-empty switches to TLS. Default "" (plaintext).
  std::string tls_root_certs_pem;
  // Overrides the TLS server name check (e.g. "localhost"). Default "".
  std::string tls_server_name;
  // Deadline of each call. Default 60s.
  absl::Duration timeout = absl::Seconds(60);
  // Largest message either way. Default 256 MiB (the service's default limit).
  uint64_t max_message_bytes = 256ull << 20;
  // Clients with equal options share one HTTP/2 connection. A value >= 0
  // gives this client a connection of its own (e.g. one per thread, so
  // streams do not queue behind each other's megabytes). Default -1.
  int connection_index = -1;
};

// Thread-safe: one client may be shared by many threads. A process that
// moves megabyte blocks should call kvc::TuneAllocatorForLargeBuffers()
// (common/allocator.h) at start; see docs/BENCHMARKS.md for why.
class CacheClient {
 public:
  // Creates the channel; does not wait for the server (see WaitForReady).
  static absl::StatusOr<std::unique_ptr<CacheClient>> Connect(const ClientOptions& options);

  // Blocks until the channel is connected or `timeout` passes, retrying
  // refused connections (a server that is still starting).
  absl::Status WaitForReady(absl::Duration timeout);
  // OK once the channel is connected; UNAVAILABLE as soon as connecting fails
  // (a refused connection), or when `timeout` passes with no answer at all (a
  // host that is gone or partitioned). The message names the address.
  absl::Status Reach(absl::Duration timeout);

  absl::StatusOr<kvcache::v1::PutResponse> Put(const kvcache::v1::PutRequest& request);
  // Calls `on_response` for each streamed response (in key order) and returns
  // the stream's final status. Misses arrive as responses with error_code set.
  absl::Status Get(std::span<const BlockKey> keys,
                   absl::FunctionRef<void(kvcache::v1::GetResponse&)> on_response);
  absl::StatusOr<kvcache::v1::LookupResponse> Lookup(const kvcache::v1::LookupRequest& request);
  absl::StatusOr<uint32_t> Delete(std::span<const BlockKey> keys);
  absl::StatusOr<kvcache::v1::PinResponse> Pin(std::span<const BlockKey> keys, uint32_t lease_ms);
  absl::StatusOr<uint32_t> Unpin(uint64_t lease_id);
  absl::StatusOr<kvcache::v1::StatsResponse> Stats();
  absl::StatusOr<kvcache::v1::InfoResponse> Info();
  // The standard grpc.health.v1 check of the whole server: true when SERVING.
  absl::StatusOr<bool> Healthy();

  // The generated stub, for callers that need a raw call.
  kvcache::v1::KVCache::Stub* stub() { return stub_.get(); }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  // A context with the deadline and the authorization metadata set.
  void PrepareContext(grpc::ClientContext* ctx) const;

 private:
  explicit CacheClient(const ClientOptions& options) : options_(options) {}
  // One unary call with the deadline and token applied.
  template <typename Request, typename Response>
  absl::StatusOr<Response> Unary(
      grpc::Status (kvcache::v1::KVCache::Stub::*method)(grpc::ClientContext*, const Request&, Response*),
      const Request& request);

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<kvcache::v1::KVCache::Stub> stub_;
};

// Converts a gRPC status into an absl::Status with the same code and message.
absl::Status FromGrpc(const grpc::Status& s);

// Sets block->checksum to the XXH3-64 of its k then v bytes.
void SetChecksum(kvcache::v1::Block* block);

}  // namespace kvc

#endif  // KVC_WORKER_CACHE_CLIENT_H_
