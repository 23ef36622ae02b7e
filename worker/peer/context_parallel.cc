#include "worker/peer/context_parallel.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "worker/cache/attend.h"
#include "worker/peer/context_shard.h"

namespace kvc::peer {

namespace k = ::kvc::kernels;

absl::Status ContextParallelOptions::Validate() const {
  KVC_RETURN_IF_ERROR(select.Validate());
  if (select.kv_dtype != k::DType::kF32) {
    return absl::InvalidArgumentError("context-parallel tokenselect: the KV must be fp32");
  }
  if (select.lse_block < 1 || range_tokens % select.lse_block != 0) {
    return absl::InvalidArgumentError(absl::StrCat("context-parallel tokenselect: range_tokens ", range_tokens,
                                                   " must be a multiple of select.lse_block ", select.lse_block,
                                                   " (>= 1): a block's lse is computed where the block is"));
  }
  if (select.pool_kernel > 1) {
    return absl::InvalidArgumentError(
        "context-parallel tokenselect: score pooling (pool > 1) is not supported across shards");
  }
  if (range_tokens < 1 || local_tokens < range_tokens + select.n_local ||
      local_tokens < select.budget() + 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "context-parallel tokenselect: local_tokens ", local_tokens, " must be >= range_tokens ", range_tokens,
        " + n_local ", select.n_local, " and > the budget ", select.budget(), "; range_tokens >= 1"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::shared_ptr<RpcClient>>> ConnectPeers(const std::vector<std::string>& addresses,
                                                                     const ucx::UcxOptions& ucx,
                                                                     absl::Duration call_timeout) {
  std::vector<std::shared_ptr<RpcClient>> peers;
  for (const std::string& a : addresses) {
    RpcClientOptions o;
    o.address = a;
    o.ucx = ucx;
    o.call_timeout = call_timeout;
    o.connect_timeout = std::min(call_timeout, absl::Seconds(10));
    KVC_ASSIGN_OR_RETURN(std::unique_ptr<RpcClient> c, RpcClient::Connect(o));
    peers.push_back(std::move(c));
  }
  return peers;
}

ContextParallelTokenSelect::ContextParallelTokenSelect(const model::ModelConfig& config,
                                                       const ContextParallelOptions& options,
                                                       std::vector<std::shared_ptr<RpcClient>> peers, uint64_t seq)
    : config_(config),
      options_(options),
      peers_(std::move(peers)),
      seq_(seq),
      local_first_(config.n_layers, 0),
      length_(config.n_layers, 0),
      init_k_(config.n_layers),
      init_v_(config.n_layers),
      sel_k_(config.n_layers),
      sel_v_(config.n_layers),
      ranges_(config.n_layers),
      gather_(config.n_kv_heads, config.head_dim(), k::DType::kF32) {
  for (int32_t l = 0; l < config.n_layers; ++l) {
    local_.emplace_back(config.n_kv_heads, config.head_dim(), k::DType::kF32);
    cache_.emplace_back(options.select.theta);
  }
}

absl::StatusOr<std::unique_ptr<ContextParallelTokenSelect>> ContextParallelTokenSelect::Create(
    const model::ModelConfig& config, const ContextParallelOptions& options,
    std::vector<std::shared_ptr<RpcClient>> peers) {
  KVC_RETURN_IF_ERROR(options.Validate());
  if (peers.empty()) return absl::InvalidArgumentError("context-parallel tokenselect: no peers");
  std::random_device rd;
  const uint64_t seq = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  std::unique_ptr<ContextParallelTokenSelect> p(new ContextParallelTokenSelect(config, options, peers, seq));
  Writer w;
  w.Put<uint64_t>(seq).Put<int32_t>(config.n_layers).Put<int32_t>(config.n_heads).Put<int32_t>(config.n_kv_heads)
      .Put<int32_t>(config.head_dim());
  const std::string open = w.Take();
  for (const std::shared_ptr<RpcClient>& peer : peers) {
    if (absl::StatusOr<std::string> r = peer->Roundtrip(kOpen, open); !r.ok()) {
      return absl::Status(r.status().code(),
                          absl::StrCat("context-parallel tokenselect: open on peer ", peer->address(), ": ",
                                       r.status().message()));
    }
  }
  return p;
}

ContextParallelTokenSelect::~ContextParallelTokenSelect() {
  Writer w;
  w.Put<uint64_t>(seq_);
  const std::string close = w.Take();
  std::vector<std::shared_ptr<RpcClient::Call>> calls;
  for (const std::shared_ptr<RpcClient>& peer : peers_) calls.push_back(peer->Send(kClose, close));
  for (size_t i = 0; i < calls.size(); ++i) (void)peers_[i]->Wait(calls[i]);  // a lost peer dropped it already
}

std::string ContextParallelTokenSelect::name() const {
  return absl::StrCat("tokenselect-cp(init=", options_.select.n_init, ",k=", options_.select.k,
                      ",local=", options_.select.n_local, ",peers=", peers_.size(), ")");
}

std::string ContextParallelTokenSelect::kv_origin() const {
  return absl::StrCat("tokenselect(init=", options_.select.n_init, ",k=", options_.select.k,
                      ",local=", options_.select.n_local, ")");
}

absl::Status ContextParallelTokenSelect::Lost(int32_t peer, int32_t layer, const absl::Status& s) const {
  std::vector<std::string> held;
  for (const Range& r : ranges_[layer]) {
    if (r.peer == peer) held.push_back(absl::StrCat("[", r.first, ", ", r.first + r.count, ")"));
  }
  return absl::UnavailableError(absl::StrCat("context-parallel sequence: the shard of tokens ",
                                             absl::StrJoin(held, " "), " on peer ", peers_[peer]->address(),
                                             " is lost: ", s.message()));
}

absl::Status ContextParallelTokenSelect::Attend(const k::ExecContext& ctx, const model::AttendArgs& a) {
  KVC_RETURN_IF_ERROR(failed_);
  KVC_RETURN_IF_ERROR(cache::CheckAttendArgs(config_, a));
  const int32_t l = a.layer;
  int64_t& past = length_[l];
  if (a.first_position != past) {
    return absl::InvalidArgumentError(absl::StrCat("tokenselect-cp: chunk at position ", a.first_position,
                                                   " does not follow the ", past, " tokens held"));
  }
  if (l == 0) {
    step_start_bytes_ = PeerBytes();
    step_shipped_bytes_ = 0;
    stats_.attended_last_step = 0;
  }
  const int64_t n = a.num_tokens;
  const int32_t hkv = config_.n_kv_heads, d = config_.head_dim();
  const size_t row = static_cast<size_t>(hkv) * d;
  cache::LayerKv& kv = local_[l];
  const int64_t first = local_first_[l];
  KVC_RETURN_IF_ERROR(kv.Reserve(past + n - first));
  kv.WriteRange(past - first, n, a.k, a.v);
  // The first tokens stay with the owner, whatever moves.
  const int64_t n_init = options_.select.n_init;
  for (int64_t t = past; t < std::min(past + n, n_init); ++t) {
    init_k_[l].insert(init_k_[l].end(), a.k + (t - past) * row, a.k + (t - past + 1) * row);
    init_v_[l].insert(init_v_[l].end(), a.v + (t - past) * row, a.v + (t - past + 1) * row);
  }

  const int64_t budget = options_.select.budget();
  int64_t count = 0;
  if (past <= budget) {
    // Everything, at original positions (all of it is local this early).
    count = past + n;
    slots_.resize(count);
    std::iota(slots_.begin(), slots_.end(), 0);
    cache_[l].Clear();
    query_positions_.resize(n);
    std::iota(query_positions_.begin(), query_positions_.end(), static_cast<int32_t>(past));
    KVC_RETURN_IF_ERROR(cache::AttendCausal(ctx, config_, a, kv.Pool(count), slots_.data(), slots_.data(), count,
                                            query_positions_.data()));
  } else {
    KVC_RETURN_IF_ERROR(Select(ctx, a, l, past));
    // [first n_init][selection][local window + chunk], compact positions.
    const int64_t k_sel = static_cast<int64_t>(cache_[l].selection().size());
    const int64_t window = options_.select.n_local + n;
    count = n_init + k_sel + window;
    KVC_RETURN_IF_ERROR(gather_.Reserve(count));
    gather_.WriteRange(0, n_init, init_k_[l].data(), init_v_[l].data());
    gather_.WriteRange(n_init, k_sel, sel_k_[l].data(), sel_v_[l].data());
    gather_.CopyRows(kv, past - options_.select.n_local - first, n_init + k_sel, window);
    slots_.resize(count);
    std::iota(slots_.begin(), slots_.end(), 0);
    query_positions_.resize(n);
    for (int64_t i = 0; i < n; ++i) query_positions_[i] = static_cast<int32_t>(count - n + i);
    KVC_RETURN_IF_ERROR(cache::AttendCausal(ctx, config_, a, gather_.Pool(count), slots_.data(), slots_.data(),
                                            count, query_positions_.data()));
  }
  past += n;
  const int64_t pairs = n * (count - n) + n * (n + 1) / 2;
  stats_.attended_last_step += pairs;
  stats_.attended_total += pairs;
  if (past - local_first_[l] > options_.local_tokens) {
    if (absl::Status s = ShipOldest(l); !s.ok()) {
      failed_ = s;
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status ContextParallelTokenSelect::Select(const k::ExecContext& ctx, const model::AttendArgs& a, int32_t l,
                                                int64_t past) {
  const int32_t hq = config_.n_heads, d = config_.head_dim();
  const size_t row = static_cast<size_t>(config_.n_kv_heads) * d;
  qbar_.resize(static_cast<size_t>(hq) * d);
  k::FingerprintArgs f;
  f.q = a.q;
  f.num_q = a.num_tokens;
  f.num_q_heads = hq;
  f.head_dim = d;
  f.rope = cache::ModelRope(config_);
  f.base_position = options_.select.n_local;
  f.qbar = qbar_.data();
  KVC_RETURN_IF_ERROR(k::QueryFingerprint(ctx, f));
  k::SelectionCache& cache = cache_[l];
  if (cache.ShouldReuse(qbar_)) {
    ++hits_;
    return absl::OkStatus();
  }
  const int64_t begin = options_.select.n_init, end = past - options_.select.n_local;
  // The peers holding eligible tokens of this layer.
  std::vector<int32_t> asked;
  for (const Range& r : ranges_[l]) {
    if (r.first < end && r.first + r.count > begin &&
        std::find(asked.begin(), asked.end(), r.peer) == asked.end()) {
      asked.push_back(r.peer);
    }
  }
  const auto lost = [&](size_t i, const absl::Status& s) {
    failed_ = Lost(asked[i], l, s);
    return failed_;
  };

  // Phase 1: per-head lse of every block of lse_block positions, from
  // whoever holds it, combined in block order (as TokenSelectPolicy with
  // the same lse_block does on one worker).
  const int64_t block = options_.select.lse_block;
  Writer w;
  w.Put<uint64_t>(seq_).Put<int32_t>(l).Put<int64_t>(begin).Put<int64_t>(end).Put<int64_t>(block);
  w.PutFloats(qbar_.data(), qbar_.size());
  const std::string lse_request = w.Take();
  std::vector<std::shared_ptr<RpcClient::Call>> calls;
  for (const int32_t p : asked) calls.push_back(peers_[p]->Send(kLse, lse_request));
  const int64_t local_begin = std::max(begin, local_first_[l]);
  const int64_t local_count = std::max<int64_t>(0, end - local_begin);
  k::TokenSelectArgs s;
  s.qbar = qbar_.data();
  s.num_q_heads = hq;
  if (local_count > 0) {
    const k::KvPool pool = local_[l].Pool(end - local_first_[l]);
    s.pool = k::KvPool::Contiguous(static_cast<const float*>(pool.k) + (local_begin - local_first_[l]) * row,
                                   nullptr, k::DType::kF32, local_count, config_.n_kv_heads, d);
  }
  s.num_candidates = local_count;
  s.select_begin = 0;
  s.select_end = local_count;
  std::vector<int64_t> ids;
  std::vector<float> block_lse;
  if (local_count > 0) {
    KVC_RETURN_IF_ERROR(cache::AppendBlockLse(ctx, qbar_.data(), hq, s.pool, local_begin, local_begin, end, block,
                                              &ids, &block_lse));
  }
  for (size_t i = 0; i < calls.size(); ++i) {
    absl::StatusOr<std::string> r = peers_[asked[i]]->Wait(calls[i]);
    if (!r.ok()) return lost(i, r.status());
    Reader rd(*r);
    absl::StatusOr<int64_t> m = rd.Get<int64_t>("block count");
    if (!m.ok() || *m < 0 || *m > (end - begin) / block + 2) return lost(i, absl::DataLossError("a bad lse answer"));
    for (int64_t j = 0; j < *m; ++j) {
      absl::StatusOr<int64_t> id = rd.Get<int64_t>("block index");
      absl::StatusOr<const float*> v = rd.Floats(hq, "lse");
      if (!id.ok() || !v.ok()) return lost(i, absl::DataLossError("a short lse answer"));
      ids.push_back(*id);
      block_lse.insert(block_lse.end(), *v, *v + hq);
    }
  }
  // Block order, as one worker combines them.
  std::vector<size_t> order(ids.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t x, size_t y) { return ids[x] < ids[y]; });
  std::vector<float> ordered;
  ordered.reserve(block_lse.size());
  for (const size_t o : order) ordered.insert(ordered.end(), block_lse.begin() + o * hq, block_lse.begin() + (o + 1) * hq);
  std::vector<float> lse(hq);
  k::CombineLse(ordered, hq, lse.data());

  // Phase 2: every shard's top-k under the global lse, with its rows.
  const int64_t want = options_.select.k;
  w.Put<uint64_t>(seq_).Put<int32_t>(l).Put<int64_t>(begin).Put<int64_t>(end).Put<int64_t>(want);
  w.PutFloats(qbar_.data(), qbar_.size()).PutFloats(lse.data(), lse.size());
  const std::string select_request = w.Take();
  calls.clear();
  for (const int32_t p : asked) calls.push_back(peers_[p]->Send(kSelect, select_request));
  std::vector<k::CandidateSet> sets(asked.size() + 1);
  // Where each offered token's rows are: (set, offset).
  std::vector<std::vector<const float*>> rows_k(asked.size() + 1), rows_v(asked.size() + 1);
  const int64_t local_k = std::min(want, local_count);
  std::vector<int32_t> picked(local_k);
  std::vector<float> scores(local_k);
  if (local_k > 0) {
    s.global_lse = lse.data();
    s.k = local_k;
    s.selected = picked.data();
    s.selected_scores = scores.data();
    KVC_RETURN_IF_ERROR(k::TokenSelect(ctx, s));
    const k::KvPool pool = local_[l].Pool(end - local_first_[l]);
    for (int64_t i = 0; i < local_k; ++i) {
      const int64_t t = local_begin + picked[i];
      sets[0].index.push_back(t);
      sets[0].score.push_back(scores[i]);
      rows_k[0].push_back(static_cast<const float*>(pool.k) + (t - local_first_[l]) * row);
      rows_v[0].push_back(static_cast<const float*>(pool.v) + (t - local_first_[l]) * row);
    }
  }
  std::vector<std::string> answers(asked.size());
  for (size_t i = 0; i < calls.size(); ++i) {
    absl::StatusOr<std::string> r = peers_[asked[i]]->Wait(calls[i]);
    if (!r.ok()) return lost(i, r.status());
    answers[i] = std::move(*r);
    Reader rd(answers[i]);
    absl::StatusOr<int64_t> m = rd.Get<int64_t>("count");
    if (!m.ok() || *m < 0 || *m > want) return lost(i, absl::DataLossError("a bad candidate set"));
    k::CandidateSet& set = sets[i + 1];
    for (int64_t j = 0; j < *m; ++j) {
      absl::StatusOr<int64_t> pos = rd.Get<int64_t>("position");
      if (!pos.ok()) return lost(i, pos.status());
      set.index.push_back(*pos);
    }
    absl::StatusOr<const float*> sc = rd.Floats(*m, "scores");
    absl::StatusOr<const float*> kr = rd.Floats(*m * row, "keys");
    absl::StatusOr<const float*> vr = rd.Floats(*m * row, "values");
    if (!sc.ok() || !kr.ok() || !vr.ok() || !rd.Done().ok()) return lost(i, absl::DataLossError("a short candidate set"));
    set.score.assign(*sc, *sc + *m);
    for (int64_t j = 0; j < *m; ++j) {
      rows_k[i + 1].push_back(*kr + j * row);
      rows_v[i + 1].push_back(*vr + j * row);
    }
  }
  const k::CandidateSet merged = k::MergeTopK(sets, want);
  std::vector<int32_t> selection(merged.index.begin(), merged.index.end());
  // The chosen tokens' rows, in selection order.
  sel_k_[l].resize(selection.size() * row);
  sel_v_[l].resize(selection.size() * row);
  std::vector<size_t> next(sets.size(), 0);
  for (size_t j = 0; j < selection.size(); ++j) {
    const int64_t t = merged.index[j];
    bool found = false;
    for (size_t si = 0; si < sets.size() && !found; ++si) {
      // Each set is ascending and so is the merge: a moving cursor per set.
      size_t& c = next[si];
      while (c < sets[si].index.size() && sets[si].index[c] < t) ++c;
      if (c < sets[si].index.size() && sets[si].index[c] == t) {
        std::memcpy(sel_k_[l].data() + j * row, rows_k[si][c], row * sizeof(float));
        std::memcpy(sel_v_[l].data() + j * row, rows_v[si][c], row * sizeof(float));
        found = true;
      }
    }
    if (!found) return absl::InternalError(absl::StrCat("tokenselect-cp: merged token ", t, " has no rows"));
  }
  cache.Store(qbar_, std::move(selection));
  ++selections_;
  return absl::OkStatus();
}

absl::Status ContextParallelTokenSelect::ShipOldest(int32_t l) {
  const int64_t first = local_first_[l], count = options_.range_tokens;
  const int32_t peer = static_cast<int32_t>(ranges_[l].size() % peers_.size());
  const size_t row = static_cast<size_t>(config_.n_kv_heads) * config_.head_dim();
  const k::KvPool pool = local_[l].Pool(count);
  Writer w;
  w.Reserve(32 + 2 * count * row * sizeof(float));
  w.Put<uint64_t>(seq_).Put<int32_t>(l).Put<int64_t>(first).Put<int64_t>(count);
  w.PutFloats(static_cast<const float*>(pool.k), count * row).PutFloats(static_cast<const float*>(pool.v), count * row);
  const uint64_t before = PeerBytes();
  absl::StatusOr<std::string> r = peers_[peer]->Roundtrip(kAppend, w.Take());
  step_shipped_bytes_ += PeerBytes() - before;
  if (!r.ok()) {
    return absl::Status(r.status().code(), absl::StrCat("context-parallel sequence: moving tokens [", first, ", ",
                                                        first + count, ") to peer ", peers_[peer]->address(), ": ",
                                                        r.status().message()));
  }
  ranges_[l].push_back(Range{peer, first, count});
  remote_kv_bytes_ += 2 * count * row * sizeof(float);
  const int64_t keep = length_[l] - first - count;
  local_[l].MoveRows(count, 0, keep);
  local_first_[l] = first + count;
  return absl::OkStatus();
}

uint64_t ContextParallelTokenSelect::PeerBytes() const {
  uint64_t total = 0;
  for (const auto& p : peers_) total += p->bytes_sent() + p->bytes_received();
  return total;
}

uint64_t ContextParallelTokenSelect::last_step_bytes() const {
  return PeerBytes() - step_start_bytes_ - step_shipped_bytes_;
}

cache::PolicyStats ContextParallelTokenSelect::stats() const {
  cache::PolicyStats s = stats_;
  s.tokens_seen = length_.empty() ? 0 : length_.back();
  int64_t resident = 0;
  for (int32_t l = 0; l < config_.n_layers; ++l) {
    const int64_t here = length_[l] - local_first_[l] + std::min<int64_t>(local_first_[l], options_.select.n_init);
    resident = std::max(resident, here);
    s.resident_bytes += (here + static_cast<int64_t>(cache_[l].selection().size())) * local_[l].slot_bytes();
  }
  s.resident_tokens = resident;
  return s;
}

}  // namespace kvc::peer
