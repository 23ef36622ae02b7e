#include "worker/kv/placement.h"

#include <algorithm>
#include <numeric>

namespace kvc {
namespace {

void AppendU64(uint64_t v, std::string* out) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

}  // namespace

Placement::Placement(std::vector<std::string> members) : members_(std::move(members)) {
  std::sort(members_.begin(), members_.end());
  members_.erase(std::unique(members_.begin(), members_.end()), members_.end());
  seeds_.reserve(members_.size());
  for (const std::string& m : members_) seeds_.push_back(Hash64(m, /*seed=*/0x6b7663706c616365ull));
}

uint64_t Placement::BlockId(absl::string_view tenant, absl::string_view model, const Hash128& hash) {
  // Little-endian lengths and hash words: the same bytes on every machine.
  std::string bytes;
  bytes.reserve(32 + tenant.size() + model.size());
  AppendU64(tenant.size(), &bytes);
  bytes.append(tenant.data(), tenant.size());
  AppendU64(model.size(), &bytes);
  bytes.append(model.data(), model.size());
  AppendU64(hash.hi, &bytes);
  AppendU64(hash.lo, &bytes);
  return Hash64(bytes);
}

uint64_t Placement::Score(uint64_t id, size_t member) const {
  char bytes[16];
  for (int i = 0; i < 8; ++i) {
    bytes[i] = static_cast<char>((id >> (8 * i)) & 0xff);
    bytes[8 + i] = static_cast<char>((seeds_[member] >> (8 * i)) & 0xff);
  }
  return Hash64(absl::string_view(bytes, sizeof(bytes)));
}

std::vector<int> Placement::Rank(uint64_t id, size_t k) const {
  const size_t n = members_.size();
  k = std::min(k, n);
  std::vector<uint64_t> scores(n);
  for (size_t m = 0; m < n; ++m) scores[m] = Score(id, m);
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  // Equal scores (astronomically rare) fall back to the name order.
  std::partial_sort(order.begin(), order.begin() + static_cast<ptrdiff_t>(k), order.end(),
                    [&](int a, int b) { return scores[a] != scores[b] ? scores[a] > scores[b] : a < b; });
  order.resize(k);
  return order;
}

int Placement::First(uint64_t id) const {
  int best = -1;
  uint64_t best_score = 0;
  for (size_t m = 0; m < members_.size(); ++m) {
    const uint64_t s = Score(id, m);
    if (best < 0 || s > best_score) {
      best = static_cast<int>(m);
      best_score = s;
    }
  }
  return best;
}

}  // namespace kvc
