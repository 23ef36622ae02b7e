#include "common/mapped_buffer.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "worker/cache/layer_kv.h"

namespace kvc {
namespace {

bool AllEqual(const uint8_t* p, size_t n, uint8_t value) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != value) return false;
  }
  return true;
}

TEST(MappedBufferTest, GrowKeepsContentsAndZeroesTheRest) {
  MappedBuffer b;
  EXPECT_EQ(b.size(), 0u);
  EXPECT_EQ(b.data(), nullptr);
  ASSERT_TRUE(b.Resize(1000).ok());
  EXPECT_TRUE(AllEqual(b.data(), 1000, 0));
  std::memset(b.data(), 7, 1000);
  // Within the same page, then across many pages (a moved mapping).
  ASSERT_TRUE(b.Resize(3000).ok());
  EXPECT_TRUE(AllEqual(b.data(), 1000, 7));
  EXPECT_TRUE(AllEqual(b.data() + 1000, 2000, 0));
  ASSERT_TRUE(b.Resize(size_t{40} << 20).ok());
  EXPECT_EQ(b.size(), size_t{40} << 20);
  EXPECT_GE(b.mapped_bytes(), b.size());
  EXPECT_TRUE(AllEqual(b.data(), 1000, 7));
  EXPECT_TRUE(AllEqual(b.data() + 1000, (size_t{40} << 20) - 1000, 0));
}

TEST(MappedBufferTest, ShrinkThenGrowReadsZeroPastTheShrink) {
  MappedBuffer b;
  ASSERT_TRUE(b.Resize(size_t{3} << 20).ok());
  std::memset(b.data(), 9, b.size());
  // Shrink inside a page: the bytes cut off must not come back.
  ASSERT_TRUE(b.Resize(100).ok());
  EXPECT_EQ(b.size(), 100u);
  ASSERT_TRUE(b.Resize(5000).ok());
  EXPECT_TRUE(AllEqual(b.data(), 100, 9));
  EXPECT_TRUE(AllEqual(b.data() + 100, 4900, 0));
  ASSERT_TRUE(b.Resize(4000).ok());
  ASSERT_TRUE(b.Resize(4096).ok());
  EXPECT_TRUE(AllEqual(b.data() + 4000, 96, 0));
  ASSERT_TRUE(b.Resize(0).ok());
  EXPECT_EQ(b.data(), nullptr);
  EXPECT_EQ(b.mapped_bytes(), 0u);
}

TEST(MappedBufferTest, PopulatedBuffersBehaveTheSame) {
  MappedBuffer b(/*huge_pages=*/false, /*populate=*/true);
  ASSERT_TRUE(b.Resize(size_t{5} << 20).ok());
  EXPECT_TRUE(AllEqual(b.data(), b.size(), 0));
  std::memset(b.data(), 3, b.size());
  ASSERT_TRUE(b.Resize(size_t{9} << 20).ok());  // grown: the tail populated too
  EXPECT_TRUE(AllEqual(b.data(), size_t{5} << 20, 3));
  EXPECT_TRUE(AllEqual(b.data() + (size_t{5} << 20), size_t{4} << 20, 0));
  MappedBuffer moved(std::move(b));
  EXPECT_EQ(moved.size(), size_t{9} << 20);
}

TEST(MappedBufferTest, MoveTransfersTheMapping) {
  MappedBuffer a;
  ASSERT_TRUE(a.Resize(64).ok());
  a.data()[3] = 42;
  MappedBuffer b(std::move(a));
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_EQ(b.data()[3], 42);
  MappedBuffer c;
  ASSERT_TRUE(c.Resize(10).ok());
  c = std::move(b);
  EXPECT_EQ(c.size(), 64u);
  EXPECT_EQ(c.data()[3], 42);
}

TEST(MappedBufferTest, AnImpossibleSizeIsAnErrorAndKeepsTheBuffer) {
  MappedBuffer b;
  ASSERT_TRUE(b.Resize(16).ok());
  b.data()[0] = 5;
  const absl::Status s = b.Resize(size_t{1} << 62);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(b.size(), 16u);
  EXPECT_EQ(b.data()[0], 5);
}

TEST(MappedBufferTest, DiscardGivesBackOnlyWholePagesInsideTheRange) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  MappedBuffer b;
  ASSERT_TRUE(b.Resize(4 * page).ok());
  std::memset(b.data(), 7, 4 * page);
  // [page / 2, 3 page + 1): only pages 1 and 2 are wholly inside.
  EXPECT_EQ(b.Discard(page / 2, 2 * page + page / 2 + 1), 2 * page);
  EXPECT_EQ(b.data()[page / 2], 7);
  EXPECT_EQ(b.data()[page - 1], 7);
  EXPECT_EQ(b.data()[page], 0);
  EXPECT_EQ(b.data()[3 * page - 1], 0);
  EXPECT_EQ(b.data()[3 * page], 7);
  // Less than a page: nothing.
  EXPECT_EQ(b.Discard(1, page - 1), 0u);
  EXPECT_EQ(b.data()[1], 7);
  // Writable again.
  b.data()[page] = 9;
  EXPECT_EQ(b.data()[page], 9);
}

TEST(LayerKvTest, DroppedValuesAreGoneOrNaNAndKeysStay) {
  // 1 head of dim 100 (400-byte rows: blocks do not line up with pages).
  cache::LayerKv kv(1, 100, kernels::DType::kF32);
  ASSERT_TRUE(kv.Reserve(64).ok());
  std::vector<float> rows(64 * 100, 1.5f);
  kv.WriteRange(0, 64, rows.data(), rows.data());
  kv.DropValues(3, 40);
  const float* k = kv.MutableF32K(0);
  const float* v = kv.MutableF32V(0);
  for (int64_t t = 0; t < 64; ++t) {
    EXPECT_EQ(k[t * 100], 1.5f) << t;
    const bool dropped = t >= 3 && t < 43;
    for (int x = 0; x < 100; ++x) {
      if (dropped) {
        ASSERT_TRUE(v[t * 100 + x] == 0.0f || std::isnan(v[t * 100 + x])) << t;
      } else {
        ASSERT_EQ(v[t * 100 + x], 1.5f) << t;
      }
    }
  }
}

}  // namespace
}  // namespace kvc
