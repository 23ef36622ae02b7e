// Invariants of the reference attention (the specification every other path
// is compared against), through the public API on Backend::kReference:
// prefill vs decode, paged vs contiguous pools, merging of partial states,
// RoPE, GQA, score accumulation read off one-hot values, a hand-computed
// example, and the stored KV dtypes.
//
// Tolerances: where two computations do the same fp64 arithmetic on the same
// numbers (layouts, head replication, dtype widening) they must agree
// exactly; where the arithmetic differs (prefill vs decode order, merging
// through fp32 lse) the bound is a small multiple of fp32 rounding.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "tests/kernel_test_util.h"

namespace kvc::kernels {
namespace {

using testing::MaxAbsDiff;
using testing::RandomFloats;
using testing::RelErrorByNorm;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
const ExecContext kRef{Backend::kReference};

// Contiguous [slots][Hkv][D] keys and values.
struct Tokens {
  int64_t slots;
  int32_t heads, dim;
  std::vector<float> k, v;
  KvPool Pool() const {
    return KvPool::Contiguous(k.data(), v.data(), DType::kF32, slots, heads, dim);
  }
};
Tokens RandomTokens(int64_t slots, int32_t heads, int32_t dim, uint64_t seed) {
  const size_t n = static_cast<size_t>(slots) * heads * dim;
  return {slots, heads, dim, RandomFloats(n, seed), RandomFloats(n, seed + 1)};
}

// CSR gather lists with a RoPE position per entry.
struct Lists {
  std::vector<int32_t> indptr{0}, indices, positions;
  void Add(const std::vector<int32_t>& slots, const std::vector<int32_t>& pos) {
    indices.insert(indices.end(), slots.begin(), slots.end());
    positions.insert(positions.end(), pos.begin(), pos.end());
    indptr.push_back(static_cast<int32_t>(indices.size()));
  }
  KvGather Gather(bool per_kv_head, const Rope& rope) const {
    return {indptr.data(), indices.data(),
            rope.style == RopeStyle::kNone ? nullptr : positions.data(), per_kv_head};
  }
};

std::vector<int32_t> Iota(int32_t n, int32_t start = 0, int32_t step = 1) {
  std::vector<int32_t> x(n);
  for (int32_t i = 0; i < n; ++i) x[i] = start + i * step;
  return x;
}
std::vector<int32_t> Shuffled(int32_t n, uint64_t seed) {
  std::vector<int32_t> x = Iota(n);
  std::mt19937_64 rng(seed);
  std::shuffle(x.begin(), x.end(), rng);
  return x;
}
std::vector<int32_t> Head(const std::vector<int32_t>& x, size_t n) {
  return {x.begin(), x.begin() + n};
}

struct Result {
  std::vector<float> out, lse;
};

// The queries of a call: [rows][Hq][D] with one position per row.
struct Queries {
  int32_t heads, dim;
  std::vector<float> q;
  std::vector<int32_t> positions;
  int64_t rows() const { return static_cast<int64_t>(positions.size()); }
};
Queries RandomQueries(std::vector<int32_t> positions, int32_t heads, int32_t dim, uint64_t seed) {
  return {heads, dim, RandomFloats(positions.size() * heads * dim, seed), std::move(positions)};
}

Result RunPrefill(const KvPool& pool, const Queries& q, const KvGather& gather, bool causal,
                  const Rope& rope, ScoreAccum accum = {}, float scale = 0.0f,
                  bool scores_only = false) {
  Result r{std::vector<float>(q.q.size(), 7.0f), std::vector<float>(q.rows() * q.heads, 7.0f)};
  PrefillArgs a;
  a.q = q.q.data();
  a.q_positions = rope.style == RopeStyle::kNone ? nullptr : q.positions.data();
  a.num_q = q.rows();
  a.num_q_heads = q.heads;
  a.kv = pool;
  a.gather = gather;
  a.causal = causal;
  a.scale = scale;
  a.rope = rope;
  a.out = scores_only ? nullptr : r.out.data();
  a.lse = r.lse.data();
  a.accum = accum;
  const absl::Status status = Prefill(kRef, a);
  EXPECT_TRUE(status.ok()) << status;
  return r;
}

Result RunDecode(const KvPool& pool, const Queries& q, const KvGather& gather, const Rope& rope,
                 ScoreAccum accum = {}, float scale = 0.0f, bool scores_only = false) {
  Result r{std::vector<float>(q.q.size(), 7.0f), std::vector<float>(q.rows() * q.heads, 7.0f)};
  DecodeArgs a;
  a.q = q.q.data();
  a.q_positions = rope.style == RopeStyle::kNone ? nullptr : q.positions.data();
  a.batch = static_cast<int32_t>(q.rows());
  a.num_q_heads = q.heads;
  a.kv = pool;
  a.gather = gather;
  a.scale = scale;
  a.rope = rope;
  a.out = scores_only ? nullptr : r.out.data();
  a.lse = r.lse.data();
  a.accum = accum;
  const absl::Status status = Decode(kRef, a);
  EXPECT_TRUE(status.ok()) << status;
  return r;
}

TEST(AttentionRefTest, CausalPrefillEqualsDecodeOverEachQuerysPrefix) {
  constexpr int32_t kHq = 4, kHkv = 2, kD = 16, kSlots = 32, kCache = 20, kNumQ = 6;
  const Tokens kv = RandomTokens(kSlots, kHkv, kD, 11);
  const Queries q = RandomQueries(Iota(kNumQ, kCache), kHq, kD, 12);
  for (const bool per_kv_head : {false, true}) {
    SCOPED_TRACE(per_kv_head ? "per-KV-head lists" : "shared list");
    const Rope rope{per_kv_head ? RopeStyle::kInterleaved : RopeStyle::kHalf, 10000.0f};
    const int32_t num_lists = per_kv_head ? kHkv : 1;
    std::vector<std::vector<int32_t>> full(num_lists);
    Lists prefill_lists, decode_lists;
    for (int32_t l = 0; l < num_lists; ++l) {
      full[l] = Head(Shuffled(kSlots, 13 + l), kCache + kNumQ);
      prefill_lists.Add(full[l], Iota(kCache + kNumQ));
    }
    // Decode row i sees exactly what prefill query i sees: the list up to
    // and including chunk entry i.
    for (int32_t i = 0; i < kNumQ; ++i) {
      for (int32_t l = 0; l < num_lists; ++l) {
        decode_lists.Add(Head(full[l], kCache + i + 1), Iota(kCache + i + 1));
      }
    }
    const Result prefill =
        RunPrefill(kv.Pool(), q, prefill_lists.Gather(per_kv_head, rope), true, rope);
    const Result decode = RunDecode(kv.Pool(), q, decode_lists.Gather(per_kv_head, rope), rope);
    // Same fp64 sums over the same keys: only the fp32 outputs round.
    EXPECT_LE(RelErrorByNorm(prefill.out, decode.out), 1e-6);
    EXPECT_LE(MaxAbsDiff(prefill.lse, decode.lse), 1e-6);
  }
}

struct PagedCase {
  KvLayout layout;
  int32_t page_size;
};
class AttentionRefPagedTest : public ::testing::TestWithParam<PagedCase> {};

TEST_P(AttentionRefPagedTest, PagedPoolEqualsContiguousPool) {
  constexpr int32_t kHq = 4, kHkv = 2, kD = 8, kTokens = 40, kNumQ = 5;
  const int32_t page_size = GetParam().page_size;
  const int64_t num_pages = (kTokens + page_size - 1) / page_size + 3;
  const Tokens contiguous = RandomTokens(kTokens, kHkv, kD, 21);

  // Token t lives at offset t % page_size of page page_table[t / page_size].
  const std::vector<int32_t> page_table = Shuffled(static_cast<int32_t>(num_pages), 22);
  KvPool paged{nullptr, nullptr, DType::kF32, GetParam().layout, num_pages, page_size, kHkv, kD};
  std::vector<float> k(paged.num_slots() * kHkv * kD, 1e3f), v(k.size(), -1e3f);
  std::vector<int32_t> slot_of(kTokens);
  for (int32_t t = 0; t < kTokens; ++t) {
    slot_of[t] = page_table[t / page_size] * page_size + t % page_size;
    for (int32_t h = 0; h < kHkv; ++h) {
      for (int32_t d = 0; d < kD; ++d) {
        k[paged.Offset(slot_of[t], h) + d] = contiguous.k[(t * kHkv + h) * kD + d];
        v[paged.Offset(slot_of[t], h) + d] = contiguous.v[(t * kHkv + h) * kD + d];
      }
    }
  }
  paged.k = k.data();
  paged.v = v.data();

  const Rope rope{RopeStyle::kHalf, 10000.0f};
  Lists contiguous_list, paged_list;
  contiguous_list.Add(Iota(kTokens), Iota(kTokens));
  paged_list.Add(slot_of, Iota(kTokens));
  std::vector<float> contiguous_scores = RandomFloats(kHkv * kTokens, 23);
  std::vector<float> paged_scores(kHkv * paged.num_slots(), 0.0f);
  for (int32_t h = 0; h < kHkv; ++h) {
    for (int32_t t = 0; t < kTokens; ++t) {
      paged_scores[h * paged.num_slots() + slot_of[t]] = contiguous_scores[h * kTokens + t];
    }
  }
  ScoreAccum accum{ScoreMode::kSum, GroupReduce::kSum};
  const Queries q = RandomQueries(Iota(kNumQ, kTokens - kNumQ), kHq, kD, 24);

  accum.scores = contiguous_scores.data();
  const Result want =
      RunPrefill(contiguous.Pool(), q, contiguous_list.Gather(false, rope), true, rope, accum);
  accum.scores = paged_scores.data();
  const Result got = RunPrefill(paged, q, paged_list.Gather(false, rope), true, rope, accum);
  // Only addresses differ: identical arithmetic, so identical results.
  EXPECT_EQ(RelErrorByNorm(got.out, want.out), 0.0);
  EXPECT_EQ(MaxAbsDiff(got.lse, want.lse), 0.0);
  for (int32_t h = 0; h < kHkv; ++h) {
    for (int32_t t = 0; t < kTokens; ++t) {
      EXPECT_EQ(paged_scores[h * paged.num_slots() + slot_of[t]],
                contiguous_scores[h * kTokens + t])
          << "head " << h << " token " << t;
    }
  }

  const Queries dq = RandomQueries({kTokens, kTokens}, kHq, kD, 25);
  Lists contiguous_two, paged_two;
  for (int32_t n : {17, kTokens}) {
    contiguous_two.Add(Iota(n), Iota(n));
    paged_two.Add(Head(slot_of, n), Iota(n));
  }
  const Result want_decode =
      RunDecode(contiguous.Pool(), dq, contiguous_two.Gather(false, rope), rope);
  const Result got_decode = RunDecode(paged, dq, paged_two.Gather(false, rope), rope);
  EXPECT_EQ(RelErrorByNorm(got_decode.out, want_decode.out), 0.0);
  EXPECT_EQ(MaxAbsDiff(got_decode.lse, want_decode.lse), 0.0);
}

INSTANTIATE_TEST_SUITE_P(Layouts, AttentionRefPagedTest,
                         ::testing::Values(PagedCase{KvLayout::kNHD, 16},
                                           PagedCase{KvLayout::kHND, 16},
                                           PagedCase{KvLayout::kNHD, 1},
                                           PagedCase{KvLayout::kHND, 1}),
                         [](const ::testing::TestParamInfo<PagedCase>& info) {
                           return std::string(info.param.layout == KvLayout::kNHD ? "NHD" : "HND") +
                                  "_page" + std::to_string(info.param.page_size);
                         });

Result RunMerge(const Result& states, int32_t num_states, int64_t num_rows, int32_t dim) {
  Result r{std::vector<float>(num_rows * dim, 7.0f), std::vector<float>(num_rows, 7.0f)};
  MergeStatesArgs a{states.out.data(), states.lse.data(), num_states, num_rows, dim,
                    r.out.data(),      r.lse.data()};
  const absl::Status status = MergeStates(kRef, a);
  EXPECT_TRUE(status.ok()) << status;
  return r;
}

TEST(AttentionRefTest, MergeOfDisjointHalvesEqualsWholeList) {
  constexpr int32_t kHq = 4, kHkv = 2, kD = 16, kN = 30;
  const Tokens kv = RandomTokens(kN, kHkv, kD, 31);
  const Rope rope{RopeStyle::kInterleaved, 10000.0f};
  const std::vector<int32_t> order = Shuffled(kN, 32);  // slot j sits at position j
  const std::vector<int32_t> first(order.begin(), order.begin() + 13),
      second(order.begin() + 13, order.end());
  const Queries whole_q = RandomQueries({kN}, kHq, kD, 33);
  Lists whole;
  whole.Add(order, order);
  const Result want = RunDecode(kv.Pool(), whole_q, whole.Gather(false, rope), rope);

  // Rows 0, 1, 2 of one decode call are the states over `first`, `second`
  // and nothing, for the same query.
  Queries q = whole_q;
  for (int i = 0; i < 2; ++i) q.q.insert(q.q.end(), whole_q.q.begin(), whole_q.q.end());
  q.positions = {kN, kN, kN};
  Lists parts;
  parts.Add(first, first);
  parts.Add(second, second);
  parts.Add({}, {});
  const Result states = RunDecode(kv.Pool(), q, parts.Gather(false, rope), rope);
  for (int32_t i = 2 * kHq * kD; i < 3 * kHq * kD; ++i)
    ASSERT_EQ(states.out[i], 0.0f) << "empty list";
  for (int32_t h = 0; h < kHq; ++h) ASSERT_EQ(states.lse[2 * kHq + h], kNegInf) << "empty list";

  // lse passes through fp32 (~1e-7 relative at |lse| ~ 4), so the weights
  // exp(lse_s - lse) carry ~1e-6 relative error; 1e-5 leaves a margin.
  const Result merged = RunMerge(states, 2, kHq, kD);
  EXPECT_LE(RelErrorByNorm(merged.out, want.out), 1e-5);
  EXPECT_LE(MaxAbsDiff(merged.lse, want.lse), 1e-5);

  // Merging with empty states is the identity, exactly: their weight is 0.
  Result with_empty;
  const auto append = [&](int32_t state) {
    with_empty.out.insert(with_empty.out.end(), states.out.begin() + state * kHq * kD,
                          states.out.begin() + (state + 1) * kHq * kD);
    with_empty.lse.insert(with_empty.lse.end(), states.lse.begin() + state * kHq,
                          states.lse.begin() + (state + 1) * kHq);
  };
  for (int32_t s : {2, 0, 2}) append(s);
  const Result identity = RunMerge(with_empty, 3, kHq, kD);
  const std::vector<float> first_out(states.out.begin(), states.out.begin() + kHq * kD);
  const std::vector<float> first_lse(states.lse.begin(), states.lse.begin() + kHq);
  EXPECT_EQ(RelErrorByNorm(identity.out, first_out), 0.0);
  EXPECT_EQ(MaxAbsDiff(identity.lse, first_lse), 0.0);

  with_empty = {};
  for (int32_t s : {2, 2}) append(s);
  const Result nothing = RunMerge(with_empty, 2, kHq, kD);
  EXPECT_EQ(nothing.out, std::vector<float>(kHq * kD, 0.0f));
  EXPECT_EQ(nothing.lse, std::vector<float>(kHq, kNegInf));
}

TEST(AttentionRefTest, RopeDependsOnlyOnRelativePositions) {
  constexpr int32_t kHq = 2, kHkv = 1, kD = 16, kN = 24, kNumQ = 4;
  const Tokens kv = RandomTokens(kN, kHkv, kD, 41);
  const std::vector<int32_t> slots = Shuffled(kN, 42);
  std::vector<Result> by_style;
  for (const RopeStyle style : {RopeStyle::kNone, RopeStyle::kInterleaved, RopeStyle::kHalf}) {
    const Rope rope{style, 10000.0f};
    std::vector<Result> shifted;
    for (const int32_t shift : {0, 1000}) {
      // Keys three positions apart; the chunk's queries at its entries' positions.
      Lists lists;
      lists.Add(slots, Iota(kN, shift, 3));
      const Queries q = RandomQueries(Iota(kNumQ, shift + 3 * (kN - kNumQ), 3), kHq, kD, 43);
      shifted.push_back(RunPrefill(kv.Pool(), q, lists.Gather(false, rope), true, rope));
    }
    // Angles up to ~1e3 rad are exact to ~1e-13 in double; the bound is
    // fp32 output rounding with a wide margin.
    EXPECT_LE(RelErrorByNorm(shifted[1].out, shifted[0].out), 1e-5);
    EXPECT_LE(MaxAbsDiff(shifted[1].lse, shifted[0].lse), 1e-5);
    by_style.push_back(shifted[0]);
  }
  // The styles rotate different pairs, so on random data they must differ.
  EXPECT_GT(RelErrorByNorm(by_style[1].out, by_style[0].out), 0.05);
  EXPECT_GT(RelErrorByNorm(by_style[2].out, by_style[0].out), 0.05);
  EXPECT_GT(RelErrorByNorm(by_style[2].out, by_style[1].out), 0.05);
}

TEST(AttentionRefTest, GroupedQueryHeadsEqualReplicatedKvHeads) {
  constexpr int32_t kHq = 8, kHkv = 2, kD = 8, kN = 20;
  const Tokens grouped = RandomTokens(kN, kHkv, kD, 51);
  // Query head h reads KV head h / 4 in the grouped pool and h in this one.
  Tokens replicated{kN, kHq, kD, {}, {}};
  for (int32_t t = 0; t < kN; ++t) {
    for (int32_t h = 0; h < kHq; ++h) {
      const auto src = (t * kHkv + h / (kHq / kHkv)) * kD;
      replicated.k.insert(replicated.k.end(), grouped.k.begin() + src,
                          grouped.k.begin() + src + kD);
      replicated.v.insert(replicated.v.end(), grouped.v.begin() + src,
                          grouped.v.begin() + src + kD);
    }
  }
  const Rope rope{RopeStyle::kHalf, 500000.0f};
  Lists list;
  list.Add(Shuffled(kN, 52), Iota(kN));
  const Queries q = RandomQueries(Iota(3, kN - 3), kHq, kD, 53);
  const Result want = RunPrefill(replicated.Pool(), q, list.Gather(false, rope), true, rope);
  const Result got = RunPrefill(grouped.Pool(), q, list.Gather(false, rope), true, rope);
  // The same arithmetic on the same numbers: any difference is a head-mapping bug.
  EXPECT_EQ(RelErrorByNorm(got.out, want.out), 0.0);
  EXPECT_EQ(MaxAbsDiff(got.lse, want.lse), 0.0);
  Lists prefixes;  // decode row i over the first kN - 2 + i entries
  for (int32_t i = 0; i < 3; ++i) {
    prefixes.Add(Head(list.indices, kN - 2 + i), Iota(kN - 2 + i));
  }
  const Result want_decode = RunDecode(replicated.Pool(), q, prefixes.Gather(false, rope), rope);
  const Result got_decode = RunDecode(grouped.Pool(), q, prefixes.Gather(false, rope), rope);
  EXPECT_EQ(RelErrorByNorm(got_decode.out, want_decode.out), 0.0);
  EXPECT_EQ(MaxAbsDiff(got_decode.lse, want_decode.lse), 0.0);
}

// A pool whose value rows are one-hot: entry j of `list` (for every KV head)
// has V = e_j, so each output row of attention is its probability vector.
Tokens OneHotValues(int32_t slots, int32_t heads, int32_t dim, const std::vector<int32_t>& list,
                    uint64_t seed) {
  Tokens kv = RandomTokens(slots, heads, dim, seed);
  std::fill(kv.v.begin(), kv.v.end(), 0.0f);
  for (size_t j = 0; j < list.size(); ++j) {
    for (int32_t h = 0; h < heads; ++h) kv.v[(list[j] * heads + h) * dim + j] = 1.0f;
  }
  return kv;
}

TEST(AttentionRefTest, ScoreAccumulationMatchesFormulasOnProbabilities) {
  constexpr int32_t kHq = 4, kHkv = 2, kG = 2, kN = 8, kSlots = 10, kNumQ = 4, kFirst = 1;
  constexpr double kBeta = 0.9;
  const std::vector<int32_t> list = Head(Shuffled(kSlots, 61), kN);
  const Tokens kv = OneHotValues(kSlots, kHkv, kN, list, 62);
  const Queries q = RandomQueries(Iota(kNumQ), kHq, kN, 63);
  const Rope none;
  Lists lists;
  lists.Add(list, Iota(kN));
  std::vector<float> initial = RandomFloats(kHkv * kSlots, 64);
  for (float& s : initial) s = std::fabs(s);

  const Result plain = RunPrefill(kv.Pool(), q, lists.Gather(false, none), true, none);
  const auto p = [&](int64_t i, int32_t h, int32_t j) {
    return static_cast<double>(plain.out[(i * kHq + h) * kN + j]);
  };
  for (int64_t i = 0; i < kNumQ; ++i) {
    for (int32_t h = 0; h < kHq; ++h) {
      double sum = 0;
      for (int32_t j = 0; j < kN; ++j) {
        sum += p(i, h, j);
        if (j > kN - kNumQ + i) {
          EXPECT_EQ(p(i, h, j), 0.0) << "query " << i << " sees entry " << j;
        }
      }
      EXPECT_NEAR(sum, 1.0, 1e-6);
    }
  }

  for (const ScoreMode mode : {ScoreMode::kEma, ScoreMode::kSum}) {
    for (const GroupReduce reduce : {GroupReduce::kMax, GroupReduce::kSum}) {
      SCOPED_TRACE(::testing::Message() << "mode " << int(mode) << " reduce " << int(reduce));
      std::vector<float> scores = initial;
      ScoreAccum accum{mode, reduce, static_cast<float>(kBeta), kFirst, scores.data(), nullptr};
      RunPrefill(kv.Pool(), q, lists.Gather(false, none), true, none, accum);

      std::vector<float> want = initial;  // slots not in the list stay as they were
      constexpr int32_t kContributing = kNumQ - kFirst;
      for (int32_t kh = 0; kh < kHkv; ++kh) {
        for (int32_t j = 0; j < kN; ++j) {
          const double s0 = initial[kh * kSlots + list[j]];
          double s = mode == ScoreMode::kEma ? std::pow(kBeta, kContributing) * s0 : s0;
          for (int64_t i = kFirst; i < kNumQ; ++i) {
            const double a = p(i, kh * kG, j), b = p(i, kh * kG + 1, j);
            const double r = reduce == GroupReduce::kMax ? std::max(a, b) : a + b;
            s += mode == ScoreMode::kEma ? (1 - kBeta) * std::pow(kBeta, kNumQ - 1 - i) * r : r;
          }
          want[kh * kSlots + list[j]] = static_cast<float>(s);
        }
      }
      // P is read back from fp32 outputs and scores are fp32: rounding only.
      EXPECT_LE(RelErrorByNorm(scores, want), 1e-6);
    }
  }
}

TEST(AttentionRefTest, DecodeScoresUseTheGivenNormaliserAndFirstQuery) {
  constexpr int32_t kHq = 4, kHkv = 2, kG = 2, kPerList = 4;
  const std::vector<int32_t> slots = Shuffled(2 * kPerList, 71);
  const std::vector<int32_t> list0(slots.begin(), slots.begin() + kPerList),
      list1(slots.begin() + kPerList, slots.end());
  // One-hot by position within each list (both lists use e_0 .. e_3).
  Tokens kv = OneHotValues(2 * kPerList, kHkv, kPerList, list0, 72);
  for (int32_t j = 0; j < kPerList; ++j) {
    for (int32_t h = 0; h < kHkv; ++h) kv.v[(list1[j] * kHkv + h) * kPerList + j] = 1.0f;
  }
  const Rope rope{RopeStyle::kInterleaved, 10000.0f};
  Lists lists;
  lists.Add(list0, Iota(kPerList));
  lists.Add(list1, Iota(kPerList, 2));
  const Queries q = RandomQueries({kPerList, kPerList + 2}, kHq, kPerList, 73);
  const Result plain = RunDecode(kv.Pool(), q, lists.Gather(false, rope), rope);

  // As if the call saw half of the probability mass: normaliser lse + ln 2.
  std::vector<float> half_lse = plain.lse;
  for (float& x : half_lse) x += static_cast<float>(std::log(2.0));
  const std::vector<float> initial = RandomFloats(kHkv * 2 * kPerList, 74);
  std::vector<float> scores = initial;
  RunDecode(
      kv.Pool(), q, lists.Gather(false, rope), rope,
      ScoreAccum{ScoreMode::kSum, GroupReduce::kSum, 0.5f, 0, scores.data(), half_lse.data()});
  std::vector<float> want = initial;
  for (int32_t b = 0; b < 2; ++b) {
    for (int32_t kh = 0; kh < kHkv; ++kh) {
      for (int32_t j = 0; j < kPerList; ++j) {
        const int32_t slot = (b == 0 ? list0 : list1)[j];
        double r = 0;
        for (int32_t h = kh * kG; h < (kh + 1) * kG; ++h)
          r += plain.out[(b * kHq + h) * kPerList + j];
        want[kh * 2 * kPerList + slot] += static_cast<float>(r / 2);
      }
    }
  }
  // ln 2 added in fp32 and P read from fp32 outputs: rounding only.
  EXPECT_LE(RelErrorByNorm(scores, want), 1e-6);

  // Decode has one query per sequence: first_query 1 leaves no contributor.
  scores = initial;
  RunDecode(kv.Pool(), q, lists.Gather(false, rope), rope,
            ScoreAccum{ScoreMode::kEma, GroupReduce::kMax, 0.5f, 1, scores.data(), nullptr});
  EXPECT_EQ(scores, initial);
}

TEST(AttentionRefTest, ScoresOnlyCallUpdatesScoresLikeAFullCall) {
  constexpr int32_t kHq = 4, kHkv = 2, kD = 8, kN = 12, kNumQ = 3;
  const Tokens kv = RandomTokens(kN, kHkv, kD, 101);
  const Rope rope{RopeStyle::kHalf, 10000.0f};
  Lists list;
  list.Add(Shuffled(kN, 102), Iota(kN));
  const Queries q = RandomQueries(Iota(kNumQ, kN - kNumQ), kHq, kD, 103);
  const Result plain = RunPrefill(kv.Pool(), q, list.Gather(false, rope), true, rope);
  // The second pass of a split call: normalised by a merged lse that also
  // counts keys this call did not see.
  std::vector<float> merged_lse = plain.lse;
  for (float& x : merged_lse) x += 0.3f;
  const std::vector<float> initial = RandomFloats(kHkv * kN, 104);
  std::vector<float> full_scores = initial, only_scores = initial;
  ScoreAccum accum{ScoreMode::kEma,    GroupReduce::kMax, 0.9f, 1,
                   full_scores.data(), merged_lse.data()};
  const Result full = RunPrefill(kv.Pool(), q, list.Gather(false, rope), true, rope, accum);
  accum.scores = only_scores.data();
  const Result only = RunPrefill(kv.Pool(), q, list.Gather(false, rope), true, rope, accum, 0.0f,
                                 /*scores_only=*/true);
  EXPECT_NE(full_scores, initial);
  EXPECT_EQ(only_scores, full_scores);  // the same arithmetic, exactly
  EXPECT_EQ(only.lse, full.lse);
  EXPECT_EQ(only.out, std::vector<float>(full.out.size(), 7.0f)) << "out must not be written";

  // Decode: rows 0 and 1 over the first and second half of the list.
  Lists halves;
  halves.Add(Head(list.indices, kN / 2), Iota(kN / 2));
  halves.Add({list.indices.begin() + kN / 2, list.indices.end()}, Iota(kN / 2, kN / 2));
  const Queries dq = RandomQueries({kN, kN}, kHq, kD, 105);
  const Result dplain = RunDecode(kv.Pool(), dq, halves.Gather(false, rope), rope);
  full_scores = only_scores = initial;
  accum = ScoreAccum{ScoreMode::kSum,    GroupReduce::kSum, 0.5f, 0,
                     full_scores.data(), dplain.lse.data()};
  RunDecode(kv.Pool(), dq, halves.Gather(false, rope), rope, accum);
  accum.scores = only_scores.data();
  RunDecode(kv.Pool(), dq, halves.Gather(false, rope), rope, accum, 0.0f, /*scores_only=*/true);
  EXPECT_NE(full_scores, initial);
  EXPECT_EQ(only_scores, full_scores);
}

TEST(AttentionRefTest, HandComputedTwoKeys) {
  // D = 2, default scale 1/sqrt(2). q = (1, 0); k0 = (0, 0), k1 = (sqrt(2) ln 3, 0)
  // give logits 0 and ln 3: P = (1/4, 3/4), lse = ln 4. v0 = (4, 0), v1 = (0, 8)
  // give out = (1, 6). Causally, query 0 of a 2-query chunk sees only entry 0:
  // out = v0, lse = 0.
  const std::vector<float> k = {0.0f, 0.0f, static_cast<float>(std::sqrt(2.0) * std::log(3.0)),
                                0.0f};
  const std::vector<float> v = {4.0f, 0.0f, 0.0f, 8.0f};
  const KvPool pool = KvPool::Contiguous(k.data(), v.data(), DType::kF32, 2, 1, 2);
  const Rope none;
  Lists list;
  list.Add({0, 1}, {0, 1});
  const Queries q{1, 2, {1.0f, 0.0f, 1.0f, 0.0f}, {0, 1}};
  // k1 rounded to fp32 moves its logit by ~1e-7.
  constexpr double kTol = 1e-6;
  Lists twice;  // a batch of two sequences over the same two keys
  twice.Add({0, 1}, {0, 1});
  twice.Add({0, 1}, {0, 1});
  const Result decode = RunDecode(pool, q, twice.Gather(false, none), none);
  const Result causal = RunPrefill(pool, q, list.Gather(false, none), true, none);
  const Result full = RunPrefill(pool, q, list.Gather(false, none), false, none);
  for (const Result* r : {&decode, &full}) {
    for (int i = 0; i < 2; ++i) {
      EXPECT_NEAR(r->out[2 * i], 1.0, kTol);
      EXPECT_NEAR(r->out[2 * i + 1], 6.0, kTol);
      EXPECT_NEAR(r->lse[i], std::log(4.0), kTol);
    }
  }
  EXPECT_NEAR(causal.out[0], 4.0, kTol);
  EXPECT_NEAR(causal.out[1], 0.0, kTol);
  EXPECT_NEAR(causal.lse[0], 0.0, kTol);
  EXPECT_NEAR(causal.out[2], 1.0, kTol);
  EXPECT_NEAR(causal.out[3], 6.0, kTol);
  EXPECT_NEAR(causal.lse[1], std::log(4.0), kTol);
}

TEST(AttentionRefTest, HandComputedRopePairs) {
  // One key, so lse is the logit. D = 4, theta = 100: pair 0 turns at 1
  // rad per position, pair 1 at 100^(-1/2) = 0.1. The pairs are (0,1),(2,3)
  // interleaved and (0,2),(1,3) half.
  const std::vector<float> q_raw = {1.0f, 2.0f, 3.0f, 4.0f}, k = {0.5f, -1.0f, 2.0f, 0.25f};
  const std::vector<float> v = {1.0f, 2.0f, 3.0f, 4.0f};
  const KvPool pool = KvPool::Contiguous(k.data(), v.data(), DType::kF32, 1, 1, 4);
  constexpr int32_t kQPos = 5, kKPos = 2;
  struct Pair {
    int a, b;
    double freq;
  };
  const auto rotate = [](std::vector<double> x, int32_t pos, const Pair(&pairs)[2]) {
    for (const Pair& p : pairs) {
      const double c = std::cos(pos * p.freq), s = std::sin(pos * p.freq), xa = x[p.a], xb = x[p.b];
      x[p.a] = xa * c - xb * s;
      x[p.b] = xa * s + xb * c;
    }
    return x;
  };
  const Pair interleaved[2] = {{0, 1, 1.0}, {2, 3, 0.1}}, half[2] = {{0, 2, 1.0}, {1, 3, 0.1}};
  for (const RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kHalf}) {
    const Pair(&pairs)[2] = style == RopeStyle::kInterleaved ? interleaved : half;
    const std::vector<double> rq = rotate({q_raw.begin(), q_raw.end()}, kQPos, pairs);
    const std::vector<double> rk = rotate({k.begin(), k.end()}, kKPos, pairs);
    double logit = 0;
    for (int d = 0; d < 4; ++d) logit += rq[d] * rk[d];
    const Rope rope{style, 100.0f};
    Lists list;
    list.Add({0}, {kKPos});
    const Queries q{1, 4, q_raw, {kQPos}};
    const Result r = RunDecode(pool, q, list.Gather(false, rope), rope, {}, /*scale=*/1.0f);
    // |logit| < 10: fp32 output rounding is ~1e-6 at most.
    EXPECT_NEAR(r.lse[0], logit, 1e-5) << "style " << int(style);
    EXPECT_EQ(r.out, v);
  }
}

TEST(AttentionRefTest, HalfPrecisionPoolsEqualFp32PoolOfRoundedValues) {
  constexpr int32_t kHq = 4, kHkv = 2, kD = 16, kN = 24;
  const Tokens kv = RandomTokens(kN, kHkv, kD, 81);
  const Rope rope{RopeStyle::kHalf, 10000.0f};
  Lists list;
  list.Add(Shuffled(kN, 82), Iota(kN));
  const Queries q = RandomQueries(Iota(4, kN - 4), kHq, kD, 83);
  const std::vector<float> initial = RandomFloats(kHkv * kN, 84);
  for (const DType dtype : {DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(DTypeName(dtype).data());
    const std::vector<uint8_t> k = testing::Encode(dtype, kv.k), v = testing::Encode(dtype, kv.v);
    const Tokens rounded{kN, kHkv, kD, testing::RoundTrip(dtype, kv.k),
                         testing::RoundTrip(dtype, kv.v)};
    std::vector<float> want_scores = initial, got_scores = initial;
    ScoreAccum accum{ScoreMode::kEma, GroupReduce::kMax, 0.99f, 0, want_scores.data(), nullptr};
    const Result want = RunPrefill(rounded.Pool(), q, list.Gather(false, rope), true, rope, accum);
    accum.scores = got_scores.data();
    const KvPool pool = KvPool::Contiguous(k.data(), v.data(), dtype, kN, kHkv, kD);
    const Result got = RunPrefill(pool, q, list.Gather(false, rope), true, rope, accum);
    // Widening bf16/f16 to fp32 is exact, so the arithmetic is identical.
    EXPECT_EQ(RelErrorByNorm(got.out, want.out), 0.0);
    EXPECT_EQ(MaxAbsDiff(got.lse, want.lse), 0.0);
    EXPECT_EQ(got_scores, want_scores);
  }
}

TEST(AttentionRefTest, EmptyPerKvHeadListGivesZerosAndNegInfLse) {
  constexpr int32_t kHq = 4, kHkv = 2, kD = 8, kN = 6;
  const Tokens kv = RandomTokens(kN, kHkv, kD, 91);
  const Rope rope{RopeStyle::kInterleaved, 10000.0f};
  Lists lists;
  lists.Add({}, {});              // KV head 0 gathers nothing
  lists.Add(Iota(kN), Iota(kN));  // KV head 1 gathers everything
  const Queries q = RandomQueries({kN, kN + 1}, kHq, kD, 92);
  const std::vector<float> initial = RandomFloats(kHkv * kN, 93);
  std::vector<float> scores = initial;
  const Result r =
      RunPrefill(kv.Pool(), q, lists.Gather(true, rope), false, rope,
                 ScoreAccum{ScoreMode::kSum, GroupReduce::kSum, 0.5f, 0, scores.data(), nullptr});
  for (int32_t i = 0; i < 2; ++i) {
    for (int32_t h = 0; h < kHq; ++h) {
      const bool empty = h < kHq / kHkv;
      EXPECT_EQ(r.lse[i * kHq + h], empty ? kNegInf : r.lse[i * kHq + h]);
      EXPECT_TRUE(empty || std::isfinite(r.lse[i * kHq + h]));
      for (int32_t d = 0; d < kD; ++d) {
        const float x = r.out[(i * kHq + h) * kD + d];
        EXPECT_TRUE(std::isfinite(x));
        if (empty) {
          EXPECT_EQ(x, 0.0f);
        }
      }
    }
  }
  // Head 0's scores are untouched; head 1's got the two queries' mass.
  EXPECT_TRUE(std::equal(scores.begin(), scores.begin() + kN, initial.begin()));
  double added = 0;
  for (int32_t j = 0; j < kN; ++j) added += scores[kN + j] - initial[kN + j];
  EXPECT_NEAR(added, 2.0 * 2 /*queries x heads in the group*/, 1e-5);
}

}  // namespace
}  // namespace kvc::kernels
