#include "worker/peer/context_shard.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "common/logging.h"
#include "common/status_macros.h"
#include "kernels/token_select.h"
#include "worker/cache/token_select.h"

namespace kvc::peer {

namespace k = ::kvc::kernels;

absl::StatusOr<std::unique_ptr<ContextShardServer>> ContextShardServer::Start(const ContextShardOptions& options) {
  std::unique_ptr<ContextShardServer> s(new ContextShardServer(options));
  ContextShardServer* self = s.get();
  KVC_ASSIGN_OR_RETURN(s->rpc_, RpcServer::Start(options.rpc, [self](uint8_t op, absl::string_view payload) {
                         return self->Handle(op, payload);
                       }));
  s->rpc_->OnDisconnect([self](uint64_t connection) { self->Drop(connection); });
  return s;
}

ContextShardServer::~ContextShardServer() { rpc_.reset(); }

int ContextShardServer::sequences() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(seqs_.size());
}

uint64_t ContextShardServer::bytes_held() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

void ContextShardServer::Drop(uint64_t connection) {
  absl::MutexLock lock(&mu_);
  for (auto it = seqs_.begin(); it != seqs_.end();) {
    if (it->second->connection == connection) {
      KVC_LOG(kInfo, "context_shard_dropped").With("seq", it->first).With("reason", "owner disconnected");
      bytes_ -= it->second->bytes;
      seqs_.erase(it++);
    } else {
      ++it;
    }
  }
}

absl::StatusOr<std::string> ContextShardServer::Handle(uint8_t op, absl::string_view payload) {
  Reader r(payload);
  switch (op) {
    case kOpen:
      return Open(r);
    case kAppend:
      return Append(r);
    case kLse:
      return Score(r, /*select=*/false);
    case kSelect:
      return Score(r, /*select=*/true);
    case kClose:
      return Close(r);
    default:
      return absl::InvalidArgumentError(absl::StrCat("context shard: unknown op ", op));
  }
}

absl::StatusOr<std::shared_ptr<ContextShardServer::Seq>> ContextShardServer::Find(uint64_t seq) const {
  absl::MutexLock lock(&mu_);
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return absl::NotFoundError(absl::StrCat("context shard: no sequence ", seq));
  return it->second;
}

absl::StatusOr<std::string> ContextShardServer::Open(Reader& r) {
  KVC_ASSIGN_OR_RETURN(const uint64_t id, r.Get<uint64_t>("sequence id"));
  auto seq = std::make_shared<Seq>();
  KVC_ASSIGN_OR_RETURN(seq->n_layers, r.Get<int32_t>("layers"));
  KVC_ASSIGN_OR_RETURN(seq->q_heads, r.Get<int32_t>("query heads"));
  KVC_ASSIGN_OR_RETURN(seq->kv_heads, r.Get<int32_t>("KV heads"));
  KVC_ASSIGN_OR_RETURN(seq->head_dim, r.Get<int32_t>("head dim"));
  KVC_RETURN_IF_ERROR(r.Done());
  if (seq->n_layers < 1 || seq->n_layers > 1024 || seq->kv_heads < 1 || seq->q_heads < seq->kv_heads ||
      seq->q_heads % seq->kv_heads != 0 || seq->head_dim < 1 || seq->head_dim > 1024 || seq->q_heads > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("context shard: bad shape: ", seq->n_layers, " layers, ",
                                                   seq->q_heads, " query heads, ", seq->kv_heads,
                                                   " KV heads, head dim ", seq->head_dim));
  }
  seq->connection = RpcServer::CurrentConnection();
  {
    absl::MutexLock lock(&seq->mu);
    seq->layers.resize(seq->n_layers);
  }
  absl::MutexLock lock(&mu_);
  if (!seqs_.emplace(id, std::move(seq)).second) {
    return absl::AlreadyExistsError(absl::StrCat("context shard: sequence ", id, " is open already"));
  }
  return std::string();
}

absl::StatusOr<std::string> ContextShardServer::Append(Reader& r) {
  KVC_ASSIGN_OR_RETURN(const uint64_t id, r.Get<uint64_t>("sequence id"));
  KVC_ASSIGN_OR_RETURN(const int32_t layer, r.Get<int32_t>("layer"));
  KVC_ASSIGN_OR_RETURN(const int64_t first, r.Get<int64_t>("first position"));
  KVC_ASSIGN_OR_RETURN(const int64_t n, r.Get<int64_t>("token count"));
  KVC_ASSIGN_OR_RETURN(std::shared_ptr<Seq> seq, Find(id));
  const size_t row = static_cast<size_t>(seq->kv_heads) * seq->head_dim;
  if (n < 1 || first < 0 || n > (int64_t{1} << 32) / static_cast<int64_t>(row)) {
    return absl::InvalidArgumentError(absl::StrCat("context shard: append of ", n, " tokens at ", first));
  }
  if (layer < 0 || layer >= seq->n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("context shard: layer ", layer, " of ", seq->n_layers));
  }
  KVC_ASSIGN_OR_RETURN(const float* kr, r.Floats(row * n, "keys"));
  KVC_ASSIGN_OR_RETURN(const float* vr, r.Floats(row * n, "values"));
  KVC_RETURN_IF_ERROR(r.Done());
  const uint64_t bytes = 2 * row * static_cast<uint64_t>(n) * sizeof(float);
  absl::MutexLock seq_lock(&seq->mu);
  Layer& l = seq->layers[layer];
  if (!l.positions.empty() && first <= l.positions.back()) {
    return absl::InvalidArgumentError(absl::StrCat("context shard: append at position ", first, " after position ",
                                                   l.positions.back()));
  }
  {
    absl::MutexLock lock(&mu_);
    if (bytes_ + bytes > options_.max_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat("context shard: holding ", n, " more tokens would exceed ",
                                                       options_.max_bytes, " bytes (", bytes_, " held)"));
    }
    bytes_ += bytes;
    seq->bytes += bytes;
  }
  l.k.insert(l.k.end(), kr, kr + row * n);
  l.v.insert(l.v.end(), vr, vr + row * n);
  for (int64_t i = 0; i < n; ++i) l.positions.push_back(first + i);
  return std::string();
}

absl::StatusOr<std::string> ContextShardServer::Score(Reader& r, bool select) {
  KVC_ASSIGN_OR_RETURN(const uint64_t id, r.Get<uint64_t>("sequence id"));
  KVC_ASSIGN_OR_RETURN(const int32_t layer, r.Get<int32_t>("layer"));
  KVC_ASSIGN_OR_RETURN(const int64_t begin, r.Get<int64_t>("begin"));
  KVC_ASSIGN_OR_RETURN(const int64_t end, r.Get<int64_t>("end"));
  int64_t want = 0, block = 0;
  if (select) {
    KVC_ASSIGN_OR_RETURN(want, r.Get<int64_t>("k"));
  } else {
    KVC_ASSIGN_OR_RETURN(block, r.Get<int64_t>("lse block"));
    if (block < 1) return absl::InvalidArgumentError(absl::StrCat("context shard: lse block ", block, " < 1"));
  }
  KVC_ASSIGN_OR_RETURN(std::shared_ptr<Seq> seq, Find(id));
  const int32_t hq = seq->q_heads, d = seq->head_dim;
  KVC_ASSIGN_OR_RETURN(const float* qbar, r.Floats(static_cast<size_t>(hq) * d, "query fingerprint"));
  const float* lse = nullptr;
  if (select) {
    KVC_ASSIGN_OR_RETURN(lse, r.Floats(hq, "global lse"));
  }
  KVC_RETURN_IF_ERROR(r.Done());
  if (select && want < 1) return absl::InvalidArgumentError(absl::StrCat("context shard: k ", want, " < 1"));

  if (layer < 0 || layer >= seq->n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("context shard: layer ", layer, " of ", seq->n_layers));
  }
  absl::MutexLock lock(&seq->mu);
  const Layer& l = seq->layers[layer];
  const int64_t lo = std::lower_bound(l.positions.begin(), l.positions.end(), begin) - l.positions.begin();
  const int64_t hi = std::lower_bound(l.positions.begin(), l.positions.end(), end) - l.positions.begin();
  const int64_t count = std::max<int64_t>(0, hi - lo);
  const size_t row = static_cast<size_t>(seq->kv_heads) * d;
  k::TokenSelectArgs a;
  a.qbar = qbar;
  a.num_q_heads = hq;
  if (count > 0) {
    a.pool = k::KvPool::Contiguous(l.k.data() + lo * row, nullptr, k::DType::kF32, count, seq->kv_heads, d);
  }
  a.num_candidates = count;
  a.select_begin = 0;
  a.select_end = count;
  const k::ExecContext ctx{k::Backend::kCpu};
  Writer w;
  if (!select) {
    // Block by block: every block lies within one range, whose rows are
    // consecutive positions.
    std::vector<int64_t> ids;
    std::vector<float> lse_out;
    for (int64_t i = lo; i < hi;) {
      const int64_t b = l.positions[i] / block;
      const int64_t j = std::lower_bound(l.positions.begin() + i, l.positions.begin() + hi, (b + 1) * block) -
                        l.positions.begin();
      if (l.positions[j - 1] - l.positions[i] != j - 1 - i) {
        return absl::InvalidArgumentError(
            absl::StrCat("context shard: block ", b, " of ", block, " positions is not held whole"));
      }
      const k::KvPool rows = k::KvPool::Contiguous(l.k.data() + i * row, nullptr, k::DType::kF32, j - i,
                                                   seq->kv_heads, d);
      KVC_RETURN_IF_ERROR(cache::AppendBlockLse(ctx, qbar, hq, rows, l.positions[i], l.positions[i],
                                                l.positions[j - 1] + 1, block, &ids, &lse_out));
      i = j;
    }
    w.Put<int64_t>(static_cast<int64_t>(ids.size()));
    for (size_t b = 0; b < ids.size(); ++b) {
      w.Put<int64_t>(ids[b]).PutFloats(lse_out.data() + b * hq, hq);
    }
    return w.Take();
  }
  const int64_t n = std::min(want, count);
  std::vector<int32_t> picked(n);
  std::vector<float> scores(n);
  if (n > 0) {
    a.global_lse = lse;
    a.k = n;
    a.selected = picked.data();
    a.selected_scores = scores.data();
    KVC_RETURN_IF_ERROR(k::TokenSelect(ctx, a));
  }
  w.Reserve(8 + n * (12 + 2 * row * sizeof(float)));
  w.Put<int64_t>(n);
  for (const int32_t i : picked) w.Put<int64_t>(l.positions[lo + i]);
  w.PutFloats(scores.data(), scores.size());
  for (const int32_t i : picked) w.PutFloats(l.k.data() + (lo + i) * row, row);
  for (const int32_t i : picked) w.PutFloats(l.v.data() + (lo + i) * row, row);
  return w.Take();
}

absl::StatusOr<std::string> ContextShardServer::Close(Reader& r) {
  KVC_ASSIGN_OR_RETURN(const uint64_t id, r.Get<uint64_t>("sequence id"));
  KVC_RETURN_IF_ERROR(r.Done());
  absl::MutexLock lock(&mu_);
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return absl::NotFoundError(absl::StrCat("context shard: no sequence ", id));
  bytes_ -= it->second->bytes;
  seqs_.erase(it);
  return std::string();
}

}  // namespace kvc::peer
