// MakeBlockClient: the BlockClient a worker's configuration asks for.
#ifndef KVC_WORKER_KV_BLOCK_CLIENT_FACTORY_H_
#define KVC_WORKER_KV_BLOCK_CLIENT_FACTORY_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "worker/cache_client.h"
#include "worker/kv/block_client.h"
#include "worker/kv/ucx_block_client.h"

namespace kvc {

struct BlockClientOptions {
  // "ucx": bulk over UCX, fail when it cannot connect; "grpc": everything
  // over gRPC; "auto": UCX when ucx.address is set and reachable, else gRPC
  // with a logged warning. Default "auto".
  std::string transport = "auto";
  // The gRPC side: used by every transport (Lookup, Healthy; all of it for "grpc").
  ClientOptions grpc;
  // The UCX side. ucx.address "" means UCX is disabled; ucx.token and
  // ucx.grpc are taken from `grpc` above when left empty.
  UcxBlockClientOptions ucx;
};

// INVALID_ARGUMENT naming the field: an unknown transport, "ucx" without a
// UCX address, no gRPC address.
absl::Status ValidateBlockClientOptions(const BlockClientOptions& options);

absl::StatusOr<std::unique_ptr<BlockClient>> MakeBlockClient(const BlockClientOptions& options);

}  // namespace kvc

#endif  // KVC_WORKER_KV_BLOCK_CLIENT_FACTORY_H_
