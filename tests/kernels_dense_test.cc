// The dense layers (dense.h) on every CPU ISA build this processor runs and
// through the public entry point, against the reference; thread-count
// independence; and argument validation.
//
// Tolerances, as relative error by norm against the fp64 reference:
//  - Linear: 1e-5. The optimised path sums each dot product in fp32, whose
//    rounding error grows like sqrt(k) * 2^-24: up to 5e-7 measured on the
//    model's shapes, 3e-6 where the norm is a single cancelling dot product
//    (m = n = 1), while a wrong row, column, tail lane or dropped residual
//    moves the result by 1e-2 or more. bf16 weights: the same bound, as
//    both sides read the same widened values.
//  - RmsNorm, SwiGlu: 1e-6 (fp32 sum of squares; exp to ~2e-7 relative).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/dense.h"
#include "kernels/thread_pool.h"
#include "tests/kernel_test_util.h"

namespace kvc::kernels {
namespace {

using ::testing::HasSubstr;
using testing::CpuVariants;
using testing::Encode;
using testing::RandomFloats;
using testing::RelErrorByNorm;

constexpr double kLinearTol = 1e-5;
constexpr double kElementwiseTol = 1e-6;
const ExecContext kRef{Backend::kReference};

// One optimised way to run the kernels: an ISA build's table called
// directly, or the public entry point (table == nullptr) on kCpu.
struct Path {
  std::string name;
  const internal::KernelTable* table = nullptr;
};
std::vector<Path> OptimisedPaths() {
  std::vector<Path> paths;
  for (const auto& v : CpuVariants()) paths.push_back({v.name, v.table});
  paths.push_back({"cpu (public entry)", nullptr});
  return paths;
}

absl::Status RunLinear(const Path& path, const ExecContext& ctx, const LinearArgs& a) {
  if (path.table == nullptr) return Linear(ctx, a);
  if (a.m == 0) return absl::OkStatus();  // the public entry's early return
  return path.table->linear(ctx, a);
}

// Random x [m][k], W [n][k] (stddev 1/sqrt(k), stored as `dtype`) and a
// starting y [m][n] (the residual when accumulating).
struct LinearCase {
  LinearCase(int64_t m, int32_t k, int32_t n, DType dtype, bool accumulate, uint64_t seed)
      : x(RandomFloats(static_cast<size_t>(m) * k, seed)),
        w(Encode(dtype, RandomFloats(static_cast<size_t>(n) * k, seed + 1,
                                     1.0f / std::sqrt(static_cast<float>(k))))),
        y0(RandomFloats(static_cast<size_t>(m) * n, seed + 2)) {
    args.m = m;
    args.k = k;
    args.n = n;
    args.w_dtype = dtype;
    args.accumulate = accumulate;
    args.x = x.data();
    args.w = w.data();
  }
  // y after the call on `path` (or the reference when path is null).
  std::vector<float> Run(const Path* path, const ExecContext& ctx) const {
    std::vector<float> y = y0;
    LinearArgs a = args;
    a.y = y.data();
    const absl::Status s = path == nullptr ? Linear(kRef, a) : RunLinear(*path, ctx, a);
    EXPECT_TRUE(s.ok()) << (path == nullptr ? "reference" : path->name) << ": " << s;
    return y;
  }
  std::string Name() const {
    return absl::StrCat("m=", args.m, " k=", args.k, " n=", args.n, " ", DTypeName(args.w_dtype),
                        args.accumulate ? " accumulate" : "");
  }

  std::vector<float> x;
  std::vector<uint8_t> w;
  std::vector<float> y0;
  LinearArgs args;
};

void ExpectLinearMatchesReference(int64_t m, int32_t k, int32_t n) {
  uint64_t seed = static_cast<uint64_t>(m * 1000003 + k * 1009 + n);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (bool accumulate : {false, true}) {
      const LinearCase c(m, k, n, dtype, accumulate, seed += 7);
      const std::vector<float> want = c.Run(nullptr, kRef);
      for (const Path& path : OptimisedPaths()) {
        const std::vector<float> got = c.Run(&path, ExecContext{Backend::kCpu});
        EXPECT_LE(RelErrorByNorm(got, want), kLinearTol) << path.name << " " << c.Name();
      }
    }
  }
}

// The model's shapes (stories15M: dim 288, hidden 768, vocab 32000) for
// decode (m = 1), a few tokens and prefill chunks, with empty and odd m.
TEST(LinearTest, ModelShapesMatchReference) {
  for (int64_t m : {0, 1, 3, 64, 257}) {
    ExpectLinearMatchesReference(m, 288, 288);
    ExpectLinearMatchesReference(m, 288, 768);
    ExpectLinearMatchesReference(m, 768, 288);
  }
}

// The classifier: 288 -> 32000 (the reference's fp64 loop limits m here).
TEST(LinearTest, ClassifierMatchesReference) {
  for (int64_t m : {0, 1, 3, 20}) ExpectLinearMatchesReference(m, 288, 32000);
}

// k not a multiple of any vector width (masked tails), n below one tile
// and not a multiple of one.
TEST(LinearTest, OddShapesMatchReference) {
  for (int64_t m : {0, 1, 3, 64, 257}) {
    for (int32_t k : {7, 33, 100}) {
      for (int32_t n : {1, 17}) ExpectLinearMatchesReference(m, k, n);
    }
  }
}

// Every CPU build gives the same bits with 1 and 3 threads, for the decode
// and the batch tilings, shapes large enough to be split over the pool.
TEST(LinearTest, ResultsDoNotDependOnThreadCount) {
  ThreadPool one(1), three(3);
  struct Shape {
    int64_t m;
    int32_t k, n;
  };
  for (const Shape& s : {Shape{1, 288, 32000}, Shape{3, 288, 32000}, Shape{64, 288, 768},
                         Shape{257, 768, 288}, Shape{100, 33, 4001}}) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      const LinearCase c(s.m, s.k, s.n, dtype, /*accumulate=*/true, 11);
      for (const Path& path : OptimisedPaths()) {
        const std::vector<float> a = c.Run(&path, ExecContext{Backend::kCpu, &one});
        const std::vector<float> b = c.Run(&path, ExecContext{Backend::kCpu, &three});
        ASSERT_EQ(a, b) << path.name << " " << c.Name();
      }
    }
  }
}

// accumulate = true is exactly the residual add: y0 + x W^T, where
// accumulate = false overwrites whatever y held.
TEST(LinearTest, AccumulateAddsIntoY) {
  const LinearCase add(5, 48, 40, DType::kF32, /*accumulate=*/true, 3);
  const LinearCase set(5, 48, 40, DType::kF32, /*accumulate=*/false, 3);
  for (const Path& path : OptimisedPaths()) {
    const std::vector<float> sum = add.Run(&path, ExecContext{Backend::kCpu});
    const std::vector<float> product = set.Run(&path, ExecContext{Backend::kCpu});
    for (size_t i = 0; i < sum.size(); ++i) {
      ASSERT_NEAR(sum[i], add.y0[i] + product[i], 1e-5f * (1.0f + std::fabs(sum[i])))
          << path.name << " element " << i;
    }
  }
}

// ---- LinearPack -------------------------------------------------------------------

// The pack's layout is the contract (dense.h): panel p, row d, column c is
// W[p * kPanelCols + c][d], widened to fp32, zero past row n.
TEST(LinearPackTest, LayoutIsTransposedPanels) {
  constexpr int32_t kCols = LinearPack::kPanelCols;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const int32_t n = kCols + 5, k = 7;
    const std::vector<float> values = RandomFloats(static_cast<size_t>(n) * k, 5);
    const std::vector<uint8_t> w = Encode(dtype, values);
    const std::vector<float> wf = testing::DecodeToFloat(dtype, w.data(), values.size());
    absl::StatusOr<LinearPack> pack = PackLinear(w.data(), dtype, n, k);
    ASSERT_TRUE(pack.ok()) << pack.status();
    ASSERT_EQ(pack->num_panels(), 2);
    for (int64_t p = 0; p < 2; ++p) {
      for (int32_t d = 0; d < k; ++d) {
        for (int32_t c = 0; c < kCols; ++c) {
          const int64_t row = p * kCols + c;
          const float want = row < n ? wf[row * k + d] : 0.0f;
          ASSERT_EQ(pack->panels[(p * k + d) * kCols + c], want)
              << DTypeName(dtype) << " panel " << p << " d " << d << " c " << c;
        }
      }
    }
  }
}

// With a pack, every path gives the same bits as without it (the batch
// tiles read the same values in the same order), and matches the
// reference; decode shapes (m <= 8) ignore it.
TEST(LinearPackTest, PackedMatchesUnpackedBitForBit) {
  struct Shape {
    int64_t m;
    int32_t k, n;
  };
  for (const Shape& s : {Shape{64, 288, 288}, Shape{257, 288, 768}, Shape{256, 768, 288},
                         Shape{9, 288, 32000}, Shape{1, 288, 768}, Shape{100, 33, 17},
                         Shape{13, 7, 1}, Shape{40, 100, 47}}) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      for (bool accumulate : {false, true}) {
        const LinearCase c(s.m, s.k, s.n, dtype, accumulate, 17);
        absl::StatusOr<LinearPack> pack = PackLinear(c.args.w, dtype, s.n, s.k);
        ASSERT_TRUE(pack.ok()) << pack.status();
        LinearCase packed = c;
        packed.args.pack = &*pack;
        const std::vector<float> want = c.Run(nullptr, kRef);
        EXPECT_LE(RelErrorByNorm(packed.Run(nullptr, kRef), want), kLinearTol)
            << "reference ignores the pack: " << c.Name();
        for (const Path& path : OptimisedPaths()) {
          const std::vector<float> plain = c.Run(&path, ExecContext{Backend::kCpu});
          const std::vector<float> got = packed.Run(&path, ExecContext{Backend::kCpu});
          ASSERT_EQ(got, plain) << path.name << " " << c.Name();
          EXPECT_LE(RelErrorByNorm(got, want), kLinearTol) << path.name << " " << c.Name();
        }
      }
    }
  }
}

TEST(LinearPackTest, RejectsBadArgumentsAndMismatchedPacks) {
  const std::vector<float> w = RandomFloats(4 * 8, 2);
  EXPECT_EQ(PackLinear(nullptr, DType::kF32, 4, 8).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PackLinear(w.data(), DType::kF32, 0, 8).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PackLinear(w.data(), DType::kF16, 4, 8).status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<LinearPack> pack = PackLinear(w.data(), DType::kF32, 4, 8);
  ASSERT_TRUE(pack.ok());
  const std::vector<float> x = RandomFloats(16 * 8, 3);
  std::vector<float> y(16 * 4);
  for (Backend backend : {Backend::kReference, Backend::kCpu}) {
    LinearArgs a;
    a.x = x.data();
    a.m = 16;
    a.k = 8;
    a.n = 4;
    a.w = w.data();
    a.y = y.data();
    a.pack = &*pack;
    EXPECT_TRUE(Linear(ExecContext{backend}, a).ok());
    a.n = 3;  // a pack of another shape
    EXPECT_EQ(Linear(ExecContext{backend}, a).code(), absl::StatusCode::kInvalidArgument);
    a.n = 4;
    a.w_dtype = DType::kBF16;  // or of another dtype
    EXPECT_EQ(Linear(ExecContext{backend}, a).code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(RmsNormTest, MatchesReference) {
  for (int32_t dim : {288, 768, 1, 7, 33, 100}) {
    for (int64_t rows : {1, 3, 257}) {
      const std::vector<float> x = RandomFloats(static_cast<size_t>(rows) * dim, dim + rows, 2.0f);
      const std::vector<float> weight = RandomFloats(dim, dim);
      RmsNormArgs a;
      a.x = x.data();
      a.weight = weight.data();
      a.rows = rows;
      a.dim = dim;
      std::vector<float> want(x.size()), got(x.size());
      a.out = want.data();
      ASSERT_TRUE(RmsNorm(kRef, a).ok());
      for (const Path& path : OptimisedPaths()) {
        a.out = got.data();
        const ExecContext ctx{Backend::kCpu};
        const absl::Status s =
            path.table == nullptr ? RmsNorm(ctx, a) : path.table->rms_norm(ctx, a);
        ASSERT_TRUE(s.ok()) << s;
        EXPECT_LE(RelErrorByNorm(got, want), kElementwiseTol)
            << path.name << " dim=" << dim << " rows=" << rows;
      }
    }
  }
}

TEST(SwiGluTest, MatchesReference) {
  for (int64_t count : {1, 7, 33, 768, 64 * 768 + 5, 200000}) {
    // Gates over [-30, 30]: both saturated ends of silu and its middle.
    const std::vector<float> gate = RandomFloats(count, count, 8.0f);
    const std::vector<float> up = RandomFloats(count, count + 1);
    SwiGluArgs a;
    a.gate = gate.data();
    a.up = up.data();
    a.count = count;
    std::vector<float> want(count), got(count);
    a.out = want.data();
    ASSERT_TRUE(SwiGlu(kRef, a).ok());
    for (const Path& path : OptimisedPaths()) {
      a.out = got.data();
      const ExecContext ctx{Backend::kCpu};
      const absl::Status s = path.table == nullptr ? SwiGlu(ctx, a) : path.table->swiglu(ctx, a);
      ASSERT_TRUE(s.ok()) << s;
      EXPECT_LE(RelErrorByNorm(got, want), kElementwiseTol) << path.name << " count=" << count;
    }
  }
}

// ---- Validation ------------------------------------------------------------------

MATCHER_P(IsInvalid, text, "") {
  return arg.code() == absl::StatusCode::kInvalidArgument &&
         ::testing::Value(std::string(arg.message()), HasSubstr(text));
}

class DenseValidationTest : public ::testing::TestWithParam<Backend> {
 protected:
  static constexpr int kM = 2, kK = 8, kN = 4;
  ExecContext ctx{GetParam()};
  std::vector<float> x = RandomFloats(kM * kK, 1);
  std::vector<float> w = RandomFloats(kN * kK, 2);
  std::vector<float> y = std::vector<float>(kM * kN, 7.0f);

  LinearArgs Linear1() {
    LinearArgs a;
    a.x = x.data();
    a.m = kM;
    a.k = kK;
    a.n = kN;
    a.w = w.data();
    a.y = y.data();
    return a;
  }
  void ExpectUntouched() {
    for (float v : y) ASSERT_EQ(v, 7.0f);
  }
};

TEST_P(DenseValidationTest, ValidLinearRuns) {
  EXPECT_TRUE(Linear(ctx, Linear1()).ok());
  LinearArgs a = Linear1();
  a.m = 0;
  a.x = nullptr;
  a.y = nullptr;
  EXPECT_TRUE(Linear(ctx, a).ok()) << "m = 0 reads and writes nothing";
}

TEST_P(DenseValidationTest, LinearRejectsBadArguments) {
  struct Case {
    const char* text;
    void (*edit)(LinearArgs&, std::vector<float>&, std::vector<float>&);
  };
  const Case cases[] = {
      {"x is null", [](LinearArgs& a, auto&, auto&) { a.x = nullptr; }},
      {"w is null", [](LinearArgs& a, auto&, auto&) { a.w = nullptr; }},
      {"y is null", [](LinearArgs& a, auto&, auto&) { a.y = nullptr; }},
      {"k must be > 0, got 0", [](LinearArgs& a, auto&, auto&) { a.k = 0; }},
      {"n must be > 0, got -3", [](LinearArgs& a, auto&, auto&) { a.n = -3; }},
      {"m must be >= 0, got -1", [](LinearArgs& a, auto&, auto&) { a.m = -1; }},
      {"w_dtype must be f32 or bf16", [](LinearArgs& a, auto&, auto&) { a.w_dtype = DType::kF16; }},
      {"w_dtype must be f32 or bf16",
       [](LinearArgs& a, auto&, auto&) { a.w_dtype = static_cast<DType>(9); }},
      {"output y overlaps input x",
       [](LinearArgs& a, auto& x, auto&) {
         a.y = x.data() + 1;
         a.n = 2;
       }},
      {"output y overlaps input w", [](LinearArgs& a, auto&, auto& w) { a.y = w.data() + 4; }},
  };
  for (const Case& c : cases) {
    LinearArgs a = Linear1();
    c.edit(a, x, w);
    const std::vector<float> x0 = x, w0 = w;
    EXPECT_THAT(Linear(ctx, a), IsInvalid(c.text)) << c.text;
    ExpectUntouched();
    EXPECT_EQ(x, x0);
    EXPECT_EQ(w, w0);
  }
}

TEST_P(DenseValidationTest, RmsNormRejectsBadArguments) {
  const std::vector<float> weight(kK, 1.0f);
  auto make = [&] {
    RmsNormArgs a;
    a.x = x.data();
    a.weight = weight.data();
    a.rows = kM;
    a.dim = kN;  // out = y holds kM x kN floats
    a.out = y.data();
    return a;
  };
  EXPECT_TRUE(RmsNorm(ctx, make()).ok());
  std::fill(y.begin(), y.end(), 7.0f);
  struct Case {
    const char* text;
    void (*edit)(RmsNormArgs&);
  };
  const Case cases[] = {
      {"eps must be finite and > 0, got 0", [](RmsNormArgs& a) { a.eps = 0.0f; }},
      {"eps must be finite and > 0, got -1", [](RmsNormArgs& a) { a.eps = -1.0f; }},
      {"eps must be finite and > 0, got nan",
       [](RmsNormArgs& a) { a.eps = std::numeric_limits<float>::quiet_NaN(); }},
      {"dim must be > 0, got 0", [](RmsNormArgs& a) { a.dim = 0; }},
      {"rows must be >= 0, got -2", [](RmsNormArgs& a) { a.rows = -2; }},
      {"x is null", [](RmsNormArgs& a) { a.x = nullptr; }},
      {"weight is null", [](RmsNormArgs& a) { a.weight = nullptr; }},
      {"out is null", [](RmsNormArgs& a) { a.out = nullptr; }},
      {"output out overlaps input x", [](RmsNormArgs& a) { a.out = const_cast<float*>(a.x); }},
  };
  for (const Case& c : cases) {
    RmsNormArgs a = make();
    c.edit(a);
    EXPECT_THAT(RmsNorm(ctx, a), IsInvalid(c.text)) << c.text;
    ExpectUntouched();
  }
}

TEST_P(DenseValidationTest, SwiGluRejectsBadArguments) {
  auto make = [&] {
    SwiGluArgs a;
    a.gate = x.data();
    a.up = w.data();
    a.count = kM * kN;
    a.out = y.data();
    return a;
  };
  EXPECT_TRUE(SwiGlu(ctx, make()).ok());
  std::fill(y.begin(), y.end(), 7.0f);
  struct Case {
    const char* text;
    void (*edit)(SwiGluArgs&);
  };
  const Case cases[] = {
      {"count must be >= 0, got -1", [](SwiGluArgs& a) { a.count = -1; }},
      {"gate is null", [](SwiGluArgs& a) { a.gate = nullptr; }},
      {"up is null", [](SwiGluArgs& a) { a.up = nullptr; }},
      {"out is null", [](SwiGluArgs& a) { a.out = nullptr; }},
      {"output out overlaps input gate", [](SwiGluArgs& a) { a.gate = a.out + 3; }},
      {"output out overlaps input up", [](SwiGluArgs& a) { a.up = a.out; }},
  };
  for (const Case& c : cases) {
    SwiGluArgs a = make();
    c.edit(a);
    EXPECT_THAT(SwiGlu(ctx, a), IsInvalid(c.text)) << c.text;
    ExpectUntouched();
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, DenseValidationTest,
                         ::testing::Values(Backend::kReference, Backend::kCpu),
                         [](const auto& info) { return std::string(BackendName(info.param)); });

}  // namespace
}  // namespace kvc::kernels
