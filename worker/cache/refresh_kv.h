// RefreshKV (ALGORITHMS.md §4; Xu, Goyal, Choi, "Updating Small KV Cache
// During Long-form Generation") as a policy. Every token's KV stays in the
// full cache Cf (here in host memory, like TokenSelect's pool; with the
// cache service, what the service holds), and each layer keeps a partial
// cache Cp of K token indices per KV head: the hot set a partial step
// attends. stats().resident_tokens is |Cf|; the hot set is K (in name()).
//
// - A chunk of more than one token (prefill): dense causal attention over
//   all of Cf; in the same kernel call the chunk's last query's
//   probabilities are folded into per-token scores (ScoreAccum kSum,
//   first_query = num_q - 1, normalised by the lse of the attention pass;
//   the GQA group reduced by max). Cp is rebuilt from them and the last
//   query (mean over heads, before RoPE) becomes the reference query.
// - A decode step (one token) asks the layer's RefreshScheduler:
//   * partial step: attend Cp plus the new token; append the token to Cp
//     and, once Cp holds K, evict Cp[0];
//   * full step: attend all of Cf (the rehydration), rebuild Cp from this
//     step's scores, save the reference query.
// - Rebuild: per KV head the scores are max-pooled along token order
//   (kernel `pool_kernel`, clipped at the ends), the top min(K, |Cf|) kept
//   (equal scores: the older token wins) and Cp ordered by ascending score
//   (Cp[0] is the next to go; equal scores: the newer token first).
//   Appended tokens go to the back, so after a rebuild the lowest-scored
//   survivor is evicted first, then the oldest appended token.
//
// Positions: original (keys and queries keep theirs), or compact: a
// partial step rotates the j-th attended key (in token order) to j and the
// query to |Cp|. Full steps and prefill attend every token, so compact
// positions there are 0..|Cf|-1 (the original ones for a sequence that
// starts at 0): a model trained on short contexts still sees out-of-range
// positions on full steps.
//
// Attention cost per layer (attended (query, key) pairs, as the other
// policies count them): |Cf| on a full step, |Cp| + 1 <= K + 1 on a partial
// one, so T decode steps in fixed mode cost about T*L/S + T*K. The scores
// of a rebuild come from the same kernel call and are not counted again.
//
// With a cold store (SetColdStore: the cache service holding the sequence's
// blocks, worker/kv), Cf is not kept: each layer keeps its hot set (every
// KV head's Cp rows, in a pool of K + 1 slots) and the tokens the store has
// not acknowledged yet; the rows of every other token are dropped after
// each decode step. A full step rehydrates Cf: the store's tokens are
// fetched into one buffer shared by the layers, the local ones appended,
// and the step proceeds as above, with the same kernel calls on the same
// rows, so its output is the same bit for bit. A prefill keeps the prompt
// local until its first decode step. A due full step whose store cannot
// answer runs as a partial step over the local hot set instead (counted in
// refreshes_skipped()): generation goes on while the service is away.
//
// Not thread-safe; one object per sequence.
#ifndef KVC_WORKER_CACHE_REFRESH_KV_H_
#define KVC_WORKER_CACHE_REFRESH_KV_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/cache/cold_store.h"
#include "worker/cache/layer_kv.h"
#include "worker/cache/policy.h"
#include "worker/model/checkpoint.h"

namespace kvc::cache {

enum class RefreshMode : uint8_t {
  kFixed = 0,       // a full step every `stride`-th decode step
  kSimilarity = 1,  // every `stride`-th step, full iff cosine(q, reference) <= threshold
};

struct RefreshKvOptions {
  int32_t k = 256;      // K: partial-cache tokens per layer and KV head (>= 1)
  int32_t stride = 10;  // S: decode steps between refreshes / similarity checks (>= 1)
  RefreshMode mode = RefreshMode::kSimilarity;
  float threshold = 0.9f;   // s: cosine in [-1, 1] above which Cp is kept (similarity mode)
  int32_t pool_kernel = 7;  // max pooling of the rebuild scores (0 or 1 = off, else odd)
  bool compact_positions = false;
  kernels::DType kv_dtype = kernels::DType::kF32;
  absl::Status Validate() const;
};

// When a layer's decode step is a full step. Counts decode steps since the
// last refresh (a full step or a prefill chunk).
class RefreshScheduler {
 public:
  explicit RefreshScheduler(const RefreshKvOptions& options) : options_(options) {}
  // One decode step whose query, averaged over heads, is `query_mean` [D]:
  // true for a full step. Fixed: every stride-th step. Similarity: on every
  // stride-th step, full unless a reference exists and the cosine with it
  // exceeds the threshold (a kept step continues the count).
  bool NextStepIsFull(const std::vector<float>& query_mean);
  // Cp was rebuilt for the query `query_mean`: it is the new reference.
  void Refreshed(const std::vector<float>& query_mean);

 private:
  RefreshKvOptions options_;
  int64_t since_refresh_ = 0;
  std::vector<float> reference_;  // empty until the first refresh
};

class RefreshKv : public CachePolicy {
 public:
  static absl::StatusOr<std::unique_ptr<RefreshKv>> Create(const model::ModelConfig& config,
                                                           const RefreshKvOptions& options);

  absl::Status Attend(const kernels::ExecContext& ctx, const model::AttendArgs& args) override;
  std::string name() const override;
  PolicyStats stats() const override;
  // Keys and values, the position, and at most one Cp entry per KV head.
  size_t bytes_per_token() const override {
    return (layers_.front().kv.slot_bytes() + 4u + 4u * config_.n_kv_heads) * layers_.size();
  }

  // Keeps Cf in `cold` (which must outlive the policy) instead of host
  // memory, as the class comment says. FAILED_PRECONDITION once a token has
  // been attended.
  absl::Status SetColdStore(ColdKvStore* cold) override;
  // Tokens fetched from the cold store by full steps, summed over layers.
  int64_t rehydrated_tokens() const { return rehydrated_tokens_; }
  // Full steps that ran as partial steps because the cold store could not
  // answer, and its last error.
  int64_t refreshes_skipped() const { return refreshes_skipped_; }
  const absl::Status& last_cold_error() const { return last_cold_error_; }

  // Decode steps that were full / partial steps, summed over layers.
  int64_t full_steps() const { return full_steps_; }
  int64_t partial_steps() const { return partial_steps_; }
  // Original positions of Cp of (layer, kv_head) in eviction order: entry 0
  // is the next to be evicted.
  std::vector<int32_t> partial_cache(int32_t layer, int32_t kv_head) const;

 private:
  struct Layer {
    Layer(const model::ModelConfig& config, const RefreshKvOptions& options);
    // Cf, or with a cold store its local part: slot i holds token
    // local_first + i.
    LayerKv kv;
    int64_t local_first = 0;
    std::vector<int32_t> positions;        // original position of each token
    std::vector<std::deque<int32_t>> hot;  // Cp: [Hkv] tokens, eviction order
    RefreshScheduler scheduler;
    int64_t next_position = 0;  // the lowest position the next chunk may start at
    // With a cold store: Cp's rows, head h's entry hot[h][i] in slot
    // hot_slot[h][i] of hot_kv (K + 1 slots, per head), and each head's
    // free slots.
    LayerKv hot_kv;
    std::vector<std::deque<int32_t>> hot_slot;
    std::vector<std::vector<int32_t>> free_slots;
  };
  RefreshKv(const model::ModelConfig& config, const RefreshKvOptions& options);
  // Attends all `total` tokens of `layer` (the chunk is the last a.num_tokens),
  // rebuilds Cp from the probabilities of the chunk's last query and makes
  // it the reference.
  absl::Status FullAttend(const kernels::ExecContext& ctx, const model::AttendArgs& a, Layer& layer,
                          int64_t total);
  // One decode step over Cp and the new token (in Cf, or with a cold store
  // in hot_kv), then Cp takes the token and, if over K, drops its front.
  absl::Status PartialAttend(const kernels::ExecContext& ctx, const model::AttendArgs& a,
                             Layer& layer, int64_t total);
  // Cp of every head from scores_ ([Hkv][total]).
  void Rebuild(Layer& layer, int64_t total);
  // Cold store: every token of layer `l` into full_kv_ (fetched, then the
  // local ones).
  absl::Status Rehydrate(int32_t l, Layer& layer, int64_t total);
  // Cold store: Cp's rows into hot_kv from `cf` (slot = token).
  absl::Status FillHot(Layer& layer, const LayerKv& cf);
  // Cold store: drops the local rows of tokens the store now holds.
  absl::Status Trim(int32_t l, Layer& layer, int64_t total);
  // Mean over query heads of query row `i` of q, into query_mean_.
  void QueryMean(const float* q, int64_t i);

  model::ModelConfig config_;
  RefreshKvOptions options_;
  std::vector<Layer> layers_;
  int64_t full_steps_ = 0, partial_steps_ = 0;
  ColdKvStore* cold_ = nullptr;
  LayerKv full_kv_;  // rehydrated Cf, shared by the layers (cold store only)
  std::vector<float> fetch_k_, fetch_v_;
  int64_t rehydrated_tokens_ = 0, refreshes_skipped_ = 0;
  absl::Status last_cold_error_;
  std::vector<std::pair<int32_t, int32_t>> token_slot_;
  // Scratch.
  std::vector<float> scores_, pooled_, query_mean_;
  std::vector<int32_t> indptr_, indices_, gather_positions_, query_positions_, order_;
  PolicyStats stats_;
};

}  // namespace kvc::cache

#endif  // KVC_WORKER_CACHE_REFRESH_KV_H_
