#include "worker/kv/kv_sync.h"

#include <algorithm>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kvcache/v1/cache.pb.h"

namespace kvc {

KvBlockShape KvSyncOptions::Shape(const model::ModelConfig& config) const {
  KvBlockShape s;
  s.block_tokens = block_tokens;
  s.num_kv_heads = config.n_kv_heads;
  s.head_dim = config.head_dim();
  s.dtype = dtype;
  return s;
}

absl::Status KvSyncOptions::Validate() const {
  if (tenant.empty()) return absl::InvalidArgumentError("kv sync: tenant is empty");
  if (model.empty()) return absl::InvalidArgumentError("kv sync: model is empty");
  if (block_tokens <= 0) return absl::InvalidArgumentError(absl::StrCat("kv sync: block_tokens must be > 0, got ", block_tokens));
  if (dtype != kvcache::v1::DTYPE_FP32 && dtype != kvcache::v1::DTYPE_BF16 && dtype != kvcache::v1::DTYPE_FP16) {
    return absl::InvalidArgumentError(absl::StrCat("kv sync: unknown block dtype ", dtype));
  }
  return absl::OkStatus();
}

int64_t AlignPrefix(int64_t tokens, int32_t block_tokens, int64_t align) {
  const int64_t unit = std::lcm<int64_t>(align, block_tokens);
  return tokens / unit * unit;
}

BlockKey KvBlockKey(const KvSyncOptions& options, int32_t layer, const Hash128& hash) {
  BlockKey key;
  key.tenant = options.tenant;
  key.model = options.model;
  key.layer = static_cast<uint32_t>(layer);
  key.hash = hash;
  return key;
}

WriteThroughCache::WriteThroughCache(const model::ModelConfig& config, std::unique_ptr<cache::CachePolicy> inner,
                                     BlockWriter* writer, const KvSyncOptions& options, BlockClient* reader)
    : config_(config),
      inner_(std::move(inner)),
      writer_(writer),
      options_(options),
      shape_(options.Shape(config)),
      staging_(config.n_layers),
      reader_(reader),
      acks_(std::make_shared<Acks>()) {
  root_ = ChainRoot(inner_->kv_origin());
  for (Staging& s : staging_) {
    s.k.resize(static_cast<size_t>(shape_.elements()));
    s.v.resize(static_cast<size_t>(shape_.elements()));
  }
  absl::MutexLock lock(&acks_->mu);
  acks_->leading.assign(config.n_layers, 0);
  acks_->ahead.assign(config.n_layers, {});
}

absl::StatusOr<std::unique_ptr<WriteThroughCache>> WriteThroughCache::Create(
    const model::ModelConfig& config, std::unique_ptr<cache::CachePolicy> inner, BlockWriter* writer,
    const KvSyncOptions& options, BlockClient* reader) {
  KVC_RETURN_IF_ERROR(options.Validate());
  if (inner == nullptr || writer == nullptr) return absl::InvalidArgumentError("write-through: null policy or writer");
  if (inner->device_resident()) {
    return absl::InvalidArgumentError(
        absl::StrCat("write-through: policy ", inner->name(), " keeps its KV on the device; only host policies"));
  }
  std::unique_ptr<WriteThroughCache> c(new WriteThroughCache(config, std::move(inner), writer, options, reader));
  if (reader != nullptr) {
    const absl::Status s = c->inner_->SetColdStore(c.get());
    if (s.ok()) {
      c->offloaded_ = true;
    } else if (!absl::IsUnimplemented(s)) {
      return s;
    }
  }
  return c;
}

void WriteThroughCache::Acks::Stored(int32_t layer, int64_t block) {
  absl::MutexLock lock(&mu);
  int64_t& lead = leading[layer];
  std::vector<int64_t>& later = ahead[layer];
  if (block < lead) return;
  if (block > lead) {
    later.insert(std::upper_bound(later.begin(), later.end(), block), block);
    return;
  }
  ++lead;
  while (!later.empty() && later.front() <= lead) {
    if (later.front() == lead) ++lead;
    later.erase(later.begin());
  }
}

int64_t WriteThroughCache::stored_tokens(int32_t layer) const {
  absl::MutexLock lock(&acks_->mu);
  return acks_->leading[layer] * options_.block_tokens;
}

std::vector<BlockKey> WriteThroughCache::LayerKeys(int32_t layer, int64_t blocks) const {
  std::vector<BlockKey> keys;
  keys.reserve(static_cast<size_t>(blocks));
  for (int64_t b = 0; b < blocks; ++b) keys.push_back(KvBlockKey(options_, layer, hashes_[b]));
  return keys;
}

absl::Status WriteThroughCache::FetchKeys(int32_t layer, const std::vector<BlockKey>& keys, float* k,
                                          float* v) const {
  const int64_t blocks = static_cast<int64_t>(keys.size()), elems = shape_.elements();
  absl::Status first_error;
  int64_t got_blocks = 0;
  const absl::Status s = reader_->Get(keys, [&](GotBlock& got) {
    absl::Status ok = got.status;
    if (ok.ok()) ok = DecodeKvBlock(got.block, shape_, k + got.index * elems, v + got.index * elems);
    if (ok.ok()) {
      ++got_blocks;
    } else if (first_error.ok()) {
      first_error = absl::Status(absl::IsNotFound(ok) ? absl::StatusCode::kDataLoss : ok.code(),
                                 absl::StrCat("block ", got.index, " of layer ", layer, ": ", ok.message()));
    }
  });
  KVC_RETURN_IF_ERROR(s);
  KVC_RETURN_IF_ERROR(first_error);
  if (got_blocks != blocks) {
    return absl::DataLossError(absl::StrCat("write-through: ", got_blocks, " of ", blocks, " blocks of layer ", layer,
                                            " came back"));
  }
  return absl::OkStatus();
}

void WriteThroughCache::Prefetch(int32_t layer, int64_t n) {
  const int32_t bt = options_.block_tokens;
  if (reader_ == nullptr || n <= 0 || n % bt != 0 || n > stored_tokens(layer)) return;
  if (pending_.empty()) pending_.resize(config_.n_layers);
  // At most one layer's context waits in memory: an unused prefetch of
  // another layer (its refresh did not come) goes.
  for (int32_t l = 0; l < config_.n_layers; ++l) {
    if (l == layer || pending_[l] == nullptr) continue;
    if (pending_[l]->thread.joinable()) pending_[l]->thread.join();
    pending_[l].reset();
  }
  std::unique_ptr<Pending>& slot = pending_[layer];
  if (slot != nullptr && slot->n == n) return;  // already fetching (or fetched) this
  if (slot != nullptr && slot->thread.joinable()) slot->thread.join();
  slot = std::make_unique<Pending>();
  slot->n = n;
  const size_t floats = static_cast<size_t>(n) * config_.n_kv_heads * config_.head_dim();
  // The last prefetch's buffers, reused: no fresh pages to zero and fault in.
  slot->k.swap(spare_k_);
  slot->v.swap(spare_v_);
  slot->k.resize(floats);
  slot->v.resize(floats);
  // The keys are made here: the thread must not read hashes_, which grows.
  slot->thread = std::thread([this, p = slot.get(), layer, keys = LayerKeys(layer, n / bt)] {
    p->status = FetchKeys(layer, keys, p->k.data(), p->v.data());
  });
}

absl::Status WriteThroughCache::Fetch(int32_t layer, int64_t n, float* k, float* v) {
  if (reader_ == nullptr) return absl::FailedPreconditionError("write-through: no reader to fetch blocks with");
  const int32_t bt = options_.block_tokens;
  if (n % bt != 0 || n > stored_tokens(layer)) {
    return absl::InvalidArgumentError(absl::StrCat("write-through: fetch of ", n, " tokens of layer ", layer, " (",
                                                   stored_tokens(layer), " stored, blocks of ", bt, ")"));
  }
  if (!pending_.empty() && pending_[layer] != nullptr && pending_[layer]->n == n) {
    std::unique_ptr<Pending> p = std::move(pending_[layer]);
    if (p->thread.joinable()) p->thread.join();
    if (p->status.ok()) {
      ++prefetch_hits_;
      std::copy(p->k.begin(), p->k.end(), k);
      std::copy(p->v.begin(), p->v.end(), v);
      spare_k_.swap(p->k);
      spare_v_.swap(p->v);
      return absl::OkStatus();
    }
    // A failed prefetch (the service away then) is tried again now.
  }
  return FetchKeys(layer, LayerKeys(layer, n / bt), k, v);
}

absl::Status WriteThroughCache::FetchBlocks(int32_t layer, std::span<const int64_t> blocks, float* k, float* v) {
  if (reader_ == nullptr) return absl::FailedPreconditionError("write-through: no reader to fetch blocks with");
  const int64_t stored = stored_tokens(layer) / options_.block_tokens;
  fetch_keys_.clear();
  for (const int64_t b : blocks) {
    if (b < 0 || b >= stored) {
      return absl::InvalidArgumentError(
          absl::StrCat("write-through: block ", b, " of layer ", layer, " is not stored (", stored, " blocks are)"));
    }
    fetch_keys_.push_back(KvBlockKey(options_, layer, hashes_[b]));
  }
  return FetchKeys(layer, fetch_keys_, k, v);
}

WriteThroughCache::~WriteThroughCache() {
  for (std::unique_ptr<Pending>& p : pending_) {
    if (p != nullptr && p->thread.joinable()) p->thread.join();
  }
  if (stream_ != nullptr && stream_->thread.joinable()) stream_->thread.join();
}

absl::Status WriteThroughCache::StreamPrefix(int64_t tokens) {
  const int32_t bt = options_.block_tokens;
  if (reader_ == nullptr) return absl::FailedPreconditionError("write-through: no reader to stream a prefix with");
  if (!inner_->loads_prefix()) {
    return absl::FailedPreconditionError(absl::StrCat("write-through: policy ", inner_->name(), " cannot load a prefix"));
  }
  if (stream_ != nullptr) return absl::FailedPreconditionError("write-through: a prefix is streaming already");
  if (tokens <= 0 || tokens % bt != 0 || tokens / bt > static_cast<int64_t>(hashes_.size())) {
    return absl::InvalidArgumentError(absl::StrCat("write-through: cannot stream a prefix of ", tokens, " tokens (",
                                                   hashes_.size(), " whole blocks of ", bt, " announced)"));
  }
  KVC_RETURN_IF_ERROR(SkipStoredPrefix(tokens));
  const int32_t layers = config_.n_layers;
  stream_ = std::make_unique<Stream>();
  Stream& st = *stream_;
  st.tokens = tokens;
  {
    absl::MutexLock lock(&st.mu);
    st.done.assign(layers, false);
    st.status.assign(layers, absl::OkStatus());
  }
  for (int32_t l = 0; l < layers; ++l) {
    st.k.emplace_back(/*huge_pages=*/false, /*populate=*/true);
    st.v.emplace_back(/*huge_pages=*/false, /*populate=*/true);
  }
  st.loaded.assign(layers, false);
  std::vector<std::vector<BlockKey>> keys(layers);
  for (int32_t l = 0; l < layers; ++l) keys[l] = LayerKeys(l, tokens / bt);
  const size_t floats = static_cast<size_t>(tokens) * config_.n_kv_heads * config_.head_dim();
  st.thread = std::thread([this, &st, floats, keys = std::move(keys)] {
    for (int32_t l = 0; l < static_cast<int32_t>(keys.size()); ++l) {
      // Straight into buffers the policy will keep as its KV (no copy after
      // this one off the wire).
      absl::Status s = st.k[l].Resize(floats * sizeof(float));
      if (s.ok()) s = st.v[l].Resize(floats * sizeof(float));
      if (s.ok()) {
        s = FetchKeys(l, keys[l], reinterpret_cast<float*>(st.k[l].data()), reinterpret_cast<float*>(st.v[l].data()));
      }
      absl::MutexLock lock(&st.mu);
      st.status[l] = s;
      st.done[l] = true;
    }
  });
  return absl::OkStatus();
}

absl::Status WriteThroughCache::TakeStreamed(int32_t layer) {
  Stream& st = *stream_;
  absl::Status s;
  {
    absl::MutexLock lock(&st.mu);
    auto arrived = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(st.mu) { return static_cast<bool>(st.done[layer]); };
    st.mu.Await(absl::Condition(&arrived));
    s = st.status[layer];
  }
  st.loaded[layer] = true;
  if (s.ok()) s = inner_->AdoptPrefix(layer, st.tokens, std::move(st.k[layer]), std::move(st.v[layer]));
  st.k[layer] = MappedBuffer();
  st.v[layer] = MappedBuffer();
  if (!s.ok()) {
    return absl::Status(s.code(), absl::StrCat("write-through: the streamed prefix of layer ", layer,
                                               " could not be loaded (start the sequence without it): ", s.message()));
  }
  return absl::OkStatus();
}

void WriteThroughCache::AppendTokens(std::span<const int32_t> tokens) {
  const int32_t bt = options_.block_tokens;
  for (const int32_t t : tokens) {
    tokens_.push_back(t);
    if (tokens_.size() % static_cast<size_t>(bt) == 0) {
      const Hash128 parent = hashes_.empty() ? root_ : hashes_.back();
      hashes_.push_back(ChainHash(parent, std::span<const int32_t>(tokens_).last(static_cast<size_t>(bt))));
    }
  }
}

absl::Status WriteThroughCache::SkipStoredPrefix(int64_t tokens) {
  if (tokens % options_.block_tokens != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("write-through: a stored prefix of ", tokens, " tokens is not whole blocks of ", options_.block_tokens));
  }
  for (const Staging& s : staging_) {
    if (s.next_position != 0) return absl::FailedPreconditionError("write-through: the sequence has already started");
  }
  for (Staging& s : staging_) s.next_position = tokens;
  absl::MutexLock lock(&acks_->mu);
  for (int64_t& lead : acks_->leading) lead = tokens / options_.block_tokens;
  return absl::OkStatus();
}

absl::Status WriteThroughCache::Attend(const kernels::ExecContext& ctx, const model::AttendArgs& a) {
  if (stream_ != nullptr && !stream_->loaded[a.layer]) KVC_RETURN_IF_ERROR(TakeStreamed(a.layer));
  KVC_RETURN_IF_ERROR(inner_->Attend(ctx, a));
  Staging& s = staging_[a.layer];
  // Rows of a prefix stored before (SkipStoredPrefix) are not written again.
  if (a.first_position + a.num_tokens <= s.next_position) return absl::OkStatus();
  if (a.first_position != s.next_position) {
    return absl::InvalidArgumentError(absl::StrCat("write-through: layer ", a.layer, " chunk at position ",
                                                   a.first_position, ", expected ", s.next_position));
  }
  const int32_t bt = options_.block_tokens;
  const int64_t row = int64_t{config_.n_kv_heads} * config_.head_dim();
  for (int64_t i = 0; i < a.num_tokens; ++i) {
    const int64_t pos = a.first_position + i;
    const int64_t in_block = pos % bt;
    std::copy_n(a.k + i * row, row, s.k.begin() + in_block * row);
    std::copy_n(a.v + i * row, row, s.v.begin() + in_block * row);
    if (in_block + 1 < bt) continue;
    const int64_t block = pos / bt;
    if (block >= static_cast<int64_t>(hashes_.size())) {
      return absl::FailedPreconditionError(absl::StrCat("write-through: token ", pos,
                                                        " ran through the model before AppendTokens announced it"));
    }
    std::string encoded = EncodeKvBlock(KvBlockKey(options_, a.layer, hashes_[block]), shape_, block * bt, s.k.data(),
                                        s.v.data());
    KVC_RETURN_IF_ERROR(writer_->Submit(std::move(encoded), [acks = acks_, l = a.layer, block](bool stored) {
      if (stored) acks->Stored(l, block);
    }));
    ++blocks_written_;
  }
  s.next_position = a.first_position + a.num_tokens;
  return absl::OkStatus();
}

absl::StatusOr<int64_t> CachedPrefixTokens(BlockClient& client, const KvSyncOptions& options,
                                           const model::ModelConfig& config, std::string_view kv_origin,
                                           std::span<const int32_t> prompt, int64_t align) {
  KVC_RETURN_IF_ERROR(options.Validate());
  if (align <= 0) return absl::InvalidArgumentError(absl::StrCat("prefix load: align must be > 0, got ", align));
  if (prompt.size() < 2) return 0;
  // At least the last token runs through the model.
  const std::vector<Hash128> hashes =
      PrefixHashes(prompt.first(prompt.size() - 1), options.block_tokens, ChainRoot(kv_origin));
  if (hashes.empty()) return 0;
  std::vector<uint32_t> layers(config.n_layers);
  for (int32_t l = 0; l < config.n_layers; ++l) layers[l] = static_cast<uint32_t>(l);
  absl::StatusOr<uint32_t> cached = client.Lookup(options.tenant, options.model, layers, hashes);
  if (!cached.ok()) {
    KVC_LOG(kWarning, "prefix_lookup_failed").With("error", cached.status().ToString());
    return 0;
  }
  const int64_t blocks = std::min<int64_t>(*cached, static_cast<int64_t>(hashes.size()));
  return AlignPrefix(blocks * options.block_tokens, options.block_tokens, align);
}

absl::StatusOr<PrefixLoad> LoadCachedPrefix(BlockClient& client, const KvSyncOptions& options,
                                            const model::ModelConfig& config, std::span<const int32_t> prompt,
                                            cache::CachePolicy& policy, int64_t align) {
  PrefixLoad load;
  if (!policy.loads_prefix()) return load;  // it must run its prompt through the model
  const std::string origin = policy.kv_origin();
  KVC_ASSIGN_OR_RETURN(const int64_t cached_tokens, CachedPrefixTokens(client, options, config, origin, prompt, align));
  int64_t blocks = cached_tokens / options.block_tokens;
  if (blocks == 0) return load;
  const std::vector<Hash128> hashes =
      PrefixHashes(prompt.first(static_cast<size_t>(cached_tokens)), options.block_tokens, ChainRoot(origin));

  // Fetch every layer's blocks, keeping the leading run that arrived intact.
  const KvBlockShape shape = options.Shape(config);
  const int64_t elems = shape.elements();
  // fp32 rows the policy may keep as its KV (AdoptPrefix).
  std::vector<MappedBuffer> kb, vb;
  for (int32_t l = 0; l < config.n_layers; ++l) {
    kb.emplace_back(/*huge_pages=*/false, /*populate=*/true);
    vb.emplace_back(/*huge_pages=*/false, /*populate=*/true);
  }
  std::vector<BlockKey> keys;
  for (int32_t l = 0; l < config.n_layers && blocks > 0; ++l) {
    keys.clear();
    for (int64_t b = 0; b < blocks; ++b) keys.push_back(KvBlockKey(options, l, hashes[b]));
    KVC_RETURN_IF_ERROR(kb[l].Resize(static_cast<size_t>(blocks * elems) * sizeof(float)));
    KVC_RETURN_IF_ERROR(vb[l].Resize(static_cast<size_t>(blocks * elems) * sizeof(float)));
    float* k = reinterpret_cast<float*>(kb[l].data());
    float* v = reinterpret_cast<float*>(vb[l].data());
    int64_t intact = blocks;  // leading blocks verified
    const absl::Status s = client.Get(keys, [&](GotBlock& got) {
      const int64_t b = got.index;
      if (b >= intact) return;
      absl::Status ok = got.status;
      if (ok.ok()) ok = DecodeKvBlock(got.block, shape, k + b * elems, v + b * elems);
      if (ok.ok()) {
        load.bytes += static_cast<int64_t>(got.block.k.size() + got.block.v.size());
        return;
      }
      if (!absl::IsNotFound(ok)) {
        KVC_LOG(kWarning, "prefix_block_bad").With("layer", l).With("block", b).With("error", ok.ToString());
      }
      intact = b;
    });
    if (!s.ok()) {
      KVC_LOG(kWarning, "prefix_get_failed").With("layer", l).With("error", s.ToString());
      // A broken transfer loads nothing: the prompt is prefilled instead.
      blocks = 0;
      break;
    }
    blocks = std::min(blocks, intact);
  }
  // Fewer intact blocks than cached: aligned again.
  const int64_t tokens = AlignPrefix(blocks * options.block_tokens, options.block_tokens, align);
  blocks = tokens / options.block_tokens;
  if (blocks == 0) {
    load.bytes = 0;
    return load;
  }
  for (int32_t l = 0; l < config.n_layers; ++l) {
    KVC_RETURN_IF_ERROR(policy.AdoptPrefix(l, tokens, std::move(kb[l]), std::move(vb[l])));
  }
  load.tokens = tokens;
  load.blocks = blocks;
  return load;
}

}  // namespace kvc
