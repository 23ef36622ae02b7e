#include "common/units.h"

#include <cctype>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kvc {

absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text) {
  absl::string_view t = absl::StripAsciiWhitespace(text);
  size_t i = 0;
  while (i < t.size() && std::isdigit(static_cast<unsigned char>(t[i]))) ++i;
  uint64_t number = 0;
  if (i == 0 || !absl::SimpleAtoi(t.substr(0, i), &number)) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a byte size (e.g. 512MiB)"));
  }
  const std::string unit = absl::AsciiStrToLower(absl::StripAsciiWhitespace(t.substr(i)));
  uint64_t mult = 0;
  if (unit.empty() || unit == "b") mult = 1;
  else if (unit == "kib" || unit == "k") mult = 1ull << 10;
  else if (unit == "mib" || unit == "m") mult = 1ull << 20;
  else if (unit == "gib" || unit == "g") mult = 1ull << 30;
  else if (unit == "tib" || unit == "t") mult = 1ull << 40;
  else if (unit == "kb") mult = 1000ull;
  else if (unit == "mb") mult = 1000ull * 1000;
  else if (unit == "gb") mult = 1000ull * 1000 * 1000;
  else if (unit == "tb") mult = 1000ull * 1000 * 1000 * 1000;
  else {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' has unknown unit '", unit, "' (use B, KiB, MiB, GiB, TiB)"));
  }
  if (number > std::numeric_limits<uint64_t>::max() / mult) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' overflows 64 bits"));
  }
  return number * mult;
}

std::string FormatBytes(uint64_t bytes) {
  static const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB"};
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  double v = static_cast<double>(bytes) / 1024.0;
  int u = 0;
  while (v >= 1024.0 && u < 3) {
    v /= 1024.0;
    ++u;
  }
  return absl::StrFormat("%.2f %s", v, kUnits[u]);
}

}  // namespace kvc
