#include "worker/model/tokenizer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <queue>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"

namespace kvc::model {
namespace {

// run.c starts its best score at -1e10 and takes a pair only if its score is
// strictly greater: pairs scoring at or below it (or NaN) never merge.
constexpr float kNoMerge = -1e10f;

bool IsByteFallback(int32_t id) {
  return id >= Tokenizer::kByteFallback && id < Tokenizer::kFirstOrdinary;
}

bool IsContinuationByte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// U+0000..U+00FF in UTF-8: how stories15M's tokenizer.bin spells byte b's
// fallback piece.
std::string ByteAsCharacter(int b) {
  if (b < 0x80) return std::string(1, static_cast<char>(b));
  return {static_cast<char>(0xC0 | (b >> 6)), static_cast<char>(0x80 | (b & 0x3F))};
}

// The whole of `path` into *data. A tokenizer file is under a megabyte.
absl::Status ReadFile(const std::string& path, std::string* data) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(
        absl::StrCat("tokenizer ", path, ": cannot open: ", std::strerror(errno)));
  }
  absl::Status status;
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    status =
        absl::InternalError(absl::StrCat("tokenizer ", path, ": fstat: ", std::strerror(errno)));
  } else if (!S_ISREG(st.st_mode)) {
    status = absl::InvalidArgumentError(absl::StrCat("tokenizer ", path, ": not a regular file"));
  } else {
    data->resize(static_cast<size_t>(st.st_size));
    size_t done = 0;
    while (done < data->size()) {
      const ssize_t n = ::read(fd, data->data() + done, data->size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        status =
            absl::InternalError(absl::StrCat("tokenizer ", path, ": read: ", std::strerror(errno)));
        break;
      }
      if (n == 0) break;  // shrank while being read: parse what is there
      done += static_cast<size_t>(n);
    }
    data->resize(done);
  }
  ::close(fd);
  return status;
}

// Reads fixed-size fields, in host byte order as llama2.c writes them.
class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}
  bool Read(void* out, size_t n) {
    if (data_.size() - pos_ < n) return false;
    std::memcpy(out, data_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  size_t pos() const { return pos_; }
  size_t remaining() const { return data_.size() - pos_; }

 private:
  std::string_view data_;
  size_t pos_ = 0;
};

}  // namespace

absl::StatusOr<Tokenizer> Tokenizer::Load(const std::string& path, int32_t vocab_size) {
  auto error = [&path](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer ", path, ": ", parts...));
  };
  if (vocab_size < kFirstOrdinary) {
    return error("vocab size ", vocab_size, " leaves no room for the ", kFirstOrdinary,
                 " control and byte-fallback tokens");
  }
  std::string data;
  KVC_RETURN_IF_ERROR(ReadFile(path, &data));

  Tokenizer t;
  Reader r(data);
  if (!r.Read(&t.max_token_length_, sizeof(int32_t))) {
    return error("truncated: ", data.size(), " bytes, shorter than the header");
  }
  if (t.max_token_length_ <= 0) return error("max token length ", t.max_token_length_, " <= 0");
  // Each token takes at least 8 bytes: a corrupt vocab_size must not reserve gigabytes.
  const size_t expected = std::min<size_t>(vocab_size, data.size() / 8);
  t.pieces_.reserve(expected);
  t.scores_.reserve(expected);
  for (int32_t id = 0; id < vocab_size; ++id) {
    float score;
    int32_t len;
    if (!r.Read(&score, sizeof(score)) || !r.Read(&len, sizeof(len))) {
      return error("truncated at token ", id, " of ", vocab_size, " (offset ", r.pos(),
                   "): the file is cut short or holds fewer tokens than the vocab size");
    }
    if (len < 0 || len > t.max_token_length_) {
      return error("token ", id, " has length ", len, ", outside [0, max token length ",
                   t.max_token_length_, "]");
    }
    std::string piece(static_cast<size_t>(len), '\0');
    if (!r.Read(piece.data(), piece.size())) {
      return error("truncated in token ", id, " of ", vocab_size, " (offset ", r.pos(), ")");
    }
    t.pieces_.push_back(std::move(piece));
    t.scores_.push_back(score);
  }
  if (r.remaining() != 0) {
    return error(r.remaining(), " bytes after token ", vocab_size - 1,
                 ": the file holds more tokens than the vocab size ", vocab_size);
  }
  for (int b = 0; b < 256; ++b) {
    const std::string& piece = t.pieces_[kByteFallback + b];
    if (piece != ByteAsCharacter(b) && piece != absl::StrFormat("<0x%02X>", b)) {
      return error("token ", kByteFallback + b, " is \"", absl::CEscape(piece),
                   "\", not the byte-fallback piece of byte ", b);
    }
  }
  for (int32_t id = kFirstOrdinary; id < vocab_size; ++id) t.ids_.try_emplace(t.pieces_[id], id);
  t.space_id_ = t.Lookup(" ");
  if (t.space_id_ < 0) return error("no \" \" piece for the dummy prefix");
  return t;
}

int32_t Tokenizer::Lookup(std::string_view s) const {
  auto it = ids_.find(absl::string_view(s.data(), s.size()));
  return it == ids_.end() ? -1 : it->second;
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool bos, bool eos) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() + 3);
  if (!text.empty()) ids.push_back(space_id_);
  // One UTF-8 character at a time, as run.c groups bytes: a byte that is not
  // a continuation byte, then up to three continuation bytes. Invalid UTF-8
  // groups the same way and falls back to bytes.
  for (size_t i = 0; i < text.size();) {
    size_t n = 1;
    while (n < 4 && i + n < text.size() && IsContinuationByte(text[i + n])) ++n;
    const std::string_view ch = text.substr(i, n);
    if (int32_t id = Lookup(ch); id >= 0) {
      ids.push_back(id);
    } else {
      for (char c : ch) ids.push_back(kByteFallback + static_cast<unsigned char>(c));
    }
    i += n;
  }
  Merge(ids);
  if (bos) ids.insert(ids.begin(), kBos);
  if (eos) ids.push_back(kEos);
  return ids;
}

// The symbols are a doubly linked list over the initial positions; a merge
// folds the right symbol into the left one. The queue holds candidate pairs
// with the ids they had when queued; a pair is stale (skipped) once either
// side has changed or gone. Ordering by (score desc, left position asc) picks
// exactly the pair run.c's rescan picks: positions never reorder, so the
// leftmost current pair of the best score has the smallest left position.
void Tokenizer::Merge(std::vector<int32_t>& ids) const {
  const int32_t n = static_cast<int32_t>(ids.size());
  if (n < 2) return;
  struct Symbol {
    int32_t id;  // -1 once merged into its left neighbour
    int32_t prev;
    int32_t next;  // -1 at the ends
  };
  struct Candidate {
    float score;
    int32_t left, right;
    int32_t left_id, right_id, merged_id;
  };
  auto worse = [](const Candidate& a, const Candidate& b) {
    if (a.score != b.score) return a.score < b.score;
    return a.left > b.left;
  };
  std::vector<Symbol> sym(n);
  for (int32_t i = 0; i < n; ++i) sym[i] = {ids[i], i - 1, i + 1 < n ? i + 1 : -1};
  std::vector<Candidate> storage;
  storage.reserve(n);
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(worse)> queue(worse,
                                                                                std::move(storage));
  std::string pair;
  auto offer = [&](int32_t left) {
    if (left < 0) return;
    const int32_t right = sym[left].next;
    if (right < 0 || IsByteFallback(sym[left].id) || IsByteFallback(sym[right].id)) return;
    pair.assign(pieces_[sym[left].id]);
    pair.append(pieces_[sym[right].id]);
    const int32_t merged = Lookup(pair);
    if (merged < 0 || !(scores_[merged] > kNoMerge)) return;
    queue.push({scores_[merged], left, right, sym[left].id, sym[right].id, merged});
  };
  for (int32_t i = 0; i + 1 < n; ++i) offer(i);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& l = sym[c.left];
    Symbol& r = sym[c.right];
    if (l.id != c.left_id || r.id != c.right_id || l.next != c.right) continue;
    l.id = c.merged_id;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = c.left;
    r.id = -1;
    offer(l.prev);
    offer(c.left);
  }
  size_t out = 0;
  for (int32_t i = 0; i >= 0; i = sym[i].next) ids[out++] = sym[i].id;
  ids.resize(out);
}

std::string Tokenizer::Decode(int32_t prev, int32_t token) const {
  if (token < 0 || token >= vocab_size() || token == kBos || token == kEos) return "";
  if (IsByteFallback(token)) {
    return std::string(1, static_cast<char>(token - kByteFallback));
  }
  std::string_view piece = pieces_[token];
  if (prev == kBos && !piece.empty() && piece.front() == ' ') piece.remove_prefix(1);
  return std::string(piece);
}

std::string Tokenizer::DecodeAll(absl::Span<const int32_t> ids) const {
  std::string text;
  int32_t prev = kBos;
  for (int32_t id : ids) {
    text += Decode(prev, id);
    prev = id;
  }
  return text;
}

}  // namespace kvc::model
