#include "worker/kv/block_client_factory.h"

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "worker/cache_client.h"
#include "worker/kv/grpc_block_client.h"

namespace kvc {

absl::Status ValidateBlockClientOptions(const BlockClientOptions& options) {
  const std::string& t = options.transport;
  if (t != "auto" && t != "ucx" && t != "grpc") {
    return absl::InvalidArgumentError(absl::StrCat("block client transport '", t, "' is not ucx|grpc|auto"));
  }
  if (t == "ucx" && options.ucx.address.empty()) {
    return absl::InvalidArgumentError("transport 'ucx' needs a UCX address (ucx.address)");
  }
  if (options.grpc.address.empty()) return absl::InvalidArgumentError("block client: the gRPC address is empty");
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<BlockClient>> MakeBlockClient(const BlockClientOptions& options) {
  if (absl::Status s = ValidateBlockClientOptions(options); !s.ok()) return s;
  const std::string& t = options.transport;
  if (t != "grpc") {
    if (options.ucx.address.empty()) {
      KVC_LOG(kWarning, "block_client_fallback").With("transport", "grpc").With("reason", "UCX is disabled (no UCX address)");
    } else {
      UcxBlockClientOptions uo = options.ucx;
      if (uo.token.empty()) uo.token = options.grpc.token;
      uo.grpc = options.grpc;
      // A host that does not answer gRPC either gets no gRPC fallback (its
      // calls would only time out): the caller sees it unreachable now.
      KVC_ASSIGN_OR_RETURN(std::unique_ptr<CacheClient> reach, CacheClient::Connect(options.grpc));
      KVC_RETURN_IF_ERROR(reach->Reach(uo.timeout));
      absl::StatusOr<std::unique_ptr<UcxBlockClient>> ucx = UcxBlockClient::Create(uo);
      if (ucx.ok()) return std::unique_ptr<BlockClient>(*std::move(ucx));
      // Refusals that gRPC would give too (a bad token) are not a reason to fall back.
      if (t == "ucx" || ucx.status().code() == absl::StatusCode::kUnauthenticated ||
          ucx.status().code() == absl::StatusCode::kPermissionDenied) {
        return ucx.status();
      }
      KVC_LOG(kWarning, "block_client_fallback")
          .With("transport", "grpc")
          .With("ucx_address", uo.address)
          .With("reason", ucx.status().ToString());
    }
  }
  absl::StatusOr<std::unique_ptr<GrpcBlockClient>> g = GrpcBlockClient::Create(options.grpc);
  if (!g.ok()) return g.status();
  return std::unique_ptr<BlockClient>(*std::move(g));
}

}  // namespace kvc
