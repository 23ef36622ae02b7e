// Reading a PutRequest off the wire without protobuf's copy of the payload:
// each Block's serialized bytes are appended once from gRPC's slices into
// the string that becomes the block's stored wire bytes.
#ifndef KVC_CACHESVC_SERVER_PUT_REQUEST_H_
#define KVC_CACHESVC_SERVER_PUT_REQUEST_H_

#include <string>
#include <vector>

#include <grpcpp/support/byte_buffer.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "cachesvc/limits.h"

namespace kvc {

struct RawPutRequest {
  std::vector<std::string> blocks;  // serialized kvcache.v1.Block, unvalidated
  bool write_through = false;
};

// INVALID_ARGUMENT when `raw` is not a well-formed PutRequest or has more
// than limits.max_batch_blocks blocks (reading stops there).
absl::StatusOr<RawPutRequest> ReadPutRequest(const grpc::ByteBuffer& raw, const Limits& limits);
// The same from one flat buffer (the UCX listener's receive buffer): each
// block's bytes are copied once out of `flat` into its own string.
absl::StatusOr<RawPutRequest> ReadPutRequest(absl::string_view flat, const Limits& limits);

}  // namespace kvc

#endif  // KVC_CACHESVC_SERVER_PUT_REQUEST_H_
