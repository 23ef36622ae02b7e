// The combined policy DESIGN.md's data flow describes: a cascading hot set,
// a LESS state for what the cascade evicts, TokenSelect over the rest of the
// context, and RefreshKV refreshes. Per layer:
//
//  - Pool Cf: every token's pre-RoPE KV (slot t = token t). With a cold
//    store (the cache service), only the keys and the values a step reads
//    (the selection, the tokens not yet acknowledged) stay in memory; a
//    new selection and a full step fetch the values they need back
//    (cold_values.h). A step whose fetch fails goes on without them: a
//    selection keeps the tokens in memory, a full step becomes sparse.
//  - Hot set H_h per KV head: the cascading cache (sinks + C sub-caches,
//    ALGORITHMS.md §1), pushed every token, its EMA scores updated from
//    every step's attention. E_h = the tokens H_h has evicted.
//  - Selection S (one list for all heads, ascending, at most `select_k`
//    tokens): TokenSelect's soft vote (kernels::TokenSelect, pooling
//    `select_pool`) over the candidates, the past tokens some head has
//    evicted, chosen for the chunk's query fingerprint (rotated to
//    position kSelectDistance, keys un-rotated, as TokenSelectPolicy) and
//    reused while the fingerprint stays within cosine `theta` of the one it
//    was chosen for (kernels::SelectionCache).
//  - LESS state per KV head (H, z; worker/cache/less.h): the tokens of
//    E_h \ S. A token is folded when it leaves H_h (unless selected) and
//    when it leaves S (if in E_h); it is unfolded (kernels::LessFold
//    subtract) when a new selection takes it. A head with nothing folded
//    has an exactly zero state.
//  - RefreshScheduler (worker/cache/refresh_kv.h): on a full step.
//
// A chunk (prefill stride or decode token) attends, per KV head, the union
// U_h = H_h ∪ (S ∩ E_h) plus the chunk (causal), in token order at compact
// positions right-aligned over heads: with Q = max_h |U_h|, the j-th of
// head h's list is at Q - |U_h| + j and chunk token i at Q + i (heads
// differ in |U_h| and share query positions). Then the LESS state of the
// other evicted tokens is combined (kernels::LessCombine). The cascade's
// EMA scores and the chunk tokens' first scores come from the
// probabilities of this attention (normalised over U_h and the chunk),
// then the chunk is pushed into the cascade and what it evicts is folded.
//
// A decode step that the scheduler makes full attends all of Cf at
// original positions, exactly (the output is full attention: the
// rehydration), re-chooses S as the select_k candidates with the highest
// probability of this step (max over query heads, max-pooled along token
// order by `refresh_pool`; equal scores: the older token), stores it in the
// selection cache for this step's fingerprint, and makes this query the
// scheduler's reference. The hot set's scores are updated from the same
// probabilities. With `refresh_output_hot`, the full step rehydrates and
// rescores the same way but its output is that of a sparse step over the
// hot set and the new selection (for a model trained on short contexts,
// whose outputs at original positions past its window are meaningless).
//
// Special cases: with select_k = 0, less = false and refresh off, this is
// the cascading policy (the same cache contents; outputs to fp32
// reassociation, as it merges two attention states where cascading runs
// one pass). While the context fits the hot set
// nothing is evicted and every step is full attention.
//
// Attention work (attended (query, key) pairs, as the other policies count
// them): per query, the longest head's |U_h| plus the visible chunk on a
// sparse step, |Cf| on a full step; TokenSelect's scoring reads every
// candidate key on a selection-cache miss and is not counted.
//
// Not thread-safe; one object per sequence, whose positions start at 0.
#ifndef KVC_WORKER_CACHE_COMBINED_H_
#define KVC_WORKER_CACHE_COMBINED_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/less.h"
#include "kernels/token_select.h"
#include "worker/cache/cascading.h"
#include "worker/cache/cold_values.h"
#include "worker/cache/layer_kv.h"
#include "worker/cache/less.h"
#include "worker/cache/policy.h"
#include "worker/cache/refresh_kv.h"
#include "worker/model/checkpoint.h"

namespace kvc::cache {

struct CombinedOptions {
  // The hot set (original_positions is ignored: positions are compact).
  CascadingOptions hot;
  // TokenSelect: tokens taken per chunk from the evicted ones (0 = none).
  int32_t select_k = 128;
  // Lower than TokenSelect's 0.9: consecutive decode queries of
  // stories15M are rarely that close (at 0.9 the selection is reused 1% of
  // the time, at 0.5 ~90%, with no loss of perplexity; docs/EVALUATION.md).
  float theta = 0.5f;
  int32_t select_pool = 0;
  // LESS over the evicted tokens that are not selected.
  bool less = true;
  LessOptions less_options;
  // RefreshKV full steps (refresh.k and kv_dtype are not used).
  bool refresh = true;
  RefreshKvOptions refresh_options;
  bool refresh_output_hot = false;
  absl::Status Validate() const;
};

class Combined : public CachePolicy {
 public:
  // Distance at which TokenSelect scores candidates (the query fingerprint
  // is rotated to this position, keys are not).
  static constexpr int32_t kSelectDistance = 32;

  static absl::StatusOr<std::unique_ptr<Combined>> Create(const model::ModelConfig& config,
                                                          const CombinedOptions& options);

  absl::Status Attend(const kernels::ExecContext& ctx, const model::AttendArgs& args) override;
  std::string name() const override;
  PolicyStats stats() const override;
  // A pool slot, a hot flag per KV head, a selection and a candidate flag, per layer.
  size_t bytes_per_token() const override {
    return (layers_.front().pool.slot_bytes() + config_.n_kv_heads + 2u) * layers_.size();
  }
  // Tokens attended per step at most: the hot set and the selection.
  int64_t max_resident_tokens() const override { return cascade_.total_slots() + options_.select_k; }

  // Introspection for tests. The hot set of (layer, KV head): original
  // positions in age order. The selection of `layer`: ascending positions.
  std::vector<int32_t> hot_set(int32_t layer, int32_t kv_head) const;
  const std::vector<int32_t>& selection(int32_t layer) const { return layers_[layer].selected; }
  const kernels::CascadeState& cascade(int32_t layer) const { return layers_[layer].store.state; }
  // LESS state of `layer`: H [Hkv][R][D], z [Hkv][R]; tokens folded per head.
  const std::vector<float>& state_h(int32_t layer) const { return layers_[layer].less_h; }
  const std::vector<float>& state_z(int32_t layer) const { return layers_[layer].less_z; }
  const std::vector<int64_t>& folded(int32_t layer) const { return layers_[layer].folded; }
  const kernels::FeatureMapWeights& feature_map() const { return map_; }
  // Decode steps that were full steps / selections made by TokenSelect /
  // chunks that reused a selection, summed over layers.
  int64_t full_steps() const { return full_steps_; }
  int64_t selections() const { return selections_; }
  int64_t selection_hits() const { return selection_hits_; }

  // Keeps Cf's values in `cold` (the class comment). Before the first token.
  absl::Status SetColdStore(ColdKvStore* cold) override;
  // With a cold store: what was fetched back and dropped (all layers);
  // full steps that ran sparse and selections that went without tokens
  // because the store could not answer, and its last error.
  ColdValueStats cold_stats() const;
  int64_t refreshes_skipped() const { return refreshes_skipped_; }
  int64_t short_selections() const { return short_selections_; }
  const absl::Status& last_cold_error() const { return last_cold_error_; }

 private:
  struct Layer {
    explicit Layer(const model::ModelConfig& config, const CombinedOptions& options);
    LayerKv pool;                         // Cf
    int64_t length = 0;                   // tokens in Cf
    std::vector<uint8_t> hot;             // [Hkv][capacity]: token t in H_h
    std::vector<uint8_t> in_selection;    // [capacity]: token t in S
    std::vector<uint8_t> evicted_any;     // [capacity]: some head evicted token t (a candidate)
    int64_t flag_capacity = 0;
    CascadeStorage store;  // the cascade (store.state)
    std::vector<int32_t> selected;  // S, ascending
    kernels::SelectionCache selection_cache;
    std::vector<float> less_h, less_z;
    std::vector<int64_t> folded;  // [Hkv] tokens in the LESS state
    RefreshScheduler scheduler;
  };
  Combined(const model::ModelConfig& config, const CombinedOptions& options);

  absl::Status GrowFlags(Layer& layer, int64_t tokens);
  bool Evicted(const Layer& layer, int32_t head, int32_t token) const {
    return token < layer.length && layer.hot[static_cast<size_t>(head) * layer.flag_capacity + token] == 0;
  }
  // qbar_ = the fingerprint of num_q queries (rotated to kSelectDistance).
  absl::Status Fingerprint(const kernels::ExecContext& ctx, const float* q, int64_t num_q);
  // candidates_ = the tokens some head has evicted, ascending.
  void CollectCandidates(const Layer& layer);
  // Re-chooses S by TokenSelect when the selection cache misses.
  absl::Status Select(const kernels::ExecContext& ctx, const model::AttendArgs& a, Layer& layer);
  // S := `next` (ascending): folds what leaves and is evicted, unfolds what
  // comes and is evicted.
  absl::Status ChangeSelection(const kernels::ExecContext& ctx, Layer& layer, const std::vector<int32_t>& next);
  // Folds (or unfolds) each of `tokens` into the LESS state of every head
  // that has evicted it (rows copied from Cf).
  absl::Status FoldTokens(const kernels::ExecContext& ctx, Layer& layer, const std::vector<int32_t>& tokens,
                          bool subtract);
  // `select`: let TokenSelect re-choose S (false right after a full step's rebuild).
  absl::Status SparseAttend(const kernels::ExecContext& ctx, const model::AttendArgs& a, Layer& layer,
                            bool select = true);
  absl::Status FullAttend(const kernels::ExecContext& ctx, const model::AttendArgs& a, Layer& layer);
  // Pushes the chunk (Cf slots [first, first + n)) into the cascade with
  // chunk_scores_, updates the hot flags and folds what left.
  absl::Status Push(const kernels::ExecContext& ctx, Layer& layer, int64_t first, int64_t n);
  kernels::LessState LessView(Layer& layer);

  model::ModelConfig config_;
  CombinedOptions options_;
  kernels::CascadeConfig cascade_;
  kernels::FeatureMapWeights map_;
  std::vector<Layer> layers_;
  int64_t full_steps_ = 0, selections_ = 0, selection_hits_ = 0;
  std::vector<ColdValues> cold_;  // [L] with a cold store, else empty
  int64_t refreshes_skipped_ = 0, short_selections_ = 0;
  absl::Status last_cold_error_;
  // Scratch.
  std::vector<int32_t> gather_ptr_, gather_idx_, gather_pos_;  // CascadeGather (original positions)
  std::vector<int32_t> hot_ptr_, hot_idx_, hot_pos_, sel_ptr_, sel_idx_, sel_pos_, own_idx_, own_pos_;
  std::vector<int32_t> candidates_, next_, coming_, orig_pos_, fold_count_, sel_count_, order_;
  std::vector<float> qbar_, query_mean_, parts_out_, parts_lse_, merged_out_, merged_lse_, chunk_scores_,
      full_scores_, raw_scores_, pooled_;
  std::vector<uint8_t> fold_k_, fold_v_;
  Evictions evictions_;
  PolicyStats stats_;
};

}  // namespace kvc::cache

#endif  // KVC_WORKER_CACHE_COMBINED_H_
