#include "kernels/token_select.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/status_macros.h"
#include "kernels/internal/backend.h"
#include "kernels/internal/validate.h"

namespace kvc::kernels {

size_t TokenSelectWorkspaceBytes(int64_t num_candidates, int32_t num_q_heads) {
  // Per-head logits, scores, pooled scores and a selection flag per
  // candidate, plus fixed space for the radix-select histograms.
  const size_t n = static_cast<size_t>(std::max<int64_t>(num_candidates, 0));
  return (static_cast<size_t>(std::max(num_q_heads, 0)) + 4) * n * sizeof(float) + (1u << 20);
}

absl::Status QueryFingerprint(const ExecContext& ctx, const FingerprintArgs& args) {
  KVC_ASSIGN_OR_RETURN(const internal::KernelTable* table, internal::KernelsFor(ctx));
  KVC_RETURN_IF_ERROR(internal::ValidateFingerprint(args));
  return table->fingerprint(ctx, args);
}

absl::Status TokenSelect(const ExecContext& ctx, const TokenSelectArgs& args) {
  KVC_ASSIGN_OR_RETURN(const internal::KernelTable* table, internal::KernelsFor(ctx));
  KVC_RETURN_IF_ERROR(internal::ValidateTokenSelect(args, ctx.backend, /*for_lse=*/false));
  return table->token_select(ctx, args);
}

absl::Status TokenSelectLse(const ExecContext& ctx, const TokenSelectArgs& args, float* lse_out) {
  KVC_ASSIGN_OR_RETURN(const internal::KernelTable* table, internal::KernelsFor(ctx));
  KVC_RETURN_IF_ERROR(internal::ValidateTokenSelect(args, ctx.backend, /*for_lse=*/true));
  if (lse_out == nullptr) return absl::InvalidArgumentError("TokenSelectLse: lse_out is null");
  return table->token_select_lse(ctx, args, lse_out);
}

void CombineLse(absl::Span<const float> shard_lse, int32_t num_heads, float* global_lse) {
  const size_t shards = num_heads > 0 ? shard_lse.size() / num_heads : 0;
  for (int32_t h = 0; h < num_heads; ++h) {
    double m = -std::numeric_limits<double>::infinity();
    for (size_t s = 0; s < shards; ++s) m = std::max<double>(m, shard_lse[s * num_heads + h]);
    if (std::isinf(m) && m < 0) {
      global_lse[h] = -std::numeric_limits<float>::infinity();
      continue;
    }
    double sum = 0;
    for (size_t s = 0; s < shards; ++s) sum += std::exp(static_cast<double>(shard_lse[s * num_heads + h]) - m);
    global_lse[h] = static_cast<float>(m + std::log(sum));
  }
}

CandidateSet MergeTopK(absl::Span<const CandidateSet> shards, int64_t k) {
  struct Entry {
    float score;
    int64_t index;
  };
  std::vector<Entry> all;
  for (const CandidateSet& s : shards) {
    for (size_t i = 0; i < s.index.size(); ++i) all.push_back({s.score[i], s.index[i]});
  }
  const auto better = [](const Entry& a, const Entry& b) {
    return a.score != b.score ? a.score > b.score : a.index < b.index;
  };
  k = std::min<int64_t>(k, static_cast<int64_t>(all.size()));
  std::partial_sort(all.begin(), all.begin() + k, all.end(), better);
  all.resize(k);
  std::sort(all.begin(), all.end(), [](const Entry& a, const Entry& b) { return a.index < b.index; });
  CandidateSet out;
  out.index.reserve(k);
  out.score.reserve(k);
  for (const Entry& e : all) {
    out.index.push_back(e.index);
    out.score.push_back(e.score);
  }
  return out;
}

bool SelectionCache::ShouldReuse(absl::Span<const float> qbar) const {
  if (!valid_ || theta_ >= 1.0f || qbar.size() != qbar_.size()) return false;
  if (theta_ <= -1.0f) return true;
  double dot = 0, a = 0, b = 0;
  for (size_t i = 0; i < qbar.size(); ++i) {
    dot += static_cast<double>(qbar[i]) * qbar_[i];
    a += static_cast<double>(qbar[i]) * qbar[i];
    b += static_cast<double>(qbar_[i]) * qbar_[i];
  }
  if (a == 0 || b == 0) return false;
  const double cosine = std::clamp(dot / std::sqrt(a * b), -1.0, 1.0);
  return cosine >= theta_;
}

void SelectionCache::Store(absl::Span<const float> qbar, std::vector<int32_t> selection) {
  qbar_.assign(qbar.begin(), qbar.end());
  selection_ = std::move(selection);
  valid_ = true;
}

void SelectionCache::Clear() {
  valid_ = false;
  qbar_.clear();
  selection_.clear();
}

}  // namespace kvc::kernels
