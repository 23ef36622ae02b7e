// Bad arguments to every kernel come back as InvalidArgument naming what was
// wrong; none aborts, and none writes to an output.
#include <cstring>
#include <limits>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/cascade.h"
#include "kernels/less.h"
#include "kernels/token_select.h"
#include "tests/kernel_test_util.h"

namespace kvc::kernels {
namespace {

using ::testing::HasSubstr;

constexpr int kHq = 4, kHkv = 2, kD = 8, kN = 16;

MATCHER_P(IsInvalid, text, "") {
  return arg.code() == absl::StatusCode::kInvalidArgument &&
         ::testing::Value(std::string(arg.message()), HasSubstr(text));
}

class KernelValidationTest : public ::testing::TestWithParam<Backend> {
 protected:
  ExecContext ctx{GetParam()};
  std::vector<float> q = testing::RandomFloats(kHq * kD, 1);
  std::vector<float> k = testing::RandomFloats(kN * kHkv * kD, 2);
  std::vector<float> v = testing::RandomFloats(kN * kHkv * kD, 3);
  std::vector<int32_t> indptr = {0, kN};
  std::vector<int32_t> indices = [] {
    std::vector<int32_t> x(kN);
    for (int i = 0; i < kN; ++i) x[i] = i;
    return x;
  }();
  std::vector<float> out = std::vector<float>(kHq * kD, 7.0f);
  std::vector<float> lse = std::vector<float>(kHq, 7.0f);

  DecodeArgs Decode1() {
    DecodeArgs a;
    a.q = q.data();
    a.batch = 1;
    a.num_q_heads = kHq;
    a.kv = KvPool::Contiguous(k.data(), v.data(), DType::kF32, kN, kHkv, kD);
    a.gather.indptr = indptr.data();
    a.gather.indices = indices.data();
    a.out = out.data();
    a.lse = lse.data();
    return a;
  }
  void ExpectUntouched() {
    for (float x : out) ASSERT_EQ(x, 7.0f);
  }
};

TEST_P(KernelValidationTest, ValidDecodeRuns) {
  DecodeArgs a = Decode1();
  ASSERT_TRUE(kernels::Decode(ctx, a).ok());
}

TEST_P(KernelValidationTest, DecodeRejectsBadShapesAndBuffers) {
  DecodeArgs a = Decode1();
  a.num_q_heads = 3;
  EXPECT_THAT(kernels::Decode(ctx, a), IsInvalid("not a multiple of num_kv_heads"));
  a = Decode1();
  a.kv.dtype = static_cast<DType>(9);
  EXPECT_THAT(kernels::Decode(ctx, a), IsInvalid("unknown dtype 9"));
  a = Decode1();
  a.kv.layout = static_cast<KvLayout>(5);
  EXPECT_THAT(kernels::Decode(ctx, a), IsInvalid("unknown layout"));
  a = Decode1();
  a.q = nullptr;
  EXPECT_THAT(kernels::Decode(ctx, a), IsInvalid("q is null"));
  a = Decode1();
  a.kv.v = nullptr;
  EXPECT_THAT(kernels::Decode(ctx, a), IsInvalid("kv.v is null"));
  a = Decode1();
  a.out = const_cast<float*>(static_cast<const float*>(a.kv.k)) + 3;
  EXPECT_THAT(kernels::Decode(ctx, a), IsInvalid("output out overlaps input kv.k"));
  a = Decode1();
  a.lse = out.data() + 1;
  EXPECT_THAT(kernels::Decode(ctx, a), IsInvalid("outputs out and lse overlap"));
  a = Decode1();
  a.rope.style = RopeStyle::kInterleaved;
  EXPECT_THAT(kernels::Decode(ctx, a), IsInvalid("q_positions is null"));
  a = Decode1();
  a.rope.style = static_cast<RopeStyle>(7);
  EXPECT_THAT(kernels::Decode(ctx, a), IsInvalid("unknown rope.style"));
  a = Decode1();
  a.scale = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(kernels::Decode(ctx, a), IsInvalid("scale"));
  a = Decode1();
  a.kv.head_dim = 0;
  EXPECT_THAT(kernels::Decode(ctx, a), IsInvalid("head_dim"));
  ExpectUntouched();
}

TEST_P(KernelValidationTest, DecodeRejectsBadLists) {
  DecodeArgs a = Decode1();
  indices[5] = kN;
  EXPECT_THAT(kernels::Decode(ctx, a), IsInvalid("gather.indices[5] = 16 is outside"));
  indices[5] = -1;
  EXPECT_THAT(kernels::Decode(ctx, a), IsInvalid("gather.indices[5] = -1"));
  indices[5] = 5;
  indptr = {3, kN};
  a.gather.indptr = indptr.data();
  EXPECT_THAT(kernels::Decode(ctx, a), IsInvalid("indptr[0] must be 0"));
  std::vector<int32_t> two = {0, 9, 4};
  a.batch = 2;
  a.gather.indptr = two.data();
  std::vector<float> q2(2 * kHq * kD), out2(2 * kHq * kD);
  a.q = q2.data();
  a.out = out2.data();
  a.lse = nullptr;
  EXPECT_THAT(kernels::Decode(ctx, a), IsInvalid("indptr decreases at list 1"));
  // Accumulating scores over a slot gathered twice would count it twice.
  a = Decode1();
  indptr = {0, kN};
  indices[1] = 0;
  std::vector<float> scores(kN * kHkv);
  a.accum.mode = ScoreMode::kSum;
  a.accum.scores = scores.data();
  EXPECT_THAT(kernels::Decode(ctx, a), IsInvalid("slot 0 of KV head 0 is gathered twice"));
  indices[1] = 1;
  a.accum.mode = ScoreMode::kEma;
  a.accum.beta = 1.5f;
  EXPECT_THAT(kernels::Decode(ctx, a), IsInvalid("accum.beta"));
}

TEST_P(KernelValidationTest, PrefillCausalNeedsTheChunkInEveryList) {
  std::vector<float> q3(3 * kHq * kD), out3(3 * kHq * kD);
  PrefillArgs a;
  a.q = q3.data();
  a.num_q = 3;
  a.num_q_heads = kHq;
  a.kv = KvPool::Contiguous(k.data(), v.data(), DType::kF32, kN, kHkv, kD);
  std::vector<int32_t> short_list = {0, 2};
  a.gather.indptr = short_list.data();
  a.gather.indices = indices.data();
  a.out = out3.data();
  EXPECT_THAT(kernels::Prefill(ctx, a), IsInvalid("fewer than the 3 queries"));
  a.causal = false;
  EXPECT_TRUE(kernels::Prefill(ctx, a).ok());
}

TEST_P(KernelValidationTest, TokenSelectRejectsKLargerThanThePool) {
  std::vector<int32_t> selected(kN + 1);
  TokenSelectArgs a;
  a.qbar = q.data();
  a.num_q_heads = kHq;
  a.pool = KvPool::Contiguous(k.data(), nullptr, DType::kF32, kN, kHkv, kD);
  a.num_candidates = kN;
  a.k = kN + 1;
  a.selected = selected.data();
  EXPECT_THAT(kernels::TokenSelect(ctx, a), IsInvalid("k = 17 must be in [1, 16]"));
  a.k = 0;
  EXPECT_THAT(kernels::TokenSelect(ctx, a), IsInvalid("k = 0"));
  a.k = 4;
  a.num_candidates = kN + 5;
  EXPECT_THAT(kernels::TokenSelect(ctx, a), IsInvalid("exceeds the pool"));
  a.num_candidates = kN;
  a.pool_kernel = 4;
  EXPECT_THAT(kernels::TokenSelect(ctx, a), IsInvalid("pool_kernel must be 0, 1 or odd"));
  a.pool_kernel = 0;
  a.select_begin = 10;
  a.select_end = 5;
  EXPECT_THAT(kernels::TokenSelect(ctx, a), IsInvalid("eligible range"));
  a.select_begin = 0;
  a.select_end = -1;
  a.pool.dtype = static_cast<DType>(3);
  EXPECT_THAT(kernels::TokenSelect(ctx, a), IsInvalid("unknown dtype 3"));
  a.pool.dtype = DType::kF32;
  a.selected = reinterpret_cast<int32_t*>(const_cast<float*>(q.data()));
  EXPECT_THAT(kernels::TokenSelect(ctx, a), IsInvalid("overlaps input qbar"));
}

TEST_P(KernelValidationTest, MergeStatesAndLessAndCascadeRejectBadArguments) {
  MergeStatesArgs m;
  m.num_states = 0;
  EXPECT_THAT(kernels::MergeStates(ctx, m), IsInvalid("num_states"));

  std::vector<float> h(kHkv * 4 * kD), z(kHkv * 4);
  FeatureMapWeights psi = RandomFeatureMap(kD + 1, 4, 1);
  LessFoldArgs f;
  f.state = {kHkv, 4, kD, h.data(), z.data()};
  f.psi = psi.View();
  f.k = k.data();
  f.v = v.data();
  f.max_tokens = 2;
  EXPECT_THAT(kernels::LessFold(ctx, f), IsInvalid("psi maps 9 -> 4 but the state needs 8 -> 4"));
  psi = RandomFeatureMap(kD, 4, 1);
  f.psi = psi.View();
  std::vector<int32_t> count = {1, 3};
  f.count = count.data();
  if (GetParam() != Backend::kCuda) {
    EXPECT_THAT(kernels::LessFold(ctx, f), IsInvalid("count[1] = 3"));
  }

  CascadeInsertArgs c;
  EXPECT_THAT(kernels::CascadeInsert(ctx, c), IsInvalid("state is null"));
  CascadeState s;
  s.config.subcache_slots = 0;
  c.state = &s;
  EXPECT_THAT(kernels::CascadeInsert(ctx, c), IsInvalid("subcache_slots"));
}

TEST(KernelBackendTest, CudaBackendSaysWhyItCannotRun) {
  ExecContext ctx{Backend::kCuda};
  MergeStatesArgs m;
  const absl::Status s = kernels::MergeStates(ctx, m);
  if (s.code() == absl::StatusCode::kUnavailable) {
    EXPECT_THAT(std::string(s.message()), HasSubstr("CUDA"));
  }
  ExecContext bad{static_cast<Backend>(9)};
  EXPECT_THAT(kernels::MergeStates(bad, m), IsInvalid("unknown backend 9"));
}

INSTANTIATE_TEST_SUITE_P(Backends, KernelValidationTest,
                         ::testing::Values(Backend::kReference, Backend::kCpu),
                         [](const auto& info) { return std::string(BackendName(info.param)); });

}  // namespace
}  // namespace kvc::kernels
