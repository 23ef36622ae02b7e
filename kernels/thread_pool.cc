#include "kernels/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>

namespace kvc::kernels {
namespace {

thread_local bool in_pool_task = false;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Polls `done` until it holds (true) or `spin_ns` has passed (false): with
// CPU pauses for the first kPauseNs, then yielding the CPU between polls,
// so that on a loaded machine a spinning thread gives way to runnable ones
// (a sched_yield costs about a microsecond when nothing else is runnable).
constexpr int64_t kPauseNs = 50'000;
template <class Done>
bool SpinUntil(int64_t spin_ns, const Done& done) {
  if (spin_ns <= 0) return done();
  const auto start = std::chrono::steady_clock::now();
  const auto pause_end = start + std::chrono::nanoseconds(std::min(spin_ns, kPauseNs));
  const auto deadline = start + std::chrono::nanoseconds(spin_ns);
  for (int i = 1;; ++i) {
    if (done()) return true;
    CpuRelax();
    if (i % 256 == 0 && std::chrono::steady_clock::now() >= pause_end) break;
  }
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::yield();
  }
  return done();
}

}  // namespace

ThreadPool::ThreadPool(int num_threads, int64_t spin_ns) : spin_ns_(std::max<int64_t>(0, spin_ns)) {
  if (num_threads <= 0) num_threads = std::max(1u, std::thread::hardware_concurrency());
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  { std::lock_guard<std::mutex> lock(sleep_mu_); }
  sleep_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::RunTasks() {
  // REQUIRES: the caller opened the current call, or this worker joined it.
  in_pool_task = true;
  for (;;) {
    const int64_t begin = next_.fetch_add(grain_, std::memory_order_relaxed);
    if (begin >= n_) break;
    (*fn_)(begin, std::min(n_, begin + grain_));
  }
  in_pool_task = false;
}

uint64_t ThreadPool::AwaitCall(uint64_t seen) {
  uint64_t v = 0;
  const auto changed = [&] {
    v = gate_.load();
    return (v >> kGenShift) != seen || stop_.load(std::memory_order_relaxed);
  };
  if (SpinUntil(spin_ns_, changed)) return v;
  std::unique_lock<std::mutex> lock(sleep_mu_);
  // Paired with ParallelFor's store of gate_ then load of sleepers_ (both
  // sequentially consistent): either the caller sees this sleeper and
  // notifies under sleep_mu_, or the predicate below sees the new call.
  sleepers_.fetch_add(1);
  sleep_cv_.wait(lock, [&] { return changed() || stop_.load(); });
  sleepers_.fetch_sub(1);
  return v;
}

void ThreadPool::WorkerLoop() {
  uint64_t seen = 0;
  for (;;) {
    uint64_t v = AwaitCall(seen);
    if (stop_.load()) return;
    const uint64_t gen = v >> kGenShift;
    seen = gen;
    // Join while the gate is open; a closed gate means the caller already
    // ran out of ranges, and this worker sits the call out.
    bool joined = false;
    while ((v & kOpen) != 0 && (v >> kGenShift) == gen) {
      if (gate_.compare_exchange_weak(v, v + 1, std::memory_order_acquire)) {
        joined = true;
        break;
      }
    }
    if (!joined) continue;
    RunTasks();
    finished_.fetch_add(1, std::memory_order_release);
  }
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int64_t threads = num_threads();
  if (grain <= 0) grain = (n + threads - 1) / threads;
  if (in_pool_task || workers_.empty() || grain >= n) {
    for (int64_t b = 0; b < n; b += grain) fn(b, std::min(n, b + grain));
    return;
  }
  std::lock_guard<std::mutex> call(call_mu_);
  // No worker reads these now: every one that joined the last call has
  // finished it, and the others join only through a newer generation.
  fn_ = &fn;
  n_ = n;
  grain_ = grain;
  next_.store(0, std::memory_order_relaxed);
  finished_.store(0, std::memory_order_relaxed);
  const uint64_t gen = (gate_.load(std::memory_order_relaxed) >> kGenShift) + 1;
  gate_.store(gen << kGenShift | kOpen);  // publishes the fields above
  if (sleepers_.load() > 0) {
    { std::lock_guard<std::mutex> lock(sleep_mu_); }
    sleep_cv_.notify_all();
  }
  RunTasks();
  // Every range is claimed: close the gate, then wait for the workers that
  // joined (they may still be running a range).
  const int joined = static_cast<int>(gate_.fetch_and(~kOpen, std::memory_order_acq_rel) & kJoinedMask);
  const auto all_finished = [&] { return finished_.load(std::memory_order_acquire) >= joined; };
  if (!SpinUntil(kPauseNs, all_finished)) {
    while (!all_finished()) std::this_thread::yield();
  }
}

ThreadPool& DefaultThreadPool() {
  static ThreadPool* pool = [] {
    int n = 0;
    if (const char* env = std::getenv("KVC_KERNEL_THREADS")) n = std::atoi(env);
    int64_t spin_ns = ThreadPool::kDefaultSpinNs;
    if (const char* env = std::getenv("KVC_KERNEL_SPIN_US")) spin_ns = std::atoll(env) * 1000;
    return new ThreadPool(n, spin_ns);
  }();
  return *pool;
}

}  // namespace kvc::kernels
