// The optimised CPU attention kernels (Prefill, Decode, MergeStates and the
// score accumulation) against the reference, for every ISA build this
// processor runs (CpuVariants(): v4, v3, v2) and for Backend::kCpu through
// the public API, on fresh random inputs: model shapes, stored dtypes, RoPE
// styles, pool layouts and page sizes with shuffled page tables, shared and
// per-KV-head lists, odd and empty lengths, causal and not, every score mode.
//
// Tolerances. Both paths read the same stored values (bf16/f16 widen exactly
// to fp32), so the dtype does not change the bound. The reference works in
// fp64; the CPU path rotates with fp32 cos/sin tables (~2e-7 abs), folds
// the scale into q and accumulates logits, exp (~1e-7 rel) and P V in fp32,
// so out differs by a few fp32 roundings of each term (observed <= 1e-6):
// relative error by norm <= 1e-5. lse is the log of a sum of exp(logits):
// its error is the fp32 rounding of the logits, a few 1e-7 absolute for
// O(1) logits and ~4e-6 for the sharp (|logit| ~ 20) case: bound 5e-5.
// Scores are sums of P computed from those logits and lse (relative error
// of P ~ |logit - lse| * 1e-7), starting from values of the same size as
// the update (observed <= 4e-7): <= 1e-5 by norm.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/thread_pool.h"
#include "tests/kernel_test_util.h"

namespace kvc::kernels {
namespace {

using testing::CpuVariants;
using testing::MaxAbsDiff;
using testing::RandomFloats;
using testing::RelErrorByNorm;

constexpr double kOutTol = 1e-5;
constexpr double kLseTol = 5e-5;
constexpr double kScoreTol = 1e-5;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// One attention scenario. Prefill: one sequence of `cache` cached tokens
// followed (causal only) by the chunk's num_q tokens. Decode: `lengths[b]` tokens for
// sequence b, one query each.
struct Case {
  std::string name;
  int32_t hq, hkv, dim;
  DType dtype = DType::kF32;
  RopeStyle rope = RopeStyle::kNone;
  KvLayout layout = KvLayout::kNHD;
  int32_t page_size = 1;
  bool per_kv_head = false;
  bool causal = true;            // prefill only
  int64_t num_q = 1;             // prefill only
  std::vector<int32_t> lengths;  // prefill: {cache}; decode: per sequence
  ScoreMode mode = ScoreMode::kNone;
  GroupReduce reduce = GroupReduce::kMax;
  int64_t first_query = 0;
  bool given_lse = false;  // accum.lse = a larger normaliser than the call's own
  int32_t position_base = 0;
  float q_stddev = 1.0f;
  bool scores_only = false;  // out = nullptr (REQUIRES given_lse)
};

std::string CaseName(const ::testing::TestParamInfo<Case>& info) { return info.param.name; }
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

// A paged pool holding every token of a case, its gather lists, queries and
// starting scores.
class Scenario {
 public:
  Scenario(const Case& c, bool decode, uint64_t seed) : c_(c) {
    const int64_t batch = decode ? static_cast<int64_t>(c.lengths.size()) : 1;
    int64_t tokens = 0;
    std::vector<int64_t> seq_start, seq_len;
    for (int64_t b = 0; b < batch; ++b) {
      // Non-causal prefill attends to the cache only (as the cascade's cache part).
      const int64_t len = decode ? c.lengths[b] : c.lengths[0] + (c.causal ? c.num_q : 0);
      seq_start.push_back(tokens);
      seq_len.push_back(len);
      tokens += len;
    }
    const int64_t pages = tokens / c.page_size + 2;  // spare pages never gathered
    page_of_.resize(pages);
    for (int64_t p = 0; p < pages; ++p) page_of_[p] = static_cast<int32_t>(p);
    std::mt19937_64 rng(seed);
    std::shuffle(page_of_.begin(), page_of_.end(), rng);
    const size_t elems = static_cast<size_t>(pages) * c.page_size * c.hkv * c.dim;
    k_ = testing::Encode(c.dtype, RandomFloats(elems, seed + 1));
    v_ = testing::Encode(c.dtype, RandomFloats(elems, seed + 2));
    pool_ = {k_.data(), v_.data(), c.dtype, c.layout, pages, c.page_size, c.hkv, c.dim};

    // Lists: every token of the sequence, or per KV head a subset of the
    // cached part (the chunk itself is always complete and last, in order).
    indptr_.push_back(0);
    const int64_t rows = decode ? batch : c.num_q;
    const int64_t kept_tail = decode || !c.causal ? 0 : c.num_q;
    for (int64_t b = 0; b < batch; ++b) {
      for (int32_t h = 0; h < (c.per_kv_head ? c.hkv : 1); ++h) {
        for (int64_t t = 0; t < seq_len[b]; ++t) {
          const bool in_tail = t >= seq_len[b] - kept_tail;
          if (c.per_kv_head && !in_tail && (t * 7 + h * 3) % 5 == 0) continue;
          indices_.push_back(Slot(seq_start[b] + t));
          positions_.push_back(c.position_base + static_cast<int32_t>(t));
        }
        indptr_.push_back(static_cast<int32_t>(indices_.size()));
      }
      if (decode) q_positions_.push_back(c.position_base + static_cast<int32_t>(seq_len[b]));
    }
    if (!decode) {
      for (int64_t i = 0; i < c.num_q; ++i) {
        q_positions_.push_back(c.position_base + c.lengths[0] + static_cast<int32_t>(i));
      }
    }
    q_ = RandomFloats(static_cast<size_t>(rows) * c.hq * c.dim, seed + 3, c.q_stddev);
    // Starting scores of the size of one call's contributions, so the
    // comparison of the updated scores is dominated by what the call adds.
    scores_ = RandomFloats(static_cast<size_t>(pool_.num_slots()) * c.hkv, seed + 4);
    for (float& s : scores_) s = 1e-3f * std::fabs(s);
    rows_ = rows;
    // Never read; keeps positions_.data() non-null when every list is empty.
    positions_.push_back(0);
  }

  int32_t Slot(int64_t token) const {
    return page_of_[token / c_.page_size] * c_.page_size +
           static_cast<int32_t>(token % c_.page_size);
  }
  KvGather Gather() const {
    return {indptr_.data(), indices_.data(),
            c_.rope == RopeStyle::kNone ? nullptr : positions_.data(), c_.per_kv_head};
  }
  ScoreAccum Accum(const float* lse) const {
    ScoreAccum a;
    a.mode = c_.mode;
    a.group_reduce = c_.reduce;
    a.beta = 0.9f;
    a.first_query = c_.first_query;
    a.lse = lse;
    return a;
  }
  PrefillArgs Prefill(const float* accum_lse) const {
    PrefillArgs a;
    a.q = q_.data();
    a.q_positions = c_.rope == RopeStyle::kNone ? nullptr : q_positions_.data();
    a.num_q = c_.num_q;
    a.num_q_heads = c_.hq;
    a.kv = pool_;
    a.gather = Gather();
    a.causal = c_.causal;
    a.rope = {c_.rope, 500000.0f};
    a.accum = Accum(accum_lse);
    return a;
  }
  DecodeArgs Decode(const float* accum_lse) const {
    DecodeArgs a;
    a.q = q_.data();
    a.q_positions = c_.rope == RopeStyle::kNone ? nullptr : q_positions_.data();
    a.batch = static_cast<int32_t>(rows_);
    a.num_q_heads = c_.hq;
    a.kv = pool_;
    a.gather = Gather();
    a.rope = {c_.rope, 10000.0f};
    a.accum = Accum(accum_lse);
    return a;
  }
  int64_t rows() const { return rows_; }
  const std::vector<float>& scores() const { return scores_; }

 private:
  Case c_;
  std::vector<int32_t> page_of_;
  std::vector<uint8_t> k_, v_;
  KvPool pool_;
  std::vector<int32_t> indptr_, indices_, positions_, q_positions_;
  std::vector<float> q_, scores_;
  int64_t rows_ = 0;
};

struct Outputs {
  std::vector<float> out, lse, scores;
};

// Runs `kernel` on fresh output buffers (NaN-filled, so anything left
// unwritten fails) and a copy of the starting scores.
template <class Args>
Outputs RunKernel(const Scenario& s, Args args, const Case& c,
                  const std::function<absl::Status(const Args&)>& kernel) {
  Outputs o;
  o.out.assign(static_cast<size_t>(s.rows()) * c.hq * c.dim, std::nanf(""));
  o.lse.assign(static_cast<size_t>(s.rows()) * c.hq, std::nanf(""));
  o.scores = s.scores();
  args.out = c.scores_only ? nullptr : o.out.data();
  args.lse = o.lse.data();
  args.accum.scores = o.scores.data();
  if (c.scores_only) std::fill(o.out.begin(), o.out.end(), 0.0f);  // never written
  const absl::Status status = kernel(args);
  EXPECT_TRUE(status.ok()) << status;
  return o;
}

void ExpectClose(const Outputs& got, const Outputs& want, const std::string& who) {
  EXPECT_LE(RelErrorByNorm(got.out, want.out), kOutTol) << who;
  EXPECT_LE(MaxAbsDiff(got.lse, want.lse), kLseTol) << who;
  EXPECT_LE(RelErrorByNorm(got.scores, want.scores), kScoreTol) << who;
}

// Every CPU build (called through its table with validated arguments) and
// the public kCpu entry point against the reference.
template <class Args>
void CompareAll(const Scenario& s, const Case& c, const Args& args,
                absl::Status (*api)(const ExecContext&, const Args&),
                absl::Status (*internal::KernelTable::*entry)(const ExecContext&, const Args&)) {
  const Outputs want =
      RunKernel<Args>(s, args, c, [&](const Args& a) { return api({Backend::kReference}, a); });
  ThreadPool pool(2);
  for (const testing::CpuVariant& variant : CpuVariants()) {
    const ExecContext ctx{Backend::kCpu, &pool};
    ExpectClose(
        RunKernel<Args>(s, args, c, [&](const Args& a) { return (variant.table->*entry)(ctx, a); }),
        want, variant.name);
  }
  ExpectClose(RunKernel<Args>(s, args, c, [&](const Args& a) { return api({Backend::kCpu}, a); }),
              want, "public kCpu");
}

// accum.lse for given_lse cases: the call's own lse raised by log(3), as if
// merged with a disjoint key set holding twice the mass.
std::vector<float> RaisedLse(const Scenario& s, const Case& c, bool decode) {
  std::vector<float> out(static_cast<size_t>(s.rows()) * c.hq * c.dim);
  std::vector<float> lse(static_cast<size_t>(s.rows()) * c.hq);
  absl::Status status;
  if (decode) {
    DecodeArgs a = s.Decode(nullptr);
    a.accum.mode = ScoreMode::kNone;
    a.out = out.data();
    a.lse = lse.data();
    status = Decode({Backend::kReference}, a);
  } else {
    PrefillArgs a = s.Prefill(nullptr);
    a.accum.mode = ScoreMode::kNone;
    a.out = out.data();
    a.lse = lse.data();
    status = Prefill({Backend::kReference}, a);
  }
  EXPECT_TRUE(status.ok()) << status;
  for (float& x : lse) x = x == kNegInf ? x : x + std::log(3.0f);
  return lse;
}

class PrefillTest : public ::testing::TestWithParam<Case> {};

TEST_P(PrefillTest, CpuMatchesReference) {
  const Case& c = GetParam();
  const Scenario s(c, /*decode=*/false, /*seed=*/1000 + c.dim);
  const std::vector<float> lse = c.given_lse ? RaisedLse(s, c, false) : std::vector<float>();
  CompareAll<PrefillArgs>(s, c, s.Prefill(c.given_lse ? lse.data() : nullptr), &Prefill,
                          &internal::KernelTable::prefill);
}

// Model shapes: (6,6,48) stories15M, (32,8,128) Llama-3-8B, (4,2,64).
INSTANTIATE_TEST_SUITE_P(
    Cases, PrefillTest,
    ::testing::Values(Case{.name = "Stories_f32_causal_q7_cache333",
                           .hq = 6,
                           .hkv = 6,
                           .dim = 48,
                           .num_q = 7,
                           .lengths = {333}},
                      Case{.name = "Stories_bf16_interleaved_hnd_page16",
                           .hq = 6,
                           .hkv = 6,
                           .dim = 48,
                           .dtype = DType::kBF16,
                           .rope = RopeStyle::kInterleaved,
                           .layout = KvLayout::kHND,
                           .page_size = 16,
                           .num_q = 33,
                           .lengths = {100}},
                      Case{.name = "Llama_f16_half_perhead_ema_max",
                           .hq = 32,
                           .hkv = 8,
                           .dim = 128,
                           .dtype = DType::kF16,
                           .rope = RopeStyle::kHalf,
                           .page_size = 16,
                           .per_kv_head = true,
                           .num_q = 17,
                           .lengths = {300},
                           .mode = ScoreMode::kEma},
                      Case{.name = "Llama_bf16_noncausal_q1_sum",
                           .hq = 32,
                           .hkv = 8,
                           .dim = 128,
                           .dtype = DType::kBF16,
                           .rope = RopeStyle::kHalf,
                           .causal = false,
                           .num_q = 1,
                           .lengths = {999},
                           .mode = ScoreMode::kSum,
                           .reduce = GroupReduce::kSum},
                      Case{.name = "Small_f32_q333_selfattn_ema_last33",
                           .hq = 4,
                           .hkv = 2,
                           .dim = 64,
                           .rope = RopeStyle::kInterleaved,
                           .layout = KvLayout::kHND,
                           .page_size = 16,
                           .per_kv_head = true,
                           .num_q = 333,
                           .lengths = {0},
                           .mode = ScoreMode::kEma,
                           .reduce = GroupReduce::kSum,
                           .first_query = 300},
                      Case{.name = "Small_f16_single_token",
                           .hq = 4,
                           .hkv = 2,
                           .dim = 64,
                           .dtype = DType::kF16,
                           .num_q = 1,
                           .lengths = {0},
                           .mode = ScoreMode::kSum},
                      Case{.name = "Small_noncausal_empty_list",
                           .hq = 4,
                           .hkv = 2,
                           .dim = 64,
                           .rope = RopeStyle::kHalf,
                           .causal = false,
                           .num_q = 5,
                           .lengths = {0},
                           .mode = ScoreMode::kEma},
                      Case{.name = "Small_given_lse_sum_max",
                           .hq = 4,
                           .hkv = 2,
                           .dim = 64,
                           .dtype = DType::kBF16,
                           .rope = RopeStyle::kHalf,
                           .page_size = 16,
                           .num_q = 20,
                           .lengths = {77},
                           .mode = ScoreMode::kSum,
                           .given_lse = true},
                      Case{.name = "Small_scores_only",
                           .hq = 4,
                           .hkv = 2,
                           .dim = 64,
                           .dtype = DType::kBF16,
                           .rope = RopeStyle::kHalf,
                           .page_size = 16,
                           .per_kv_head = true,
                           .num_q = 12,
                           .lengths = {60},
                           .mode = ScoreMode::kEma,
                           .given_lse = true,
                           .scores_only = true},
                      Case{.name = "Llama_far_positions_sharp",
                           .hq = 32,
                           .hkv = 8,
                           .dim = 128,
                           .dtype = DType::kBF16,
                           .rope = RopeStyle::kInterleaved,
                           .layout = KvLayout::kHND,
                           .page_size = 16,
                           .num_q = 9,
                           .lengths = {200},
                           .position_base = 400000,
                           .q_stddev = 4.0f},
                      // 640 keys: more than one key chunk, the diagonal in the last one.
                      Case{.name = "Llama_f32_causal_two_chunks",
                           .hq = 32,
                           .hkv = 8,
                           .dim = 128,
                           .rope = RopeStyle::kHalf,
                           .page_size = 16,
                           .num_q = 40,
                           .lengths = {600},
                           .mode = ScoreMode::kEma,
                           .reduce = GroupReduce::kSum},
                      Case{.name = "Dim40_generic_rope",
                           .hq = 6,
                           .hkv = 2,
                           .dim = 40,
                           .dtype = DType::kF16,
                           .rope = RopeStyle::kHalf,
                           .per_kv_head = true,
                           .num_q = 11,
                           .lengths = {90},
                           .mode = ScoreMode::kEma},
                      Case{.name = "Dim33_odd_no_rope",
                           .hq = 3,
                           .hkv = 1,
                           .dim = 33,
                           .causal = false,
                           .num_q = 6,
                           .lengths = {70},
                           .mode = ScoreMode::kSum}),
    CaseName);

class DecodeTest : public ::testing::TestWithParam<Case> {};

TEST_P(DecodeTest, CpuMatchesReference) {
  const Case& c = GetParam();
  const Scenario s(c, /*decode=*/true, /*seed=*/2000 + c.dim);
  const std::vector<float> lse = c.given_lse ? RaisedLse(s, c, true) : std::vector<float>();
  CompareAll<DecodeArgs>(s, c, s.Decode(c.given_lse ? lse.data() : nullptr), &Decode,
                         &internal::KernelTable::decode);
}

// Head dims 64 and 128 read rows in place (keys rotated in registers);
// others (48, 40, 33) go through converted rows.
INSTANTIATE_TEST_SUITE_P(Cases, DecodeTest,
                         ::testing::Values(
                             // 5000 keys: several chunks per list, merged.
                             Case{.name = "Llama_bf16_long_chunked",
                                  .hq = 32,
                                  .hkv = 8,
                                  .dim = 128,
                                  .dtype = DType::kBF16,
                                  .lengths = {5000}},
                             Case{.name = "Llama_f32_rope_page16_ema",
                                  .hq = 32,
                                  .hkv = 8,
                                  .dim = 128,
                                  .rope = RopeStyle::kHalf,
                                  .layout = KvLayout::kHND,
                                  .page_size = 16,
                                  .lengths = {1200, 7},
                                  .mode = ScoreMode::kEma},
                             Case{.name = "Llama_scores_only",
                                  .hq = 32,
                                  .hkv = 8,
                                  .dim = 128,
                                  .dtype = DType::kBF16,
                                  .rope = RopeStyle::kInterleaved,
                                  .lengths = {400, 20},
                                  .mode = ScoreMode::kEma,
                                  .given_lse = true,
                                  .scores_only = true},
                             Case{.name = "Stories_f32_interleaved_batch3_empty",
                                  .hq = 6,
                                  .hkv = 6,
                                  .dim = 48,
                                  .rope = RopeStyle::kInterleaved,
                                  .layout = KvLayout::kHND,
                                  .page_size = 16,
                                  .lengths = {0, 1, 333}},
                             Case{.name = "Small_f16_half_perhead_ema_max",
                                  .hq = 4,
                                  .hkv = 2,
                                  .dim = 64,
                                  .dtype = DType::kF16,
                                  .rope = RopeStyle::kHalf,
                                  .page_size = 16,
                                  .per_kv_head = true,
                                  .lengths = {333, 0, 17},
                                  .mode = ScoreMode::kEma},
                             Case{.name = "Small_bf16_perhead_sum_sum",
                                  .hq = 4,
                                  .hkv = 2,
                                  .dim = 64,
                                  .dtype = DType::kBF16,
                                  .layout = KvLayout::kHND,
                                  .per_kv_head = true,
                                  .lengths = {600, 45},
                                  .mode = ScoreMode::kSum,
                                  .reduce = GroupReduce::kSum},
                             Case{.name = "Small_given_lse",
                                  .hq = 4,
                                  .hkv = 2,
                                  .dim = 64,
                                  .rope = RopeStyle::kInterleaved,
                                  .lengths = {301},
                                  .mode = ScoreMode::kSum,
                                  .given_lse = true},
                             Case{.name = "Small_first_query_1_leaves_scores",
                                  .hq = 4,
                                  .hkv = 2,
                                  .dim = 64,
                                  .lengths = {50},
                                  .mode = ScoreMode::kEma,
                                  .first_query = 1},
                             Case{.name = "Group8_f16",
                                  .hq = 16,
                                  .hkv = 2,
                                  .dim = 64,
                                  .dtype = DType::kF16,
                                  .lengths = {700},
                                  .mode = ScoreMode::kSum,
                                  .q_stddev = 3.0f},
                             Case{.name = "Dim48_scores_only_converted",
                                  .hq = 6,
                                  .hkv = 2,
                                  .dim = 48,
                                  .dtype = DType::kF16,
                                  .rope = RopeStyle::kInterleaved,
                                  .per_kv_head = true,
                                  .lengths = {90, 31},
                                  .mode = ScoreMode::kSum,
                                  .reduce = GroupReduce::kSum,
                                  .given_lse = true,
                                  .scores_only = true},
                             Case{.name = "Dim40_generic_rope",
                                  .hq = 6,
                                  .hkv = 2,
                                  .dim = 40,
                                  .dtype = DType::kBF16,
                                  .rope = RopeStyle::kHalf,
                                  .page_size = 16,
                                  .per_kv_head = true,
                                  .lengths = {120, 3},
                                  .mode = ScoreMode::kEma},
                             Case{.name = "Dim33_odd_no_rope",
                                  .hq = 3,
                                  .hkv = 3,
                                  .dim = 33,
                                  .lengths = {66},
                                  .mode = ScoreMode::kSum}),
                         CaseName);

// MergeStates: random states, some empty (lse -inf) rows and states.
struct MergeCase {
  int32_t num_states;
  int64_t rows;
  int32_t dim;
};

TEST(MergeStatesTest, CpuMatchesReference) {
  for (const MergeCase& m : {MergeCase{1, 5, 48}, MergeCase{3, 257, 128}, MergeCase{4, 31, 33},
                             MergeCase{2, 1000, 64}}) {
    const size_t n = static_cast<size_t>(m.num_states) * m.rows;
    const std::vector<float> v = RandomFloats(n * m.dim, 31 + m.dim);
    std::vector<float> lse = RandomFloats(n, 32 + m.dim, 5.0f);
    for (size_t i = 0; i < n; i += 7) lse[i] = kNegInf;  // empty states
    for (int32_t s = 0; s < m.num_states; ++s) lse[s * m.rows + m.rows - 1] = kNegInf;  // empty row
    MergeStatesArgs args{v.data(), lse.data(), m.num_states, m.rows, m.dim, nullptr, nullptr};
    auto run = [&](const std::function<absl::Status(const MergeStatesArgs&)>& fn) {
      Outputs o;
      o.out.assign(static_cast<size_t>(m.rows) * m.dim, std::nanf(""));
      o.lse.assign(m.rows, std::nanf(""));
      MergeStatesArgs a = args;
      a.out = o.out.data();
      a.out_lse = o.lse.data();
      EXPECT_TRUE(fn(a).ok());
      return o;
    };
    const Outputs want =
        run([](const MergeStatesArgs& a) { return MergeStates({Backend::kReference}, a); });
    ASSERT_EQ(want.lse.back(), kNegInf);
    ThreadPool pool(2);
    for (const testing::CpuVariant& variant : CpuVariants()) {
      const Outputs got = run([&](const MergeStatesArgs& a) {
        return variant.table->merge_states({Backend::kCpu, &pool}, a);
      });
      // Weights in double, sums in fp32 over <= 4 states: a few roundings.
      EXPECT_LE(RelErrorByNorm(got.out, want.out), 1e-6) << variant.name << " dim " << m.dim;
      EXPECT_LE(MaxAbsDiff(got.lse, want.lse), 1e-6) << variant.name;
    }
  }
}

TEST(AttentionTest, RunsEveryIsaBuildThisCpuHas) { EXPECT_FALSE(CpuVariants().empty()); }

}  // namespace
}  // namespace kvc::kernels
