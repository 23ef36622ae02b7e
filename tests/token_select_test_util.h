// Shared by the TokenSelect tests: the paths under test, keys stored in a
// pool (contiguous or paged and shuffled), one problem's arguments, and the
// brute-force fp64 oracle. See kernels_token_select_test.cc for the
// tolerances.
#ifndef KVC_TESTS_TOKEN_SELECT_TEST_UTIL_H_
#define KVC_TESTS_TOKEN_SELECT_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/internal/backend.h"
#include "kernels/token_select.h"
#include "tests/kernel_test_util.h"

namespace kvc::kernels::testing {

// fp32 logits and exp against fp64, see the file comment.
constexpr double kScoreTol = 2e-6;

// One implementation under test: a backend table called directly (already
// valid arguments), or the public API for Backend::kCpu.
struct Path {
  std::string name;
  const internal::KernelTable* table;  // nullptr: public API
  ExecContext ctx;

  absl::Status Select(const TokenSelectArgs& a) const {
    return table != nullptr ? table->token_select(ctx, a) : TokenSelect(ctx, a);
  }
  absl::Status Lse(const TokenSelectArgs& a, float* lse) const {
    return table != nullptr ? table->token_select_lse(ctx, a, lse) : TokenSelectLse(ctx, a, lse);
  }
  absl::Status Fingerprint(const FingerprintArgs& a) const {
    return table != nullptr ? table->fingerprint(ctx, a) : QueryFingerprint(ctx, a);
  }
};

inline std::vector<Path> AllPaths() {
  std::vector<Path> paths = {{"reference", &internal::ReferenceKernels(), {Backend::kReference}}};
  for (const auto& v : testing::CpuVariants()) paths.push_back({v.name, v.table, {Backend::kCpu}});
  paths.push_back({"cpu-public-api", nullptr, {Backend::kCpu}});
  return paths;
}

// Keys of n candidates, [n][hkv][dim] in candidate order, stored in a pool:
// contiguous (page_size 0 here), or pages of `page_size` in `layout` with the
// candidates at shuffled slots and every other slot holding large garbage.
struct Keys {
  int64_t n;
  int32_t hkv, dim;
  DType dtype;
  std::vector<float> dense;  // what the kernels see (after the dtype round trip)
  std::vector<uint8_t> bytes;
  std::vector<int32_t> slots;  // candidate -> slot
  KvLayout layout = KvLayout::kNHD;
  int32_t page_size = 1;

  KvPool Pool() const {
    const int64_t num_slots = static_cast<int64_t>(bytes.size() / DTypeSize(dtype)) / (hkv * dim);
    return {bytes.data(), nullptr, dtype, layout, num_slots / page_size, page_size, hkv, dim};
  }
};

inline Keys MakeKeys(const std::vector<float>& values, DType dtype, int64_t n, int32_t hkv, int32_t dim,
              KvLayout layout, int32_t page_size, uint64_t seed) {
  Keys k;
  k.n = n;
  k.hkv = hkv;
  k.dim = dim;
  k.dtype = dtype;
  k.dense = testing::RoundTrip(dtype, values);
  k.layout = layout;
  k.page_size = page_size;
  const int64_t num_slots = (n / page_size + 2) * page_size;  // spare pages
  std::vector<float> stored(static_cast<size_t>(num_slots) * hkv * dim, 1e4f);
  k.slots.resize(num_slots);
  std::iota(k.slots.begin(), k.slots.end(), 0);
  if (page_size > 1) std::shuffle(k.slots.begin(), k.slots.end(), std::mt19937_64(seed));
  k.slots.resize(n);
  const KvPool shape{nullptr, nullptr, dtype, layout, num_slots / page_size, page_size, hkv, dim};
  for (int64_t t = 0; t < n; ++t) {
    for (int32_t h = 0; h < hkv; ++h) {
      std::copy_n(values.begin() + (t * hkv + h) * dim, dim,
                  stored.begin() + shape.Offset(k.slots[t], h));
    }
  }
  k.bytes = testing::Encode(dtype, stored);
  return k;
}
inline Keys ContiguousKeys(const std::vector<float>& values, DType dtype, int64_t n, int32_t hkv,
                    int32_t dim) {
  return MakeKeys(values, dtype, n, hkv, dim, KvLayout::kNHD, 1, 0);
}

// One TokenSelect problem; Args() points into it.
struct Problem {
  int32_t hq;
  const Keys* keys;
  std::vector<float> qbar;
  int64_t begin = 0, end = -1, k = 1;
  int32_t pool_kernel = 0;
  bool use_slots = true;  // pass keys->slots as the candidate list

  int64_t End() const { return end < 0 ? keys->n : end; }
  TokenSelectArgs Args() const {
    TokenSelectArgs a;
    a.qbar = qbar.data();
    a.num_q_heads = hq;
    a.pool = keys->Pool();
    a.candidates = use_slots ? keys->slots.data() : nullptr;
    a.num_candidates = keys->n;
    a.select_begin = begin;
    a.select_end = end;
    a.pool_kernel = pool_kernel;
    a.k = k;
    return a;
  }
};

struct Selection {
  std::vector<int32_t> selected;
  std::vector<float> selected_scores, scores;
};

inline Selection RunSelect(const Path& path, const Problem& p, const float* global_lse = nullptr) {
  Selection s{std::vector<int32_t>(p.k), std::vector<float>(p.k), std::vector<float>(p.keys->n)};
  TokenSelectArgs a = p.Args();
  a.global_lse = global_lse;
  a.selected = s.selected.data();
  a.selected_scores = s.selected_scores.data();
  a.scores = s.scores.data();
  const absl::Status st = path.Select(a);
  EXPECT_TRUE(st.ok()) << path.name << ": " << st;
  return s;
}

// The oracle, in fp64: pooled scores of every candidate and the selection.
struct Expected {
  std::vector<int32_t> selected;
  std::vector<float> pooled;
};
inline Expected BruteForce(const Problem& p) {
  const Keys& keys = *p.keys;
  const int64_t n = keys.n, b = p.begin, e = p.End();
  const int32_t g = p.hq / keys.hkv, r = p.pool_kernel > 1 ? p.pool_kernel / 2 : 0;
  std::vector<double> score(n, 0.0);
  for (int32_t h = 0; h < p.hq; ++h) {
    std::vector<double> logit(n);
    for (int64_t t = 0; t < n; ++t) {
      double dot = 0;
      for (int32_t i = 0; i < keys.dim; ++i) {
        dot += static_cast<double>(p.qbar[h * keys.dim + i]) *
               keys.dense[(t * keys.hkv + h / g) * keys.dim + i];
      }
      logit[t] = dot / std::sqrt(static_cast<double>(keys.dim));
    }
    const double m = *std::max_element(logit.begin() + b, logit.begin() + e);
    double sum = 0;
    for (int64_t t = b; t < e; ++t) sum += std::exp(logit[t] - m);
    for (int64_t t = 0; t < n; ++t) score[t] += std::exp(logit[t] - m) / sum;
  }
  std::vector<double> pooled(n);
  for (int64_t t = 0; t < n; ++t) {
    pooled[t] = score[t];
    for (int64_t u = std::max<int64_t>(0, t - r); u <= std::min<int64_t>(n - 1, t + r); ++u) {
      pooled[t] = std::max(pooled[t], score[u]);
    }
  }
  std::vector<int32_t> order(e - b);
  std::iota(order.begin(), order.end(), static_cast<int32_t>(b));
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t x, int32_t y) { return pooled[x] > pooled[y]; });
  order.resize(p.k);
  std::sort(order.begin(), order.end());
  return {order, std::vector<float>(pooled.begin(), pooled.end())};
}

inline std::vector<int32_t> Range(int64_t begin, int64_t end) {
  std::vector<int32_t> x(end - begin);
  std::iota(x.begin(), x.end(), static_cast<int32_t>(begin));
  return x;
}

// A key row that every query head of `qbar` scores highly: the sum of the
// group's fingerprints, scaled.
inline void SetStrongKey(const std::vector<float>& qbar, int32_t hq, int32_t hkv, int32_t dim, int64_t t,
                  float gain, std::vector<float>* values) {
  const int32_t g = hq / hkv;
  for (int32_t kv = 0; kv < hkv; ++kv) {
    for (int32_t i = 0; i < dim; ++i) {
      float s = 0;
      for (int32_t j = 0; j < g; ++j) s += qbar[(kv * g + j) * dim + i];
      (*values)[(t * hkv + kv) * dim + i] = gain * s;
    }
  }
}

}  // namespace kvc::kernels::testing

#endif  // KVC_TESTS_TOKEN_SELECT_TEST_UTIL_H_
