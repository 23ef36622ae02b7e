// Compiled with -march=native: the probes should use the widest vectors the
// kernels use on this machine.
#include "bench/machine_probe.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>
#include <vector>

namespace kvc::bench {
namespace {

using Clock = std::chrono::steady_clock;
typedef float v16f __attribute__((vector_size(64)));

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

// 12 independent FMA chains of 16 lanes, each in its own register: enough to
// cover FMA latency x ports (Zen 4/5 and Intel: 4 cycles x 2 ports). The empty
// asm keeps every chain in a register and stops the compiler from folding.
float FmaLoop(int64_t iters, float seed) {
  v16f a0 = (v16f){} + seed, a1 = a0 + 1, a2 = a0 + 2, a3 = a0 + 3, a4 = a0 + 4, a5 = a0 + 5;
  v16f a6 = a0 + 6, a7 = a0 + 7, a8 = a0 + 8, a9 = a0 + 9, a10 = a0 + 10, a11 = a0 + 11;
  const v16f m = (v16f){} + 0.999999f, c = (v16f){} + 1e-7f;
  for (int64_t it = 0; it < iters; ++it) {
    a0 = a0 * m + c, a1 = a1 * m + c, a2 = a2 * m + c, a3 = a3 * m + c;
    a4 = a4 * m + c, a5 = a5 * m + c, a6 = a6 * m + c, a7 = a7 * m + c;
    a8 = a8 * m + c, a9 = a9 * m + c, a10 = a10 * m + c, a11 = a11 * m + c;
    asm volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6),
                 "+v"(a7), "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11));
  }
  const v16f s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) + ((a8 + a9) + (a10 + a11));
  float out = 0;
  for (int l = 0; l < 16; ++l) out += s[l];
  return out;
}

}  // namespace

double TimeReadOnce(kernels::ThreadPool& pool, const void* data, size_t bytes) {
  const size_t vecs = bytes / sizeof(v16f);
  const auto* p = static_cast<const v16f*>(data);
  std::atomic<float> sink{0};
  const auto t0 = Clock::now();
  pool.ParallelFor(static_cast<int64_t>(vecs), (vecs + pool.num_threads() - 1) / pool.num_threads(),
                   [&](int64_t b, int64_t e) {
                     v16f s0 = {}, s1 = {}, s2 = {}, s3 = {};
                     int64_t i = b;
                     for (; i + 4 <= e; i += 4) {
                       s0 += p[i];
                       s1 += p[i + 1];
                       s2 += p[i + 2];
                       s3 += p[i + 3];
                     }
                     for (; i < e; ++i) s0 += p[i];
                     s0 += s1 + s2 + s3;
                     sink.store(sink.load() + s0[0]);
                   });
  return Seconds(t0, Clock::now());
}

MachineProbe ProbeMachine(kernels::ThreadPool& pool, size_t bytes) {
  MachineProbe m;
  m.threads = pool.num_threads();
  m.cpu = CpuModel();
  bytes = bytes / 4096 * 4096;
  std::unique_ptr<char[]> src(new (std::align_val_t(64)) char[bytes]);
  std::unique_ptr<char[]> dst(new (std::align_val_t(64)) char[bytes]);
  std::memset(src.get(), 1, bytes);
  std::memset(dst.get(), 2, bytes);
  const int64_t chunks = 256;
  double best_copy = 1e30, best_read = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = Clock::now();
    pool.ParallelFor(chunks, 0, [&](int64_t b, int64_t e) {
      const size_t per = bytes / chunks;
      std::memcpy(dst.get() + b * per, src.get() + b * per, (e - b) * per);
    });
    best_copy = std::min(best_copy, Seconds(t0, Clock::now()));
    best_read = std::min(best_read, TimeReadOnce(pool, src.get(), bytes));
  }
  m.memcpy_gbps = bytes / best_copy / 1e9;
  m.read_gbps = bytes / best_read / 1e9;

  const int64_t iters = 20'000'000;
  std::atomic<float> sink{0};
  const auto t0 = Clock::now();
  pool.ParallelFor(m.threads, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) sink.store(sink.load() + FmaLoop(iters, 0.5f + i));
  });
  const double s = Seconds(t0, Clock::now());
  m.peak_gflops = 2.0 * 12 * 16 * iters * m.threads / s / 1e9;
  return m;
}

}  // namespace kvc::bench
