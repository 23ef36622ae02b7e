// BlockClient: how a worker moves KV blocks to and from the cache service,
// independent of the transport. Two implementations:
//   - GrpcBlockClient (worker/kv/grpc_block_client.h): everything over the
//     service's gRPC API (CacheClient);
//   - UcxBlockClient (worker/kv/ucx_block_client.h): bulk Put and Get over
//     UCX, control (Lookup, health) over gRPC.
// MakeBlockClient (worker/kv/block_client_factory.h) picks one from
// configuration and falls back to gRPC when UCX is unavailable or disabled.
// ClusterBlockClient (worker/kv/cluster_block_client.h) spreads blocks over
// several services, one such client per member.
//
// Blocks travel as serialized kvcache.v1.Block messages (the service's wire
// and storage format): a Put hands over encoded blocks (EncodeBlock in
// worker/kv/block_codec.h writes KV rows straight into that format); a Get
// delivers each block as a BlockView over bytes the client owns, valid only
// during the callback, so a 2 MiB block reaches the caller without a copy
// beyond the one off the wire.
#ifndef KVC_WORKER_KV_BLOCK_CLIENT_H_
#define KVC_WORKER_KV_BLOCK_CLIENT_H_

#include <cstdint>
#include <span>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "cachesvc/block_key.h"
#include "cachesvc/block_view.h"

namespace kvc {

// Where a block was found (kvcache.v1.Tier).
enum class BlockTier { kNone = 0, kHost = 1, kDisk = 2 };

// One answer of a Get: the key at `index` of the request.
struct GotBlock {
  uint32_t index = 0;          // index of the key in the request
  BlockTier tier = BlockTier::kNone;
  absl::Status status;         // NOT_FOUND for a miss, or the block's own error
  BlockView block;             // valid when status.ok(), only during the callback
};

// The service did not answer the call (away, too slow, the transfer broke):
// worth trying again later, unlike a refusal of what was asked.
inline bool IsUnreachable(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kCancelled:
      return true;
    default:
      return false;
  }
}

// Thread-safe: any number of threads may call any method concurrently.
class BlockClient {
 public:
  virtual ~BlockClient() = default;

  // "grpc" or "ucx".
  virtual absl::string_view transport() const = 0;

  // Stores the blocks (each a serialized kvcache.v1.Block) in one request.
  // With `write_through` the service syncs them to disk before answering.
  // The whole request fails or succeeds; the status says why it failed
  // (ClusterBlockClient: OK when every block is stored on some member).
  virtual absl::Status Put(std::span<const absl::string_view> blocks, bool write_through) = 0;

  // Fetches `keys`; calls `on_block` once per key (GotBlock::index says
  // which), never concurrently, in no promised order: the single-service
  // clients answer in key order, ClusterBlockClient as its members answer.
  // Returns the transfer's own status (a dropped connection, a deadline):
  // misses are not errors of the call.
  virtual absl::Status Get(std::span<const BlockKey> keys, absl::FunctionRef<void(GotBlock&)> on_block) = 0;

  // How many leading blocks of the hash chain `hashes` are cached for every
  // layer in `layers` (the service's Lookup).
  virtual absl::StatusOr<uint32_t> Lookup(absl::string_view tenant, absl::string_view model,
                                          std::span<const uint32_t> layers, std::span<const Hash128> hashes) = 0;

  // True when the service answers its health check as SERVING.
  virtual absl::StatusOr<bool> Healthy() = 0;
};

}  // namespace kvc

#endif  // KVC_WORKER_KV_BLOCK_CLIENT_H_
