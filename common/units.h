// Human-readable byte sizes for flags, YAML and logs.
#ifndef KVC_COMMON_UNITS_H_
#define KVC_COMMON_UNITS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvc {

// Parses "1073741824", "512KiB", "64MiB", "1GiB", "2TiB" (binary) or "1KB",
// "1MB", "1GB" (decimal); case-insensitive, optional space before the unit.
// INVALID_ARGUMENT names the text on anything else or on overflow.
absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text);

// "1.50 GiB", "256.00 KiB", "17 B".
std::string FormatBytes(uint64_t bytes);

}  // namespace kvc

#endif  // KVC_COMMON_UNITS_H_
