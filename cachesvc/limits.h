// Limits: the size limits that are part of the wire contract (returned by the
// Info call). A request that violates one is refused whole, and the error
// names the limit and what was sent.
#ifndef KVC_CACHESVC_LIMITS_H_
#define KVC_CACHESVC_LIMITS_H_

#include <cstdint>

#include "absl/status/status.h"

namespace kvcache::v1 {
class Limits;
}

namespace kvc {

struct Limits {
  // Bytes of K plus V in one block. Default 32 MiB.
  uint64_t max_block_bytes = 32ull << 20;
  // Blocks in one Put, keys in one Get, Delete or Pin. Default 256.
  uint32_t max_batch_blocks = 256;
  // Largest gRPC message in either direction. Default 256 MiB. Must hold one
  // block of max_block_bytes plus framing.
  uint64_t max_message_bytes = 256ull << 20;
  // Longest pin lease. Default 10 minutes.
  uint32_t max_lease_ms = 600'000;
  // Hashes in one Lookup chain. Default 65536 (a 1M-token context of 16-token blocks).
  uint32_t max_lookup_hashes = 65536;
  // Layers in one Lookup. Default 256.
  uint32_t max_lookup_layers = 256;
  // Bytes in a tenant or model id. Default 128.
  uint32_t max_key_string_bytes = 128;

  absl::Status Validate() const;
  void ToProto(kvcache::v1::Limits* p) const;
};

}  // namespace kvc

#endif  // KVC_CACHESVC_LIMITS_H_
