#include "common/mapped_buffer.h"

#include <cstring>
#include <utility>

#include "gtest/gtest.h"

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

}  // namespace
}  // namespace kvc
