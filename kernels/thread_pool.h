// A fixed pool of worker threads for the optimised CPU kernels. ParallelFor
// splits [0, n) into contiguous ranges run on the workers and the calling
// thread, and returns when all are done. Thread-safe: concurrent
// ParallelFor calls are serialised (kernels are issued from one thread per
// pool in practice); a ParallelFor from inside a task runs inline.
//
// Dispatch is built for many small calls (a decode step issues about 40,
// each a few microseconds of work): a call is published with one atomic
// store, ranges are claimed with an atomic add, and idle workers spin for
// `spin_ns` before they sleep on a condition variable, so back-to-back
// calls never pay a futex wake-up (tens of microseconds on a VM). A worker
// that has not joined a call by the time the caller has run out of ranges is
// shut out of it: the caller never waits for a descheduled thread that has
// no work in hand.
#ifndef KVC_KERNELS_THREAD_POOL_H_
#define KVC_KERNELS_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kvc::kernels {

class ThreadPool {
 public:
  // How long an idle worker polls for the next call before it sleeps
  // (nanoseconds; the first 50 us with CPU pauses, then yielding): longer
  // than the gaps between the calls of a decode step and between steps.
  static constexpr int64_t kDefaultSpinNs = 500'000;

  // `num_threads` including the caller; 0 = std::thread::hardware_concurrency().
  explicit ThreadPool(int num_threads = 0, int64_t spin_ns = kDefaultSpinNs);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end) on disjoint ranges covering [0, n), each at most
  // `grain` long (grain 0 = n / num_threads, rounded up).
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  // gate_ layout: generation << kGenShift | kOpen (while the call accepts
  // workers) | the number of workers that joined it.
  static constexpr int kGenShift = 16;
  static constexpr uint64_t kOpen = uint64_t{1} << 15;
  static constexpr uint64_t kJoinedMask = kOpen - 1;

  void WorkerLoop();
  void RunTasks();
  // Waits (spinning, then sleeping) until gate_ carries a generation other
  // than `seen` or stop_ is set; returns gate_'s value.
  uint64_t AwaitCall(uint64_t seen);

  const int64_t spin_ns_;
  std::vector<std::thread> workers_;
  std::mutex call_mu_;  // one ParallelFor at a time
  // The current call, written by the caller before it opens the gate and
  // stable while any worker that joined it runs.
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, grain_ = 1;
  alignas(64) std::atomic<int64_t> next_{0};  // next range start
  alignas(64) std::atomic<uint64_t> gate_{0};
  alignas(64) std::atomic<int> finished_{0};  // joined workers done with the call
  alignas(64) std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::mutex sleep_mu_;
  std::condition_variable sleep_cv_;
};

// The process-wide pool: hardware_concurrency threads, or
// $KVC_KERNEL_THREADS; workers spin kDefaultSpinNs, or $KVC_KERNEL_SPIN_US
// microseconds (0: sleep as soon as idle).
ThreadPool& DefaultThreadPool();

}  // namespace kvc::kernels

#endif  // KVC_KERNELS_THREAD_POOL_H_
