// Quest (kernel 8, kernels/quest.h): the page bound is an upper bound of
// every logit of its page (and the exact logit with one-token pages); the
// selection equals a brute-force top-k with the tie rule; incremental
// metadata updates equal a rebuild bit for bit; every optimised path (and
// CUDA, where a device is present) matches the reference; bad arguments are
// InvalidArgument naming the field.
//
// Tolerances: metadata from the optimised CPU path within 1e-6 relative by
// norm (keys rotated with fp32 table angles, vs double in the reference);
// CUDA metadata within 1e-6 (double rotation; CUDA's and libm's sin/cos may
// differ in the last bit). Scores within 1e-5 (fp32 vs fp64 sums).
// Selections equal exactly: on random data no two page scores come within
// those tolerances of each other.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/device.h"
#include "kernels/quest.h"
#include "tests/kernel_test_util.h"

namespace kvc::kernels {
namespace {

using testing::Encode;
using testing::RandomFloats;
using testing::RelErrorByNorm;
using Path = testing::KernelPath;

struct Shape {
  int32_t hq, hkv, dim;
  DType dtype;
  KvLayout layout;
  int32_t pool_page;  // KvPool::page_size (storage), not the Quest page
  int32_t quest_page;
  RopeStyle rope;
  int64_t tokens;
};

std::string Name(const Shape& s) {
  return absl::StrCat("hq=", s.hq, " hkv=", s.hkv, " d=", s.dim, " ", DTypeName(s.dtype),
                      s.layout == KvLayout::kHND ? " HND" : " NHD", " pool_page=", s.pool_page,
                      " quest_page=", s.quest_page, " rope=", static_cast<int>(s.rope), " tokens=", s.tokens);
}

const std::vector<Shape>& Shapes() {
  static const std::vector<Shape> shapes = {
      {6, 6, 48, DType::kF32, KvLayout::kNHD, 1, 16, RopeStyle::kInterleaved, 300},
      {8, 2, 64, DType::kBF16, KvLayout::kHND, 8, 16, RopeStyle::kHalf, 517},
      {4, 1, 24, DType::kF16, KvLayout::kNHD, 4, 5, RopeStyle::kNone, 123},
      {12, 4, 128, DType::kF32, KvLayout::kHND, 16, 16, RopeStyle::kInterleaved, 1024},
  };
  return shapes;
}

// Keys of a shape, stored in the pool's dtype and layout.
struct Keys {
  std::vector<uint8_t> bytes;
  KvPool pool;
};
Keys MakeKeys(const Shape& s, uint64_t seed) {
  Keys k;
  const int64_t slots = (s.tokens + s.pool_page - 1) / s.pool_page * s.pool_page;
  k.bytes = Encode(s.dtype, RandomFloats(static_cast<size_t>(slots) * s.hkv * s.dim, seed));
  k.pool = KvPool{k.bytes.data(), nullptr, s.dtype, s.layout, slots / s.pool_page, s.pool_page, s.hkv, s.dim};
  return k;
}

// Metadata storage for `pages` pages.
struct Meta {
  Meta(const Shape& s, int64_t pages)
      : min(static_cast<size_t>(pages) * s.hkv * s.dim, 7.0f), max(min.size(), 7.0f) {
    view = QuestMeta{s.hkv, s.dim, s.quest_page, pages, min.data(), max.data()};
  }
  std::vector<float> min, max;
  QuestMeta view;
};

int64_t Pages(const Shape& s) { return (s.tokens + s.quest_page - 1) / s.quest_page; }

absl::Status Update(const Path& path, const QuestUpdateArgs& a) {
  return path.table == nullptr ? QuestUpdatePages(path.ctx, a) : path.table->quest_update(path.ctx, a);
}
absl::Status Select(const Path& path, const QuestSelectArgs& a) {
  return path.table == nullptr ? QuestSelect(path.ctx, a) : path.table->quest_select(path.ctx, a);
}

struct Selection {
  std::vector<float> scores;
  std::vector<int32_t> selected;
};
Selection RunSelect(const Path& path, const Shape& s, const QuestMeta& meta, const std::vector<float>& q,
                    int32_t q_position, int64_t num_pages, int64_t k) {
  Selection r;
  r.scores.assign(static_cast<size_t>(s.hkv) * num_pages, 0.0f);
  r.selected.assign(static_cast<size_t>(s.hkv) * k, -1);
  QuestSelectArgs a;
  a.q = q.data();
  a.num_q_heads = s.hq;
  a.q_position = q_position;
  a.rope = Rope{s.rope, 10000.0f};
  a.meta = meta;
  a.num_pages = num_pages;
  a.k = k;
  a.scores = r.scores.data();
  a.selected = r.selected.data();
  const absl::Status st = Select(path, a);
  EXPECT_TRUE(st.ok()) << path.name << ": " << st;
  return r;
}

// x rotated to `position` in double (kernels/types.h's RoPE), written here
// from the definition.
std::vector<double> Rotate(RopeStyle style, const float* x, int32_t dim, int64_t position) {
  std::vector<double> out(x, x + dim);
  if (style == RopeStyle::kNone) return out;
  for (int32_t i = 0; i < dim / 2; ++i) {
    const double angle = static_cast<double>(position) * std::pow(10000.0, -2.0 * i / dim);
    const int32_t a = style == RopeStyle::kInterleaved ? 2 * i : i;
    const int32_t b = style == RopeStyle::kInterleaved ? 2 * i + 1 : i + dim / 2;
    out[a] = x[a] * std::cos(angle) - x[b] * std::sin(angle);
    out[b] = x[a] * std::sin(angle) + x[b] * std::cos(angle);
  }
  return out;
}

// Brute force: per KV head, sort the given scores (higher first, equal:
// lower page first), take k, ascending.
std::vector<int32_t> BruteForceTopK(const std::vector<float>& scores, int32_t hkv, int64_t n, int64_t k) {
  std::vector<int32_t> out;
  for (int32_t h = 0; h < hkv; ++h) {
    std::vector<int32_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    const float* s = scores.data() + h * n;
    std::stable_sort(order.begin(), order.end(), [s](int32_t a, int32_t b) { return s[a] > s[b]; });
    order.resize(k);
    std::sort(order.begin(), order.end());
    out.insert(out.end(), order.begin(), order.end());
  }
  return out;
}

TEST(QuestTest, OptimisedPathsMatchReference) {
  uint64_t seed = 10;
  for (const Shape& s : Shapes()) {
    SCOPED_TRACE(Name(s));
    const Keys keys = MakeKeys(s, ++seed);
    const int64_t pages = Pages(s);
    const std::vector<float> q = RandomFloats(static_cast<size_t>(s.hq) * s.dim, ++seed);
    const int64_t k = std::max<int64_t>(1, pages / 3);
    Meta want(s, pages);
    ASSERT_TRUE(QuestUpdatePages(ExecContext{Backend::kReference},
                                 QuestUpdateArgs{keys.pool, Rope{s.rope, 10000.0f}, want.view, s.tokens, 0})
                    .ok());
    const Selection want_sel = RunSelect(testing::kReferencePath, s, want.view, q, s.tokens - 1, pages, k);
    for (const Path& path : testing::OptimisedKernelPaths()) {
      SCOPED_TRACE(path.name);
      Meta got(s, pages);
      ASSERT_TRUE(Update(path, QuestUpdateArgs{keys.pool, Rope{s.rope, 10000.0f}, got.view, s.tokens, 0}).ok());
      EXPECT_LE(RelErrorByNorm(got.min, want.min), 1e-6);
      EXPECT_LE(RelErrorByNorm(got.max, want.max), 1e-6);
      const Selection sel = RunSelect(path, s, want.view, q, s.tokens - 1, pages, k);
      EXPECT_LE(RelErrorByNorm(sel.scores, want_sel.scores), 1e-5);
      EXPECT_EQ(sel.selected, want_sel.selected);
    }
  }
}

// Updating after every chunk (of varying sizes, some inside one page) gives
// the metadata of a single rebuild, bit for bit, on every path.
TEST(QuestTest, IncrementalUpdateEqualsRebuild) {
  const Shape s{8, 2, 64, DType::kBF16, KvLayout::kNHD, 1, 16, RopeStyle::kInterleaved, 301};
  const Keys keys = MakeKeys(s, 3);
  const int64_t pages = Pages(s);
  const std::vector<int64_t> chunk = {1, 1, 14, 3, 40, 1, 16, 100, 7, 118};
  ASSERT_EQ(std::accumulate(chunk.begin(), chunk.end(), int64_t{0}), s.tokens);
  for (const Path& path : testing::AllKernelPaths()) {
    SCOPED_TRACE(path.name);
    Meta full(s, pages), step(s, pages);
    ASSERT_TRUE(Update(path, QuestUpdateArgs{keys.pool, Rope{s.rope, 10000.0f}, full.view, s.tokens, 0}).ok());
    int64_t done = 0;
    for (const int64_t c : chunk) {
      ASSERT_TRUE(Update(path, QuestUpdateArgs{keys.pool, Rope{s.rope, 10000.0f}, step.view, done + c, done}).ok());
      done += c;
    }
    EXPECT_EQ(step.min, full.min);
    EXPECT_EQ(step.max, full.max);
  }
}

// The property Quest rests on: every key of a page has q . k <= bound, for
// every query head of the group, with the logits computed here in double
// from the rotated vectors. With one-token pages the bound is the logit.
TEST(QuestTest, BoundIsAtLeastEveryLogitOfThePage) {
  for (const int32_t quest_page : {16, 7, 1}) {
    for (const RopeStyle rope : {RopeStyle::kInterleaved, RopeStyle::kNone}) {
      const Shape s{8, 2, 48, DType::kF32, KvLayout::kNHD, 1, quest_page, rope, 203};
      SCOPED_TRACE(Name(s));
      const Keys keys = MakeKeys(s, 40 + quest_page);
      const float* k = static_cast<const float*>(keys.pool.k);
      const int64_t pages = Pages(s);
      const int32_t q_position = 250;
      for (const Path& path : testing::AllKernelPaths()) {
        SCOPED_TRACE(path.name);
        Meta meta(s, pages);
        ASSERT_TRUE(Update(path, QuestUpdateArgs{keys.pool, Rope{rope, 10000.0f}, meta.view, s.tokens, 0}).ok());
        for (int trial = 0; trial < 3; ++trial) {
          const std::vector<float> q = RandomFloats(static_cast<size_t>(s.hq) * s.dim, 100 + trial, 2.0f);
          const Selection sel = RunSelect(path, s, meta.view, q, q_position, pages, 1);
          const int32_t group = s.hq / s.hkv;
          for (int32_t kv = 0; kv < s.hkv; ++kv) {
            for (int64_t p = 0; p < pages; ++p) {
              double exact_max = -std::numeric_limits<double>::infinity(), magnitude = 0.0;
              for (int32_t g = 0; g < group; ++g) {
                const std::vector<double> qr = Rotate(rope, q.data() + (kv * group + g) * s.dim, s.dim, q_position);
                for (int64_t t = p * quest_page; t < std::min<int64_t>((p + 1) * quest_page, s.tokens); ++t) {
                  const std::vector<double> kr = Rotate(rope, k + keys.pool.Offset(t, kv), s.dim, t);
                  double logit = 0.0, abs_sum = 0.0;
                  for (int32_t d = 0; d < s.dim; ++d) {
                    logit += qr[d] * kr[d];
                    abs_sum += std::fabs(qr[d] * kr[d]);
                  }
                  exact_max = std::max(exact_max, logit);
                  magnitude = std::max(magnitude, abs_sum);
                }
              }
              const double bound = sel.scores[kv * pages + p];
              const double tol = 1e-5 * magnitude;  // fp32 metadata and sums
              EXPECT_GE(bound, exact_max - tol) << "kv head " << kv << " page " << p;
              if (quest_page == 1) {
                EXPECT_NEAR(bound, exact_max, tol) << "kv head " << kv << " page " << p;
              }
            }
          }
        }
      }
    }
  }
}

// Selection equals a brute-force top-k over the scores, including ties
// (duplicated pages score the same: the lower page index wins).
TEST(QuestTest, SelectionEqualsBruteForceWithTies) {
  const Shape s{4, 2, 32, DType::kF32, KvLayout::kNHD, 1, 16, RopeStyle::kInterleaved, 16 * 40};
  const int64_t pages = Pages(s);
  Meta meta(s, pages);
  // Random page boxes (min <= max), then copies of a few pages elsewhere.
  const std::vector<float> a = RandomFloats(meta.min.size(), 5), b = RandomFloats(meta.min.size(), 6);
  for (size_t i = 0; i < a.size(); ++i) {
    meta.min[i] = std::min(a[i], b[i]);
    meta.max[i] = std::max(a[i], b[i]);
  }
  const size_t page_elems = static_cast<size_t>(s.hkv) * s.dim;
  for (const auto& [from, to] : std::vector<std::pair<int, int>>{{3, 17}, {3, 30}, {8, 9}, {20, 2}}) {
    std::copy_n(meta.min.begin() + from * page_elems, page_elems, meta.min.begin() + to * page_elems);
    std::copy_n(meta.max.begin() + from * page_elems, page_elems, meta.max.begin() + to * page_elems);
  }
  const std::vector<float> q = RandomFloats(static_cast<size_t>(s.hq) * s.dim, 7);
  for (const Path& path : testing::AllKernelPaths()) {
    SCOPED_TRACE(path.name);
    for (const int64_t k : {int64_t{1}, int64_t{4}, int64_t{13}, pages - 1, pages}) {
      const Selection sel = RunSelect(path, s, meta.view, q, 1000, pages, k);
      EXPECT_EQ(sel.selected, BruteForceTopK(sel.scores, s.hkv, pages, k)) << "k = " << k;
      // The duplicated pages tie exactly.
      for (int32_t h = 0; h < s.hkv; ++h) {
        EXPECT_EQ(sel.scores[h * pages + 3], sel.scores[h * pages + 17]);
        EXPECT_EQ(sel.scores[h * pages + 8], sel.scores[h * pages + 9]);
      }
    }
  }
}

TEST(QuestTest, BadArgumentsNameTheField) {
  const Shape s{4, 2, 16, DType::kF32, KvLayout::kNHD, 1, 16, RopeStyle::kInterleaved, 64};
  const Keys keys = MakeKeys(s, 9);
  Meta meta(s, Pages(s));
  const ExecContext cpu{Backend::kCpu};
  const auto expect_invalid = [](const absl::Status& st, const std::string& field) {
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_NE(st.message().find(field), absl::string_view::npos) << st.message() << " should name " << field;
  };
  const QuestUpdateArgs good_update{keys.pool, Rope{s.rope, 10000.0f}, meta.view, s.tokens, 0};
  ASSERT_TRUE(QuestUpdatePages(cpu, good_update).ok());
  {
    QuestUpdateArgs a = good_update;
    a.first_new = s.tokens + 1;
    expect_invalid(QuestUpdatePages(cpu, a), "first_new");
    a = good_update;
    a.num_tokens = s.tokens + 1;
    expect_invalid(QuestUpdatePages(cpu, a), "num_tokens");
    a = good_update;
    a.meta.max_pages = 3;
    expect_invalid(QuestUpdatePages(cpu, a), "meta.max_pages");
    a = good_update;
    a.meta.page_size = 0;
    expect_invalid(QuestUpdatePages(cpu, a), "meta.page_size");
    a = good_update;
    a.meta.head_dim = 8;
    expect_invalid(QuestUpdatePages(cpu, a), "meta has");
    a = good_update;
    a.meta.min = nullptr;
    expect_invalid(QuestUpdatePages(cpu, a), "meta.min");
  }
  std::vector<float> q(static_cast<size_t>(s.hq) * s.dim, 1.0f), scores(s.hkv * Pages(s));
  std::vector<int32_t> selected(s.hkv * 2);
  QuestSelectArgs good;
  good.q = q.data();
  good.num_q_heads = s.hq;
  good.q_position = 64;
  good.rope = Rope{s.rope, 10000.0f};
  good.meta = meta.view;
  good.num_pages = Pages(s);
  good.k = 2;
  good.scores = scores.data();
  good.selected = selected.data();
  ASSERT_TRUE(QuestSelect(cpu, good).ok());
  QuestSelectArgs a = good;
  a.num_q_heads = 3;
  expect_invalid(QuestSelect(cpu, a), "num_q_heads");
  a = good;
  a.k = Pages(s) + 1;
  expect_invalid(QuestSelect(cpu, a), "k = ");
  a = good;
  a.k = 0;
  expect_invalid(QuestSelect(cpu, a), "k = ");
  a = good;
  a.num_pages = 0;
  expect_invalid(QuestSelect(cpu, a), "num_pages");
  a = good;
  a.num_pages = Pages(s) + 1;
  expect_invalid(QuestSelect(cpu, a), "meta.max_pages");
  a = good;
  a.scores = nullptr;
  expect_invalid(QuestSelect(cpu, a), "scores");
  a = good;
  a.selected = nullptr;
  expect_invalid(QuestSelect(cpu, a), "selected");
  a = good;
  a.q_position = -1;
  expect_invalid(QuestSelect(cpu, a), "q_position");
  a = good;
  a.rope.theta = 0.0f;
  expect_invalid(QuestSelect(cpu, a), "rope.theta");
  a = good;
  std::vector<uint8_t> small(16);
  a.workspace = small.data();
  a.workspace_bytes = small.size();
  expect_invalid(QuestSelect(cpu, a), "workspace");
  a = good;
  a.selected = reinterpret_cast<int32_t*>(scores.data());
  expect_invalid(QuestSelect(cpu, a), "overlap");
}

// ---- CUDA ------------------------------------------------------------------------

DeviceBuffer Upload(const void* data, size_t bytes) {
  absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Allocate(std::max<size_t>(bytes, 16));
  EXPECT_TRUE(b.ok()) << b.status();
  if (!b.ok()) return DeviceBuffer();
  if (bytes > 0) EXPECT_TRUE(b->CopyFromHost(data, bytes).ok());
  return std::move(b).value();
}
template <typename T>
std::vector<T> Download(const DeviceBuffer& b, size_t n) {
  std::vector<T> v(n);
  const absl::Status st = b.CopyToHost(v.data(), n * sizeof(T));
  EXPECT_TRUE(st.ok()) << st;
  return v;
}

TEST(QuestTest, CudaMatchesReference) {
  if (auto st = CudaAvailable(); !st.ok()) {
    GTEST_SKIP() << st.message();
  }
  const ExecContext cuda{Backend::kCuda};
  uint64_t seed = 70;
  for (const Shape& s : Shapes()) {
    SCOPED_TRACE(Name(s));
    const Keys keys = MakeKeys(s, ++seed);
    const int64_t pages = Pages(s);
    const std::vector<float> q = RandomFloats(static_cast<size_t>(s.hq) * s.dim, ++seed);
    const int64_t k = std::max<int64_t>(1, pages / 3);
    Meta want(s, pages);
    const Rope rope{s.rope, 10000.0f};
    ASSERT_TRUE(
        QuestUpdatePages(ExecContext{Backend::kReference}, QuestUpdateArgs{keys.pool, rope, want.view, s.tokens, 0})
            .ok());
    const Selection want_sel = RunSelect(testing::kReferencePath, s, want.view, q, s.tokens - 1, pages, k);

    // Metadata: built in two steps on the device.
    DeviceBuffer dk = Upload(keys.bytes.data(), keys.bytes.size());
    const size_t meta_elems = want.min.size();
    DeviceBuffer dmin = DeviceBuffer::Allocate(meta_elems * 4).value();
    DeviceBuffer dmax = DeviceBuffer::Allocate(meta_elems * 4).value();
    KvPool dpool = keys.pool;
    dpool.k = dk.data();
    QuestMeta dmeta = want.view;
    dmeta.min = dmin.as<float>();
    dmeta.max = dmax.as<float>();
    const int64_t half = s.tokens / 2 + 3;
    ASSERT_TRUE(QuestUpdatePages(cuda, QuestUpdateArgs{dpool, rope, dmeta, half, 0}).ok());
    ASSERT_TRUE(QuestUpdatePages(cuda, QuestUpdateArgs{dpool, rope, dmeta, s.tokens, half}).ok());
    ASSERT_TRUE(CudaSynchronize(nullptr).ok());
    const std::vector<float> got_min = Download<float>(dmin, meta_elems), got_max = Download<float>(dmax, meta_elems);
    EXPECT_LE(RelErrorByNorm(got_min, want.min), 1e-6);
    EXPECT_LE(RelErrorByNorm(got_max, want.max), 1e-6);

    // Selection on the reference metadata.
    ASSERT_TRUE(dmin.CopyFromHost(want.min.data(), meta_elems * 4).ok());
    ASSERT_TRUE(dmax.CopyFromHost(want.max.data(), meta_elems * 4).ok());
    DeviceBuffer dq = Upload(q.data(), q.size() * 4);
    DeviceBuffer dscores = DeviceBuffer::Allocate(static_cast<size_t>(s.hkv) * pages * 4).value();
    DeviceBuffer dsel = DeviceBuffer::Allocate(static_cast<size_t>(s.hkv) * k * 4).value();
    const size_t ws_bytes = QuestWorkspaceBytes(pages, s.hq, s.dim);
    DeviceBuffer dws = DeviceBuffer::Allocate(ws_bytes).value();
    QuestSelectArgs a;
    a.q = dq.as<float>();
    a.num_q_heads = s.hq;
    a.q_position = static_cast<int32_t>(s.tokens - 1);
    a.rope = rope;
    a.meta = dmeta;
    a.num_pages = pages;
    a.k = k;
    a.scores = dscores.as<float>();
    a.selected = dsel.as<int32_t>();
    a.workspace = dws.data();
    a.workspace_bytes = ws_bytes;
    ASSERT_TRUE(QuestSelect(cuda, a).ok());
    ASSERT_TRUE(CudaSynchronize(nullptr).ok());
    EXPECT_LE(RelErrorByNorm(Download<float>(dscores, s.hkv * pages), want_sel.scores), 1e-5);
    EXPECT_EQ(Download<int32_t>(dsel, s.hkv * k), want_sel.selected);
  }
}

}  // namespace
}  // namespace kvc::kernels
