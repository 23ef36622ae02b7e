// The trained LESS kernels file (worker/cache/less_kernels.h): a round trip
// keeps every field bit for bit, and every malformed file is refused with
// the error naming what is wrong: magic, version, model shape, truncation
// at any byte, trailing bytes, out-of-range fields; and the policy factory
// refuses kernels that do not fit the model or the spec.
#include "worker/cache/less_kernels.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <string>

#include "gtest/gtest.h"
#include "tests/model_test_util.h"
#include "tests/temp_dir.h"
#include "worker/cache/policy_factory.h"

namespace kvc::cache {
namespace {

using kernels::FeatureActivation;
using kernels::FeatureMapWeights;

model::ModelConfig Config() {
  return testing::ModelShape(64, 96, 2, 4, 2, 50);
}

FeatureMapWeights Map(int32_t d, int32_t hidden, int32_t r, FeatureActivation act, float sq,
                      uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, 0.3f);
  FeatureMapWeights w;
  w.in_dim = d;
  w.hidden = hidden;
  w.out_dim = r;
  w.w1.resize(static_cast<size_t>(hidden) * d);
  w.b1.resize(hidden);
  w.w2.resize(static_cast<size_t>(r) * (hidden > 0 ? hidden : d));
  w.b2.resize(r);
  for (auto* v : {&w.w1, &w.b1, &w.w2, &w.b2}) {
    for (float& x : *v) x = n(rng);
  }
  w.activation = act;
  w.sq_norm_coeff = sq;
  return w;
}

// Layer 0: an MLP phi and a linear psi (exp); layer 1: elu + 1 maps.
LessKernels Kernels(const model::ModelConfig& c = Config(), int32_t rank = 8) {
  LessKernels k;
  k.dim = c.dim;
  k.n_layers = c.n_layers;
  k.n_kv_heads = c.n_kv_heads;
  k.head_dim = c.head_dim();
  k.rank = rank;
  const int32_t d = c.head_dim();
  for (int32_t l = 0; l < c.n_layers; ++l) {
    LessKernels::Layer layer;
    layer.phi =
        Map(d, l == 0 ? 8 : 0, rank,
            l == 0 ? FeatureActivation::kExp : FeatureActivation::kEluPlusOne, 0.05f, 10 * l + 1);
    layer.psi = Map(d, l == 0 ? 0 : 4, rank,
                    l == 0 ? FeatureActivation::kExp : FeatureActivation::kEluPlusOne,
                    l == 0 ? 0.1f : 0.0f, 10 * l + 2);
    k.layers.push_back(layer);
  }
  return k;
}

void ExpectSameMap(const FeatureMapWeights& a, const FeatureMapWeights& b) {
  EXPECT_EQ(a.in_dim, b.in_dim);
  EXPECT_EQ(a.hidden, b.hidden);
  EXPECT_EQ(a.out_dim, b.out_dim);
  EXPECT_EQ(a.w1, b.w1);
  EXPECT_EQ(a.b1, b.b1);
  EXPECT_EQ(a.w2, b.w2);
  EXPECT_EQ(a.b2, b.b2);
  EXPECT_EQ(a.activation, b.activation);
  EXPECT_EQ(a.sq_norm_coeff, b.sq_norm_coeff);
}

std::string WriteBytes(const std::string& dir, const std::string& name, const std::string& bytes) {
  const std::string path = dir + "/" + name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

TEST(LessKernelsTest, RoundTripKeepsEveryField) {
  testing::TempDir dir;
  const LessKernels want = Kernels();
  ASSERT_TRUE(want.Validate().ok()) << want.Validate();
  const std::string path = dir.path() + "/k.bin";
  ASSERT_TRUE(WriteLessKernels(want, path).ok());
  absl::StatusOr<LessKernels> got = ReadLessKernels(path);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->dim, want.dim);
  EXPECT_EQ(got->n_layers, want.n_layers);
  EXPECT_EQ(got->n_kv_heads, want.n_kv_heads);
  EXPECT_EQ(got->head_dim, want.head_dim);
  EXPECT_EQ(got->rank, want.rank);
  ASSERT_EQ(got->layers.size(), want.layers.size());
  for (size_t l = 0; l < want.layers.size(); ++l) {
    ExpectSameMap(got->layers[l].phi, want.layers[l].phi);
    ExpectSameMap(got->layers[l].psi, want.layers[l].psi);
  }
  EXPECT_TRUE(got->CheckMatches(Config()).ok());
  EXPECT_EQ(SerializeLessKernels(*got), SerializeLessKernels(want));
}

void ExpectError(const absl::StatusOr<LessKernels>& got, absl::StatusCode code,
                 const std::string& says) {
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), code) << got.status();
  EXPECT_NE(got.status().message().find(says), absl::string_view::npos) << got.status();
}

TEST(LessKernelsTest, RefusesAWrongMagicOrVersion) {
  std::string bytes = SerializeLessKernels(Kernels());
  std::string magic = bytes;
  magic[0] = 'X';
  ExpectError(ParseLessKernels(magic, "f"), absl::StatusCode::kDataLoss, "magic");
  std::string version = bytes;
  const uint32_t v2 = 2;
  std::memcpy(&version[8], &v2, 4);
  ExpectError(ParseLessKernels(version, "f"), absl::StatusCode::kFailedPrecondition, "version 2");
}

TEST(LessKernelsTest, RefusesEveryTruncationAndTrailingBytes) {
  const std::string bytes = SerializeLessKernels(Kernels());
  for (size_t n = 0; n < bytes.size(); ++n) {
    SCOPED_TRACE(n);
    ExpectError(ParseLessKernels(bytes.substr(0, n), "f"), absl::StatusCode::kDataLoss,
                "truncated");
  }
  ExpectError(ParseLessKernels(bytes + "x", "f"), absl::StatusCode::kDataLoss, "1 bytes after");
}

TEST(LessKernelsTest, RefusesFieldsOutOfRange) {
  const std::string bytes = SerializeLessKernels(Kernels());
  auto patched = [&](size_t offset, const void* value) {
    std::string b = bytes;
    std::memcpy(&b[offset], value, 4);
    return b;
  };
  const int32_t zero = 0, huge_hidden = 5000, activation = 7, negative = -1;
  const float nan = std::numeric_limits<float>::quiet_NaN(), negative_f = -1.0f;
  // Header: magic 8, version 4, then dim, n_layers, n_kv_heads, head_dim, rank.
  ExpectError(ParseLessKernels(patched(12 + 4 * 4, &zero), "f"), absl::StatusCode::kInvalidArgument,
              "rank=0");
  ExpectError(ParseLessKernels(patched(12 + 4 * 1, &negative), "f"),
              absl::StatusCode::kInvalidArgument, "n_layers=-1");
  // Layer 0's phi starts after the 32-byte header: hidden, activation, sq_norm_coeff.
  ExpectError(ParseLessKernels(patched(32, &huge_hidden), "f"), absl::StatusCode::kInvalidArgument,
              "layer 0 phi hidden 5000");
  ExpectError(ParseLessKernels(patched(36, &activation), "f"), absl::StatusCode::kInvalidArgument,
              "layer 0 phi activation 7");
  ExpectError(ParseLessKernels(patched(40, &negative_f), "f"), absl::StatusCode::kInvalidArgument,
              "sq_norm_coeff");
  ExpectError(ParseLessKernels(patched(44, &nan), "f"), absl::StatusCode::kInvalidArgument,
              "not finite");
  ExpectError(ReadLessKernels("/nonexistent/k.bin"), absl::StatusCode::kNotFound,
              "/nonexistent/k.bin");
}

TEST(LessKernelsTest, RefusesKernelsOfAnotherModelShape) {
  model::ModelConfig other = Config();
  other.n_layers = 3;
  const absl::Status s = Kernels().CheckMatches(other);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("n_layers=2"), absl::string_view::npos) << s;

  // Through the policy factory: a file of another shape, a rank the file
  // does not have, and the fixed map's keys beside kernels.
  testing::TempDir dir;
  model::ModelConfig wide = Config();
  wide.dim = 128;  // head_dim 32
  const std::string good = dir.path() + "/good.bin", bad = dir.path() + "/bad.bin";
  ASSERT_TRUE(WriteLessKernels(Kernels(), good).ok());
  ASSERT_TRUE(WriteLessKernels(Kernels(wide), bad).ok());
  EXPECT_TRUE(MakePolicy(Config(), "less:inner=cascading,budget=16,kernels=" + good).ok());
  auto wrong_shape = MakePolicy(Config(), "less:inner=cascading,budget=16,kernels=" + bad);
  ASSERT_FALSE(wrong_shape.ok());
  EXPECT_NE(wrong_shape.status().message().find("head_dim=32"), absl::string_view::npos)
      << wrong_shape.status();
  auto wrong_rank = MakePolicy(Config(), "less:inner=cascading,budget=16,rank=4,kernels=" + good);
  ASSERT_FALSE(wrong_rank.ok());
  EXPECT_NE(wrong_rank.status().message().find("rank 8"), absl::string_view::npos)
      << wrong_rank.status();
  EXPECT_FALSE(MakePolicy(Config(), "less:inner=cascading,budget=16,map=exp,kernels=" + good).ok());
  auto missing =
      MakePolicy(Config(), "less:inner=cascading,budget=16,kernels=" + dir.path() + "/none.bin");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound) << missing.status();
  // A file that is not a kernels file.
  const std::string text = WriteBytes(dir.path(), "text.bin", "hello, world");
  EXPECT_EQ(MakePolicy(Config(), "less:inner=cascading,kernels=" + text).status().code(),
            absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace kvc::cache
