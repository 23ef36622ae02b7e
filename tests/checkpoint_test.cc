// The llama2.c checkpoint loader: a random model round-trips through Save
// and Load; every malformed file is a clear error naming the file.
#include "worker/model/checkpoint.h"

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/model_test_util.h"
#include "tests/temp_dir.h"

namespace kvc::model {
namespace {

using testing::TempDir;

ModelConfig SmallConfig() {
  return testing::ModelShape(64, 96, 2, 4, 2, 50, 32);
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

TEST(CheckpointTest, RandomModelRoundTripsThroughAFile) {
  for (const bool shared : {true, false}) {
    ModelConfig c = SmallConfig();
    c.shared_classifier = shared;
    auto random = Checkpoint::Random(c, 7);
    ASSERT_TRUE(random.ok()) << random.status();
    TempDir dir;
    const std::string path = dir.path() + "/model.bin";
    ASSERT_TRUE((*random)->Save(path).ok());
    EXPECT_EQ(ReadAll(path).size(), c.FileBytes());
    auto loaded = Checkpoint::Load(path);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    const Checkpoint& a = **random;
    const Checkpoint& b = **loaded;
    EXPECT_EQ(b.config().ToString(), c.ToString());
    EXPECT_EQ(b.config().shared_classifier, shared);
    EXPECT_EQ(std::vector<float>(a.tok_emb(), a.tok_emb() + c.vocab_size * c.dim),
              std::vector<float>(b.tok_emb(), b.tok_emb() + c.vocab_size * c.dim));
    EXPECT_EQ(std::vector<float>(a.layer(1).w2, a.layer(1).w2 + c.dim * c.hidden_dim),
              std::vector<float>(b.layer(1).w2, b.layer(1).w2 + c.dim * c.hidden_dim));
    EXPECT_EQ(std::vector<float>(a.classifier(), a.classifier() + c.vocab_size * c.dim),
              std::vector<float>(b.classifier(), b.classifier() + c.vocab_size * c.dim));
    EXPECT_EQ(b.classifier() == b.tok_emb(), shared);
  }
}

TEST(CheckpointTest, MalformedFilesAreClearErrors) {
  TempDir dir;
  const std::string good = dir.path() + "/good.bin";
  ASSERT_TRUE((*Checkpoint::Random(SmallConfig(), 1))->Save(good).ok());
  const std::string bytes = ReadAll(good);
  struct Case {
    std::string name, contents, want;
  };
  std::string bad_heads = bytes;
  const int32_t five = 5;  // n_heads 5 does not divide dim 64
  bad_heads.replace(12, 4, reinterpret_cast<const char*>(&five), 4);
  const std::vector<Case> cases = {
      {"empty", "", "shorter than the 28-byte header"},
      {"header-only", bytes.substr(0, 20), "shorter than the 28-byte header"},
      {"truncated", bytes.substr(0, bytes.size() - 4), "(truncated)"},
      {"trailing", bytes + "xx", "(trailing bytes)"},
      {"bad-heads", bad_heads, "n_heads = 5"},
  };
  for (const Case& c : cases) {
    const std::string path = dir.path() + "/" + c.name + ".bin";
    WriteAll(path, c.contents);
    auto got = Checkpoint::Load(path);
    ASSERT_FALSE(got.ok()) << c.name;
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_NE(got.status().message().find(c.want), std::string::npos) << c.name << ": " << got.status();
    EXPECT_NE(got.status().message().find(path), std::string::npos) << c.name << ": " << got.status();
  }
  auto missing = Checkpoint::Load(dir.path() + "/nope.bin");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("nope.bin"), std::string::npos);
}

TEST(CheckpointTest, ConfigValidationNamesTheField) {
  ModelConfig c = SmallConfig();
  c.n_kv_heads = 3;
  EXPECT_NE(c.Validate().message().find("n_kv_heads"), std::string::npos);
  c = SmallConfig();
  c.dim = 60;  // head_dim 15: odd
  EXPECT_NE(c.Validate().message().find("head_dim"), std::string::npos);
  EXPECT_FALSE(Checkpoint::Random(c, 1).ok());
}

}  // namespace
}  // namespace kvc::model
