#include "common/hash.h"

#include <cstring>

#include "absl/strings/str_format.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kvc {

std::string Hash128::ToHex() const { return absl::StrFormat("%016x%016x", hi, lo); }

Hash128 ChainHash(const Hash128& parent, std::span<const int32_t> tokens) {
  XXH3_state_t state;
  XXH3_128bits_reset(&state);
  unsigned char head[16];
  for (int i = 0; i < 8; ++i) head[i] = static_cast<unsigned char>(parent.hi >> (8 * i));
  for (int i = 0; i < 8; ++i) head[8 + i] = static_cast<unsigned char>(parent.lo >> (8 * i));
  XXH3_128bits_update(&state, head, sizeof(head));
  for (int32_t t : tokens) {
    const uint32_t u = static_cast<uint32_t>(t);
    unsigned char b[4] = {static_cast<unsigned char>(u), static_cast<unsigned char>(u >> 8),
                          static_cast<unsigned char>(u >> 16), static_cast<unsigned char>(u >> 24)};
    XXH3_128bits_update(&state, b, sizeof(b));
  }
  const XXH128_hash_t h = XXH3_128bits_digest(&state);
  return Hash128{h.high64, h.low64};
}

uint64_t BlockChecksum(std::span<const std::byte> k, std::span<const std::byte> v) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  XXH3_64bits_update(&state, k.data(), k.size());
  XXH3_64bits_update(&state, v.data(), v.size());
  return XXH3_64bits_digest(&state);
}

uint64_t BlockChecksum(absl::string_view k, absl::string_view v) {
  return BlockChecksum(std::as_bytes(std::span(k.data(), k.size())),
                       std::as_bytes(std::span(v.data(), v.size())));
}

uint64_t Hash64(absl::string_view bytes, uint64_t seed) {
  return XXH3_64bits_withSeed(bytes.data(), bytes.size(), seed);
}

}  // namespace kvc
