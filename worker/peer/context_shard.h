// Context parallelism (DESIGN.md "Many nodes"): a sequence's context split by
// token range over several workers. The worker that owns the sequence runs
// the model; every other worker holds ranges of its KV (ContextShardServer)
// and, for each query of each layer, answers the exact two-phase TokenSelect
// over its ranges (kernels/token_select.h):
//   1. kLse:    the per-head log-sum-exp of its eligible candidates' logits;
//   2. kSelect: with the global lse (combined by the owner), the normalised
//               scores and its local top-k, returned with the selected
//               tokens' positions, scores, keys and values.
// The owner merges the candidate sets into the global selection
// (kernels::MergeTopK), which equals single-worker TokenSelect's.
//
// The messages (worker/peer/ucx_rpc.h carries them over UCX), every integer
// little-endian, floats fp32, rows [n][Hkv][D]:
//   kOpen    seq u64, layers i32, q_heads i32, kv_heads i32, head_dim i32
//   kAppend  seq u64, layer i32, first i64, n i64, k rows, v rows
//            (positions first .. first + n - 1, after any held: ascending)
//   kLse     seq u64, layer i32, begin i64, end i64, block i64, qbar [Hq][D]
//            -> n i64, then n times: block index i64, lse [Hq]: the lse of
//               the held tokens at positions in [begin, end) of every
//               block of `block` positions with any (ranges are whole blocks)
//   kSelect  seq u64, layer i32, begin i64, end i64, k i64, qbar [Hq][D], lse [Hq]
//            -> n i64, positions i64[n], scores f32[n], k rows, v rows
//               (n = min(k, eligible held tokens), positions ascending)
//   kClose   seq u64
// A sequence's state goes with kClose or when the connection that opened it
// ends (the owner died: nothing is left behind).
#ifndef KVC_WORKER_PEER_CONTEXT_SHARD_H_
#define KVC_WORKER_PEER_CONTEXT_SHARD_H_

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "worker/peer/ucx_rpc.h"

namespace kvc::peer {

enum ShardOp : uint8_t { kOpen = 1, kAppend = 2, kLse = 3, kSelect = 4, kClose = 5 };

// Little-endian writer and reader of the messages above.
class Writer {
 public:
  template <typename T>
  Writer& Put(T x) {
    out_.append(reinterpret_cast<const char*>(&x), sizeof(T));
    return *this;
  }
  Writer& PutFloats(const float* p, size_t n) {
    out_.append(reinterpret_cast<const char*>(p), n * sizeof(float));
    return *this;
  }
  std::string Take() {
    std::string taken = std::move(out_);
    out_.clear();
    return taken;
  }
  void Reserve(size_t n) { out_.reserve(n); }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(absl::string_view in) : in_(in) {}
  template <typename T>
  absl::StatusOr<T> Get(absl::string_view what) {
    if (in_.size() < sizeof(T)) return Short(what);
    T x;
    std::memcpy(&x, in_.data(), sizeof(T));
    in_.remove_prefix(sizeof(T));
    return x;
  }
  // n floats, viewed in place (the caller copies when it keeps them).
  absl::StatusOr<const float*> Floats(size_t n, absl::string_view what) {
    if (n > in_.size() / sizeof(float)) return Short(what);
    const float* p = reinterpret_cast<const float*>(in_.data());
    in_.remove_prefix(n * sizeof(float));
    return p;
  }
  absl::Status Done() const {
    if (in_.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("peer message has ", in_.size(), " bytes too many"));
  }

 private:
  absl::Status Short(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat("peer message ends before its ", what));
  }
  absl::string_view in_;
};

struct ContextShardOptions {
  RpcServerOptions rpc;
  uint64_t max_bytes = 8ull << 30;  // KV held for all sequences (RESOURCE_EXHAUSTED beyond)
};

class ContextShardServer {
 public:
  static absl::StatusOr<std::unique_ptr<ContextShardServer>> Start(const ContextShardOptions& options);
  ~ContextShardServer();
  int port() const { return rpc_->port(); }
  int sequences() const;
  uint64_t bytes_held() const;

 private:
  struct Layer {
    std::vector<float> k, v;         // rows, ascending positions
    std::vector<int64_t> positions;
  };
  struct Seq {
    uint64_t connection = 0;
    uint64_t bytes = 0;  // guarded by the server's mu_
    int32_t n_layers = 0;
    int32_t q_heads = 0, kv_heads = 0, head_dim = 0;
    absl::Mutex mu;
    std::vector<Layer> layers ABSL_GUARDED_BY(mu);
  };

  explicit ContextShardServer(const ContextShardOptions& options) : options_(options) {}
  absl::StatusOr<std::string> Handle(uint8_t op, absl::string_view payload);
  absl::StatusOr<std::shared_ptr<Seq>> Find(uint64_t seq) const;
  absl::StatusOr<std::string> Open(Reader& r);
  absl::StatusOr<std::string> Append(Reader& r);
  absl::StatusOr<std::string> Score(Reader& r, bool select);
  absl::StatusOr<std::string> Close(Reader& r);
  void Drop(uint64_t connection);

  ContextShardOptions options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Seq>> seqs_ ABSL_GUARDED_BY(mu_);
  uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::unique_ptr<RpcServer> rpc_;  // last: stopped first
};

}  // namespace kvc::peer

#endif  // KVC_WORKER_PEER_CONTEXT_SHARD_H_
