// TokenSelect (kernel 4): per-head soft-vote scoring of candidate keys
// against a query fingerprint, optional 1-D max pooling, and top-k with a
// fixed tie rule, in a single-pool form and in the exact two-phase form used
// across shards.
//
// score(t) = sum over query heads h of exp(logit_h(t) - lse_h), where
// logit_h(t) = scale * qbar_h . k_{t, h/g} with un-rotated pool keys, and
// lse_h = log sum_t exp(logit_h(t)) over the eligible candidates (or given).
// Each head contributes one unit of probability mass, so a head with large
// logits cannot dominate and adding a constant to one head's logits changes
// nothing. Pooling: pooled(t) = max of score(u) over candidates u with
// |u - t| <= pool_kernel / 2 (within the candidate list). Selection: the k
// eligible candidates with the highest pooled score; equal scores go to the
// lower candidate position; the result is sorted by position.
//
// Sharding: every shard computes TokenSelectLse over its own eligible
// candidates, CombineLse gives the global lse, every shard runs TokenSelect
// with that global lse (passing pool_kernel / 2 halo candidates on each side
// of its eligible range when pooling), and MergeTopK merges the shards'
// selections. The selection equals the single-pool selection: lse is
// accumulated in fp64 and a candidate's logit does not depend on which shard
// or thread computes it. Scores may differ from the single-pool ones by one
// fp32 rounding of the combined lse.
#ifndef KVC_KERNELS_TOKEN_SELECT_H_
#define KVC_KERNELS_TOKEN_SELECT_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/types.h"

namespace kvc::kernels {

// qbar[h] = mean over the chunk's queries i of rope(q[i][h], base_position + i)
// (TokenSelect rotates the chunk to a fixed position, n_local + i).
struct FingerprintArgs {
  const float* q = nullptr;  // [num_q][Hq][D], before RoPE
  int64_t num_q = 0;         // >= 1
  int32_t num_q_heads = 0;
  int32_t head_dim = 0;
  Rope rope;
  int32_t base_position = 0;
  float* qbar = nullptr;  // [Hq][D]
};
absl::Status QueryFingerprint(const ExecContext& ctx, const FingerprintArgs& args);

struct TokenSelectArgs {
  const float* qbar = nullptr;  // [Hq][D], already rotated
  int32_t num_q_heads = 0;
  KvPool pool;  // keys only; `v` is not read
  // [num_candidates] pool slots in token order; nullptr = slots
  // [0, num_candidates). Positions below are indices into this list.
  const int32_t* candidates = nullptr;
  int64_t num_candidates = 0;
  // Eligible range [select_begin, select_end) of candidate positions;
  // select_end = -1 means num_candidates. Candidates outside it are halo:
  // scored and pooled over, never selected, not part of the lse.
  int64_t select_begin = 0;
  int64_t select_end = -1;
  float scale = 0.0f;  // 0 = 1/sqrt(D)
  int32_t pool_kernel = 0;  // 0 or 1 = no pooling; otherwise odd
  // [Hq] global normaliser (two-phase form); nullptr = lse over the eligible
  // candidates of this call.
  const float* global_lse = nullptr;
  int64_t k = 0;  // 1 <= k <= eligible candidates

  int32_t* selected = nullptr;       // [k] candidate positions, ascending
  float* selected_scores = nullptr;  // [k], optional: pooled score of each
  float* scores = nullptr;           // [num_candidates], optional: every pooled score
  // Scratch of at least TokenSelectWorkspaceBytes() (device memory on
  // CUDA, where it is required, also by TokenSelectLse). The CPU path keeps
  // its per-head logits here when given; without one it keeps them in a
  // scratch of the calling thread, reused between calls, up to 64 MiB
  // (Hq x candidates x 4 bytes: 128K candidates at 32 heads is 16 MiB), and
  // beyond that scans the keys twice. A given workspace that is too small is
  // an InvalidArgument on every backend.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};
size_t TokenSelectWorkspaceBytes(int64_t num_candidates, int32_t num_q_heads);
absl::Status TokenSelect(const ExecContext& ctx, const TokenSelectArgs& args);

// Phase one of the sharded form: lse_out[h] over the eligible candidates
// (k, pooling and outputs of `args` are ignored). -inf when none.
absl::Status TokenSelectLse(const ExecContext& ctx, const TokenSelectArgs& args,
                            float* lse_out /* [Hq] */);

// Host helpers of the sharded form (plain CPU, any backend's results).
// global[h] = log sum over shards s of exp(shard_lse[s * num_heads + h]), in fp64.
void CombineLse(absl::Span<const float> shard_lse, int32_t num_heads, float* global_lse);

// One shard's selection in global terms: global candidate index and score.
struct CandidateSet {
  std::vector<int64_t> index;  // ascending
  std::vector<float> score;
};
// The k best of the union (higher score first; equal scores: lower global
// index), sorted by index. Exact when every shard offered its own top-k.
CandidateSet MergeTopK(absl::Span<const CandidateSet> shards, int64_t k);

// TokenSelect's selection cache: reuse the previous selection while the
// cosine similarity of the flattened fingerprint with the one it was chosen
// for is >= theta. theta >= 1 reselects every step; theta <= -1 always
// reuses once a selection exists. Not thread-safe.
class SelectionCache {
 public:
  explicit SelectionCache(float theta) : theta_(theta) {}
  // True when `qbar` may reuse the stored selection.
  bool ShouldReuse(absl::Span<const float> qbar) const;
  void Store(absl::Span<const float> qbar, std::vector<int32_t> selection);
  const std::vector<int32_t>& selection() const { return selection_; }
  void Clear();

 private:
  float theta_;
  bool valid_ = false;
  std::vector<float> qbar_;
  std::vector<int32_t> selection_;
};

}  // namespace kvc::kernels

#endif  // KVC_KERNELS_TOKEN_SELECT_H_
