// What this machine can do, measured in the same run as the kernels so every
// kernel time can be put against it: memory bandwidth (a large parallel
// memcpy, and a parallel read-only pass) and fp32 FMA peak.
#ifndef KVC_BENCH_MACHINE_PROBE_H_
#define KVC_BENCH_MACHINE_PROBE_H_

#include <cstddef>
#include <string>

#include "kernels/thread_pool.h"

namespace kvc::bench {

struct MachineProbe {
  double memcpy_gbps = 0;  // bytes copied per second / 1e9 (each byte read once, written once)
  double read_gbps = 0;    // bytes read per second / 1e9
  double peak_gflops = 0;  // fp32 FMA peak of all threads (2 flops per FMA)
  int threads = 0;
  std::string cpu;  // model name from /proc/cpuinfo
};

// Copies / reads `bytes` (>= 256 MiB for a real number) with every thread.
MachineProbe ProbeMachine(kernels::ThreadPool& pool, size_t bytes);

// Seconds to read `bytes` at `data` once with every thread (the "read the
// keys once" floor, measured on the buffer itself); the sum defeats elision.
double TimeReadOnce(kernels::ThreadPool& pool, const void* data, size_t bytes);

}  // namespace kvc::bench

#endif  // KVC_BENCH_MACHINE_PROBE_H_
