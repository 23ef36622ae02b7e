#include "tests/kernel_test_util.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "kernels/dtype.h"

namespace kvc::kernels::testing {

std::vector<float> RandomFloats(size_t n, uint64_t seed, float stddev) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> out(n);
  for (float& x : out) x = dist(rng);
  return out;
}

std::vector<int32_t> RandomInts(size_t n, uint64_t seed, int32_t lo, int32_t hi) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(lo, hi);
  std::vector<int32_t> out(n);
  for (int32_t& x : out) x = dist(rng);
  return out;
}

std::vector<uint8_t> Encode(DType dtype, absl::Span<const float> values) {
  std::vector<uint8_t> out(values.size() * DTypeSize(dtype));
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(out.data() + 4 * i, &values[i], 4);
    } else {
      const uint16_t h = dtype == DType::kBF16 ? FloatToBF16(values[i]) : FloatToF16(values[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

std::vector<float> DecodeToFloat(DType dtype, const void* data, size_t n) {
  std::vector<float> out(n);
  const auto* bytes = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(&out[i], bytes + 4 * i, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, bytes + 2 * i, 2);
      out[i] = dtype == DType::kBF16 ? BF16ToFloat(h) : F16ToFloat(h);
    }
  }
  return out;
}

std::vector<float> RoundTrip(DType dtype, absl::Span<const float> values) {
  const std::vector<uint8_t> bytes = Encode(dtype, values);
  return DecodeToFloat(dtype, bytes.data(), values.size());
}

double RelErrorByNorm(absl::Span<const float> got, absl::Span<const float> want) {
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  double diff = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    diff += d * d;
    norm += static_cast<double>(want[i]) * want[i];
  }
  if (!std::isfinite(diff)) return std::numeric_limits<double>::infinity();
  if (norm == 0) return diff == 0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::sqrt(diff / norm);
}

double MaxAbsDiff(absl::Span<const float> got, absl::Span<const float> want) {
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool fg = std::isfinite(got[i]), fw = std::isfinite(want[i]);
    if (fg != fw || (!fg && got[i] != want[i])) return std::numeric_limits<double>::infinity();
    if (fg) worst = std::max(worst, std::fabs(static_cast<double>(got[i]) - want[i]));
  }
  return worst;
}

std::vector<CpuVariant> CpuVariants() {
  std::vector<CpuVariant> out;
  for (const char* isa : {"v4", "v3"}) {
    auto table = internal::CpuKernelsForIsa(isa);
    if (table.ok()) out.push_back({(*table)->name, *table});
  }
  return out;
}

std::vector<KernelPath> OptimisedKernelPaths() {
  std::vector<KernelPath> paths;
  for (const auto& v : CpuVariants()) paths.push_back({v.name, ExecContext{Backend::kCpu}, v.table});
  paths.push_back({"cpu (public entry)", ExecContext{Backend::kCpu}, nullptr});
  return paths;
}

std::vector<KernelPath> AllKernelPaths() {
  std::vector<KernelPath> paths = OptimisedKernelPaths();
  paths.insert(paths.begin(), kReferencePath);
  return paths;
}

}  // namespace kvc::kernels::testing
