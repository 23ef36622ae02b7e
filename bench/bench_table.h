// What the end-to-end benchmarks share: the median of timed runs, one row
// of a printed table, and main() (allocator tuning, --help from the
// benchmark's own flags, the run, its error).
#ifndef KVC_BENCH_BENCH_TABLE_H_
#define KVC_BENCH_BENCH_TABLE_H_

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "common/allocator.h"
#include "common/help_flags.h"

namespace kvc::bench {

// The middle value (the upper one of an even count); 0 when empty.
inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

inline void Row(const std::string& name, const std::string& value, const std::string& note) {
  std::printf("%-58s %14s  %s\n", name.c_str(), value.c_str(), note.c_str());
  std::fflush(stdout);
}

// main() of a benchmark: `name` is its binary (and source file) name.
inline int BenchMain(int argc, char** argv, const char* name, const char* usage, absl::Status (*run)()) {
  TuneAllocatorForLargeBuffers();
  absl::SetProgramUsageMessage(usage);
  ShowFlagsOfFileInHelp(name);
  absl::ParseCommandLine(argc, argv);
  const absl::Status s = run();
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n", name, s.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace kvc::bench

#endif  // KVC_BENCH_BENCH_TABLE_H_
