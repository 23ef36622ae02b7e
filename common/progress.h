// A progress bar for long command-line runs, on stderr. On a terminal it
// redraws one line; elsewhere (CI logs, pipes) it prints at most one line per
// 10% so logs stay short. Not thread-safe: one owner updates it.
#ifndef KVC_COMMON_PROGRESS_H_
#define KVC_COMMON_PROGRESS_H_

#include <cstdint>
#include <string>

#include "absl/time/time.h"

namespace kvc {

class ProgressBar {
 public:
  // `total` units of work, shown as `unit` ("blocks"); bytes, when reported
  // through Add, give a throughput.
  ProgressBar(std::string label, uint64_t total, std::string unit);
  ~ProgressBar();

  void Add(uint64_t done, uint64_t bytes = 0);
  // Prints the final line (once).
  void Finish();

 private:
  void Draw(bool final);

  const std::string label_, unit_;
  const uint64_t total_;
  const bool tty_;
  const absl::Time start_;
  uint64_t done_ = 0, bytes_ = 0;
  int last_decile_ = -1;
  absl::Time last_draw_ = absl::InfinitePast();
  bool finished_ = false;
};

}  // namespace kvc

#endif  // KVC_COMMON_PROGRESS_H_
