#include "common/help_flags.h"

#include <string>

#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"

namespace kvc {

void ShowFlagsOfFileInHelp(const char* file_fragment) {
  const std::string fragment = file_fragment;
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [fragment](absl::string_view file) { return absl::StrContains(file, fragment); };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
}

}  // namespace kvc
