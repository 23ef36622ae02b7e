#include "worker/cache_client.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/hash.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace kvc {

namespace v1 = ::kvcache::v1;

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

void SetChecksum(v1::Block* block) { block->set_checksum(BlockChecksum(block->k(), block->v())); }

absl::StatusOr<std::unique_ptr<CacheClient>> CacheClient::Connect(const ClientOptions& options) {
  if (options.address.empty()) return absl::InvalidArgumentError("client address is empty");
  auto c = std::unique_ptr<CacheClient>(new CacheClient(options));
  std::shared_ptr<grpc::ChannelCredentials> creds;
  grpc::ChannelArguments args;
  if (options.tls_root_certs_pem.empty()) {
    creds = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_root_certs_pem;
    creds = grpc::SslCredentials(ssl);
    if (!options.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(options.tls_server_name);
    }
  }
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  // Megabyte blocks: a flow-control window that covers a whole message, and large frames.
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, static_cast<int>(options.max_message_bytes));
  args.SetInt(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, (1 << 24) - 1);
  if (options.connection_index >= 0) args.SetInt("kvc.connection_index", options.connection_index);
  c->channel_ = grpc::CreateCustomChannel(options.address, creds, args);
  c->stub_ = v1::KVCache::NewStub(c->channel_);
  return c;
}

absl::Status CacheClient::WaitForReady(absl::Duration timeout) {
  const auto deadline = std::chrono::system_clock::now() +
                        std::chrono::milliseconds(absl::ToInt64Milliseconds(timeout));
  if (!channel_->WaitForConnected(deadline)) {
    return absl::UnavailableError("cannot connect to " + options_.address);
  }
  return absl::OkStatus();
}

absl::Status CacheClient::Reach(absl::Duration timeout) {
  const auto deadline =
      std::chrono::system_clock::now() + std::chrono::milliseconds(absl::ToInt64Milliseconds(timeout));
  grpc_connectivity_state state = channel_->GetState(/*try_to_connect=*/true);
  while (state != GRPC_CHANNEL_READY) {
    if (state == GRPC_CHANNEL_TRANSIENT_FAILURE || state == GRPC_CHANNEL_SHUTDOWN) {
      return absl::UnavailableError(absl::StrCat("cache service ", options_.address, " refused the connection"));
    }
    if (!channel_->WaitForStateChange(state, deadline)) {
      return absl::UnavailableError(absl::StrCat("cache service ", options_.address, " did not answer within ",
                                                 absl::FormatDuration(timeout)));
    }
    state = channel_->GetState(/*try_to_connect=*/true);
  }
  return absl::OkStatus();
}

void CacheClient::PrepareContext(grpc::ClientContext* ctx) const {
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(absl::ToInt64Milliseconds(options_.timeout)));
  if (!options_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options_.token);
}

template <typename Request, typename Response>
absl::StatusOr<Response> CacheClient::Unary(
    grpc::Status (v1::KVCache::Stub::*method)(grpc::ClientContext*, const Request&, Response*),
    const Request& request) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx);
  Response resp;
  grpc::Status s = (stub_.get()->*method)(&ctx, request, &resp);
  if (!s.ok()) return FromGrpc(s);
  return resp;
}

absl::StatusOr<v1::PutResponse> CacheClient::Put(const v1::PutRequest& request) {
  return Unary(&v1::KVCache::Stub::Put, request);
}

absl::Status CacheClient::Get(std::span<const BlockKey> keys,
                              absl::FunctionRef<void(v1::GetResponse&)> on_response) {
  v1::GetRequest req;
  for (const BlockKey& k : keys) k.ToProto(req.add_keys());
  grpc::ClientContext ctx;
  PrepareContext(&ctx);
  std::unique_ptr<grpc::ClientReader<v1::GetResponse>> reader = stub_->Get(&ctx, req);
  v1::GetResponse resp;
  while (reader->Read(&resp)) on_response(resp);
  return FromGrpc(reader->Finish());
}

absl::StatusOr<v1::LookupResponse> CacheClient::Lookup(const v1::LookupRequest& request) {
  return Unary(&v1::KVCache::Stub::Lookup, request);
}

absl::StatusOr<uint32_t> CacheClient::Delete(std::span<const BlockKey> keys) {
  v1::DeleteRequest req;
  for (const BlockKey& k : keys) k.ToProto(req.add_keys());
  absl::StatusOr<v1::DeleteResponse> resp = Unary(&v1::KVCache::Stub::Delete, req);
  if (!resp.ok()) return resp.status();
  return resp->deleted();
}

absl::StatusOr<v1::PinResponse> CacheClient::Pin(std::span<const BlockKey> keys, uint32_t lease_ms) {
  v1::PinRequest req;
  for (const BlockKey& k : keys) k.ToProto(req.add_keys());
  req.set_lease_ms(lease_ms);
  return Unary(&v1::KVCache::Stub::Pin, req);
}

absl::StatusOr<uint32_t> CacheClient::Unpin(uint64_t lease_id) {
  v1::UnpinRequest req;
  req.set_lease_id(lease_id);
  absl::StatusOr<v1::UnpinResponse> resp = Unary(&v1::KVCache::Stub::Unpin, req);
  if (!resp.ok()) return resp.status();
  return resp->released();
}

absl::StatusOr<v1::StatsResponse> CacheClient::Stats() {
  return Unary(&v1::KVCache::Stub::Stats, v1::StatsRequest());
}

absl::StatusOr<v1::InfoResponse> CacheClient::Info() {
  return Unary(&v1::KVCache::Stub::Info, v1::InfoRequest());
}

absl::StatusOr<bool> CacheClient::Healthy() {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext ctx;
  // At most 5 s, and never longer than the client's own call deadline.
  const int64_t ms = std::min<int64_t>(5000, absl::ToInt64Milliseconds(options_.timeout));
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status s = health->Check(&ctx, grpc::health::v1::HealthCheckRequest(), &resp);
  if (!s.ok()) return FromGrpc(s);
  return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

}  // namespace kvc
