// The llama2.c BPE tokenizer (the Llama-2 SentencePiece vocabulary with its
// scores), as the stories15M model uses it.
//
// File format (llama2.c `run.c`): int32 max_token_length, then for each of
// vocab_size tokens a float32 score, an int32 length and that many bytes (the
// piece, SentencePiece's "▁" already replaced by " "). The vocab size is not
// in the file: it comes from the model header. Ids 0..2 are <unk>, BOS and
// EOS (pieces "<unk>", "\n<s>\n", "\n</s>\n" in stories15M's file); ids
// 3..258 are the byte-fallback tokens, byte b is id b + 3. Their pieces are
// the byte as a character (U+0000..U+00FF in UTF-8) in stories15M's file and
// "<0xXX>" in other exports; Load accepts either.
//
// Encode and Decode follow run.c `encode` / `decode`, with deliberate
// differences, all as SentencePiece behaves:
//  - the control and byte-fallback pieces (ids 0..258) never match text, so
//    "!" is always the ordinary piece 29991, never byte token 36 with the
//    same piece (run.c's binary search may return either);
//  - byte-fallback tokens never merge (with "<0xXX>" pieces they cannot; with
//    stories15M's character pieces run.c would merge byte 0xBF, piece "¿",
//    into " ¿", and decoding would no longer give the input back);
//  - a byte-fallback token decodes to its byte by id (run.c parses "<0xXX>"
//    and so returns a 2-byte character for bytes >= 0x80 of stories15M's file);
//  - BOS is not a merge candidate (no ordinary piece begins with BOS's piece,
//    so this changes nothing).
// The merge loop is a priority queue, O(n log n) instead of run.c's O(n^2)
// rescans, with the same result (tests/tokenizer_test.cc compares the two).
//
// Thread safety: immutable after Load; every const method may be called
// concurrently.
#ifndef KVC_WORKER_MODEL_TOKENIZER_H_
#define KVC_WORKER_MODEL_TOKENIZER_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace kvc::model {

class Tokenizer {
 public:
  static constexpr int32_t kUnk = 0;
  static constexpr int32_t kBos = 1;
  static constexpr int32_t kEos = 2;
  // Byte b is token kByteFallback + b.
  static constexpr int32_t kByteFallback = 3;
  static constexpr int32_t kFirstOrdinary = kByteFallback + 256;

  // Reads a tokenizer.bin of `vocab_size` tokens (the model header's).
  // Errors name the file and what is wrong: NotFound when it cannot be
  // opened; InvalidArgument when it is truncated, has bytes after the last
  // token (a vocab size mismatch), has a token length that is negative or
  // above the max token length, lacks the byte-fallback pieces at 3..258 or
  // the " " piece, or when vocab_size <= 258.
  static absl::StatusOr<Tokenizer> Load(const std::string& path, int32_t vocab_size);

  // The ids of `text` (any bytes; not necessarily valid UTF-8): BOS if `bos`,
  // the dummy-prefix " " when text is non-empty, each UTF-8 character's
  // piece or its bytes as byte-fallback ids, merged greedily by score
  // (highest first, ties to the leftmost pair), then EOS if `eos`.
  std::vector<int32_t> Encode(std::string_view text, bool bos, bool eos) const;

  // The text of `token` following `prev` (run.c `decode`): after BOS the
  // piece's leading space (the dummy prefix) is dropped; a byte-fallback
  // token is its raw byte. BOS, EOS and ids out of range are empty.
  std::string Decode(int32_t prev, int32_t token) const;

  // The text of a whole sequence: each token decoded after its predecessor,
  // the first as if after BOS, so DecodeAll(Encode(x, bos, eos)) == x for
  // every byte string x.
  std::string DecodeAll(absl::Span<const int32_t> ids) const;

  int32_t vocab_size() const { return static_cast<int32_t>(pieces_.size()); }
  int32_t max_token_length() const { return max_token_length_; }
  // REQUIRES: 0 <= id < vocab_size().
  const std::string& piece(int32_t id) const { return pieces_[id]; }
  float score(int32_t id) const { return scores_[id]; }

 private:
  Tokenizer() = default;

  // The id of ordinary piece `s`, or -1.
  int32_t Lookup(std::string_view s) const;
  // Merges adjacent tokens of `ids` in place, as described at Encode.
  void Merge(std::vector<int32_t>& ids) const;

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  // Ordinary pieces (ids >= kFirstOrdinary); a duplicated piece maps to its
  // first id.
  absl::flat_hash_map<std::string, int32_t> ids_;
  int32_t max_token_length_ = 0;
  int32_t space_id_ = -1;  // the dummy prefix " "
};

}  // namespace kvc::model

#endif  // KVC_WORKER_MODEL_TOKENIZER_H_
