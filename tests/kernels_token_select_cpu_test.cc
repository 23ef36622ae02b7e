// TokenSelect's optimised CPU builds against the reference, and the CPU
// path's memory modes: logits kept in the caller's workspace, in its own
// scratch, or not kept (the keys scanned twice) must all give the same
// scores, bit for bit. Tolerances: kernels_token_select_test.cc.
#include <cstdint>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/thread_pool.h"
#include "kernels/token_select.h"
#include "tests/kernel_test_util.h"
#include "tests/token_select_test_util.h"

namespace kvc::kernels {
namespace {

using namespace testing;  // NOLINT: the TokenSelect test helpers

TEST(TokenSelectCpuTest, CpuMatchesReference) {
  struct Shape {
    int32_t hq, hkv, dim;
  };
  const Path ref = AllPaths().front();
  uint64_t seed = 60;
  // GQA groups of 1, 4, 8 and 3; head dims with and without a compiled-in
  // vector count.
  for (const Shape shape : {Shape{6, 6, 48}, Shape{32, 8, 128}, Shape{8, 1, 64}, Shape{6, 2, 80}}) {
    for (const DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      for (const int64_t n : {1, 7, 1537}) {
        ++seed;
        const Keys keys = MakeKeys(RandomFloats(n * shape.hkv * shape.dim, seed), dtype, n,
                                   shape.hkv, shape.dim, KvLayout::kHND, 16, seed);
        const std::vector<float> qbar = RandomFloats(shape.hq * shape.dim, seed + 1000);
        for (const int32_t pool_kernel : {0, 3}) {
          const int64_t begin = n > 100 ? 64 : 0, end = n > 100 ? n - 128 : n;
          const Problem p{shape.hq,   &keys, qbar, begin, end, std::min<int64_t>(end - begin, 33),
                          pool_kernel};
          const Selection want = RunSelect(ref, p);
          std::vector<float> want_lse(shape.hq);
          ASSERT_TRUE(ref.Lse(p.Args(), want_lse.data()).ok());
          for (const Path& path : AllPaths()) {
            SCOPED_TRACE(path.name + " hq " + std::to_string(shape.hq) + " dtype " +
                         std::string(DTypeName(dtype)) + " n " + std::to_string(n) + " pool " +
                         std::to_string(pool_kernel));
            const Selection got = RunSelect(path, p);
            EXPECT_EQ(got.selected, want.selected);
            EXPECT_LE(RelErrorByNorm(got.scores, want.scores), kScoreTol);
            EXPECT_LE(RelErrorByNorm(got.selected_scores, want.selected_scores), kScoreTol);
            std::vector<float> lse(shape.hq);
            ASSERT_TRUE(path.Lse(p.Args(), lse.data()).ok());
            EXPECT_LE(RelErrorByNorm(lse, want_lse), kScoreTol);
          }
        }
      }
    }
  }
}

TEST(TokenSelectCpuTest, CpuScoresDoNotDependOnThreadCount) {
  const int32_t hq = 8, hkv = 2, dim = 128;
  const int64_t n = 2100;
  const Keys keys = ContiguousKeys(RandomFloats(n * hkv * dim, 71), DType::kBF16, n, hkv, dim);
  const Problem p{hq, &keys, RandomFloats(hq * dim, 72), 10, n - 10, 50, 3, false};
  ThreadPool one(1), three(3);
  const Path a{"one thread", nullptr, {Backend::kCpu, &one}};
  const Path b{"three threads", nullptr, {Backend::kCpu, &three}};
  const Selection x = RunSelect(a, p), y = RunSelect(b, p);
  EXPECT_EQ(x.scores, y.scores);
  EXPECT_EQ(x.selected, y.selected);
}

// 256 query heads over one KV head of dim 16 and 70,000 candidates: the
// logits (256 x 70,144 x 4 bytes = 72 MB) exceed the 64 MiB the CPU path
// keeps without a workspace, so it scans the keys twice; with a workspace it
// keeps them there. Both must equal the single scan of a smaller problem's
// arithmetic: every score bit-identical, the same selection.
TEST(TokenSelectCpuTest, WorkspaceAndRescanGiveIdenticalScores) {
  const int32_t hq = 256, hkv = 1, dim = 16;
  const int64_t n = 70000;
  const Keys keys = ContiguousKeys(RandomFloats(n * hkv * dim, 81), DType::kBF16, n, hkv, dim);
  const Problem p{hq, &keys, RandomFloats(hq * dim, 82), 128, n - 512, 2048, 3, false};
  const Path cpu{"cpu", nullptr, {Backend::kCpu}};
  const Selection rescan = RunSelect(cpu, p);

  std::vector<uint8_t> workspace(TokenSelectWorkspaceBytes(n, hq) + 1);
  Selection kept{std::vector<int32_t>(p.k), std::vector<float>(p.k), std::vector<float>(n)};
  TokenSelectArgs a = p.Args();
  a.selected = kept.selected.data();
  a.selected_scores = kept.selected_scores.data();
  a.scores = kept.scores.data();
  a.workspace = workspace.data() + 1;  // unaligned on purpose
  a.workspace_bytes = workspace.size() - 1;
  ASSERT_TRUE(TokenSelect(cpu.ctx, a).ok());
  EXPECT_EQ(kept.scores, rescan.scores);
  EXPECT_EQ(kept.selected, rescan.selected);
  EXPECT_EQ(kept.selected_scores, rescan.selected_scores);

  // Against the oracle: the rescan is the same arithmetic as the kept path.
  const Expected want = BruteForce(p);
  EXPECT_EQ(rescan.selected, want.selected);
  EXPECT_LE(RelErrorByNorm(rescan.scores, want.pooled), kScoreTol);
}

// A workspace below TokenSelectWorkspaceBytes is an error on the CPU path
// too (not silently ignored), naming the size needed.
TEST(TokenSelectCpuTest, SmallWorkspaceIsAnError) {
  const int32_t hq = 4, hkv = 2, dim = 32;
  const int64_t n = 300;
  const Keys keys = ContiguousKeys(RandomFloats(n * hkv * dim, 91), DType::kF32, n, hkv, dim);
  const Problem p{hq, &keys, RandomFloats(hq * dim, 92), 0, -1, 10, 0, false};
  std::vector<int32_t> selected(p.k);
  std::vector<uint8_t> workspace(100);
  TokenSelectArgs a = p.Args();
  a.selected = selected.data();
  a.workspace = workspace.data();
  a.workspace_bytes = workspace.size();
  const absl::Status st = TokenSelect({Backend::kCpu}, a);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("TokenSelectWorkspaceBytes"), std::string::npos) << st;
  std::vector<float> lse(hq);
  EXPECT_EQ(TokenSelectLse({Backend::kCpu}, a, lse.data()).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvc::kernels
