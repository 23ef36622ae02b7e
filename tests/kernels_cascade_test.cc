// The cascading KV cache (kernel 6) against ALGORITHMS.md §1's faithfulness
// tests: (a) dense attention while everything fits, (b) C = 1 is
// StreamingLLM, (c) a hand-traced sequence, (d) the steady-state span,
// (e) sub-caches ordered by age, (f) every optimised path equals the
// reference exactly. Insertion only moves bytes and compares scores, so
// every comparison here is exact: there is no tolerance.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/cascade.h"
#include "tests/kernel_test_util.h"

namespace kvc::kernels {
namespace {

using testing::DecodeToFloat;
using testing::Encode;
using testing::RandomFloats;
using testing::RandomInts;

using Path = testing::KernelPath;
using testing::kReferencePath;

// A chunk of tokens to push: [n][Hkv][D] rows in the cache dtype.
struct Chunk {
  int64_t n = 0;
  std::vector<uint8_t> k, v;
  std::vector<float> scores;       // [Hkv][n]
  std::vector<int32_t> positions;  // [n]
};
// Tokens first..first+n-1 (their positions); random K/V and scores.
// score_levels > 0 quantises scores to that many values, to force ties.
Chunk RandomChunk(int64_t first, int64_t n, int32_t heads, int32_t dim, DType dtype, uint64_t seed,
                  int32_t score_levels = 0) {
  Chunk c;
  c.n = n;
  c.k = Encode(dtype, RandomFloats(n * heads * dim, seed));
  c.v = Encode(dtype, RandomFloats(n * heads * dim, seed + 1));
  c.scores = RandomFloats(heads * n, seed + 2);
  if (score_levels > 0) {
    const std::vector<int32_t> q = RandomInts(heads * n, seed + 3, 0, score_levels - 1);
    for (size_t i = 0; i < q.size(); ++i) c.scores[i] = 0.25f * q[i];
  }
  for (int64_t j = 0; j < n; ++j) c.positions.push_back(static_cast<int32_t>(first + j));
  return c;
}

struct Evictions {
  std::vector<uint8_t> k, v;
  std::vector<float> scores;
  std::vector<int32_t> positions, count;
  bool operator==(const Evictions& o) const {
    return k == o.k && v == o.v && scores == o.scores && positions == o.positions &&
           count == o.count;
  }
};

struct Gathered {
  std::vector<int32_t> indptr, indices, positions;
  // Head h's entries of `v` (indices or positions).
  std::vector<int32_t> Of(const std::vector<int32_t>& v, int32_t h) const {
    return {v.begin() + indptr[h], v.begin() + indptr[h + 1]};
  }
};

// A cascade state owning its buffers (zero-initialised, as CascadeInsert requires).
class Cache {
 public:
  Cache(const CascadeConfig& config, DType dtype, int32_t heads, int32_t dim)
      : k_(static_cast<size_t>(config.total_slots()) * heads * dim * DTypeSize(dtype)),
        v_(k_.size()),
        scores_(static_cast<size_t>(heads) * config.total_slots()),
        positions_(scores_.size()),
        ring_start_(static_cast<size_t>(heads) * config.num_subcaches),
        ring_count_(ring_start_.size()) {
    state_ = {config,
              dtype,
              heads,
              dim,
              k_.data(),
              v_.data(),
              scores_.data(),
              positions_.data(),
              ring_start_.data(),
              ring_count_.data(),
              0};
  }
  Cache(const Cache&) = delete;
  Cache& operator=(const Cache&) = delete;

  const CascadeState& state() const { return state_; }
  const CascadeConfig& config() const { return state_.config; }

  // Pushes `chunk` on `path`; with report_rows false only counts are asked for.
  Evictions Push(const Path& path, const Chunk& chunk, bool report_rows = true) {
    const size_t rows = static_cast<size_t>(state_.num_kv_heads) * chunk.n;
    const size_t row_bytes = state_.head_dim * DTypeSize(state_.dtype);
    Evictions e{std::vector<uint8_t>(rows * row_bytes), std::vector<uint8_t>(rows * row_bytes),
                std::vector<float>(rows), std::vector<int32_t>(rows),
                std::vector<int32_t>(state_.num_kv_heads, -1)};
    CascadeInsertArgs a{
        &state_, chunk.k.data(), chunk.v.data(), chunk.scores.data(), chunk.positions.data(),
        chunk.n};
    if (report_rows) {
      a.evicted_k = e.k.data();
      a.evicted_v = e.v.data();
      a.evicted_scores = e.scores.data();
      a.evicted_positions = e.positions.data();
    }
    a.evicted_count = e.count.data();
    if (path.table == nullptr) {
      EXPECT_TRUE(CascadeInsert(path.ctx, a).ok()) << path.name;
    } else {
      EXPECT_TRUE(path.table->cascade_insert(path.ctx, a).ok()) << path.name;
      state_.tokens_seen += chunk.n;
    }
    return e;
  }

  Gathered Gather(const Path& path, bool original_positions) const {
    const size_t cap = static_cast<size_t>(state_.num_kv_heads) * config().total_slots();
    Gathered g{std::vector<int32_t>(state_.num_kv_heads + 1, -1), std::vector<int32_t>(cap, -1),
               std::vector<int32_t>(cap, -1)};
    const CascadeGatherArgs a{&state_, original_positions, g.indptr.data(), g.indices.data(),
                              g.positions.data()};
    const absl::Status s = path.table == nullptr ? CascadeGather(path.ctx, a)
                                                 : path.table->cascade_gather(path.ctx, a);
    EXPECT_TRUE(s.ok()) << path.name << ": " << s;
    g.indices.resize(g.indptr.back());
    g.positions.resize(g.indptr.back());
    return g;
  }

  // Original positions of sub-cache i of head h, oldest first.
  std::vector<int32_t> Ring(int32_t h, int32_t i) const {
    const CascadeConfig& c = config();
    std::vector<int32_t> out;
    for (int32_t a = 0; a < ring_count_[h * c.num_subcaches + i]; ++a) {
      const int32_t slot = c.num_sinks + i * c.subcache_slots +
                           (ring_start_[h * c.num_subcaches + i] + a) % c.subcache_slots;
      out.push_back(positions_[h * c.total_slots() + slot]);
    }
    return out;
  }
  std::vector<int32_t> SlotPositions(int32_t h) const {
    return {positions_.begin() + h * config().total_slots(),
            positions_.begin() + (h + 1) * config().total_slots()};
  }
  // Element d of the key (or value) row of (slot, head), as fp32.
  float Element(bool value, int32_t slot, int32_t h, int32_t d) const {
    const size_t e = (static_cast<size_t>(slot) * state_.num_kv_heads + h) * state_.head_dim + d;
    const size_t size = DTypeSize(state_.dtype);
    return DecodeToFloat(state_.dtype, (value ? v_ : k_).data() + e * size, 1)[0];
  }
  bool SameContents(const Cache& o) const {
    return k_ == o.k_ && v_ == o.v_ && scores_ == o.scores_ && positions_ == o.positions_ &&
           ring_start_ == o.ring_start_ && ring_count_ == o.ring_count_;
  }

 private:
  std::vector<uint8_t> k_, v_;
  std::vector<float> scores_;
  std::vector<int32_t> positions_, ring_start_, ring_count_;
  CascadeState state_;
};

// Chunk sizes 1..max_chunk from a fixed pseudo-random sequence, summing to total.
std::vector<int64_t> ChunkSizes(int64_t total, int32_t max_chunk, uint64_t seed) {
  const std::vector<int32_t> r = RandomInts(total, seed, 1, max_chunk);
  std::vector<int64_t> sizes;
  for (int64_t done = 0, i = 0; done < total; ++i) {
    sizes.push_back(std::min<int64_t>(r[i], total - done));
    done += sizes.back();
  }
  return sizes;
}

// (c) S = 1, C = 3, w = 2 (W = 6; eager while t <= 8), tokens at positions
// 0..11, two heads with crafted scores. After the eager fill (t = 8 slides
// the window, evicting position 1) the trace is, per head:
//   t=9  p6 carried into sub-cache 1 (not accepting): vs newest p5.
//        head 0: 0.5 >= 0.5 (tie) overwrites p5; head 1: 0.4 < 0.8 drops p6.
//   t=10 sub-caches 0, 1, 2 all accept and are full: p2 leaves the cache.
//   t=11 p8 carried into sub-cache 1 (not accepting): vs newest p7.
//        head 0: 0.1 < 0.9 drops p8; head 1: 0.7 >= 0.2 overwrites p7.
//   t=12 sub-cache 1 accepts and passes its oldest (head 0: p6, head 1: p5)
//        to sub-cache 2 (not accepting), vs newest p4.
//        head 0: 0.5 >= 0.3 overwrites p4; head 1: 0.8 < 0.9 drops p5.
TEST(CascadeTest, HandTracedAppendCarryOverwriteDrop) {
  const CascadeConfig config{1, 3, 2};
  constexpr int32_t kHeads = 2, kDim = 2, kTokens = 12;
  const float score[kHeads][kTokens] = {
      {0.2f, 0.2f, 0.2f, 0.2f, 0.3f, 0.5f, 0.5f, 0.9f, 0.1f, 0.2f, 0.2f, 0.2f},
      {0.2f, 0.2f, 0.2f, 0.2f, 0.9f, 0.8f, 0.4f, 0.2f, 0.7f, 0.2f, 0.2f, 0.2f}};
  // Position evicted by the token at position p, per head (-1: none).
  const int32_t evicted[kHeads][kTokens] = {{-1, -1, -1, -1, -1, -1, -1, 1, 5, 2, 8, 4},
                                            {-1, -1, -1, -1, -1, -1, -1, 1, 6, 2, 7, 5}};
  // Token p of head h: key (p + h/4, -p), value (10p, h).
  auto token = [&](int32_t p) {
    Chunk c;
    c.n = 1;
    std::vector<float> k, v;
    for (int32_t h = 0; h < kHeads; ++h) {
      k.insert(k.end(), {p + 0.25f * h, -1.0f * p});
      v.insert(v.end(), {10.0f * p, 1.0f * h});
      c.scores.push_back(score[h][p]);
    }
    c.k = Encode(DType::kF32, k);
    c.v = Encode(DType::kF32, v);
    c.positions = {p};
    return c;
  };
  for (const Path& path : testing::AllKernelPaths()) {
    SCOPED_TRACE(path.name);
    Cache one_by_one(config, DType::kF32, kHeads, kDim),
        all_at_once(config, DType::kF32, kHeads, kDim);
    Chunk all;
    all.n = kTokens;
    all.scores.resize(kHeads * kTokens);
    for (int32_t p = 0; p < kTokens; ++p) {
      const Chunk c = token(p);
      all.k.insert(all.k.end(), c.k.begin(), c.k.end());
      all.v.insert(all.v.end(), c.v.begin(), c.v.end());
      all.positions.push_back(p);
      for (int32_t h = 0; h < kHeads; ++h) all.scores[h * kTokens + p] = score[h][p];
      const Evictions e = one_by_one.Push(path, c);
      for (int32_t h = 0; h < kHeads; ++h) {
        SCOPED_TRACE(::testing::Message() << "token " << p << " head " << h);
        ASSERT_EQ(e.count[h], evicted[h][p] >= 0 ? 1 : 0);
        if (evicted[h][p] < 0) continue;
        const int32_t q = evicted[h][p];
        EXPECT_EQ(e.positions[h], q);
        EXPECT_EQ(e.scores[h], score[h][q]);
        EXPECT_EQ(DecodeToFloat(DType::kF32, e.k.data() + h * kDim * 4, 2),
                  (std::vector<float>{q + 0.25f * h, -1.0f * q}));
        EXPECT_EQ(DecodeToFloat(DType::kF32, e.v.data() + h * kDim * 4, 2),
                  (std::vector<float>{10.0f * q, 1.0f * h}));
      }
    }
    // Physical slots: sink, then rings 0, 1, 2 (two slots each).
    EXPECT_EQ(one_by_one.SlotPositions(0), (std::vector<int32_t>{0, 11, 10, 9, 7, 3, 6}));
    EXPECT_EQ(one_by_one.SlotPositions(1), (std::vector<int32_t>{0, 11, 10, 9, 8, 3, 4}));
    const std::vector<std::vector<int32_t>> age_order = {{0, 3, 6, 7, 9, 10, 11},
                                                         {0, 3, 4, 8, 9, 10, 11}};
    const Gathered original = one_by_one.Gather(path, true);
    const Gathered relative = one_by_one.Gather(path, false);
    EXPECT_EQ(original.indptr, (std::vector<int32_t>{0, 7, 14}));
    for (int32_t h = 0; h < kHeads; ++h) {
      EXPECT_EQ(original.Of(original.positions, h), age_order[h]);
      EXPECT_EQ(original.Of(original.indices, h), (std::vector<int32_t>{0, 5, 6, 4, 3, 2, 1}));
      EXPECT_EQ(relative.Of(relative.positions, h), (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6}));
      for (int32_t slot = 0; slot < config.total_slots(); ++slot) {
        const int32_t p = one_by_one.SlotPositions(h)[slot];
        EXPECT_EQ(one_by_one.Element(false, slot, h, 0), p + 0.25f * h);
        EXPECT_EQ(one_by_one.Element(true, slot, h, 0), 10.0f * p);
        EXPECT_EQ(one_by_one.state().scores[h * config.total_slots() + slot], score[h][p]);
      }
    }
    // The same tokens as one chunk: same slots, evictions in the same order.
    const Evictions e = all_at_once.Push(path, all);
    EXPECT_TRUE(all_at_once.SameContents(one_by_one));
    for (int32_t h = 0; h < kHeads; ++h) {
      std::vector<int32_t> want;
      for (int32_t p = 0; p < kTokens; ++p) {
        if (evicted[h][p] >= 0) want.push_back(evicted[h][p]);
      }
      ASSERT_EQ(e.count[h], static_cast<int32_t>(want.size()));
      EXPECT_EQ(std::vector<int32_t>(e.positions.begin() + h * kTokens,
                                     e.positions.begin() + h * kTokens + e.count[h]),
                want);
    }
  }
}

// (b) With one sub-cache every token is accepted, so the contents are the
// sinks plus the last W tokens whatever the scores.
TEST(CascadeTest, OneSubcacheIsStreamingLlm) {
  const CascadeConfig config{3, 1, 8};
  constexpr int32_t kHeads = 2, kDim = 4;
  for (const Path& path : testing::AllKernelPaths()) {
    SCOPED_TRACE(path.name);
    Cache cache(config, DType::kBF16, kHeads, kDim);
    std::vector<float> keys;  // every pushed key, [token][head][dim], after bf16
    int64_t seen = 0;
    for (const int64_t n : ChunkSizes(100, 7, 5)) {
      const Chunk c = RandomChunk(seen, n, kHeads, kDim, DType::kBF16, 100 + seen);
      const std::vector<float> k = DecodeToFloat(DType::kBF16, c.k.data(), n * kHeads * kDim);
      keys.insert(keys.end(), k.begin(), k.end());
      const Evictions e = cache.Push(path, c);
      seen += n;
      std::vector<int32_t> want;
      for (int32_t p = 0; p < std::min<int64_t>(seen, 3); ++p) want.push_back(p);
      for (int64_t p = std::max<int64_t>(3, seen - 8); p < seen; ++p) want.push_back(p);
      const Gathered g = cache.Gather(path, true);
      for (int32_t h = 0; h < kHeads; ++h) {
        ASSERT_EQ(g.Of(g.positions, h), want) << "after " << seen << " tokens, head " << h;
        for (size_t j = 0; j < want.size(); ++j) {
          const int32_t slot = g.Of(g.indices, h)[j];
          for (int32_t d = 0; d < kDim; ++d) {
            ASSERT_EQ(cache.Element(false, slot, h, d), keys[(want[j] * kHeads + h) * kDim + d]);
          }
        }
        // The window slides: one eviction per token past S + W.
        const int64_t before = seen - n;
        EXPECT_EQ(e.count[h], std::max<int64_t>(0, seen - 11) - std::max<int64_t>(0, before - 11));
      }
    }
  }
}

// (d) + (e): in the steady state sub-cache i advances once every 2^i tokens,
// so the history spans about w * (2^C - 1) tokens whatever the scores; and
// since entries only move from sub-cache i to i + 1, every entry of
// sub-cache i is older than every entry of sub-cache i - 1 (and the sinks
// older than all).
TEST(CascadeTest, SpanAndAgeOrder) {
  const CascadeConfig config{4, 4, 16};
  constexpr int32_t kHeads = 2, kDim = 2;
  const int64_t kExpectedSpan = 16 * ((1 << 4) - 1);  // 240
  // Scores: random, rising (the carried entry always overwrites), falling
  // (it is always dropped).
  for (const int mode : {0, 1, 2}) {
    SCOPED_TRACE(::testing::Message() << "score mode " << mode);
    Cache cache(config, DType::kF32, kHeads, kDim);
    int64_t seen = 0, min_span = 1 << 30, max_span = 0;
    for (const int64_t n : ChunkSizes(3000, 40, 6 + mode)) {
      Chunk c = RandomChunk(seen, n, kHeads, kDim, DType::kF32, 300 + seen);
      for (int32_t h = 0; h < kHeads; ++h) {
        for (int64_t j = 0; j < n; ++j) {
          if (mode != 0) c.scores[h * n + j] = (mode == 1 ? 1.0f : -1.0f) * (seen + j);
        }
      }
      cache.Push(kReferencePath, c);
      seen += n;
      for (int32_t h = 0; h < kHeads; ++h) {
        int32_t newer_min = static_cast<int32_t>(seen);  // oldest entry of sub-cache i - 1
        for (int32_t i = 0; i < config.num_subcaches; ++i) {
          const std::vector<int32_t> ring = cache.Ring(h, i);
          if (ring.empty()) continue;
          ASSERT_TRUE(std::is_sorted(ring.begin(), ring.end()));
          ASSERT_LT(ring.back(), newer_min) << "sub-cache " << i << " after " << seen;
          ASSERT_GE(ring.front(), config.num_sinks);
          newer_min = ring.front();
        }
        if (seen >= 2000) {  // long past the first full cycle of sub-cache C-1
          const int64_t span = (seen - 1) - cache.Ring(h, config.num_subcaches - 1).front();
          min_span = std::min(min_span, span);
          max_span = std::max(max_span, span);
        }
      }
    }
    // Sub-cache i's entries are 2^i tokens apart, give or take the replaced
    // newest one, so the span stays within [(w - 1)(2^C - 1), w (2^C - 1));
    // measured: 225..239 in all three score regimes.
    EXPECT_GE(min_span, kExpectedSpan - 15);
    EXPECT_LT(max_span, kExpectedSpan);
  }
}

// (f) Every optimised path leaves exactly the reference's slots, scores,
// positions, rings and gather lists, and reports exactly its evictions, over
// thousands of tokens in chunks of 1..97 (scores on 4 levels, so ties are
// frequent and the >= rule is exercised).
TEST(CascadeTest, OptimisedPathsEqualReferenceExactly) {
  const CascadeConfig config{4, 4, 8};
  constexpr int32_t kHeads = 3, kDim = 6;
  for (const DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (const Path& path : testing::OptimisedKernelPaths()) {
      SCOPED_TRACE(::testing::Message() << path.name << " " << DTypeName(dtype));
      Cache ref(config, dtype, kHeads, kDim), got(config, dtype, kHeads, kDim);
      int64_t seen = 0;
      std::vector<int64_t> sizes = ChunkSizes(2500, 97, 7);
      sizes.insert(sizes.begin() + 3, {1, 1, 1});
      for (const int64_t n : sizes) {
        const Chunk c = RandomChunk(seen, n, kHeads, kDim, dtype, 500 + seen, /*score_levels=*/4);
        const Evictions want = ref.Push(kReferencePath, c);
        ASSERT_TRUE(got.Push(path, c) == want) << "evictions differ after " << seen;
        seen += n;
        ASSERT_TRUE(got.SameContents(ref)) << "slots differ after " << seen;
        for (const bool original : {false, true}) {
          const Gathered a = ref.Gather(kReferencePath, original), b = got.Gather(path, original);
          ASSERT_EQ(a.indptr, b.indptr);
          ASSERT_EQ(a.indices, b.indices);
          ASSERT_EQ(a.positions, b.positions);
        }
      }
    }
  }
  // Eviction rows are optional: counts alone match.
  Cache ref(config, DType::kF32, kHeads, kDim), got(config, DType::kF32, kHeads, kDim);
  for (int64_t seen = 0; seen < 400; seen += 40) {
    const Chunk c = RandomChunk(seen, 40, kHeads, kDim, DType::kF32, 900 + seen);
    EXPECT_EQ(got.Push(testing::OptimisedKernelPaths().back(), c, false).count, ref.Push(kReferencePath, c).count);
  }
  EXPECT_TRUE(got.SameContents(ref));
  // An empty chunk changes nothing and reports no evictions.
  for (const Path& path : testing::AllKernelPaths()) {
    Cache pushed(config, DType::kF32, kHeads, kDim);
    pushed.Push(path, RandomChunk(0, 30, kHeads, kDim, DType::kF32, 950));
    EXPECT_EQ(pushed.Push(path, Chunk{}).count, std::vector<int32_t>(kHeads, 0)) << path.name;
    EXPECT_EQ(pushed.state().tokens_seen, 30);
    Cache again(config, DType::kF32, kHeads, kDim);
    again.Push(path, RandomChunk(0, 30, kHeads, kDim, DType::kF32, 950));
    EXPECT_TRUE(pushed.SameContents(again)) << path.name;
  }
}

// `lists` (per head) with m entries appended to each: slots first_slot..
// at positions first_position.. (a chunk after the cache).
Gathered WithChunk(const Gathered& lists, int32_t first_slot, int64_t first_position, int64_t m) {
  Gathered out;
  out.indptr = {0};
  for (size_t h = 0; h + 1 < lists.indptr.size(); ++h) {
    for (int32_t e = lists.indptr[h]; e < lists.indptr[h + 1]; ++e) {
      out.indices.push_back(lists.indices[e]);
      out.positions.push_back(lists.positions[e]);
    }
    for (int64_t j = 0; j < m; ++j) {
      out.indices.push_back(static_cast<int32_t>(first_slot + j));
      out.positions.push_back(static_cast<int32_t>(first_position + j));
    }
    out.indptr.push_back(static_cast<int32_t>(out.indices.size()));
  }
  return out;
}

// Reference causal prefill (RoPE, per-KV-head lists) of queries at
// positions first_position..; returns out followed by lse.
std::vector<float> PrefillOver(const std::vector<uint8_t>& k, const std::vector<uint8_t>& v,
                               const KvPool& shape, const Gathered& lists,
                               const std::vector<float>& q, int32_t num_q_heads,
                               int64_t first_position) {
  const int64_t m = static_cast<int64_t>(q.size()) / (num_q_heads * shape.head_dim);
  std::vector<int32_t> q_pos(m);
  for (int64_t i = 0; i < m; ++i) q_pos[i] = static_cast<int32_t>(first_position + i);
  std::vector<float> result(m * num_q_heads * (shape.head_dim + 1));
  PrefillArgs a;
  a.q = q.data();
  a.q_positions = q_pos.data();
  a.num_q = m;
  a.num_q_heads = num_q_heads;
  const size_t token_bytes = shape.bytes() / shape.num_slots();
  a.kv = KvPool::Contiguous(k.data(), v.data(), shape.dtype, k.size() / token_bytes,
                            shape.num_kv_heads, shape.head_dim);
  a.gather = KvGather{lists.indptr.data(), lists.indices.data(), lists.positions.data(), true};
  a.rope = Rope{RopeStyle::kHalf, 10000.0f};
  a.out = result.data();
  a.lse = result.data() + m * num_q_heads * shape.head_dim;
  const absl::Status s = Prefill(ExecContext{Backend::kReference}, a);
  EXPECT_TRUE(s.ok()) << s;
  return result;
}

// (a) While seen <= S + W nothing has left the cache and the gather lists it
// in age order, so attention over [cascade | chunk (causal)] with
// cache-relative (or original) positions is dense causal attention over the
// same keys in the same order at the same positions: the reference computes
// identical sums, so outputs and lse agree exactly.
TEST(CascadeTest, DenseAttentionWhileEverythingFits) {
  const CascadeConfig config{4, 3, 8};  // S + W = 28
  constexpr int32_t kHq = 4, kHkv = 2, kDim = 16;
  const int32_t slots = config.total_slots();
  for (const DType dtype : {DType::kF32, DType::kBF16}) {
    for (const bool original : {false, true}) {
      SCOPED_TRACE(::testing::Message()
                   << DTypeName(dtype) << (original ? " original" : " relative"));
      Cache cache(config, dtype, kHkv, kDim);
      const KvPool shape = cache.state().AsPool();
      std::vector<uint8_t> all_k, all_v;  // every token so far, [seen][Hkv][D]
      int64_t seen = 0, checked = 0;
      for (const int64_t m : {5, 1, 7, 3, 12, 6}) {
        const Chunk c = RandomChunk(seen, m, kHkv, kDim, dtype, 700 + seen);
        const std::vector<float> q = RandomFloats(m * kHq * kDim, 800 + seen);
        all_k.insert(all_k.end(), c.k.begin(), c.k.end());
        all_v.insert(all_v.end(), c.v.begin(), c.v.end());
        if (seen <= config.num_sinks + config.window()) {
          // Dense: every token so far at positions 0..seen+m-1.
          const Gathered dense =
              WithChunk(Gathered{std::vector<int32_t>(kHkv + 1, 0), {}, {}}, 0, 0, seen + m);
          // Cascade: a pool of the cache's slots followed by the chunk; the
          // queries and the chunk's keys at n + i, n == seen here.
          const Gathered cached = cache.Gather(kReferencePath, original);
          ASSERT_EQ(cached.indptr.back(), kHkv * seen);
          std::vector<uint8_t> pool_k(static_cast<const uint8_t*>(cache.state().k),
                                      static_cast<const uint8_t*>(cache.state().k) + shape.bytes());
          std::vector<uint8_t> pool_v(static_cast<const uint8_t*>(cache.state().v),
                                      static_cast<const uint8_t*>(cache.state().v) + shape.bytes());
          pool_k.insert(pool_k.end(), c.k.begin(), c.k.end());
          pool_v.insert(pool_v.end(), c.v.begin(), c.v.end());
          EXPECT_EQ(
              PrefillOver(pool_k, pool_v, shape, WithChunk(cached, slots, seen, m), q, kHq, seen),
              PrefillOver(all_k, all_v, shape, dense, q, kHq, seen))
              << "chunk at " << seen;
          ++checked;
        }
        cache.Push(kReferencePath, c);
        seen += m;
      }
      EXPECT_EQ(checked, 6);  // the chunks at 0, 5, 6, 13, 16 and 28
    }
  }
}

}  // namespace
}  // namespace kvc::kernels
