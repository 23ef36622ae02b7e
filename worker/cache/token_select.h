// TokenSelect (ALGORITHMS.md §2) as a policy: every token's KV stays in the
// pool (in host memory; with a cold store, the cache service, only the keys
// stay and the values of acknowledged blocks come back when a selection
// picks one of their tokens: cold_values.h), and each chunk of queries, per layer, attends the first
// n_init tokens, the k past tokens with the highest per-head soft-vote
// score, the last n_local tokens and the chunk itself, at compact positions
// (the j-th attended key at position j). While the past is no larger than
// n_init + k + n_local, everything is attended (at original positions).
// A selection cache per layer reuses the previous selection while the
// chunk's query fingerprint stays within cosine theta of the one it was
// chosen for.
#ifndef KVC_WORKER_CACHE_TOKEN_SELECT_H_
#define KVC_WORKER_CACHE_TOKEN_SELECT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/token_select.h"
#include "worker/cache/cold_values.h"
#include "worker/cache/layer_kv.h"
#include "worker/cache/policy.h"
#include "worker/model/checkpoint.h"

namespace kvc::cache {

struct TokenSelectOptions {
  int32_t n_init = 4;
  int32_t n_local = 32;
  int32_t k = 92;
  int32_t pool_kernel = 0;  // 1-D max pooling of the scores (0 = off, else odd)
  float theta = 0.9f;       // selection-cache threshold (>= 1: reselect every chunk)
  // The soft vote's per-head normaliser: 0 = one log-sum-exp over all
  // candidates; B > 0 = the log-sum-exp of each block of B token positions
  // ([b * B, (b + 1) * B), eligible ones), combined in block order
  // (kernels::CombineLse). The same in exact arithmetic; in fp32 the
  // blocked form is what a context split over workers at multiples of B
  // computes (worker/peer/context_parallel.h), so a selection equals theirs
  // bit for bit.
  int64_t lse_block = 0;
  kernels::DType kv_dtype = kernels::DType::kF32;
  absl::Status Validate() const;
  int64_t budget() const { return static_cast<int64_t>(n_init) + k + n_local; }
};

// Appends the per-head lse (TokenSelectLse) of every block of `block` token
// positions that has eligible tokens in [begin, end) to ids (block index)
// and lse ([Hq] each). `pool` holds keys of positions first, first + 1, ...
// (slot = position - first), covering [begin, end).
absl::Status AppendBlockLse(const kernels::ExecContext& ctx, const float* qbar, int32_t num_q_heads,
                            const kernels::KvPool& pool, int64_t first, int64_t begin, int64_t end, int64_t block,
                            std::vector<int64_t>* ids, std::vector<float>* lse);

class TokenSelectPolicy : public CachePolicy {
 public:
  static absl::StatusOr<std::unique_ptr<TokenSelectPolicy>> Create(const model::ModelConfig& config,
                                                                   const TokenSelectOptions& options);

  absl::Status Attend(const kernels::ExecContext& ctx, const model::AttendArgs& args) override;
  std::string name() const override;
  PolicyStats stats() const override;
  size_t bytes_per_token() const override { return layers_.front().slot_bytes() * layers_.size(); }
  const TokenSelectOptions& options() const { return options_; }
  // Chunks that reused the previous selection / chose a new one, all layers.
  int64_t cache_hits() const { return hits_; }
  int64_t selections() const { return selections_; }
  // The tokens selected for `layer`'s last chunk (ascending; empty while
  // everything is attended).
  const std::vector<int32_t>& selection(int32_t layer) const { return selection_cache_[layer].selection(); }
  // Keeps only the keys and the values a step needs in memory; the rest of
  // the values is fetched back from `cold` when selected. Before the first
  // token only.
  absl::Status SetColdStore(ColdKvStore* cold) override;
  // With a cold store: what was fetched back and dropped, all layers, and
  // the steps that went on without selected tokens the store could not
  // return (the last such error).
  ColdValueStats cold_stats() const;
  int64_t short_selections() const { return short_selections_; }
  const absl::Status& last_cold_error() const { return last_cold_error_; }

 private:
  TokenSelectPolicy(const model::ModelConfig& config, const TokenSelectOptions& options);

  model::ModelConfig config_;
  TokenSelectOptions options_;
  std::vector<LayerKv> layers_;
  std::vector<int64_t> length_;  // tokens in the pool, per layer
  std::vector<kernels::SelectionCache> selection_cache_;
  std::vector<ColdValues> cold_;  // [L] with a cold store, else empty
  int64_t short_selections_ = 0;
  absl::Status last_cold_error_;
  // Scratch.
  std::vector<float> qbar_, lse_, global_lse_;
  std::vector<int64_t> lse_ids_;
  std::vector<int32_t> selected_, slots_, positions_, query_positions_, keep_;
  int64_t hits_ = 0, selections_ = 0;
  PolicyStats stats_;
};

}  // namespace kvc::cache

#endif  // KVC_WORKER_CACHE_TOKEN_SELECT_H_
