// ChildProcess: a server the benchmark starts and must stop, also on error.
#ifndef KVC_BENCH_CHILD_PROCESS_H_
#define KVC_BENCH_CHILD_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace kvc::bench {

// Not thread-safe: one owner. The destructor stops the child (SIGTERM, then
// SIGKILL after the grace period) so an early return never leaks a server.
// The child also gets SIGKILL when the benchmark dies (PR_SET_PDEATHSIG).
class ChildProcess {
 public:
  // Runs argv[0] (searched in PATH) with stdout and stderr appended to
  // `log_path`.
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(const std::vector<std::string>& argv,
                                                             const std::string& log_path);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // True while the child has not exited.
  bool Running();
  // SIGTERM, waits up to `grace`, then SIGKILL. Returns the exit status as
  // waitpid reports it. Idempotent.
  int Stop(absl::Duration grace = absl::Seconds(20));
  pid_t pid() const { return pid_; }

 private:
  explicit ChildProcess(pid_t pid) : pid_(pid) {}
  pid_t pid_;
  bool reaped_ = false;
  int status_ = 0;
};

// A TCP port on 127.0.0.1 that was free a moment ago (bind to 0, close).
absl::StatusOr<int> PickFreePort();

}  // namespace kvc::bench

#endif  // KVC_BENCH_CHILD_PROCESS_H_
