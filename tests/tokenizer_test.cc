// The llama2.c tokenizer against the real stories15M tokenizer.bin (fetched
// by scripts/setup.sh), a naive transcription of run.c's encode loop, and
// small synthetic files for the error paths.
#include "worker/model/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tests/temp_dir.h"

namespace kvc::model {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr char kSetupHint[] = "the stories15M files come from scripts/setup.sh: run it first";

std::string ModelFile(const char* name) { return absl::StrCat(KVC_MODEL_DIR, "/", name); }

// The vocab size from model.bin's header (the sixth int32; negative when the
// classifier is not shared).
absl::StatusOr<int32_t> ModelVocabSize() {
  const std::string path = ModelFile("model.bin");
  std::ifstream in(path, std::ios::binary);
  int32_t header[7];
  if (!in.read(reinterpret_cast<char*>(header), sizeof(header))) {
    return absl::NotFoundError(absl::StrCat("cannot read the header of ", path));
  }
  return header[5] < 0 ? -header[5] : header[5];
}

// run.c's encode, transcribed naively: byte groups, string lookups in an
// ordered map, and a rescan of every pair for each merge. BOS takes part in
// the merge scan, as in run.c. Ordinary pieces only (ids >= 259), first id
// for a duplicated piece, and byte-fallback tokens never merge (stories15M's
// file spells them as characters that would otherwise merge).
class NaiveEncoder {
 public:
  explicit NaiveEncoder(const Tokenizer& t) : t_(t) {
    for (int32_t id = Tokenizer::kFirstOrdinary; id < t.vocab_size(); ++id)
      ids_.emplace(t.piece(id), id);
  }

  std::vector<int32_t> Encode(std::string_view text, bool bos, bool eos) const {
    std::vector<int32_t> tokens;
    if (bos) tokens.push_back(1);
    if (!text.empty()) tokens.push_back(Lookup(" "));
    std::string buf;
    for (size_t c = 0; c < text.size(); ++c) {
      if ((static_cast<unsigned char>(text[c]) & 0xC0) != 0x80) buf.clear();
      buf.push_back(text[c]);
      const bool next_continues =
          c + 1 < text.size() && (static_cast<unsigned char>(text[c + 1]) & 0xC0) == 0x80;
      if (next_continues && buf.size() < 4) continue;
      if (int32_t id = Lookup(buf); id != -1) {
        tokens.push_back(id);
      } else {
        for (char b : buf) tokens.push_back(static_cast<unsigned char>(b) + 3);
      }
      buf.clear();
    }
    while (true) {
      float best_score = -1e10f;
      int32_t best_id = -1;
      int best_idx = -1;
      for (int i = 0; i + 1 < static_cast<int>(tokens.size()); ++i) {
        if (IsByte(tokens[i]) || IsByte(tokens[i + 1])) continue;  // the one change to run.c
        const int32_t id = Lookup(t_.piece(tokens[i]) + t_.piece(tokens[i + 1]));
        if (id != -1 && t_.score(id) > best_score) {
          best_score = t_.score(id);
          best_id = id;
          best_idx = i;
        }
      }
      if (best_idx == -1) break;
      tokens[best_idx] = best_id;
      tokens.erase(tokens.begin() + best_idx + 1);
    }
    if (eos) tokens.push_back(2);
    return tokens;
  }

 private:
  static bool IsByte(int32_t id) { return id >= 3 && id < 3 + 256; }
  int32_t Lookup(const std::string& s) const {
    auto it = ids_.find(s);
    return it == ids_.end() ? -1 : it->second;
  }
  const Tokenizer& t_;
  std::map<std::string, int32_t> ids_;
};

// Random text that exercises merges, byte fallback and odd UTF-8: English
// words, runs of spaces, control bytes, 2/3/4-byte characters (some in the
// vocabulary, some not), stray continuation bytes and truncated characters.
std::string RandomText(std::mt19937& rng, int max_parts) {
  static const std::string kParts[] = {
      "the",
      "Once",
      " upon",
      "a",
      " time",
      "little",
      "girl",
      "Lily",
      "played",
      "ing",
      "grabbed",
      "happy",
      "dog",
      ".",
      ",",
      "!",
      "?",
      "'",
      "\"",
      "-",
      "—",
      " ",
      "  ",
      "    ",
      "\n",
      "\n\n",
      "\t",
      "\r\n",
      std::string("\0", 1),
      "\x01",
      "\x1b",
      "\x7f",
      "é",
      "ü",
      "ñ",
      "ï",
      "ß",
      "Ω",
      "ж",
      "镇",
      "語",
      "Ꙋ",
      "🦙",
      "😀",
      "\xe2\x82",
      "\x80",
      "\xbf\xbf\xbf\xbf\xbf",
      "\xff",
      "\xc3",
      "\xf0\x9f",
      "<s>",
      "</s>",
      "<0x41>",
      "<unk>",
      "0123",
      "xyz",
      "Q",
      "ABC",
  };
  std::uniform_int_distribution<int> n_parts(0, max_parts);
  std::uniform_int_distribution<size_t> pick(0, std::size(kParts) - 1);
  std::uniform_int_distribution<int> byte(0, 255);
  std::string s;
  for (int i = n_parts(rng); i > 0; --i) {
    const size_t p = pick(rng);
    if (p % 7 == 0 && byte(rng) < 32) {
      s.push_back(static_cast<char>(byte(rng)));  // any byte at all
    } else {
      s += kParts[p];
    }
  }
  return s;
}

// Writes a tokenizer file: max_token_length, then (score, length, bytes) per
// piece.
void WriteTokenizerFile(const std::string& path, int32_t max_len,
                        const std::vector<std::string>& pieces, const std::vector<float>& scores) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(&max_len), sizeof(max_len));
  for (size_t i = 0; i < pieces.size(); ++i) {
    const int32_t len = static_cast<int32_t>(pieces[i].size());
    out.write(reinterpret_cast<const char*>(&scores[i]), sizeof(float));
    out.write(reinterpret_cast<const char*>(&len), sizeof(len));
    out.write(pieces[i].data(), len);
  }
  ASSERT_TRUE(out.good()) << path;
}

// A small vocabulary over {a, b, " "} whose scores collide a lot (ties are
// where a merge order is easiest to get wrong). Byte pieces spelled "<0xXX>".
struct SyntheticVocab {
  std::vector<std::string> pieces;
  std::vector<float> scores;
};
SyntheticVocab MakeSyntheticVocab(uint32_t seed) {
  SyntheticVocab v;
  auto add = [&v](std::string piece, float score) {
    v.pieces.push_back(std::move(piece));
    v.scores.push_back(score);
  };
  add("<unk>", 0);
  add("\n<s>\n", 0);
  add("\n</s>\n", 0);
  for (int b = 0; b < 256; ++b) add(absl::StrFormat("<0x%02X>", b), 0);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> score(-3, -1);
  std::bernoulli_distribution keep(0.6);
  add(" ", -100);
  add("a", -100);
  add("b", -100);
  add("é", -100);
  // run.c never merges a pair scoring at or below -1e10, or NaN.
  add("aé", -1e11f);
  add("éé", -1e10f);
  add("éa", std::numeric_limits<float>::quiet_NaN());
  add("bé", -1e9f);  // merges, last of all
  const std::string alphabet[] = {"a", "b", " "};
  std::vector<std::string> level = {"a", "b", " "};
  for (int len = 2; len <= 5; ++len) {
    std::vector<std::string> next;
    for (const std::string& s : level) {
      for (const std::string& c : alphabet) {
        if (keep(rng)) {
          add(s + c, static_cast<float>(score(rng)));
          next.push_back(s + c);
        }
      }
    }
    level = std::move(next);
  }
  return v;
}

// The real tokenizer, loaded once for the whole binary.
class RealTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<int32_t> vocab = ModelVocabSize();
    if (!vocab.ok()) {
      load_error_ = new absl::Status(vocab.status());
      return;
    }
    absl::StatusOr<Tokenizer> t = Tokenizer::Load(ModelFile("tokenizer.bin"), *vocab);
    if (!t.ok()) {
      load_error_ = new absl::Status(t.status());
      return;
    }
    tokenizer_ = new Tokenizer(*std::move(t));
    naive_ = new NaiveEncoder(*tokenizer_);
  }
  void SetUp() override {
    if (load_error_ != nullptr) FAIL() << *load_error_ << "\n" << kSetupHint;
  }
  const Tokenizer& tok() const { return *tokenizer_; }
  const NaiveEncoder& naive() const { return *naive_; }

  static Tokenizer* tokenizer_;
  static NaiveEncoder* naive_;
  static absl::Status* load_error_;
};
Tokenizer* RealTokenizerTest::tokenizer_ = nullptr;
NaiveEncoder* RealTokenizerTest::naive_ = nullptr;
absl::Status* RealTokenizerTest::load_error_ = nullptr;

TEST_F(RealTokenizerTest, ShapeOfTheStories15MVocabulary) {
  EXPECT_EQ(tok().vocab_size(), 32000);
  EXPECT_EQ(tok().max_token_length(), 27);
  EXPECT_EQ(tok().piece(Tokenizer::kBos), "\n<s>\n");
  EXPECT_EQ(tok().piece(Tokenizer::kEos), "\n</s>\n");
  EXPECT_EQ(tok().piece(9038), " Once");
}

// Expected ids are the Llama-2 SentencePiece tokenizer's: the test cases of
// llama-tokenizer-js 1.2.2 (checked there against SentencePiece), and strings
// encoded with that package.
TEST_F(RealTokenizerTest, EncodesLikeTheLlama2SentencePieceTokenizer) {
  const struct {
    std::string text;
    std::vector<int32_t> ids;
  } kCases[] = {
      {"Once upon a time", {1, 9038, 2501, 263, 931}},
      {"Hello world", {1, 15043, 3186}},
      {"Once upon a time, there was a little girl named Lily. She loved to play outside in the "
       "sunshine.",
       {1,    9038,  2501, 263,   931, 29892, 727,  471, 263, 2217, 7826, 4257, 365,
        2354, 29889, 2296, 18012, 304, 1708,  5377, 297, 278, 6575, 845,  457,  29889}},
      {"Call me Ishmael. Some years ago—never mind how long precisely—having little or no money",
       {1,   8251, 592, 306,  845,   655,   295,   29889, 3834, 2440, 8020, 30003, 484,
        369, 3458, 920, 1472, 17503, 30003, 29882, 5555,  2217, 470,  694,  6909}},
      {"grabbed", {1, 2646, 1327, 287}},
      {" grabbed", {1, 29871, 2646, 1327, 287}},
      {"           grabbed", {1, 9651, 2646, 1327, 287}},
      {"  two  spaces", {1, 259, 1023, 29871, 8162}},
      {"\n", {1, 29871, 13}},
      {" \n", {1, 259, 13}},
      {"\ttabs\t\t\t\tout here", {1, 29871, 12, 21175, 12, 12, 12, 12, 449, 1244}},
      {"ax\n####\nboo", {1, 4853, 13, 4136, 13, 833, 29877}},  // equal scores merge left first
      {"xéüñ naïve café", {1, 921, 29948, 29993, 30046, 1055, 30085, 345, 274, 28059}},
      {"镇", {1, 29871, 30411}},
      {"🦙", {1, 29871, 243, 162, 169, 156}},  // not in the vocabulary: 4 byte tokens
      {"🦙Ꙋ", {1, 29871, 243, 162, 169, 156, 237, 156, 141}},
      {"Ꙋ🦙", {1, 29871, 237, 156, 141, 243, 162, 169, 156}},
  };
  for (const auto& c : kCases) {
    EXPECT_THAT(tok().Encode(c.text, true, false), ElementsAreArray(c.ids)) << c.text;
    EXPECT_EQ(tok().DecodeAll(c.ids), c.text);
  }
}

TEST_F(RealTokenizerTest, BosEosAndTheDummyPrefix) {
  EXPECT_THAT(tok().Encode("", false, false), ElementsAre());
  EXPECT_THAT(tok().Encode("", true, true), ElementsAre(1, 2));
  EXPECT_THAT(tok().Encode("Once upon a time", false, true), ElementsAre(9038, 2501, 263, 931, 2));
  // After BOS the dummy prefix is dropped; elsewhere the space is text.
  EXPECT_EQ(tok().Decode(Tokenizer::kBos, 9038), "Once");
  EXPECT_EQ(tok().Decode(931, 9038), " Once");
  EXPECT_EQ(tok().Decode(9038, Tokenizer::kBos), "");
  EXPECT_EQ(tok().Decode(9038, Tokenizer::kEos), "");
  EXPECT_EQ(tok().Decode(0, -1), "");
  EXPECT_EQ(tok().Decode(0, 32000), "");
  EXPECT_EQ(tok().DecodeAll({1, 9038, 2501, 2}), "Once upon");
  EXPECT_EQ(tok().DecodeAll({9038, 2501}), "Once upon");  // the first as if after BOS
  // Text that spells a control or byte piece is text, not that token.
  for (const char* text : {"<s>", "</s>", "<unk>", "<0x41>"}) {
    for (int32_t id : tok().Encode(text, false, false))
      EXPECT_GE(id, Tokenizer::kFirstOrdinary) << text;
  }
  EXPECT_THAT(tok().Encode("\n<s>\n", false, false), ::testing::Not(::testing::Contains(1)));
}

TEST_F(RealTokenizerTest, PrintableAsciiNeverFallsBackToBytes) {
  // "!" is both byte token 36 and ordinary piece 29991: text takes the
  // latter, which merges with the dummy prefix (byte tokens never merge).
  EXPECT_THAT(tok().Encode("!", false, false), ElementsAre(1738));
  EXPECT_EQ(tok().piece(1738), " !");
  for (int c = 0x20; c < 0x7f; ++c) {
    const std::string text = absl::StrCat("x", std::string(1, static_cast<char>(c)), "x");
    for (int32_t id : tok().Encode(text, false, false))
      EXPECT_GE(id, Tokenizer::kFirstOrdinary) << text;
  }
}

TEST_F(RealTokenizerTest, ByteFallbackDecodesToTheRawBytes) {
  // Bytes >= 0x80 outside any character, a NUL, control bytes.
  const std::string text("a\xff\x80\x00\x01\x1b z\xc3", 10);
  const std::vector<int32_t> ids = tok().Encode(text, true, true);
  EXPECT_THAT(ids, ::testing::Contains(0xff + 3));
  EXPECT_THAT(ids, ::testing::Contains(0x80 + 3));
  EXPECT_THAT(ids, ::testing::Contains(0x00 + 3));
  EXPECT_EQ(tok().Decode(5, 0xff + 3), "\xff");
  EXPECT_EQ(tok().Decode(5, 3), std::string(1, '\0'));
  EXPECT_EQ(tok().DecodeAll(ids), text);
}

TEST_F(RealTokenizerTest, DecodeInvertsEncode) {
  const std::string kTexts[] = {
      "Once upon a time, there was a little girl named Lily.",
      "  leading and trailing spaces  ",
      " ",
      "\n\nTwo newlines\r\n\tand a tab\x0b\x0c",
      "Grüße aus Köln, naïve café, Ωμέγα, Жук, 日本語のテキスト, 한국어",
      "emoji 🦙😀👍🏽 and ZWJ 👩‍👩‍👧",
      std::string("control \x00\x01\x02\x7f bytes", 21),
      "invalid \xc3\x28 \xa0\xa1 \xe2\x28\xa1 \xf0\x28\x8c\xbc \xff\xfe end",
  };
  for (const std::string& text : kTexts) {
    for (bool bos : {false, true}) {
      for (bool eos : {false, true}) {
        EXPECT_EQ(tok().DecodeAll(tok().Encode(text, bos, eos)), text) << bos << eos;
      }
    }
  }
}

TEST_F(RealTokenizerTest, PriorityQueueMergeEqualsRunCsLoop) {
  std::mt19937 rng(20240601);
  for (int i = 0; i < 3000; ++i) {
    const std::string text = RandomText(rng, 40);
    const bool bos = i % 2 == 0;
    const bool eos = i % 3 == 0;
    const std::vector<int32_t> ids = tok().Encode(text, bos, eos);
    ASSERT_EQ(ids, naive().Encode(text, bos, eos)) << "text: \"" << absl::CEscape(text) << "\"";
    ASSERT_EQ(tok().DecodeAll(ids), text) << "text: \"" << absl::CEscape(text) << "\"";
  }
  // A few long ones (run.c's loop is quadratic: a few thousand bytes).
  for (int i = 0; i < 4; ++i) {
    const std::string text = RandomText(rng, 1000);
    ASSERT_EQ(tok().Encode(text, true, false), naive().Encode(text, true, false));
  }
}

TEST_F(RealTokenizerTest, LongInputRoundTrips) {
  // About 40K tokens: long contexts are what the project is for.
  std::mt19937 rng(7);
  std::string text;
  while (text.size() < 160000) text += RandomText(rng, 40);
  const std::vector<int32_t> ids = tok().Encode(text, true, false);
  EXPECT_GT(ids.size(), 30000u);
  EXPECT_EQ(tok().DecodeAll(ids), text);
}

TEST(SyntheticTokenizerTest, PriorityQueueMergeEqualsNaiveLoopWithManyTies) {
  kvc::testing::TempDir dir;
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    const SyntheticVocab v = MakeSyntheticVocab(seed);
    const std::string path = dir.path() + "/tok.bin";
    WriteTokenizerFile(path, 8, v.pieces, v.scores);
    absl::StatusOr<Tokenizer> t = Tokenizer::Load(path, static_cast<int32_t>(v.pieces.size()));
    ASSERT_TRUE(t.ok()) << t.status();
    const NaiveEncoder naive(*t);
    std::mt19937 rng(seed);
    const char* const kChars[] = {"a", "b", " ", "é", "x", "\xff"};
    std::uniform_int_distribution<int> len(0, 60), pick(0, 5), common(0, 9);
    for (int i = 0; i < 300; ++i) {
      std::string text;
      for (int n = len(rng); n > 0; --n)
        text += kChars[common(rng) < 8 ? pick(rng) % 3 : pick(rng)];
      const std::vector<int32_t> ids = t->Encode(text, true, true);
      ASSERT_EQ(ids, naive.Encode(text, true, true))
          << "seed " << seed << " text \"" << absl::CEscape(text) << "\"";
      ASSERT_EQ(t->DecodeAll(ids), text);
    }
  }
}

// Error paths: each names the file and what is wrong, and nothing crashes.
class TokenizerFileErrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    vocab_ = MakeSyntheticVocab(1);
    path_ = dir_.path() + "/tokenizer.bin";
  }
  int32_t size() const { return static_cast<int32_t>(vocab_.pieces.size()); }
  void Write() { WriteTokenizerFile(path_, max_len_, vocab_.pieces, vocab_.scores); }
  // Load's error, expected to be `code` and to mention the path and `what`.
  void ExpectError(int32_t vocab_size, absl::StatusCode code, const std::string& what) {
    absl::StatusOr<Tokenizer> t = Tokenizer::Load(path_, vocab_size);
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), code) << t.status();
    EXPECT_THAT(t.status().message(), HasSubstr(path_));
    EXPECT_THAT(t.status().message(), HasSubstr(what));
  }
  void Truncate(size_t bytes) {
    std::string data;
    {
      std::ifstream in(path_, std::ios::binary);
      data.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    ASSERT_LE(bytes, data.size());
    std::ofstream(path_, std::ios::binary | std::ios::trunc).write(data.data(), bytes);
  }

  kvc::testing::TempDir dir_;
  SyntheticVocab vocab_;
  std::string path_;
  int32_t max_len_ = 8;
};

TEST_F(TokenizerFileErrorTest, TheWellFormedFileLoads) {
  Write();
  absl::StatusOr<Tokenizer> t = Tokenizer::Load(path_, size());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->vocab_size(), size());
}

TEST_F(TokenizerFileErrorTest, MissingFile) {
  ExpectError(size(), absl::StatusCode::kNotFound, "cannot open");
}

TEST_F(TokenizerFileErrorTest, DirectoryInsteadOfFile) {
  path_ = dir_.path();
  absl::StatusOr<Tokenizer> t = Tokenizer::Load(path_, size());
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr(path_));
}

TEST_F(TokenizerFileErrorTest, EmptyFile) {
  Write();
  Truncate(0);
  ExpectError(size(), absl::StatusCode::kInvalidArgument, "shorter than the header");
}

TEST_F(TokenizerFileErrorTest, TruncatedInAToken) {
  Write();
  for (size_t cut : {6, 11, 4 + 8 + 5 + 3}) {
    Truncate(cut);
    ExpectError(size(), absl::StatusCode::kInvalidArgument, "truncated");
    Write();
  }
}

TEST_F(TokenizerFileErrorTest, TruncatedAtTheEnd) {
  Write();
  std::ifstream in(path_, std::ios::binary | std::ios::ate);
  const size_t bytes = static_cast<size_t>(in.tellg());
  Truncate(bytes - 1);
  ExpectError(size(), absl::StatusCode::kInvalidArgument, absl::StrCat("token ", size() - 1));
}

TEST_F(TokenizerFileErrorTest, VocabSizeMismatch) {
  Write();
  ExpectError(size() + 1, absl::StatusCode::kInvalidArgument, "fewer tokens than the vocab size");
  ExpectError(size() - 1, absl::StatusCode::kInvalidArgument, "more tokens than the vocab size");
  ExpectError(100, absl::StatusCode::kInvalidArgument, "vocab size 100");
  ExpectError(std::numeric_limits<int32_t>::max(), absl::StatusCode::kInvalidArgument,
              "fewer tokens");
}

TEST_F(TokenizerFileErrorTest, NegativeTokenLength) {
  Write();
  // Token 0's length field: after max_token_length and token 0's score.
  std::fstream f(path_, std::ios::binary | std::ios::in | std::ios::out);
  f.seekp(8);
  const int32_t len = -5;
  f.write(reinterpret_cast<const char*>(&len), sizeof(len));
  f.close();
  ExpectError(size(), absl::StatusCode::kInvalidArgument, "token 0 has length -5");
}

TEST_F(TokenizerFileErrorTest, TokenLongerThanTheMaxTokenLength) {
  max_len_ = 5;  // "<unk>" fits, "\n</s>\n" (6 bytes, token 2) does not
  Write();
  ExpectError(size(), absl::StatusCode::kInvalidArgument, "token 2 has length 6");
}

TEST_F(TokenizerFileErrorTest, BadMaxTokenLength) {
  max_len_ = 0;
  Write();
  ExpectError(size(), absl::StatusCode::kInvalidArgument, "max token length 0");
}

TEST_F(TokenizerFileErrorTest, MissingByteFallbackPiece) {
  vocab_.pieces[3 + 0x41] = "A";  // byte 0x42's piece is fine either way
  vocab_.pieces[3 + 0x42] = "<0x43>";
  Write();
  ExpectError(size(), absl::StatusCode::kInvalidArgument, "token 69 is \"<0x43>\"");
}

TEST_F(TokenizerFileErrorTest, NoSpacePieceForTheDummyPrefix) {
  for (std::string& p : vocab_.pieces) {
    if (p == " ") p = "_";
  }
  Write();
  ExpectError(size(), absl::StatusCode::kInvalidArgument, "dummy prefix");
}

}  // namespace
}  // namespace kvc::model
