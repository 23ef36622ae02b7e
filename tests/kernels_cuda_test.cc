// The CUDA path of every kernel against the reference: random inputs on the
// host, Backend::kReference on host memory, Backend::kCuda on device copies,
// results compared with stated tolerances. Without a device (or in a build
// without CUDA) every test skips, saying why. Uses only kernels/device.h and
// the public kernel API, so it builds in every configuration.
//
// Tolerances, as relative error by norm unless said otherwise:
//  - attention outputs and scores: 1e-5. The CUDA kernel computes logits,
//    softmax and P.V in fp32 and rotates keys with fp32 sin/cos of a
//    double-reduced angle; run through a CPU emulation of the kernels these
//    cases measure 1e-7 to 6e-7 against the fp64 reference, so 1e-5 leaves
//    room for the GPU's own exp2f / sincosf rounding, while a wrong mask,
//    key, rotation, group mapping or score weight moves the result by 5e-3
//    or more. lse: 1e-5 relative per row, empty rows exactly -inf.
//  - MergeStates, fingerprints, LESS: 1e-6 (both sides compute in double
//    and round once to fp32; only summation order differs).
//  - TokenSelect: selections equal exactly; scores within 1e-6 (same
//    per-candidate double arithmetic, libm vs CUDA exp may differ in the last
//    double bit). Cascade slot contents and gather lists: equal exactly.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/cascade.h"
#include "kernels/device.h"
#include "kernels/less.h"
#include "kernels/token_select.h"
#include "tests/kernel_test_util.h"

namespace kvc::kernels {
namespace {

using testing::Encode;
using testing::MaxAbsDiff;
using testing::RandomFloats;
using testing::RelErrorByNorm;

const ExecContext kRef{Backend::kReference};
const ExecContext kCuda{Backend::kCuda};
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---- Device copies -----------------------------------------------------------

// A device copy of `bytes` bytes of `data`, zeros when `data` is null (at
// least 16 bytes are allocated, so an empty array still has a non-null
// address).
DeviceBuffer Upload(const void* data, size_t bytes) {
  absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Allocate(std::max<size_t>(bytes, 16));
  EXPECT_TRUE(b.ok()) << b.status();
  if (!b.ok()) return DeviceBuffer();
  EXPECT_TRUE(b->Zero().ok());
  if (bytes > 0 && data != nullptr) {
    EXPECT_TRUE(b->CopyFromHost(data, bytes).ok());
  }
  return std::move(b).value();
}
template <typename T>
DeviceBuffer Upload(const std::vector<T>& v) {
  return Upload(v.data(), v.size() * sizeof(T));
}
template <typename T>
std::vector<T> Download(const DeviceBuffer& b, size_t n) {
  std::vector<T> v(n);
  const absl::Status s = b.CopyToHost(v.data(), n * sizeof(T));
  EXPECT_TRUE(s.ok()) << s;
  return v;
}
void Sync() {
  const absl::Status s = CudaSynchronize(nullptr);
  ASSERT_TRUE(s.ok()) << s;
}

// ---- Inputs ---------------------------------------------------------------------

// A paged pool of random keys and values, on the host and the device.
struct Pool {
  std::vector<uint8_t> k, v;
  KvPool host;
  DeviceBuffer dk, dv;
  KvPool Device() const {
    KvPool p = host;
    p.k = dk.data();
    p.v = dv.data();
    return p;
  }
};
Pool MakePool(int64_t slots, int32_t hkv, int32_t dim, DType dtype, KvLayout layout,
              int32_t page_size, uint64_t seed) {
  Pool p;
  const size_t n = static_cast<size_t>(slots) * hkv * dim;
  p.k = Encode(dtype, RandomFloats(n, seed));
  p.v = Encode(dtype, RandomFloats(n, seed + 1));
  p.host = KvPool{p.k.data(), p.v.data(), dtype, layout, slots / page_size, page_size, hkv, dim};
  p.dk = Upload(p.k);
  p.dv = Upload(p.v);
  return p;
}

// CSR gather lists (host) and their device copy.
struct Lists {
  std::vector<int32_t> indptr{0}, indices, positions;
  DeviceBuffer d_indptr, d_indices, d_positions;
  void Add(const std::vector<int32_t>& slots, int32_t first_position) {
    for (size_t e = 0; e < slots.size(); ++e) {
      indices.push_back(slots[e]);
      positions.push_back(first_position + static_cast<int32_t>(e));
    }
    indptr.push_back(static_cast<int32_t>(indices.size()));
  }
  void ToDevice() {
    d_indptr = Upload(indptr);
    d_indices = Upload(indices);
    d_positions = Upload(positions);
  }
  KvGather Host(bool per_kv_head) const {
    return {indptr.data(), indices.data(), positions.data(), per_kv_head};
  }
  KvGather Device(bool per_kv_head) const {
    return {d_indptr.as<int32_t>(), d_indices.as<int32_t>(), d_positions.as<int32_t>(),
            per_kv_head};
  }
};

// `n` distinct slots of [0, slots), shuffled.
std::vector<int32_t> DistinctSlots(int32_t slots, int32_t n, uint64_t seed) {
  std::vector<int32_t> all(slots);
  std::iota(all.begin(), all.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(n);
  return all;
}

// ---- Attention ------------------------------------------------------------------

struct AttnCase {
  int32_t hq, hkv, dim;
  DType dtype;
  RopeStyle rope;
  KvLayout layout;
  bool per_kv_head;
  ScoreMode mode;
  GroupReduce reduce;
};

std::string Name(const AttnCase& c) {
  return absl::StrCat(c.hq, "/", c.hkv, "/", c.dim, " ", DTypeName(c.dtype), " rope ",
                      static_cast<int>(c.rope), c.per_kv_head ? " per-head" : " shared", " mode ",
                      static_cast<int>(c.mode), " reduce ", static_cast<int>(c.reduce));
}

// out, lse and scores of one call on host memory (ctx kRef) or device copies.
struct AttnResult {
  std::vector<float> out, lse, scores;
};

// Compares everything a Prefill/Decode call produced.
void ExpectAttentionClose(const AttnResult& got, const AttnResult& want) {
  EXPECT_LE(RelErrorByNorm(got.out, want.out), 1e-5);
  ASSERT_EQ(got.lse.size(), want.lse.size());
  for (size_t i = 0; i < want.lse.size(); ++i) {
    if (std::isinf(want.lse[i])) {
      EXPECT_EQ(got.lse[i], want.lse[i]) << "row " << i;
    } else {
      EXPECT_NEAR(got.lse[i], want.lse[i], 1e-5 * std::max(1.0f, std::fabs(want.lse[i])))
          << "row " << i;
    }
  }
  EXPECT_LE(RelErrorByNorm(got.scores, want.scores), 1e-5);
}

// Runs a Prefill described by host arguments on `ctx`; for kCuda every
// array is copied to the device first. `a` has host pointers; its output
// pointers only say whether an output is wanted (a null `out` makes the CUDA
// call scores-only) and the scores start from `init_scores`.
AttnResult RunPrefill(const ExecContext& ctx, PrefillArgs a, const Pool& pool, Lists& lists,
                      int64_t num_lists, const std::vector<float>& init_scores) {
  const size_t rows = static_cast<size_t>(a.num_q) * a.num_q_heads, dim = a.kv.head_dim;
  AttnResult r{std::vector<float>(rows * dim, 7.0f), std::vector<float>(rows, 7.0f), init_scores};
  const bool want_out = a.out != nullptr;
  if (ctx.backend != Backend::kCuda) {
    // The reference always computes the output (its scores do not depend on it).
    a.out = r.out.data();
    a.lse = r.lse.data();
    a.accum.scores = r.scores.data();
    const absl::Status s = Prefill(ctx, a);
    EXPECT_TRUE(s.ok()) << s;
    return r;
  }
  lists.ToDevice();
  const DeviceBuffer q = Upload(a.q, rows * dim * 4);
  const DeviceBuffer qp = Upload(a.q_positions, a.num_q * 4);
  const DeviceBuffer norm = Upload(a.accum.lse, a.accum.lse ? rows * 4 : 0);
  const DeviceBuffer out = Upload(r.out), lse = Upload(r.lse), scores = Upload(r.scores);
  a.q = q.as<float>();
  a.q_positions = a.q_positions ? qp.as<int32_t>() : nullptr;
  a.kv = pool.Device();
  a.gather = lists.Device(a.gather.per_kv_head);
  a.out = want_out ? out.as<float>() : nullptr;
  a.lse = want_out ? lse.as<float>() : nullptr;  // scores-only: nothing but the score pass runs
  a.accum.scores = scores.as<float>();
  a.accum.lse = a.accum.lse ? norm.as<float>() : nullptr;
  const absl::Status s = Prefill(ctx, a);
  EXPECT_TRUE(s.ok()) << s;
  Sync();
  return {Download<float>(out, r.out.size()), Download<float>(lse, rows),
          Download<float>(scores, r.scores.size())};
}

AttnResult RunDecode(const ExecContext& ctx, DecodeArgs a, const Pool& pool, Lists& lists,
                     const std::vector<float>& init_scores) {
  const size_t rows = static_cast<size_t>(a.batch) * a.num_q_heads, dim = a.kv.head_dim;
  AttnResult r{std::vector<float>(rows * dim, 7.0f), std::vector<float>(rows, 7.0f), init_scores};
  if (ctx.backend != Backend::kCuda) {
    a.out = r.out.data();
    a.lse = r.lse.data();
    a.accum.scores = r.scores.data();
    const absl::Status s = Decode(ctx, a);
    EXPECT_TRUE(s.ok()) << s;
    return r;
  }
  lists.ToDevice();
  const DeviceBuffer q = Upload(a.q, rows * dim * 4);
  const DeviceBuffer qp = Upload(a.q_positions, a.batch * 4);
  const DeviceBuffer out = Upload(r.out), lse = Upload(r.lse), scores = Upload(r.scores);
  a.q = q.as<float>();
  a.q_positions = a.q_positions ? qp.as<int32_t>() : nullptr;
  a.kv = pool.Device();
  a.gather = lists.Device(a.gather.per_kv_head);
  a.out = out.as<float>();
  a.lse = lse.as<float>();
  a.accum.scores = scores.as<float>();
  const absl::Status s = Decode(ctx, a);
  EXPECT_TRUE(s.ok()) << s;
  Sync();
  return {Download<float>(out, r.out.size()), Download<float>(lse, rows),
          Download<float>(scores, r.scores.size())};
}

// Scores from earlier calls: small, so that this call's probabilities (about
// 1 / list length each) dominate the updated scores and an error in them
// shows, while the decay of the old part still counts.
std::vector<float> PositiveScores(size_t n, uint64_t seed) {
  std::vector<float> s = RandomFloats(n, seed, 1e-3f);
  for (float& x : s) x = std::fabs(x);
  return s;
}

// Causal chunked prefill over paged pools (page size 16): a cache part of
// odd length in shuffled slots, then the chunk's own 37 tokens.
TEST(CudaAttentionTest, PrefillMatchesReference) {
  if (auto s = CudaAvailable(); !s.ok()) GTEST_SKIP() << s.message();
  const AttnCase cases[] = {
      {6, 6, 48, DType::kF32, RopeStyle::kInterleaved, KvLayout::kNHD, false, ScoreMode::kEma,
       GroupReduce::kMax},
      {32, 8, 128, DType::kBF16, RopeStyle::kHalf, KvLayout::kHND, true, ScoreMode::kSum,
       GroupReduce::kSum},
      {32, 8, 128, DType::kF32, RopeStyle::kNone, KvLayout::kNHD, false, ScoreMode::kEma,
       GroupReduce::kMax},
      {8, 2, 64, DType::kF16, RopeStyle::kHalf, KvLayout::kHND, true, ScoreMode::kNone,
       GroupReduce::kMax},
      {8, 2, 200, DType::kBF16, RopeStyle::kInterleaved, KvLayout::kNHD, false, ScoreMode::kSum,
       GroupReduce::kMax},
      {4, 4, 80, DType::kF32, RopeStyle::kHalf, KvLayout::kHND, false, ScoreMode::kNone,
       GroupReduce::kMax},
  };
  constexpr int32_t kSlots = 512, kPage = 16, kNumQ = 37;
  uint64_t seed = 100;
  for (const AttnCase& c : cases) {
    SCOPED_TRACE(Name(c));
    const Pool pool = MakePool(kSlots, c.hkv, c.dim, c.dtype, c.layout, kPage, ++seed);
    const int64_t num_lists = c.per_kv_head ? c.hkv : 1;
    Lists lists;
    for (int64_t l = 0; l < num_lists; ++l) {
      const int32_t cached = 173 + 24 * static_cast<int32_t>(l);  // odd and different per head
      lists.Add(DistinctSlots(kSlots, cached + kNumQ, ++seed), /*first_position=*/3);
    }
    const std::vector<float> q = RandomFloats(static_cast<size_t>(kNumQ) * c.hq * c.dim, ++seed);
    std::vector<int32_t> q_positions(kNumQ);
    for (int32_t i = 0; i < kNumQ; ++i) q_positions[i] = 3 + 173 + i;  // list 0's chunk positions
    PrefillArgs a;
    a.q = q.data();
    a.q_positions = q_positions.data();
    a.num_q = kNumQ;
    a.num_q_heads = c.hq;
    a.kv = pool.host;
    a.gather = lists.Host(c.per_kv_head);
    a.causal = true;
    a.rope = Rope{c.rope, 10000.0f};
    a.out = reinterpret_cast<float*>(1);  // "wanted"; replaced by the runner
    a.accum = ScoreAccum{c.mode, c.reduce, 0.99f, c.mode == ScoreMode::kSum ? 5 : 0};
    const std::vector<float> scores = PositiveScores(static_cast<size_t>(c.hkv) * kSlots, ++seed);
    const AttnResult want = RunPrefill(kRef, a, pool, lists, num_lists, scores);
    const AttnResult got = RunPrefill(kCuda, a, pool, lists, num_lists, scores);
    ExpectAttentionClose(got, want);
  }
}

// Non-causal prefill whose normaliser is given (the cache half of a split
// call): only the scores are computed (out == nullptr).
TEST(CudaAttentionTest, ScoresOnlyPrefillWithGivenLse) {
  if (auto s = CudaAvailable(); !s.ok()) GTEST_SKIP() << s.message();
  constexpr int32_t kHq = 16, kHkv = 4, kD = 64, kSlots = 256, kNumQ = 21;
  const Pool pool = MakePool(kSlots, kHkv, kD, DType::kBF16, KvLayout::kNHD, 16, 7);
  Lists lists;
  lists.Add(DistinctSlots(kSlots, 149, 8), 0);
  const std::vector<float> q = RandomFloats(static_cast<size_t>(kNumQ) * kHq * kD, 9);
  std::vector<float> norm = RandomFloats(static_cast<size_t>(kNumQ) * kHq, 10);
  for (float& x : norm) x = 6.0f + x;  // larger than this part's own lse: the rest of the keys
  PrefillArgs a;
  a.q = q.data();
  a.num_q = kNumQ;
  a.num_q_heads = kHq;
  a.kv = pool.host;
  a.gather = lists.Host(false);
  a.causal = false;
  a.accum = ScoreAccum{ScoreMode::kEma, GroupReduce::kMax, 0.999f, 0, nullptr, norm.data()};
  const std::vector<float> scores = PositiveScores(static_cast<size_t>(kHkv) * kSlots, 11);
  const AttnResult want = RunPrefill(kRef, a, pool, lists, 1, scores);
  const AttnResult got = RunPrefill(kCuda, a, pool, lists, 1, scores);
  EXPECT_LE(RelErrorByNorm(got.scores, want.scores), 1e-5);
}

// Batched decode over paged lists of odd lengths, one of them empty; slots
// are disjoint across sequences so the scores may accumulate.
TEST(CudaAttentionTest, DecodeMatchesReference) {
  if (auto s = CudaAvailable(); !s.ok()) GTEST_SKIP() << s.message();
  const AttnCase cases[] = {
      {6, 6, 48, DType::kF32, RopeStyle::kInterleaved, KvLayout::kNHD, false, ScoreMode::kEma,
       GroupReduce::kMax},
      {32, 8, 128, DType::kBF16, RopeStyle::kHalf, KvLayout::kHND, true, ScoreMode::kSum,
       GroupReduce::kMax},
      {32, 8, 128, DType::kF16, RopeStyle::kInterleaved, KvLayout::kNHD, false, ScoreMode::kNone,
       GroupReduce::kMax},
      {64, 2, 64, DType::kF32, RopeStyle::kHalf, KvLayout::kNHD, true, ScoreMode::kEma,
       GroupReduce::kMax},
      {4, 1, 320, DType::kBF16, RopeStyle::kNone, KvLayout::kHND, false, ScoreMode::kSum,
       GroupReduce::kSum},
  };
  constexpr int32_t kSlots = 1024, kPage = 16;
  const std::vector<int32_t> lengths = {17, 0, 1, 333, 64, 129};
  uint64_t seed = 200;
  for (const AttnCase& c : cases) {
    SCOPED_TRACE(Name(c));
    const Pool pool = MakePool(kSlots, c.hkv, c.dim, c.dtype, c.layout, kPage, ++seed);
    const int32_t batch = static_cast<int32_t>(lengths.size());
    Lists lists;
    std::vector<std::vector<int32_t>> order(c.per_kv_head ? c.hkv : 1);
    for (size_t h = 0; h < order.size(); ++h) order[h] = DistinctSlots(kSlots, kSlots, ++seed);
    std::vector<int32_t> used(order.size(), 0), q_positions(batch);
    for (int32_t b = 0; b < batch; ++b) {
      for (size_t h = 0; h < order.size(); ++h) {
        const int32_t len = lengths[b] + (c.per_kv_head ? static_cast<int32_t>(h) : 0);
        lists.Add(
            std::vector<int32_t>(order[h].begin() + used[h], order[h].begin() + used[h] + len), 0);
        used[h] += len;
      }
      q_positions[b] = lengths[b] + 5;
    }
    const std::vector<float> q = RandomFloats(static_cast<size_t>(batch) * c.hq * c.dim, ++seed);
    DecodeArgs a;
    a.q = q.data();
    a.q_positions = q_positions.data();
    a.batch = batch;
    a.num_q_heads = c.hq;
    a.kv = pool.host;
    a.gather = lists.Host(c.per_kv_head);
    a.rope = Rope{c.rope, 500000.0f};
    a.scale = c.dim == 320 ? 0.03f : 0.0f;
    a.accum = ScoreAccum{c.mode, c.reduce, 0.9f};
    const std::vector<float> scores = PositiveScores(static_cast<size_t>(c.hkv) * kSlots, ++seed);
    const AttnResult want = RunDecode(kRef, a, pool, lists, scores);
    const AttnResult got = RunDecode(kCuda, a, pool, lists, scores);
    ExpectAttentionClose(got, want);
  }
}

TEST(CudaAttentionTest, MergeStatesMatchesReference) {
  if (auto s = CudaAvailable(); !s.ok()) GTEST_SKIP() << s.message();
  constexpr int32_t kStates = 3, kD = 48;
  constexpr int64_t kRows = 37;
  std::vector<float> v = RandomFloats(kStates * kRows * kD, 31);
  std::vector<float> lse = RandomFloats(kStates * kRows, 32, 3.0f);
  for (int64_t r = 0; r < kRows; r += 5) lse[1 * kRows + r] = kNegInf;  // some empty states
  for (int32_t s = 0; s < kStates; ++s) lse[s * kRows + 7] = kNegInf;   // row 7: all empty
  for (int32_t d = 0; d < kD; ++d)
    v[(1 * kRows + 5) * kD + d] = std::nanf("");  // an empty state's garbage
  std::vector<float> want(kRows * kD), want_lse(kRows);
  MergeStatesArgs a{v.data(), lse.data(), kStates, kRows, kD, want.data(), want_lse.data()};
  ASSERT_TRUE(MergeStates(kRef, a).ok());
  const DeviceBuffer dv = Upload(v), dl = Upload(lse), out = Upload(want),
                     out_lse = Upload(want_lse);
  a = MergeStatesArgs{dv.as<float>(),  dl.as<float>(),     kStates, kRows, kD,
                      out.as<float>(), out_lse.as<float>()};
  const absl::Status s = MergeStates(kCuda, a);
  ASSERT_TRUE(s.ok()) << s;
  Sync();
  const std::vector<float> got = Download<float>(out, want.size()),
                           got_lse = Download<float>(out_lse, kRows);
  EXPECT_LE(RelErrorByNorm(got, want), 1e-6);
  EXPECT_EQ(got_lse[7], kNegInf);
  EXPECT_LE(MaxAbsDiff(got_lse, want_lse), 1e-6);
}

// ---- TokenSelect -------------------------------------------------------------

TEST(CudaTokenSelectTest, FingerprintMatchesReference) {
  if (auto s = CudaAvailable(); !s.ok()) GTEST_SKIP() << s.message();
  constexpr int32_t kNumQ = 9, kHq = 6, kD = 48;
  const std::vector<float> q = RandomFloats(kNumQ * kHq * kD, 41);
  const DeviceBuffer dq = Upload(q);
  for (const RopeStyle style : {RopeStyle::kNone, RopeStyle::kInterleaved, RopeStyle::kHalf}) {
    SCOPED_TRACE(static_cast<int>(style));
    std::vector<float> want(kHq * kD);
    FingerprintArgs a{q.data(), kNumQ, kHq, kD, Rope{style, 10000.0f}, 1000, want.data()};
    ASSERT_TRUE(QueryFingerprint(kRef, a).ok());
    const DeviceBuffer out = Upload(want);
    a.q = dq.as<float>();
    a.qbar = out.as<float>();
    const absl::Status s = QueryFingerprint(kCuda, a);
    ASSERT_TRUE(s.ok()) << s;
    Sync();
    EXPECT_LE(RelErrorByNorm(Download<float>(out, want.size()), want), 1e-6);
  }
}

// One TokenSelect call's outputs.
struct Selection {
  std::vector<int32_t> selected;
  std::vector<float> selected_scores, scores;
};

// Runs TokenSelect on host arrays (kRef) or on device copies of them (kCuda).
// `a` has host pointers; outputs are made here.
Selection RunTokenSelect(const ExecContext& ctx, TokenSelectArgs a, const Pool& pool) {
  const size_t k = static_cast<size_t>(a.k), n = static_cast<size_t>(a.num_candidates);
  Selection r{std::vector<int32_t>(k, -1), std::vector<float>(k), std::vector<float>(n)};
  if (ctx.backend != Backend::kCuda) {
    a.selected = r.selected.data();
    a.selected_scores = r.selected_scores.data();
    a.scores = r.scores.data();
    const absl::Status s = TokenSelect(ctx, a);
    EXPECT_TRUE(s.ok()) << s;
    return r;
  }
  const DeviceBuffer qbar =
      Upload(a.qbar, static_cast<size_t>(a.num_q_heads) * a.pool.head_dim * 4);
  const DeviceBuffer cands = Upload(a.candidates, a.candidates ? n * 4 : 0);
  const DeviceBuffer lse = Upload(a.global_lse, a.global_lse ? a.num_q_heads * 4 : 0);
  const DeviceBuffer sel = Upload(r.selected), sel_scores = Upload(r.selected_scores),
                     scores = Upload(r.scores);
  const size_t ws_bytes = TokenSelectWorkspaceBytes(a.num_candidates, a.num_q_heads);
  absl::StatusOr<DeviceBuffer> ws = DeviceBuffer::Allocate(ws_bytes);
  EXPECT_TRUE(ws.ok()) << ws.status();
  if (!ws.ok()) return r;
  a.qbar = qbar.as<float>();
  a.pool = pool.Device();
  a.candidates = a.candidates ? cands.as<int32_t>() : nullptr;
  a.global_lse = a.global_lse ? lse.as<float>() : nullptr;
  a.selected = sel.as<int32_t>();
  a.selected_scores = sel_scores.as<float>();
  a.scores = scores.as<float>();
  a.workspace = ws->data();
  a.workspace_bytes = ws_bytes;
  const absl::Status s = TokenSelect(ctx, a);
  EXPECT_TRUE(s.ok()) << s;
  Sync();
  return {Download<int32_t>(sel, k), Download<float>(sel_scores, k), Download<float>(scores, n)};
}

void ExpectSameSelection(const Selection& got, const Selection& want) {
  EXPECT_EQ(got.selected, want.selected);
  EXPECT_LE(RelErrorByNorm(got.selected_scores, want.selected_scores), 1e-6);
  EXPECT_LE(RelErrorByNorm(got.scores, want.scores), 1e-6);
}

struct SelectCase {
  int32_t hq, hkv, dim;
  DType dtype;
  bool candidate_list;
  int32_t pool_kernel;
  bool zero_keys;  // every score ties: the first k eligible positions win
};

TEST(CudaTokenSelectTest, SelectionEqualsReference) {
  if (auto s = CudaAvailable(); !s.ok()) GTEST_SKIP() << s.message();
  const SelectCase cases[] = {
      {32, 8, 128, DType::kBF16, true, 7, false}, {32, 8, 128, DType::kF32, false, 0, false},
      {6, 6, 48, DType::kF32, true, 5, false},    {12, 4, 64, DType::kF16, false, 3, true},
      {6, 6, 48, DType::kBF16, false, 0, true},
  };
  constexpr int32_t kSlots = 4096, kCandidates = 3001, kInit = 128, kLocal = 512, kTopK = 200;
  uint64_t seed = 300;
  for (const SelectCase& c : cases) {
    SCOPED_TRACE(absl::StrCat(c.hq, "/", c.hkv, "/", c.dim, " pool ", c.pool_kernel,
                              c.zero_keys ? " ties" : ""));
    Pool pool = MakePool(kSlots, c.hkv, c.dim, c.dtype, KvLayout::kNHD, 16, ++seed);
    if (c.zero_keys) {
      std::fill(pool.k.begin(), pool.k.end(), 0);
      pool.dk = Upload(pool.k);
    }
    const std::vector<int32_t> candidates = DistinctSlots(kSlots, kCandidates, ++seed);
    const std::vector<float> qbar = RandomFloats(static_cast<size_t>(c.hq) * c.dim, ++seed);
    TokenSelectArgs a;
    a.qbar = qbar.data();
    a.num_q_heads = c.hq;
    a.pool = pool.host;
    a.candidates = c.candidate_list ? candidates.data() : nullptr;
    a.num_candidates = kCandidates;
    a.select_begin = kInit;
    a.select_end = kCandidates - kLocal;
    a.pool_kernel = c.pool_kernel;
    a.k = kTopK;
    const Selection want = RunTokenSelect(kRef, a, pool);
    ExpectSameSelection(RunTokenSelect(kCuda, a, pool), want);
    if (c.zero_keys) {
      for (int32_t i = 0; i < kTopK; ++i) EXPECT_EQ(want.selected[i], kInit + i);
    }
  }
}

// The two-phase form across two shards (TokenSelectLse, CombineLse,
// TokenSelect with the global lse and pooling halos, MergeTopK) on the GPU
// selects exactly what the single-pool reference selects.
TEST(CudaTokenSelectTest, ShardedSelectionEqualsSinglePool) {
  if (auto s = CudaAvailable(); !s.ok()) GTEST_SKIP() << s.message();
  constexpr int32_t kHq = 32, kHkv = 8, kD = 128, kSlots = 2048, kTopK = 150, kPoolKernel = 7;
  constexpr int32_t kRadius = kPoolKernel / 2;
  const Pool pool = MakePool(kSlots, kHkv, kD, DType::kBF16, KvLayout::kHND, 16, 51);
  const std::vector<float> qbar = RandomFloats(kHq * kD, 52);
  TokenSelectArgs global;
  global.qbar = qbar.data();
  global.num_q_heads = kHq;
  global.pool = pool.host;
  global.num_candidates = kSlots;
  global.select_begin = 64;
  global.select_end = kSlots - 256;
  global.pool_kernel = kPoolKernel;
  global.k = kTopK;
  const Selection want = RunTokenSelect(kRef, global, pool);

  // Shard s owns eligible candidates [bounds[s], bounds[s+1]) and sees a halo
  // of kRadius candidates on each side.
  const int64_t bounds[] = {global.select_begin, 901, global.select_end};
  const DeviceBuffer dq = Upload(qbar);
  const size_t ws_bytes = TokenSelectWorkspaceBytes(kSlots, kHq);
  absl::StatusOr<DeviceBuffer> ws = DeviceBuffer::Allocate(ws_bytes);
  ASSERT_TRUE(ws.ok()) << ws.status();
  std::vector<TokenSelectArgs> shards(2);
  std::vector<std::vector<int32_t>> shard_slots(2);
  std::vector<DeviceBuffer> d_slots;
  std::vector<float> shard_lse(2 * kHq);
  for (int s = 0; s < 2; ++s) {
    const int64_t lo = std::max<int64_t>(0, bounds[s] - kRadius),
                  hi = std::min<int64_t>(kSlots, bounds[s + 1] + kRadius);
    for (int64_t t = lo; t < hi; ++t) shard_slots[s].push_back(static_cast<int32_t>(t));
    d_slots.push_back(Upload(shard_slots[s]));
    TokenSelectArgs& a = shards[s];
    a = global;
    a.qbar = dq.as<float>();
    a.pool = pool.Device();
    a.candidates = d_slots.back().as<int32_t>();
    a.num_candidates = hi - lo;
    a.select_begin = bounds[s] - lo;
    a.select_end = bounds[s + 1] - lo;
    a.k = std::min<int64_t>(kTopK, a.select_end - a.select_begin);
    a.workspace = ws->data();
    a.workspace_bytes = ws_bytes;
    const DeviceBuffer lse = Upload(std::vector<float>(kHq));
    const absl::Status st = TokenSelectLse(kCuda, a, lse.as<float>());
    ASSERT_TRUE(st.ok()) << st;
    Sync();
    const std::vector<float> h = Download<float>(lse, kHq);
    std::copy(h.begin(), h.end(), shard_lse.begin() + s * kHq);
  }
  std::vector<float> global_lse(kHq);
  CombineLse(shard_lse, kHq, global_lse.data());
  const DeviceBuffer d_lse = Upload(global_lse);
  std::vector<CandidateSet> sets(2);
  for (int s = 0; s < 2; ++s) {
    TokenSelectArgs a = shards[s];
    a.global_lse = d_lse.as<float>();
    const DeviceBuffer sel = Upload(std::vector<int32_t>(a.k)),
                       sel_scores = Upload(std::vector<float>(a.k));
    a.selected = sel.as<int32_t>();
    a.selected_scores = sel_scores.as<float>();
    const absl::Status st = TokenSelect(kCuda, a);
    ASSERT_TRUE(st.ok()) << st;
    Sync();
    const std::vector<int32_t> pos = Download<int32_t>(sel, a.k);
    sets[s].score = Download<float>(sel_scores, a.k);
    for (int32_t p : pos) sets[s].index.push_back(shard_slots[s][p]);
  }
  const CandidateSet merged = MergeTopK(sets, kTopK);
  ASSERT_EQ(merged.index.size(), want.selected.size());
  for (size_t i = 0; i < merged.index.size(); ++i)
    EXPECT_EQ(merged.index[i], want.selected[i]) << i;
}

// ---- Cascading cache ------------------------------------------------------------

// A CascadeState's buffers on the host, and a device copy.
struct CascadeBuffers {
  std::vector<uint8_t> k, v;
  std::vector<float> scores;
  std::vector<int32_t> positions, ring_start, ring_count;
  DeviceBuffer dk, dv, dscores, dpositions, dstart, dcount;

  CascadeBuffers(const CascadeConfig& config, DType dtype, int32_t heads, int32_t dim)
      : k(static_cast<size_t>(config.total_slots()) * heads * dim * DTypeSize(dtype)),
        v(k.size()),
        scores(static_cast<size_t>(config.total_slots()) * heads),
        positions(scores.size()),
        ring_start(static_cast<size_t>(config.num_subcaches) * heads),
        ring_count(ring_start.size()),
        dk(Upload(k)),
        dv(Upload(v)),
        dscores(Upload(scores)),
        dpositions(Upload(positions)),
        dstart(Upload(ring_start)),
        dcount(Upload(ring_count)) {}
  CascadeState Host(const CascadeConfig& config, DType dtype, int32_t heads, int32_t dim) {
    return {config,
            dtype,
            heads,
            dim,
            k.data(),
            v.data(),
            scores.data(),
            positions.data(),
            ring_start.data(),
            ring_count.data(),
            0};
  }
  CascadeState Device(const CascadeConfig& config, DType dtype, int32_t heads, int32_t dim) {
    return {config,
            dtype,
            heads,
            dim,
            dk.data(),
            dv.data(),
            dscores.as<float>(),
            dpositions.as<int32_t>(),
            dstart.as<int32_t>(),
            dcount.as<int32_t>(),
            0};
  }
};

// Pushes chunks of random tokens (scores on a coarse grid, so equal scores
// and the >= rule occur) into a reference state and a CUDA state; after each
// chunk the evictions, every slot and the gather lists must be identical.
TEST(CudaCascadeTest, InsertAndGatherEqualReferenceExactly) {
  if (auto s = CudaAvailable(); !s.ok()) GTEST_SKIP() << s.message();
  constexpr int32_t kHeads = 3, kDim = 48;
  const CascadeConfig config{4, 3, 8};
  for (const DType dtype : {DType::kBF16, DType::kF32}) {
    SCOPED_TRACE(DTypeName(dtype));
    CascadeBuffers buf(config, dtype, kHeads, kDim);
    CascadeState host = buf.Host(config, dtype, kHeads, kDim);
    CascadeState dev = buf.Device(config, dtype, kHeads, kDim);
    const size_t row = kDim * DTypeSize(dtype);
    int32_t next_position = 0;
    uint64_t seed = 400;
    for (const int32_t n : {5, 40, 1, 0, 100, 63, 7}) {
      SCOPED_TRACE(absl::StrCat("chunk of ", n, " after ", host.tokens_seen));
      const std::vector<uint8_t> k =
          Encode(dtype, RandomFloats(static_cast<size_t>(n) * kHeads * kDim, ++seed));
      const std::vector<uint8_t> v =
          Encode(dtype, RandomFloats(k.size() / DTypeSize(dtype), ++seed));
      std::vector<float> scores = RandomFloats(static_cast<size_t>(n) * kHeads, ++seed);
      for (float& x : scores) x = std::round(std::fabs(x) * 4.0f) / 4.0f;
      std::vector<int32_t> positions(n);
      for (int32_t& p : positions) p = next_position++;
      std::vector<uint8_t> ek(static_cast<size_t>(kHeads) * n * row), ev(ek.size());
      std::vector<float> escores(static_cast<size_t>(kHeads) * n);
      std::vector<int32_t> epositions(escores.size()), ecount(kHeads, -1);
      CascadeInsertArgs a{
          &host,     k.data(),  v.data(),       scores.data(),     positions.data(), n,
          ek.data(), ev.data(), escores.data(), epositions.data(), ecount.data()};
      ASSERT_TRUE(CascadeInsert(kRef, a).ok());

      const DeviceBuffer dk = Upload(k), dv = Upload(v), ds = Upload(scores),
                         dp = Upload(positions);
      const DeviceBuffer dek = Upload(ek), dev_v = Upload(ev), des = Upload(escores),
                         dep = Upload(epositions), dec = Upload(std::vector<int32_t>(kHeads, -1));
      CascadeInsertArgs d{
          &dev,       dk.data(),    dv.data(),       ds.as<float>(),    dp.as<int32_t>(), n,
          dek.data(), dev_v.data(), des.as<float>(), dep.as<int32_t>(), dec.as<int32_t>()};
      const absl::Status st = CascadeInsert(kCuda, d);
      ASSERT_TRUE(st.ok()) << st;
      Sync();
      ASSERT_EQ(dev.tokens_seen, host.tokens_seen);

      ASSERT_EQ(Download<int32_t>(dec, kHeads), ecount);
      const std::vector<uint8_t> got_ek = Download<uint8_t>(dek, ek.size()),
                                 got_ev = Download<uint8_t>(dev_v, ev.size());
      const std::vector<float> got_es = Download<float>(des, escores.size());
      const std::vector<int32_t> got_ep = Download<int32_t>(dep, epositions.size());
      for (int32_t h = 0; h < kHeads; ++h) {
        for (int32_t e = 0; e < ecount[h]; ++e) {
          const size_t r = static_cast<size_t>(h) * n + e;
          EXPECT_EQ(0, std::memcmp(got_ek.data() + r * row, ek.data() + r * row, row))
              << h << "/" << e;
          EXPECT_EQ(0, std::memcmp(got_ev.data() + r * row, ev.data() + r * row, row))
              << h << "/" << e;
          EXPECT_EQ(got_es[r], escores[r]);
          EXPECT_EQ(got_ep[r], epositions[r]);
        }
      }
      EXPECT_EQ(Download<uint8_t>(buf.dk, buf.k.size()), buf.k);
      EXPECT_EQ(Download<uint8_t>(buf.dv, buf.v.size()), buf.v);
      EXPECT_EQ(Download<float>(buf.dscores, buf.scores.size()), buf.scores);
      EXPECT_EQ(Download<int32_t>(buf.dpositions, buf.positions.size()), buf.positions);
      EXPECT_EQ(Download<int32_t>(buf.dstart, buf.ring_start.size()), buf.ring_start);
      EXPECT_EQ(Download<int32_t>(buf.dcount, buf.ring_count.size()), buf.ring_count);

      for (const bool original : {false, true}) {
        const size_t cap = static_cast<size_t>(kHeads) * config.total_slots();
        std::vector<int32_t> indptr(kHeads + 1), indices(cap, -1), pos(cap, -1);
        ASSERT_TRUE(
            CascadeGather(kRef, {&host, original, indptr.data(), indices.data(), pos.data()}).ok());
        const DeviceBuffer di = Upload(indptr), dx = Upload(indices), dpos = Upload(pos);
        const absl::Status g = CascadeGather(
            kCuda, {&dev, original, di.as<int32_t>(), dx.as<int32_t>(), dpos.as<int32_t>()});
        ASSERT_TRUE(g.ok()) << g;
        Sync();
        EXPECT_EQ(Download<int32_t>(di, indptr.size()), indptr);
        EXPECT_EQ(Download<int32_t>(dx, cap), indices);
        EXPECT_EQ(Download<int32_t>(dpos, cap), pos);
      }
    }
  }
}

// ---- LESS -----------------------------------------------------------------------

// A feature map's weights on the host and the device.
struct MapCopy {
  FeatureMapWeights w;
  DeviceBuffer w1, b1, w2, b2;
  FeatureMap Device() const {
    return FeatureMap{w.in_dim,
                      w.hidden,
                      w.out_dim,
                      w.hidden > 0 ? w1.as<float>() : nullptr,
                      w.hidden > 0 ? b1.as<float>() : nullptr,
                      w2.as<float>(),
                      b2.as<float>()};
  }
};
MapCopy MakeMap(int32_t dim, int32_t hidden, int32_t rank, uint64_t seed) {
  MapCopy m;
  m.w = RandomFeatureMap(dim, rank, seed);
  if (hidden > 0) {
    m.w.hidden = hidden;
    m.w.w1 = RandomFloats(static_cast<size_t>(hidden) * dim, seed + 1,
                          1.0f / std::sqrt(static_cast<float>(dim)));
    m.w.b1 = RandomFloats(hidden, seed + 2, 0.1f);
    m.w.w2 = RandomFloats(static_cast<size_t>(rank) * hidden, seed + 3,
                          1.0f / std::sqrt(static_cast<float>(hidden)));
    m.w.b2 = RandomFloats(rank, seed + 4, 0.1f);
  }
  m.w1 = Upload(m.w.w1);
  m.b1 = Upload(m.w.b1);
  m.w2 = Upload(m.w.w2);
  m.b2 = Upload(m.w.b2);
  return m;
}

struct LessCase {
  int32_t hq, hkv, dim, rank, hidden;
  DType dtype;
};

// Two folds (KV head 0 never folds anything, so its rows must come back
// from LessCombine bit for bit), then a combine with one empty sparse row.
TEST(CudaLessTest, FoldAndCombineMatchReference) {
  if (auto s = CudaAvailable(); !s.ok()) GTEST_SKIP() << s.message();
  const LessCase cases[] = {{6, 2, 48, 8, 0, DType::kBF16}, {32, 8, 128, 8, 32, DType::kF32}};
  constexpr int64_t kMaxTokens = 19, kTokens = 5;
  uint64_t seed = 500;
  for (const LessCase& c : cases) {
    SCOPED_TRACE(
        absl::StrCat(c.hq, "/", c.hkv, "/", c.dim, " rank ", c.rank, " hidden ", c.hidden));
    const MapCopy psi = MakeMap(c.dim, c.hidden, c.rank, ++seed),
                  phi = MakeMap(c.dim, c.hidden, c.rank, ++seed);
    std::vector<float> h(static_cast<size_t>(c.hkv) * c.rank * c.dim, 0.0f),
        z(static_cast<size_t>(c.hkv) * c.rank);
    const DeviceBuffer dh = Upload(h), dz = Upload(z);
    const LessState host{c.hkv, c.rank, c.dim, h.data(), z.data()};
    const LessState dev{c.hkv, c.rank, c.dim, dh.as<float>(), dz.as<float>()};
    for (int fold = 0; fold < 2; ++fold) {
      const size_t elems = static_cast<size_t>(c.hkv) * kMaxTokens * c.dim;
      const std::vector<uint8_t> k = Encode(c.dtype, RandomFloats(elems, ++seed));
      const std::vector<uint8_t> v = Encode(c.dtype, RandomFloats(elems, ++seed));
      std::vector<int32_t> count(c.hkv);
      for (int32_t i = 0; i < c.hkv; ++i)
        count[i] = i == 0 ? 0 : static_cast<int32_t>((i * 7 + fold * 5) % (kMaxTokens + 1));
      LessFoldArgs a{host, psi.w.View(), c.dtype, k.data(), v.data(), kMaxTokens, count.data()};
      ASSERT_TRUE(LessFold(kRef, a).ok());
      const DeviceBuffer dk = Upload(k), dv = Upload(v), dc = Upload(count);
      a = LessFoldArgs{dev,       psi.Device(), c.dtype,         dk.data(),
                       dv.data(), kMaxTokens,   dc.as<int32_t>()};
      const absl::Status st = LessFold(kCuda, a);
      ASSERT_TRUE(st.ok()) << st;
      Sync();
      EXPECT_LE(RelErrorByNorm(Download<float>(dh, h.size()), h), 1e-6);
      EXPECT_LE(RelErrorByNorm(Download<float>(dz, z.size()), z), 1e-6);
    }
    // Combine against the reference's state (copied over) so only the combine is compared.
    const DeviceBuffer ch = Upload(h), cz = Upload(z);
    const LessState combine_state{c.hkv, c.rank, c.dim, ch.as<float>(), cz.as<float>()};
    const size_t rows = static_cast<size_t>(kTokens) * c.hq;
    const std::vector<float> q = RandomFloats(rows * c.dim, ++seed),
                             sparse = RandomFloats(rows * c.dim, ++seed);
    std::vector<float> lse = RandomFloats(rows, ++seed, 2.0f);
    lse[rows - 1] = kNegInf;
    std::vector<float> want(rows * c.dim);
    LessCombineArgs a{host,       phi.w.View(), q.data(), sparse.data(),
                      lse.data(), kTokens,      c.hq,     want.data()};
    ASSERT_TRUE(LessCombine(kRef, a).ok());
    const DeviceBuffer dq = Upload(q), ds = Upload(sparse), dl = Upload(lse), out = Upload(want);
    a = LessCombineArgs{combine_state,  phi.Device(), dq.as<float>(), ds.as<float>(),
                        dl.as<float>(), kTokens,      c.hq,           out.as<float>()};
    const absl::Status st = LessCombine(kCuda, a);
    ASSERT_TRUE(st.ok()) << st;
    Sync();
    const std::vector<float> got = Download<float>(out, want.size());
    EXPECT_LE(RelErrorByNorm(got, want), 1e-6);
    const int32_t group = c.hq / c.hkv;
    for (size_t r = 0; r < rows; ++r) {
      if (static_cast<int32_t>(r % c.hq) / group != 0) continue;  // KV head 0: empty state
      EXPECT_EQ(
          0, std::memcmp(got.data() + r * c.dim, sparse.data() + r * c.dim, c.dim * sizeof(float)))
          << r;
    }
  }
}

}  // namespace
}  // namespace kvc::kernels
