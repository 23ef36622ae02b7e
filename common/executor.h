// A fixed pool of threads with a bounded queue. Server handlers hand slow work
// (disk, checksums over megabytes) to it so gRPC reactor threads never block.
#ifndef KVC_COMMON_EXECUTOR_H_
#define KVC_COMMON_EXECUTOR_H_

#include <cstddef>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"

namespace kvc {

// Thread-safe. Tasks run in FIFO order on `threads` workers.
class BoundedExecutor {
 public:
  // REQUIRES: threads >= 1, max_queue >= 1.
  BoundedExecutor(std::string name, int threads, size_t max_queue);
  // Runs every queued task, then joins the workers.
  ~BoundedExecutor();

  // Queues `task`. Returns false, and drops it, when max_queue tasks are
  // already waiting or Shutdown() was called: the caller refuses its request.
  bool TrySubmit(absl::AnyInvocable<void()> task);

  // Stops accepting, runs what is queued, joins. Idempotent.
  void Shutdown();

  size_t queued() const;
  const std::string& name() const { return name_; }

 private:
  void WorkerLoop();

  const std::string name_;
  const size_t max_queue_;
  mutable absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace kvc

#endif  // KVC_COMMON_EXECUTOR_H_
