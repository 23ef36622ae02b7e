// Joining a sequence's cache policy to the cache service:
//   - WriteThroughCache wraps a policy and writes every completed block of
//     every layer through a BlockWriter (asynchronously, off the decode
//     critical path), so nothing the hot set evicts is lost;
//   - LoadCachedPrefix, before prefill, looks up the prompt's block-hash
//     chain and loads the cached leading blocks into the policy, so only the
//     rest of the prompt runs through the model.
#ifndef KVC_WORKER_KV_KV_SYNC_H_
#define KVC_WORKER_KV_KV_SYNC_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "worker/cache/policy.h"
#include "worker/kv/block_client.h"
#include "worker/kv/block_codec.h"
#include "worker/kv/block_writer.h"
#include "worker/model/checkpoint.h"

namespace kvc {

// Where a sequence's blocks live in the service and how they are cut.
struct KvSyncOptions {
  std::string tenant = "default";
  std::string model = "stories15M";
  int32_t block_tokens = 64;
  int dtype = 1;  // kvcache.v1.DType of the stored blocks; fp32 keeps prefix reuse exact

  // The shape of this model's blocks.
  KvBlockShape Shape(const model::ModelConfig& config) const;
  absl::Status Validate() const;
};

// `tokens` rounded down to whole blocks and a multiple of `align`.
int64_t AlignPrefix(int64_t tokens, int32_t block_tokens, int64_t align);

// The key of block `hash` of layer `layer`.
BlockKey KvBlockKey(const KvSyncOptions& options, int32_t layer, const Hash128& hash);

// A cache policy that also writes the sequence's KV through to the service.
// Tokens must be announced (AppendTokens) before they run through the model:
// a block's key is the hash of every token up to its end. Host policies only.
//
// It is also the policy's cold store (cache::ColdKvStore): the blocks the
// service acknowledged, read back through `reader`. Given a reader, Create
// hands it to a policy that can rehydrate from it (RefreshKV), which then
// keeps only its hot set and the tokens not yet acknowledged.
class WriteThroughCache : public cache::CachePolicy, public cache::ColdKvStore {
 public:
  // `writer` (and `reader`, when not null) must outlive the cache.
  // INVALID_ARGUMENT for a device-resident policy (its KV is not in host
  // memory) or bad options.
  static absl::StatusOr<std::unique_ptr<WriteThroughCache>> Create(const model::ModelConfig& config,
                                                                   std::unique_ptr<cache::CachePolicy> inner,
                                                                   BlockWriter* writer, const KvSyncOptions& options,
                                                                   BlockClient* reader = nullptr);
  // Whether the inner policy keeps its full context in the service.
  bool offloaded() const { return offloaded_; }

  // cache::ColdKvStore: whole blocks, acknowledged in order from the first.
  int64_t stored_tokens(int32_t layer) const override;
  absl::Status Fetch(int32_t layer, int64_t n, float* k, float* v) override;
  // Starts fetching on a thread of its own; the matching Fetch takes the
  // result. One prefetch at a time: a new one drops an unused earlier one.
  void Prefetch(int32_t layer, int64_t n) override;
  int32_t block_tokens() const override { return options_.block_tokens; }
  absl::Status FetchBlocks(int32_t layer, std::span<const int64_t> blocks, float* k, float* v) override;
  // Fetches that a Prefetch had started (all of it or part of it).
  int64_t prefetch_hits() const { return prefetch_hits_; }
  ~WriteThroughCache() override;

  // The next tokens of the sequence, in order.
  void AppendTokens(std::span<const int32_t> tokens);
  // The first `tokens` tokens' blocks are already in the service (a loaded
  // prefix): they are not written again. REQUIRES: before any Attend,
  // tokens a multiple of block_tokens.
  absl::Status SkipStoredPrefix(int64_t tokens);

  absl::Status Attend(const kernels::ExecContext& ctx, const model::AttendArgs& args) override;
  bool loads_prefix() const override { return inner_->loads_prefix(); }
  absl::Status Load(int32_t layer, int64_t first_position, int64_t n, const float* k, const float* v) override {
    return inner_->Load(layer, first_position, n, k, v);
  }
  absl::Status AdoptPrefix(int32_t layer, int64_t n, MappedBuffer k, MappedBuffer v) override {
    return inner_->AdoptPrefix(layer, n, std::move(k), std::move(v));
  }

  // Loads the first `tokens` tokens (announced, whole blocks, cached for
  // every layer) while the rest of the prompt runs: layer 0's blocks are
  // fetched first, then layer 1's, ..., each loaded into the policy by the
  // first Attend of its layer, which waits only for its own layer. So a
  // layer's blocks stream in while the layers before it compute. Marks the
  // prefix stored (SkipStoredPrefix). REQUIRES: before any Attend, a reader,
  // loads_prefix(). If a layer's blocks cannot be fetched after all, its
  // Attend fails with the reason (earlier layers are loaded already): the
  // sequence must start anew without the prefix.
  absl::Status StreamPrefix(int64_t tokens);
  std::string name() const override { return inner_->name(); }
  std::string kv_origin() const override { return inner_->kv_origin(); }
  cache::PolicyStats stats() const override { return inner_->stats(); }
  size_t bytes_per_token() const override { return inner_->bytes_per_token(); }
  int64_t max_resident_tokens() const override { return inner_->max_resident_tokens(); }
  const cache::Evictions* last_evictions() const override { return inner_->last_evictions(); }

  cache::CachePolicy& inner() { return *inner_; }
  // Blocks handed to the writer so far (all layers).
  int64_t blocks_written() const { return blocks_written_; }
  const std::vector<Hash128>& hashes() const { return hashes_; }

 private:
  WriteThroughCache(const model::ModelConfig& config, std::unique_ptr<cache::CachePolicy> inner, BlockWriter* writer,
                    const KvSyncOptions& options, BlockClient* reader);

  // Blocks the service acknowledged, per layer; shared with the writer's
  // callbacks, which may outlive the cache.
  struct Acks {
    absl::Mutex mu;
    std::vector<int64_t> leading ABSL_GUARDED_BY(mu);           // [L] blocks 0..leading-1 stored
    std::vector<std::vector<int64_t>> ahead ABSL_GUARDED_BY(mu);  // [L] stored past a gap, sorted
    void Stored(int32_t layer, int64_t block);
  };

  struct Staging {
    std::vector<float> k, v;  // one block of rows
    int64_t next_position = 0;  // position of the next row expected
  };

  model::ModelConfig config_;
  std::unique_ptr<cache::CachePolicy> inner_;
  BlockWriter* writer_;
  KvSyncOptions options_;
  KvBlockShape shape_;
  std::vector<int32_t> tokens_;
  Hash128 root_;                 // ChainRoot(inner_->kv_origin())
  std::vector<Hash128> hashes_;  // of every whole block of tokens_
  std::vector<Staging> staging_;  // per layer
  int64_t blocks_written_ = 0;
  BlockClient* reader_;
  bool offloaded_ = false;
  std::shared_ptr<Acks> acks_;
  std::vector<BlockKey> fetch_keys_;

  // Fetches blocks [0, keys.size()) into k, v (fp32 rows, shape_).
  absl::Status FetchKeys(int32_t layer, const std::vector<BlockKey>& keys, float* k, float* v) const;
  std::vector<BlockKey> LayerKeys(int32_t layer, int64_t blocks) const;
  struct Pending {
    int64_t n = -1;
    std::thread thread;
    absl::Status status;
    std::vector<float> k, v;
  };
  std::vector<std::unique_ptr<Pending>> pending_;  // [L]
  std::vector<float> spare_k_, spare_v_;           // a consumed prefetch's buffers
  int64_t prefetch_hits_ = 0;

  // A streaming prefix load: layer l's blocks land in layers[l], done[l]
  // set under mu; Attend(l) takes them once.
  struct Stream {
    int64_t tokens = 0;
    absl::Mutex mu;
    std::vector<bool> done ABSL_GUARDED_BY(mu);
    std::vector<absl::Status> status ABSL_GUARDED_BY(mu);
    std::vector<MappedBuffer> k, v;  // [L] fp32 rows, written by the thread before done[l]
    std::vector<bool> loaded;              // [L], Attend's side
    std::thread thread;
  };
  std::unique_ptr<Stream> stream_;
  // Waits for layer l's streamed blocks and loads them into the policy.
  absl::Status TakeStreamed(int32_t layer);
};

struct PrefixLoad {
  int64_t tokens = 0;        // loaded (a multiple of block_tokens)
  int64_t blocks = 0;        // per layer
  int64_t bytes = 0;         // of KV received, all layers
};

// Loads the longest prefix of `prompt` whose blocks the service holds for
// every layer into `policy` (AdoptPrefix), leaving at least the prompt's last token
// to run through the model (its logits are needed). Every block is fetched
// and verified (shape, checksum) before any is loaded, and every layer gets
// the same number of blocks: the longest run of leading blocks that arrived
// intact for all layers. A service that is unreachable, a miss or a bad
// block shortens the prefix (down to nothing); none is an error of the
// sequence, which prefills the rest. A policy that cannot load
// (loads_prefix() false) loads nothing and nothing is fetched. Errors: only
// the policy's own load failing (the sequence must then start anew).
//
// `align` (tokens, > 0): the loaded length is rounded down to a multiple of
// it. With the runtime's prefill chunk (TransformerOptions::max_chunk) the
// rest of the prompt then runs in the same chunks as it would from position
// 0, so the logits are bit for bit those of computing the whole prompt (the
// dense kernels' results depend on how many rows a pass has).
// How many leading tokens of `prompt` (whole blocks, a multiple of `align`,
// leaving the last token) the service holds for every layer, by Lookup:
// 0 when none or when the service cannot answer.
// Only blocks of KV computed by `kv_origin` count (block_codec.h ChainRoot).
absl::StatusOr<int64_t> CachedPrefixTokens(BlockClient& client, const KvSyncOptions& options,
                                           const model::ModelConfig& config, std::string_view kv_origin,
                                           std::span<const int32_t> prompt, int64_t align);

absl::StatusOr<PrefixLoad> LoadCachedPrefix(BlockClient& client, const KvSyncOptions& options,
                                            const model::ModelConfig& config, std::span<const int32_t> prompt,
                                            cache::CachePolicy& policy, int64_t align = 1);

}  // namespace kvc

#endif  // KVC_WORKER_KV_KV_SYNC_H_
