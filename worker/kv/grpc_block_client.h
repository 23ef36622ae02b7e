// GrpcBlockClient: BlockClient over the service's gRPC API (CacheClient).
// Everything goes over gRPC: the fallback when UCX is unavailable.
#ifndef KVC_WORKER_KV_GRPC_BLOCK_CLIENT_H_
#define KVC_WORKER_KV_GRPC_BLOCK_CLIENT_H_

#include <memory>

#include "absl/status/statusor.h"
#include "worker/cache_client.h"
#include "worker/kv/block_client.h"

namespace kvc {

// Thread-safe (CacheClient is).
class GrpcBlockClient final : public BlockClient {
 public:
  static absl::StatusOr<std::unique_ptr<GrpcBlockClient>> Create(const ClientOptions& options);
  explicit GrpcBlockClient(std::unique_ptr<CacheClient> client) : client_(std::move(client)) {}

  absl::string_view transport() const override { return "grpc"; }
  // Sends the PutRequest as a raw ByteBuffer whose slices point at the
  // caller's block bytes: no copy and no re-encoding in user space.
  absl::Status Put(std::span<const absl::string_view> blocks, bool write_through) override;
  // Each GetResponse is parsed (one copy of k/v by protobuf) and handed over
  // as BlockView::Of the parsed block.
  absl::Status Get(std::span<const BlockKey> keys, absl::FunctionRef<void(GotBlock&)> on_block) override;
  absl::StatusOr<uint32_t> Lookup(absl::string_view tenant, absl::string_view model,
                                  std::span<const uint32_t> layers, std::span<const Hash128> hashes) override;
  absl::StatusOr<bool> Healthy() override { return client_->Healthy(); }

  CacheClient* client() const { return client_.get(); }

 private:
  std::unique_ptr<CacheClient> client_;
};

// The service's Lookup of a hash chain over gRPC: how many leading blocks
// are cached for every layer in `layers`.
absl::StatusOr<uint32_t> LookupChain(CacheClient& client, absl::string_view tenant, absl::string_view model,
                                     std::span<const uint32_t> layers, std::span<const Hash128> hashes);

}  // namespace kvc

#endif  // KVC_WORKER_KV_GRPC_BLOCK_CLIENT_H_
