// TokenSelect over a context split by token range across workers
// (context_shard.h): the owner of the sequence keeps the first n_init
// tokens, its most recent `local_tokens` and a copy of the current
// selection; older ranges of `range_tokens` move, as the context grows, to
// the peers in turn. For each chunk of queries, per layer:
//   1. every peer holding eligible tokens computes their per-head lse
//      (kLse), the owner its own; the owner combines them (kernels::CombineLse);
//   2. every peer returns its top-k under the global lse with the tokens'
//      keys and values (kSelect), the owner computes its own; MergeTopK gives
//      the global selection;
//   3. the owner attends the first tokens, the selection, the local window
//      and the chunk at compact positions, exactly as TokenSelectPolicy.
// Outputs and selections equal single-worker TokenSelect's over the whole
// context (tests/context_parallel_test.cc). A peer that stops answering
// fails this sequence's step with UNAVAILABLE naming the peer and the
// tokens it held; the sequence cannot go on (its context is gone), other
// sequences are not affected.
#ifndef KVC_WORKER_PEER_CONTEXT_PARALLEL_H_
#define KVC_WORKER_PEER_CONTEXT_PARALLEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/token_select.h"
#include "worker/cache/layer_kv.h"
#include "worker/cache/policy.h"
#include "worker/cache/token_select.h"
#include "worker/model/checkpoint.h"
#include "worker/peer/ucx_rpc.h"

namespace kvc::peer {

struct ContextParallelOptions {
  ContextParallelOptions() { select.lse_block = 4096; }
  // fp32 KV, no pooling; lse_block > 0 dividing range_tokens. The outputs
  // equal TokenSelectPolicy's with these options on one worker.
  cache::TokenSelectOptions select;
  // Tokens a layer holds locally (besides the first n_init) before its
  // oldest range_tokens move to a peer. >= range_tokens + n_local.
  int64_t local_tokens = 8192;
  int64_t range_tokens = 4096;  // a multiple of select.lse_block
  absl::Status Validate() const;
};

// Connected peers, shared by the sequences of one worker.
absl::StatusOr<std::vector<std::shared_ptr<RpcClient>>> ConnectPeers(const std::vector<std::string>& addresses,
                                                                     const ucx::UcxOptions& ucx,
                                                                     absl::Duration call_timeout);

class ContextParallelTokenSelect : public cache::CachePolicy {
 public:
  // Opens the sequence on every peer.
  static absl::StatusOr<std::unique_ptr<ContextParallelTokenSelect>> Create(
      const model::ModelConfig& config, const ContextParallelOptions& options,
      std::vector<std::shared_ptr<RpcClient>> peers);
  ~ContextParallelTokenSelect() override;  // closes the sequence on the peers

  absl::Status Attend(const kernels::ExecContext& ctx, const model::AttendArgs& args) override;
  std::string name() const override;
  // The KV is single-worker TokenSelect's.
  std::string kv_origin() const override;
  cache::PolicyStats stats() const override;
  size_t bytes_per_token() const override { return local_.front().slot_bytes() * local_.size(); }

  // Payload bytes sent to and received from the peers for selections in the
  // last step (all layers; moving ranges to the peers is not counted), and
  // the KV the peers hold: what moving the shards themselves each step
  // would cost.
  uint64_t last_step_bytes() const;
  uint64_t remote_kv_bytes() const { return remote_kv_bytes_; }
  int64_t selections() const { return selections_; }
  int64_t cache_hits() const { return hits_; }
  // The selection of `layer`'s last chunk (ascending token positions).
  const std::vector<int32_t>& selection(int32_t layer) const { return cache_[layer].selection(); }

 private:
  struct Range {
    int32_t peer;
    int64_t first, count;
  };
  ContextParallelTokenSelect(const model::ModelConfig& config, const ContextParallelOptions& options,
                             std::vector<std::shared_ptr<RpcClient>> peers, uint64_t seq);
  absl::Status Select(const kernels::ExecContext& ctx, const model::AttendArgs& a, int32_t layer, int64_t past);
  absl::Status ShipOldest(int32_t layer);
  absl::Status Lost(int32_t peer, int32_t layer, const absl::Status& s) const;

  model::ModelConfig config_;
  ContextParallelOptions options_;
  std::vector<std::shared_ptr<RpcClient>> peers_;
  uint64_t seq_;
  absl::Status failed_;  // once a peer is lost
  std::vector<cache::LayerKv> local_;  // tokens [local_first_, length_) per layer, slot = token - local_first_
  std::vector<int64_t> local_first_, length_;
  std::vector<std::vector<float>> init_k_, init_v_;   // the first n_init tokens' rows, per layer
  std::vector<std::vector<float>> sel_k_, sel_v_;     // rows of the current selection, per layer
  std::vector<kernels::SelectionCache> cache_;
  std::vector<std::vector<Range>> ranges_;  // per layer, ascending
  int32_t next_peer_ = 0;
  cache::LayerKv gather_;  // the attended rows of one call
  std::vector<float> qbar_;
  std::vector<int32_t> slots_, query_positions_;
  uint64_t PeerBytes() const;
  uint64_t remote_kv_bytes_ = 0, step_start_bytes_ = 0, step_shipped_bytes_ = 0;
  int64_t selections_ = 0, hits_ = 0;
  cache::PolicyStats stats_;
};

}  // namespace kvc::peer

#endif  // KVC_WORKER_PEER_CONTEXT_PARALLEL_H_
