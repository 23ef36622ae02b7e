// --help for the project's binaries: absl lists only the flags of files
// whose name contains the program's name, which a binary named
// `kvc-worker` built from `kvc_worker_main.cc` never matches.
#ifndef KVC_COMMON_HELP_FLAGS_H_
#define KVC_COMMON_HELP_FLAGS_H_

namespace kvc {

// Makes --help and --helpshort list the flags defined in source files whose
// path contains `file_fragment` (e.g. "kvc_worker_main"). Call before
// absl::ParseCommandLine.
void ShowFlagsOfFileInHelp(const char* file_fragment);

}  // namespace kvc

#endif  // KVC_COMMON_HELP_FLAGS_H_
