#include "worker/kv/grpc_block_client.h"

#include <grpcpp/impl/codegen/client_unary_call.h>
#include <grpcpp/impl/codegen/rpc_method.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "cachesvc/wire_util.h"

namespace kvc {
namespace {

namespace v1 = ::kvcache::v1;

}  // namespace

absl::StatusOr<std::unique_ptr<GrpcBlockClient>> GrpcBlockClient::Create(const ClientOptions& options) {
  KVC_ASSIGN_OR_RETURN(std::unique_ptr<CacheClient> c, CacheClient::Connect(options));
  return std::make_unique<GrpcBlockClient>(std::move(c));
}

absl::Status GrpcBlockClient::Put(std::span<const absl::string_view> blocks, bool write_through) {
  // PutRequest: per block, tag 0x0a + varint length (own slice) and the
  // block bytes (a slice over the caller's memory, valid for this call).
  std::vector<std::string> headers(blocks.size());
  std::vector<grpc::Slice> slices;
  slices.reserve(2 * blocks.size() + 1);
  for (size_t i = 0; i < blocks.size(); ++i) {
    headers[i].push_back(0x0a);
    AppendVarint(blocks[i].size(), &headers[i]);
    slices.emplace_back(headers[i].data(), headers[i].size(), grpc::Slice::STATIC_SLICE);
    slices.emplace_back(blocks[i].data(), blocks[i].size(), grpc::Slice::STATIC_SLICE);
  }
  static const char kWriteThrough[2] = {0x10, 0x01};
  if (write_through) slices.emplace_back(kWriteThrough, 2, grpc::Slice::STATIC_SLICE);
  grpc::ByteBuffer request(slices.data(), slices.size());
  grpc::ByteBuffer response;
  grpc::ClientContext ctx;
  client_->PrepareContext(&ctx);
  static const grpc::internal::RpcMethod kPut("/kvcache.v1.KVCache/Put", grpc::internal::RpcMethod::NORMAL_RPC);
  grpc::Status s = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
      client_->channel().get(), kPut, &ctx, request, &response);
  return FromGrpc(s);
}

absl::Status GrpcBlockClient::Get(std::span<const BlockKey> keys, absl::FunctionRef<void(GotBlock&)> on_block) {
  return client_->Get(keys, [&](v1::GetResponse& r) {
    GotBlock g;
    g.index = r.index();
    g.tier = static_cast<BlockTier>(r.tier() <= 2 ? r.tier() : 0);
    if (r.error_code() != 0) {
      g.status = absl::Status(static_cast<absl::StatusCode>(r.error_code()), r.error_message());
    } else {
      g.block = BlockView::Of(r.block());
    }
    on_block(g);
  });
}

absl::StatusOr<uint32_t> GrpcBlockClient::Lookup(absl::string_view tenant, absl::string_view model,
                                                 std::span<const uint32_t> layers, std::span<const Hash128> hashes) {
  return LookupChain(*client_, tenant, model, layers, hashes);
}

absl::StatusOr<uint32_t> LookupChain(CacheClient& client, absl::string_view tenant, absl::string_view model,
                                     std::span<const uint32_t> layers, std::span<const Hash128> hashes) {
  v1::LookupRequest req;
  req.set_tenant(std::string(tenant));
  req.set_model(std::string(model));
  for (uint32_t l : layers) req.add_layers(l);
  for (const Hash128& h : hashes) {
    v1::Hash128* p = req.add_hashes();
    p->set_hi(h.hi);
    p->set_lo(h.lo);
  }
  KVC_ASSIGN_OR_RETURN(v1::LookupResponse resp, client.Lookup(req));
  return resp.cached_blocks();
}

}  // namespace kvc
