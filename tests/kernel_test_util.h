// Helpers for the kernel tests: random inputs, KV encoding in every dtype,
// the error measure the tolerances are stated in, and the list of optimised
// paths this machine can run.
#ifndef KVC_TESTS_KERNEL_TEST_UTIL_H_
#define KVC_TESTS_KERNEL_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "kernels/internal/backend.h"
#include "kernels/types.h"

namespace kvc::kernels::testing {

// n values ~ N(0, stddev^2), deterministic in `seed`.
std::vector<float> RandomFloats(size_t n, uint64_t seed, float stddev = 1.0f);
// n integers uniform in [lo, hi].
std::vector<int32_t> RandomInts(size_t n, uint64_t seed, int32_t lo, int32_t hi);

// `values` stored as `dtype` (round to nearest even), and back to fp32.
std::vector<uint8_t> Encode(DType dtype, absl::Span<const float> values);
std::vector<float> DecodeToFloat(DType dtype, const void* data, size_t n);
// values after a round trip through `dtype` (what a kernel reading that
// dtype sees).
std::vector<float> RoundTrip(DType dtype, absl::Span<const float> values);

// ||got - want||_2 / ||want||_2 (0 when both are zero; inf when only want
// is). The tolerance measure of every kernel comparison.
double RelErrorByNorm(absl::Span<const float> got, absl::Span<const float> want);
// Max |got - want| over elements where both are finite; inf where exactly one
// is not finite or they differ in infinity.
double MaxAbsDiff(absl::Span<const float> got, absl::Span<const float> want);

// The optimised CPU builds this processor runs ("cpu-x86-64-v4", ...), each
// compared against the reference by the tests. Call the table directly with
// already-validated arguments, or use ExecContext{Backend::kCpu} for the
// automatically picked one.
struct CpuVariant {
  std::string name;
  const internal::KernelTable* table;
};
std::vector<CpuVariant> CpuVariants();

// One way to run the kernels: a table called directly (one ISA build), or
// the public entry points (table == nullptr) on ctx.backend.
struct KernelPath {
  std::string name;
  ExecContext ctx;
  const internal::KernelTable* table = nullptr;
};
inline const KernelPath kReferencePath{"reference", ExecContext{Backend::kReference}, nullptr};
// Every ISA build this CPU runs, then the public CPU entry points.
std::vector<KernelPath> OptimisedKernelPaths();
// The reference, then OptimisedKernelPaths().
std::vector<KernelPath> AllKernelPaths();

}  // namespace kvc::kernels::testing

#endif  // KVC_TESTS_KERNEL_TEST_UTIL_H_
