// H2O and SnapKV against a brute-force statement of each: the policies are
// driven through Attend with random q, k, v on a one-layer GQA shape
// (Hq = 4, Hkv = 2, D = 16), and a plain double-precision model in this file
// attends the same chunks over the tokens it keeps, accumulates every kept
// token's attention as the papers define it, and evicts by the stated rule.
// The outputs, the kept sets (exactly) and H2O's scores must agree.
//
// Tolerances: outputs 1e-5 by norm (fp32 kernels against fp64, a few dozen
// keys); scores 1e-5 relative. Exact kept sets assume no two candidates'
// scores are within fp32 rounding of each other, which holds for these
// seeds (the tie rule itself is exercised where scores are exactly equal:
// the max pooling of SnapKV).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ref/ref_util.h"
#include "tests/kernel_test_util.h"
#include "tests/model_test_util.h"
#include "worker/cache/h2o.h"
#include "worker/cache/snapkv.h"
#include "worker/model/checkpoint.h"

namespace kvc::cache {
namespace {

using kernels::testing::RandomFloats;
using kernels::testing::RelErrorByNorm;

constexpr int32_t kHq = 4, kHkv = 2, kD = 16, kGroup = kHq / kHkv;

model::ModelConfig Config() {
  return testing::ModelShape(kHq * kD, 96, 1, kHq, kHkv, 50);
}

struct Chunk {
  int64_t n = 0, first_position = 0;
  std::vector<float> q, k, v, out;  // [n][Hq][D], [n][Hkv][D] x 2, [n][Hq][D]
  Chunk(int64_t tokens, int64_t first, uint64_t seed)
      : n(tokens),
        first_position(first),
        q(RandomFloats(tokens * kHq * kD, seed)),
        k(RandomFloats(tokens * kHkv * kD, seed + 1)),
        v(RandomFloats(tokens * kHkv * kD, seed + 2)),
        out(tokens * kHq * kD) {}
  model::AttendArgs Args() {
    return {0, n, first_position, q.data(), k.data(), v.data(), out.data()};
  }
};

// One token as one KV head keeps it.
struct Entry {
  int32_t position = 0;
  double score = 0;
  std::vector<float> k, v;  // [D]
};
using Kept = std::vector<std::vector<Entry>>;  // [Hkv][entries]

void AppendChunk(const Chunk& c, Kept& kept) {
  for (int32_t h = 0; h < kHkv; ++h) {
    for (int64_t i = 0; i < c.n; ++i) {
      const float* k = &c.k[(i * kHkv + h) * kD];
      const float* v = &c.v[(i * kHkv + h) * kD];
      kept[h].push_back(
          {static_cast<int32_t>(c.first_position + i), 0.0, {k, k + kD}, {v, v + kD}});
    }
  }
}

// Causal attention of n queries (q: [n][Hq][D]) over each head's entries,
// whose last n are the queries' own tokens; key j rotated to j (compact) or
// its position, query i to entries - n + i or the position of its token.
// Writes out ([n][Hq][D]) and adds the group-reduced probabilities of the
// queries i >= first_query to the entries' scores.
void RefAttend(const float* q, int64_t n, bool compact, bool max_reduce, int64_t first_query,
               Kept& entries, float* out) {
  const kernels::Rope rope{kernels::RopeStyle::kInterleaved, 10000.0f};
  for (int32_t h = 0; h < kHkv; ++h) {
    std::vector<Entry>& list = entries[h];
    const int64_t m = static_cast<int64_t>(list.size());
    std::vector<std::vector<double>> keys(m, std::vector<double>(kD));
    for (int64_t j = 0; j < m; ++j) {
      kernels::ref::ApplyRope(rope, compact ? static_cast<int32_t>(j) : list[j].position, kD,
                              list[j].k.data(), keys[j].data());
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t visible = m - n + i + 1;
      const int32_t qpos = compact ? static_cast<int32_t>(m - n + i) : list[m - n + i].position;
      std::vector<double> reduced(visible, 0.0);
      for (int32_t g = 0; g < kGroup; ++g) {
        const int32_t qh = h * kGroup + g;
        std::vector<double> rq(kD), logit(visible);
        kernels::ref::ApplyRope(rope, qpos, kD, q + (i * kHq + qh) * kD, rq.data());
        double top = -INFINITY, sum = 0;
        for (int64_t j = 0; j < visible; ++j) {
          logit[j] = std::inner_product(rq.begin(), rq.end(), keys[j].begin(), 0.0) /
                     std::sqrt(static_cast<double>(kD));
          top = std::max(top, logit[j]);
        }
        for (int64_t j = 0; j < visible; ++j) sum += std::exp(logit[j] - top);
        std::vector<double> o(kD, 0.0);
        for (int64_t j = 0; j < visible; ++j) {
          const double p = std::exp(logit[j] - top) / sum;
          for (int32_t d = 0; d < kD; ++d) o[d] += p * list[j].v[d];
          reduced[j] = g == 0 ? p : max_reduce ? std::max(reduced[j], p) : reduced[j] + p;
        }
        for (int32_t d = 0; d < kD; ++d) out[(i * kHq + qh) * kD + d] = static_cast<float>(o[d]);
      }
      if (i >= first_query) {
        for (int64_t j = 0; j < visible; ++j) list[j].score += reduced[j];
      }
    }
  }
}

// Keeps entries[keep] in position order; keep chosen by `rank` (the first
// `top` of [0, end) by higher rank, equal ranks the older) plus [end, size).
void KeepTopAndTail(std::vector<Entry>& list, const std::vector<double>& rank, int64_t top,
                    int64_t end) {
  std::vector<int32_t> order(end);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t x, int32_t y) { return rank[x] > rank[y]; });
  order.resize(top);
  for (int64_t j = end; j < static_cast<int64_t>(list.size()); ++j)
    order.push_back(static_cast<int32_t>(j));
  std::sort(order.begin(), order.end());
  std::vector<Entry> kept;
  for (int32_t j : order) kept.push_back(list[j]);
  list = std::move(kept);
}

std::vector<int32_t> Positions(const std::vector<Entry>& list) {
  std::vector<int32_t> p;
  for (const Entry& e : list) p.push_back(e.position);
  return p;
}

const kernels::Backend kBackends[] = {kernels::Backend::kReference, kernels::Backend::kCpu};

TEST(H2OTest, KeepsTheHeavyHittersAndTheRecentTokensByAccumulatedAttention) {
  for (const kernels::Backend backend : kBackends) {
    for (const bool variant : {false, true}) {  // sum + original positions, max + compact
      SCOPED_TRACE(::testing::Message() << kernels::BackendName(backend)
                                        << (variant ? " max compact" : " sum original"));
      H2OOptions o;
      o.heavy = 5;
      o.recent = 3;
      o.group_reduce = variant ? kernels::GroupReduce::kMax : kernels::GroupReduce::kSum;
      o.compact_positions = variant;
      auto policy = *H2O::Create(Config(), o);
      const kernels::ExecContext ctx{backend};
      Kept kept(kHkv);
      // A first chunk larger than the budget, then chunks and decode steps.
      std::vector<int64_t> sizes = {11, 4, 7};
      sizes.resize(30, 1);
      int64_t position = 0;
      for (size_t step = 0; step < sizes.size(); ++step) {
        Chunk c(sizes[step], position, 100 + 7 * step);
        ASSERT_TRUE(policy->Attend(ctx, c.Args()).ok());
        std::vector<float> want(c.out.size());
        AppendChunk(c, kept);
        RefAttend(c.q.data(), c.n, variant, variant, 0, kept, want.data());
        EXPECT_LE(RelErrorByNorm(c.out, want), 1e-5) << "step " << step;
        position += c.n;
        for (int32_t h = 0; h < kHkv; ++h) {
          std::vector<Entry>& list = kept[h];
          const int64_t size = static_cast<int64_t>(list.size());
          if (size > o.budget()) {
            std::vector<double> score;
            for (const Entry& e : list) score.push_back(e.score);
            KeepTopAndTail(list, score, o.heavy, size - o.recent);
          }
          ASSERT_EQ(policy->kept_positions(0, h), Positions(list))
              << "step " << step << " head " << h;
          const std::vector<float> got = policy->kept_scores(0, h);
          for (size_t j = 0; j < list.size(); ++j)
            EXPECT_NEAR(got[j], list[j].score, 1e-5 * (1 + list[j].score));
          EXPECT_EQ(static_cast<int64_t>(list.size()), std::min<int64_t>(position, o.budget()));
        }
      }
      EXPECT_EQ(policy->stats().resident_tokens, o.budget());
      EXPECT_EQ(policy->stats().tokens_seen, position);
      EXPECT_EQ(policy->stats().attended_last_step, o.budget() + 1);
    }
  }
}

// Prompt of 37 tokens in chunks of 16, then decode steps: full attention
// until the first decode step, which keeps per head the top B - w of the
// pooled votes of the last w prompt queries and the window; later steps
// only add tokens.
TEST(SnapKvTest, CompressesOnceToThePooledTopVotesAndTheWindow) {
  for (const kernels::Backend backend : kBackends) {
    for (const bool compact : {false, true}) {
      SCOPED_TRACE(::testing::Message()
                   << kernels::BackendName(backend) << (compact ? " compact" : " original"));
      SnapKvOptions o;
      o.budget = 12;
      o.window = 4;
      o.pool_kernel = 3;
      o.compact_positions = compact;
      auto policy = *SnapKv::Create(Config(), o);
      const kernels::ExecContext ctx{backend};
      Kept kept(kHkv);
      std::vector<float> prompt_q;
      const std::vector<int64_t> sizes = {16, 16, 5, 1, 1, 1, 1, 1, 1};
      int64_t position = 0;
      for (size_t step = 0; step < sizes.size(); ++step) {
        Chunk c(sizes[step], position, 300 + 7 * step);
        ASSERT_TRUE(policy->Attend(ctx, c.Args()).ok());
        if (step == 3) {
          // The reference compression: the window's votes over the prompt.
          const int64_t len = position, w = o.window, prefix = len - w;
          for (int32_t h = 0; h < kHkv; ++h) {
            for (Entry& e : kept[h]) e.score = 0;
          }
          std::vector<float> ignored(w * kHq * kD);
          RefAttend(prompt_q.data() + prefix * kHq * kD, w, compact, false, 0, kept,
                    ignored.data());
          for (int32_t h = 0; h < kHkv; ++h) {
            std::vector<double> pooled(prefix);
            for (int64_t t = 0; t < prefix; ++t) {
              for (int64_t u = std::max<int64_t>(0, t - 1);
                   u <= std::min<int64_t>(prefix - 1, t + 1); ++u) {
                pooled[t] = std::max(pooled[t], kept[h][u].score);
              }
            }
            KeepTopAndTail(kept[h], pooled, o.budget - w, prefix);
          }
          EXPECT_TRUE(policy->compressed(0));
        }
        if (step < 3) prompt_q.insert(prompt_q.end(), c.q.begin(), c.q.end());
        std::vector<float> want(c.out.size());
        AppendChunk(c, kept);
        RefAttend(c.q.data(), c.n, compact, false, 0, kept, want.data());
        EXPECT_LE(RelErrorByNorm(c.out, want), 1e-5) << "step " << step;
        position += c.n;
        for (int32_t h = 0; h < kHkv; ++h) {
          ASSERT_EQ(policy->kept_positions(0, h), Positions(kept[h]))
              << "step " << step << " head " << h;
        }
      }
      EXPECT_EQ(policy->compressions(), 1);
      EXPECT_EQ(policy->stats().resident_tokens, o.budget + 6);
      EXPECT_EQ(policy->stats().tokens_seen, 43);
    }
  }
}

// An explicit Compress() ends the prompt of every layer; decode steps after
// it never compress again, and neither does a second Compress().
TEST(SnapKvTest, ExplicitCompressEndsThePrompt) {
  SnapKvOptions o;
  o.budget = 10;
  o.window = 3;
  auto policy = *SnapKv::Create(Config(), o);
  const kernels::ExecContext ctx;
  Chunk prompt(30, 0, 7);
  ASSERT_TRUE(policy->Attend(ctx, prompt.Args()).ok());
  EXPECT_FALSE(policy->compressed(0));
  EXPECT_EQ(policy->stats().resident_tokens, 30);
  ASSERT_TRUE(policy->Compress(ctx).ok());
  EXPECT_TRUE(policy->compressed(0));
  EXPECT_EQ(policy->stats().resident_tokens, 10);
  for (int32_t h = 0; h < kHkv; ++h) {
    const std::vector<int32_t>& p = policy->kept_positions(0, h);
    EXPECT_EQ(std::vector<int32_t>(p.end() - 3, p.end()), (std::vector<int32_t>{27, 28, 29}));
  }
  for (int64_t t = 30; t < 35; ++t) {
    Chunk c(1, t, 50 + t);
    ASSERT_TRUE(policy->Attend(ctx, c.Args()).ok());
  }
  ASSERT_TRUE(policy->Compress(ctx).ok());
  EXPECT_EQ(policy->compressions(), 1);
  EXPECT_EQ(policy->stats().resident_tokens, 15);
}

}  // namespace
}  // namespace kvc::cache
