// The CUDA path of the dense layers (dense.h) against the reference: random
// inputs on the host, Backend::kReference on host memory, Backend::kCuda on
// device copies. Without a device (or in a build without CUDA) every test
// skips, saying why. Uses only kernels/device.h and the public API, so it
// builds in every configuration.
//
// Tolerances, as relative error by norm against the fp64 reference:
//  - Linear: 1e-5. Both CUDA kernels sum each dot product in fp32 (a warp's
//    lanes then a shuffle tree, or a k-ordered FMA chain per output), whose
//    rounding error grows like sqrt(k) * 2^-24; the CPU path's fp32 sums
//    measure up to 3e-6 on these shapes.
//  - RmsNorm, SwiGlu: 1e-6 (fp32 sum of squares; expf to 2 ulp).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/dense.h"
#include "kernels/device.h"
#include "tests/kernel_test_util.h"

namespace kvc::kernels {
namespace {

using testing::Encode;
using testing::RandomFloats;
using testing::RelErrorByNorm;

const ExecContext kRef{Backend::kReference};
const ExecContext kCuda{Backend::kCuda};

// A device copy of `v` (at least 16 bytes, so an empty array has an address).
template <typename T>
DeviceBuffer Upload(const std::vector<T>& v) {
  absl::StatusOr<DeviceBuffer> b =
      DeviceBuffer::Allocate(std::max<size_t>(v.size() * sizeof(T), 16));
  EXPECT_TRUE(b.ok()) << b.status();
  if (!b.ok()) return DeviceBuffer();
  if (!v.empty()) {
    EXPECT_TRUE(b->CopyFromHost(v.data(), v.size() * sizeof(T)).ok());
  }
  return std::move(b).value();
}
std::vector<float> Download(const DeviceBuffer& b, size_t n) {
  std::vector<float> v(n);
  const absl::Status s = b.CopyToHost(v.data(), n * sizeof(float));
  EXPECT_TRUE(s.ok()) << s;
  return v;
}

// Decode (m <= 8: the warp-per-column kernel, vectorised when k % 4 == 0)
// and batches (the tiled kernel), model and odd shapes, fp32 and bf16
// weights, with and without the residual add.
TEST(CudaDenseTest, LinearMatchesReference) {
  if (auto s = CudaAvailable(); !s.ok()) GTEST_SKIP() << s.message();
  struct Shape {
    int64_t m;
    int32_t k, n;
  };
  const Shape shapes[] = {{1, 288, 288},  {1, 288, 32000}, {3, 768, 288},  {8, 288, 768},
                          {9, 288, 768},  {64, 288, 768},  {257, 768, 288}, {64, 288, 32000},
                          {1, 7, 17},     {3, 33, 1},      {64, 100, 17},   {257, 7, 1}};
  uint64_t seed = 1;
  for (const Shape& sh : shapes) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      for (bool accumulate : {false, true}) {
        const std::vector<float> x = RandomFloats(static_cast<size_t>(sh.m) * sh.k, ++seed);
        const std::vector<uint8_t> w = Encode(
            dtype, RandomFloats(static_cast<size_t>(sh.n) * sh.k, ++seed, 1.0f / std::sqrt(sh.k)));
        const std::vector<float> y0 = RandomFloats(static_cast<size_t>(sh.m) * sh.n, ++seed);
        const std::string name = absl::StrCat("m=", sh.m, " k=", sh.k, " n=", sh.n, " ",
                                              DTypeName(dtype), accumulate ? " accumulate" : "");
        LinearArgs a;
        a.m = sh.m;
        a.k = sh.k;
        a.n = sh.n;
        a.w_dtype = dtype;
        a.accumulate = accumulate;
        std::vector<float> want = y0;
        a.x = x.data();
        a.w = w.data();
        a.y = want.data();
        ASSERT_TRUE(Linear(kRef, a).ok());
        DeviceBuffer dx = Upload(x), dw = Upload(w), dy = Upload(y0);
        a.x = dx.as<float>();
        a.w = dw.data();
        a.y = dy.as<float>();
        const absl::Status s = Linear(kCuda, a);
        ASSERT_TRUE(s.ok()) << name << ": " << s;
        ASSERT_TRUE(CudaSynchronize(nullptr).ok());
        EXPECT_LE(RelErrorByNorm(Download(dy, y0.size()), want), 1e-5) << name;
      }
    }
  }
}

// A LinearPack (host memory) is accepted and ignored: the CUDA kernels read w.
TEST(CudaDenseTest, LinearIgnoresHostPack) {
  if (auto s = CudaAvailable(); !s.ok()) GTEST_SKIP() << s.message();
  const int64_t m = 64;
  const int32_t k = 288, n = 768;
  const std::vector<float> x = RandomFloats(static_cast<size_t>(m) * k, 1);
  const std::vector<float> w = RandomFloats(static_cast<size_t>(n) * k, 2, 1.0f / std::sqrt(k));
  absl::StatusOr<LinearPack> pack = PackLinear(w.data(), DType::kF32, n, k);
  ASSERT_TRUE(pack.ok()) << pack.status();
  LinearArgs a;
  a.m = m;
  a.k = k;
  a.n = n;
  std::vector<float> want(static_cast<size_t>(m) * n);
  a.x = x.data();
  a.w = w.data();
  a.y = want.data();
  ASSERT_TRUE(Linear(kRef, a).ok());
  DeviceBuffer dx = Upload(x), dw = Upload(w), dy = Upload(std::vector<float>(want.size()));
  a.x = dx.as<float>();
  a.w = dw.data();
  a.y = dy.as<float>();
  a.pack = &*pack;
  ASSERT_TRUE(Linear(kCuda, a).ok());
  ASSERT_TRUE(CudaSynchronize(nullptr).ok());
  EXPECT_LE(RelErrorByNorm(Download(dy, want.size()), want), 1e-5);
}

TEST(CudaDenseTest, RmsNormAndSwiGluMatchReference) {
  if (auto s = CudaAvailable(); !s.ok()) GTEST_SKIP() << s.message();
  for (int32_t dim : {288, 768, 7}) {
    const int64_t rows = 37;
    const std::vector<float> x = RandomFloats(static_cast<size_t>(rows) * dim, dim, 2.0f);
    const std::vector<float> weight = RandomFloats(dim, dim + 1);
    std::vector<float> want(x.size());
    RmsNormArgs a;
    a.x = x.data();
    a.weight = weight.data();
    a.rows = rows;
    a.dim = dim;
    a.out = want.data();
    ASSERT_TRUE(RmsNorm(kRef, a).ok());
    DeviceBuffer dx = Upload(x), dweight = Upload(weight);
    DeviceBuffer dout = Upload(std::vector<float>(x.size()));
    a.x = dx.as<float>();
    a.weight = dweight.as<float>();
    a.out = dout.as<float>();
    ASSERT_TRUE(RmsNorm(kCuda, a).ok());
    ASSERT_TRUE(CudaSynchronize(nullptr).ok());
    EXPECT_LE(RelErrorByNorm(Download(dout, x.size()), want), 1e-6) << "RmsNorm dim=" << dim;
  }
  for (int64_t count : {1, 768, 64 * 768 + 5}) {
    const std::vector<float> gate = RandomFloats(count, count, 8.0f);
    const std::vector<float> up = RandomFloats(count, count + 1);
    std::vector<float> want(count);
    SwiGluArgs a;
    a.gate = gate.data();
    a.up = up.data();
    a.count = count;
    a.out = want.data();
    ASSERT_TRUE(SwiGlu(kRef, a).ok());
    DeviceBuffer dgate = Upload(gate), dup = Upload(up), dout = Upload(std::vector<float>(count));
    a.gate = dgate.as<float>();
    a.up = dup.as<float>();
    a.out = dout.as<float>();
    ASSERT_TRUE(SwiGlu(kCuda, a).ok());
    ASSERT_TRUE(CudaSynchronize(nullptr).ok());
    EXPECT_LE(RelErrorByNorm(Download(dout, count), want), 1e-6) << "SwiGlu count=" << count;
  }
}

}  // namespace
}  // namespace kvc::kernels
