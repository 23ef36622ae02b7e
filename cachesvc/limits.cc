#include "cachesvc/limits.h"

#include "absl/strings/str_cat.h"
#include "kvcache/v1/cache.pb.h"

namespace kvc {

absl::Status Limits::Validate() const {
  if (max_block_bytes == 0) return absl::InvalidArgumentError("limits.max_block_bytes must be > 0");
  if (max_batch_blocks == 0) return absl::InvalidArgumentError("limits.max_batch_blocks must be > 0");
  if (max_message_bytes < max_block_bytes + (1 << 16)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "limits.max_message_bytes (", max_message_bytes,
        ") must exceed limits.max_block_bytes (", max_block_bytes, ") by at least 64 KiB"));
  }
  if (max_message_bytes > (2ull << 30) - 1) {
    return absl::InvalidArgumentError("limits.max_message_bytes must be < 2 GiB");
  }
  if (max_lease_ms == 0) return absl::InvalidArgumentError("limits.max_lease_ms must be > 0");
  if (max_lookup_hashes == 0 || max_lookup_layers == 0 || max_key_string_bytes == 0) {
    return absl::InvalidArgumentError("limits.max_lookup_* and max_key_string_bytes must be > 0");
  }
  if (max_key_string_bytes > 65535) {
    return absl::InvalidArgumentError("limits.max_key_string_bytes must be <= 65535");
  }
  return absl::OkStatus();
}

void Limits::ToProto(kvcache::v1::Limits* p) const {
  p->set_max_block_bytes(max_block_bytes);
  p->set_max_batch_blocks(max_batch_blocks);
  p->set_max_message_bytes(max_message_bytes);
  p->set_max_lease_ms(max_lease_ms);
  p->set_max_lookup_hashes(max_lookup_hashes);
  p->set_max_lookup_layers(max_lookup_layers);
  p->set_max_key_string_bytes(max_key_string_bytes);
}

}  // namespace kvc
