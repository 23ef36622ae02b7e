// A fixed pool of worker threads for the optimised CPU kernels. ParallelFor
// splits [0, n) into contiguous ranges run on the workers and the calling
// thread, and returns when all are done. Thread-safe: concurrent
// ParallelFor calls are serialised (kernels are issued from one thread per
// pool in practice); a ParallelFor from inside a task runs inline.
#ifndef KVC_KERNELS_THREAD_POOL_H_
#define KVC_KERNELS_THREAD_POOL_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kvc::kernels {

class ThreadPool {
 public:
  // `num_threads` including the caller; 0 = std::thread::hardware_concurrency().
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end) on disjoint ranges covering [0, n), each at most
  // `grain` long (grain 0 = n / num_threads, rounded up).
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void WorkerLoop();
  void RunTasks();

  std::vector<std::thread> workers_;
  std::mutex call_mu_;  // one ParallelFor at a time
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;  // guarded by mu_
  int64_t n_ = 0, grain_ = 1;
  int64_t next_ = 0;       // next range start, guarded by mu_
  int64_t generation_ = 0; // bumps per ParallelFor, guarded by mu_
  int active_ = 0;         // workers inside the current call, guarded by mu_
  bool stop_ = false;
};

// The process-wide pool (hardware_concurrency threads, or $KVC_KERNEL_THREADS).
ThreadPool& DefaultThreadPool();

}  // namespace kvc::kernels

#endif  // KVC_KERNELS_THREAD_POOL_H_
