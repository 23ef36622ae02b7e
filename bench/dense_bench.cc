// dense_bench: Linear (kernels/dense.h) at the model's shapes (stories15M:
// dim 288, hidden 768, vocab 32000) for one decode token (m = 1) and one
// prefill chunk (m = 512), fp32 and bf16 weights, put against the machine
// measured in the same run: its read bandwidth (bench/machine_probe.h) for
// decode, whose floor is reading W once (also timed on the same copies of W,
// alternating with the kernel: "floor"), and its fp32 FMA peak for prefill.
//
// By default every timed call reads a different copy of W, cycling through
// at least --rotate_bytes of copies, so decode reads W from DRAM as a model
// step does once its weights outgrow the caches; --rotate_bytes=0 times the
// same copy again and again (cache-warm for the small matrices). Timings are
// medians of repeated runs.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/machine_probe.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "kernels/dense.h"
#include "kernels/dtype.h"
#include "kernels/thread_pool.h"

ABSL_FLAG(std::string, backend, "cpu", "Kernel path: cpu or reference");
ABSL_FLAG(std::string, ms, "1,512", "Comma-separated row counts m (tokens per call)");
ABSL_FLAG(int, threads, 0, "CPU threads (0 = the default pool: all cores or $KVC_KERNEL_THREADS)");
ABSL_FLAG(std::string, rotate_bytes, "256MiB",
          "Cycle through copies of W totalling at least this much (0 = one copy, cache-warm)");
ABSL_FLAG(double, min_seconds, 0.5, "Repeat a cell until it has run this long (at least 5 runs)");
ABSL_FLAG(std::string, probe_bytes, "1GiB", "Buffer size of the read bandwidth probe");

namespace kvc::bench {
namespace {

using kernels::DType;
using Clock = std::chrono::steady_clock;

struct Shape {
  const char* name;
  int32_t k, n;
};
constexpr Shape kShapes[] = {
    {"classifier 288->32000", 288, 32000},
    {"w1/w3 288->768", 288, 768},
    {"w2 768->288", 768, 288},
};

// Median seconds of kernel(run) and of floor(run), runs alternating so both
// see the same machine (this VM's memory bandwidth drifts by 2x within
// minutes), after one warm-up run of each.
struct Timings {
  double kernel = 0, floor = 0;
};
absl::StatusOr<Timings> TimePair(const std::function<absl::Status(int)>& kernel,
                                 const std::function<void(int)>& floor) {
  const double min_s = absl::GetFlag(FLAGS_min_seconds);
  std::vector<double> k_runs, f_runs;
  double total = 0;
  for (int i = 0;; ++i) {
    auto t0 = Clock::now();
    KVC_RETURN_IF_ERROR(kernel(i));
    const double k = std::chrono::duration<double>(Clock::now() - t0).count();
    t0 = Clock::now();
    floor(i);
    const double f = std::chrono::duration<double>(Clock::now() - t0).count();
    if (i == 0) continue;
    k_runs.push_back(k);
    f_runs.push_back(f);
    total += k;
    if (k_runs.size() >= 5 && total >= min_s) break;
  }
  std::sort(k_runs.begin(), k_runs.end());
  std::sort(f_runs.begin(), f_runs.end());
  return Timings{k_runs[k_runs.size() / 2], f_runs[f_runs.size() / 2]};
}

// Random values in [-1, 1) (a cheap xorshift: the bench needs bytes, not
// statistics).
void FillRandom(float* out, size_t n, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    out[i] = static_cast<float>(static_cast<int64_t>(x >> 40) - (1 << 23)) / (1 << 23);
  }
}

struct Aligned {
  explicit Aligned(size_t bytes)
      : p(static_cast<char*>(::operator new[](std::max<size_t>(bytes, 64), std::align_val_t(64)))) {}
  ~Aligned() { ::operator delete[](p, std::align_val_t(64)); }
  Aligned(const Aligned&) = delete;
  char* p;
};

absl::Status RunCell(const kernels::ExecContext& ctx, const Shape& shape, int64_t m, DType dtype,
                     uint64_t rotate_bytes, const MachineProbe& probe) {
  const size_t w_elems = static_cast<size_t>(shape.n) * shape.k;
  const size_t w_bytes = w_elems * kernels::DTypeSize(dtype);
  const int copies =
      static_cast<int>(std::max<uint64_t>(1, (rotate_bytes + w_bytes - 1) / w_bytes));
  std::vector<float> w32(w_elems);
  FillRandom(w32.data(), w_elems, shape.n);
  std::vector<std::unique_ptr<Aligned>> w;
  for (int c = 0; c < copies; ++c) {
    w.push_back(std::make_unique<Aligned>(w_bytes));
    if (dtype == DType::kF32) {
      std::memcpy(w.back()->p, w32.data(), w_bytes);
    } else {
      auto* h = reinterpret_cast<uint16_t*>(w.back()->p);
      for (size_t i = 0; i < w_elems; ++i) h[i] = kernels::FloatToBF16(w32[i]);
    }
  }
  Aligned x(static_cast<size_t>(m) * shape.k * 4), y(static_cast<size_t>(m) * shape.n * 4);
  FillRandom(reinterpret_cast<float*>(x.p), static_cast<size_t>(m) * shape.k, 7);
  kernels::LinearArgs a;
  a.x = reinterpret_cast<const float*>(x.p);
  a.m = m;
  a.k = shape.k;
  a.n = shape.n;
  a.w_dtype = dtype;
  a.y = reinterpret_cast<float*>(y.p);
  // The floor: reading a copy of W once, half the rotation away from the
  // kernel's, so neither warms the cache for the other.
  KVC_ASSIGN_OR_RETURN(
      const Timings t,
      TimePair(
          [&](int run) {
            a.w = w[run % copies]->p;
            return kernels::Linear(ctx, a);
          },
          [&](int run) { TimeReadOnce(*ctx.pool, w[(run + copies / 2) % copies]->p, w_bytes); }));
  const double s = t.kernel, floor_s = t.floor;
  const double bytes = static_cast<double>(w_bytes) + 4.0 * m * (shape.k + shape.n);
  const double flops = 2.0 * m * shape.n * shape.k;
  const double gbps = bytes / s / 1e9, gflops = flops / s / 1e9;
  std::printf(
      "| %-22s | %4lld | %-4s | %9.1f | %6.2f | %6.1f | %6.0f%% | %9.1f | %6.0f%% | %7.1f | %6.0f%% |\n",
      shape.name, static_cast<long long>(m), std::string(kernels::DTypeName(dtype)).c_str(),
      s * 1e6, w_bytes / 1e6, gbps, 100 * gbps / probe.read_gbps, floor_s * 1e6,
      100 * floor_s / s, gflops, 100 * gflops / probe.peak_gflops);
  std::fflush(stdout);
  return absl::OkStatus();
}

absl::Status Main() {
  kernels::ExecContext ctx;
  const std::string b = absl::GetFlag(FLAGS_backend);
  if (b == "reference") {
    ctx.backend = kernels::Backend::kReference;
  } else if (b != "cpu") {
    return absl::InvalidArgumentError(absl::StrCat("--backend must be cpu or reference, got '", b, "'"));
  }
  std::vector<int64_t> ms;
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_ms), ',', absl::SkipEmpty())) {
    int64_t m;
    if (!absl::SimpleAtoi(part, &m) || m <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("--ms: '", part, "' is not a positive integer"));
    }
    ms.push_back(m);
  }
  KVC_ASSIGN_OR_RETURN(uint64_t probe_bytes, ParseByteSize(absl::GetFlag(FLAGS_probe_bytes)));
  KVC_ASSIGN_OR_RETURN(uint64_t rotate_bytes, ParseByteSize(absl::GetFlag(FLAGS_rotate_bytes)));
  std::unique_ptr<kernels::ThreadPool> own_pool;
  kernels::ThreadPool* pool = &kernels::DefaultThreadPool();
  if (const int t = absl::GetFlag(FLAGS_threads); t > 0) {
    own_pool = std::make_unique<kernels::ThreadPool>(t);
    pool = own_pool.get();
  }
  ctx.pool = pool;

  const MachineProbe probe = ProbeMachine(*pool, probe_bytes);
  std::printf("# dense_bench backend=%s: %s, %d threads\n", b.c_str(), probe.cpu.c_str(),
              probe.threads);
  std::printf("# machine: read %.1f GB/s, memcpy %.1f GB/s, fp32 FMA peak %.0f GFLOP/s\n",
              probe.read_gbps, probe.memcpy_gbps, probe.peak_gflops);
  std::printf("# W rotated over >= %s of copies (%s)\n", FormatBytes(rotate_bytes).c_str(),
              rotate_bytes > 0 ? "read from memory" : "cache-warm");
  std::printf("| %-22s | %4s | %-4s | %9s | %6s | %6s | %7s | %9s | %7s | %7s | %7s |\n", "Linear",
              "m", "W", "time (us)", "W (MB)", "GB/s", "of read", "floor (us)", "of floor",
              "GFLOP/s", "of peak");
  std::printf("|%s|------|------|-----------|--------|--------|---------|-----------|---------|"
              "---------|---------|\n",
              std::string(24, '-').c_str());
  for (int64_t m : ms) {
    for (const Shape& shape : kShapes) {
      for (DType dtype : {DType::kF32, DType::kBF16}) {
        KVC_RETURN_IF_ERROR(RunCell(ctx, shape, m, dtype, rotate_bytes, probe));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace kvc::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Linear (kernels/dense.h) at the stories15M shapes, decode (m = 1) and a prefill chunk "
      "(m = 512), fp32 and bf16 weights, against the machine's read bandwidth and FMA peak "
      "measured in the same run.\n"
      "  dense_bench [--backend=cpu|reference] [--ms=1,512] [--threads=0] [--rotate_bytes=256MiB]");
  absl::ParseCommandLine(argc, argv);
  const absl::Status s = kvc::bench::Main();
  if (!s.ok()) {
    std::fprintf(stderr, "dense_bench: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}
