// Hashes of the wire contract: the 128-bit chained prefix hash that names a
// block, and the 64-bit checksum of a block's K and V bytes.
#ifndef KVC_COMMON_HASH_H_
#define KVC_COMMON_HASH_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "absl/strings/string_view.h"

namespace kvc {

struct Hash128 {
  uint64_t hi = 0;
  uint64_t lo = 0;

  friend bool operator==(const Hash128&, const Hash128&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const Hash128& x) {
    return H::combine(std::move(h), x.hi, x.lo);
  }
  // 32 lowercase hex digits, hi first.
  std::string ToHex() const;
};

// hash(parent, tokens): XXH3-128, seed 0, over parent.hi, parent.lo (little
// endian) then the token ids as little-endian int32. The first block of a
// sequence uses the all-zero parent.
Hash128 ChainHash(const Hash128& parent, std::span<const int32_t> tokens);

// XXH3-64, seed 0, of `k` followed by `v` (as if concatenated).
uint64_t BlockChecksum(std::span<const std::byte> k, std::span<const std::byte> v);
uint64_t BlockChecksum(absl::string_view k, absl::string_view v);

// XXH3-64 of arbitrary bytes, for sharding and placement.
uint64_t Hash64(absl::string_view bytes, uint64_t seed = 0);

}  // namespace kvc

#endif  // KVC_COMMON_HASH_H_
