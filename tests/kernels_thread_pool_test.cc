// ThreadPool (kernels/thread_pool.h): every index runs exactly once, from
// back-to-back calls (workers spinning), after workers fell asleep, from
// inside a task, and from several calling threads at once.
#include "kernels/thread_pool.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace kvc::kernels {
namespace {

// Runs ParallelFor over [0, n) and checks every index was visited once.
void ExpectEachIndexOnce(ThreadPool& pool, int64_t n, int64_t grain) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
  pool.ParallelFor(n, grain, [&](int64_t begin, int64_t end) {
    ASSERT_LE(0, begin);
    ASSERT_LT(begin, end);
    ASSERT_LE(end, n);
    if (grain > 0) {
      ASSERT_LE(end - begin, grain);
    }
    for (int64_t i = begin; i < end; ++i) hits[i].fetch_add(1);
  });
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "index " << i << " of " << n;
}

TEST(ThreadPoolTest, EveryIndexOnceAcrossShapes) {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.num_threads(), threads);
    for (int64_t n : {1, 2, 7, 64, 1000}) {
      for (int64_t grain : {0, 1, 3, 64}) ExpectEachIndexOnce(pool, n, grain);
    }
  }
}

TEST(ThreadPoolTest, ManyBackToBackCalls) {
  // The decode pattern: thousands of tiny calls while workers spin.
  ThreadPool pool(4);
  std::atomic<int64_t> sum{0};
  for (int call = 0; call < 20000; ++call) {
    pool.ParallelFor(8, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) sum.fetch_add(i + 1);
    });
  }
  EXPECT_EQ(sum.load(), int64_t{20000} * 36);
}

TEST(ThreadPoolTest, WorkersWakeAfterSleeping) {
  // No spinning: every call finds the workers asleep on the condition variable.
  ThreadPool pool(3, /*spin_ns=*/0);
  for (int call = 0; call < 200; ++call) {
    ExpectEachIndexOnce(pool, 16, 1);
    if (call % 50 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

TEST(ThreadPoolTest, AllThreadsTakePart) {
  // With a task that waits for a second thread, a call only finishes if a
  // worker joins it: the worker must be woken.
  ThreadPool pool(2, /*spin_ns=*/0);
  std::this_thread::sleep_for(std::chrono::milliseconds(5));  // let the worker sleep
  std::atomic<int> arrived{0};
  pool.ParallelFor(2, 1, [&](int64_t, int64_t) {
    arrived.fetch_add(1);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (arrived.load() < 2 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  });
  EXPECT_EQ(arrived.load(), 2);
}

TEST(ThreadPoolTest, NestedCallRunsInline) {
  ThreadPool pool(2);
  std::atomic<int64_t> inner{0};
  pool.ParallelFor(4, 1, [&](int64_t, int64_t) {
    pool.ParallelFor(10, 3, [&](int64_t begin, int64_t end) { inner.fetch_add(end - begin); });
  });
  EXPECT_EQ(inner.load(), 40);
}

TEST(ThreadPoolTest, ConcurrentCallersAreSerialised) {
  ThreadPool pool(3);
  std::vector<std::thread> callers;
  std::atomic<int64_t> total{0};
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (int call = 0; call < 500; ++call) {
        pool.ParallelFor(32, 2, [&](int64_t begin, int64_t end) { total.fetch_add(end - begin); });
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(total.load(), int64_t{4} * 500 * 32);
}

TEST(ThreadPoolTest, DestroyWhileWorkersSpinOrSleep) {
  for (int64_t spin_ns : {int64_t{0}, ThreadPool::kDefaultSpinNs}) {
    ThreadPool pool(4, spin_ns);
    ExpectEachIndexOnce(pool, 100, 1);
  }  // the destructor joins spinning and sleeping workers alike
}

}  // namespace
}  // namespace kvc::kernels
