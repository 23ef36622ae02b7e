// kvcache_bench: kvcached against redis-server on the same blocks, in one run.
//
// Starts both servers as child processes, then for each block size and client
// thread count measures Put, Get from the host tier and Get from the RocksDB
// tier (kvcached restarted with a host budget smaller than one block, so every
// block lives only on disk) and the Redis equivalents (pipelined SET / GET of
// the serialized block). Prints one table; see docs/BENCHMARKS.md.
//
// What is timed: one batch (--batch_blocks blocks) per sample, from the start
// of the request until the last byte of the last reply is in client memory
// (kvcache: Put RPC / whole Get stream incl. Finish; Redis: 32 appended
// commands + 32 replies). Synthetic generation, request building and
// verification are outside the timed region. Throughput counts k+v payload
// bytes only (not keys, protobuf or RESP framing), in GB/s = 1e9 B/s.
//
// kvcache connections: each client thread gets its own grpc::Channel with a
// distinct channel argument, so the global subchannel pool cannot merge them
// into one HTTP/2 connection (separate CacheClient objects would share one).
// The channel is configured as CacheClient::Connect does and the calls are the
// ones CacheClient::Put / CacheClient::Get make (stub Put, ClientReader<GetResponse>).
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/sync_stream.h>
#include <hiredis/hiredis.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "bench/child_process.h"
#include "bench/redis_util.h"
#include "common/allocator.h"
#include "common/hash.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "kvcache/v1/cache.grpc.pb.h"
#include "worker/cache_client.h"
#include "worker/synthetic.h"

ABSL_FLAG(std::string, kvcached, "build/cachesvc/server/kvcached",
          "kvcached binary; when missing, <dir of this binary>/../cachesvc/server/kvcached is tried");
ABSL_FLAG(std::string, redis_server, "redis-server", "redis-server binary (searched in PATH)");
ABSL_FLAG(std::string, block_sizes, "256KiB,2MiB",
          "Comma-separated k+v bytes per block; each a multiple of 4 KiB (fp16, 8 KV heads, head_dim 128)");
ABSL_FLAG(std::string, threads, "1,2,4,8", "Comma-separated client thread counts");
ABSL_FLAG(int, batch_blocks, 32, "Blocks per Put request / keys per Get stream / Redis pipeline");
ABSL_FLAG(std::string, working_set_bytes, "256MiB",
          "Distinct payload bytes per block size (kept by both servers; well inside the host budget)");
ABSL_FLAG(std::string, host_capacity_bytes, "4GiB", "kvcached --host_capacity_bytes for the host-tier runs");
ABSL_FLAG(std::string, disk_capacity_bytes, "16GiB", "kvcached --disk_capacity_bytes");
ABSL_FLAG(int, server_threads, 8, "kvcached --worker_threads");
ABSL_FLAG(double, cell_seconds, 1.5, "Time limit of one measurement cell");
ABSL_FLAG(std::string, cell_bytes, "8GiB", "Payload limit of one measurement cell");
ABSL_FLAG(std::string, kvcache_get_path, "both",
          "kvcache Get client: 'proto' (GetResponse parsed by protobuf, as CacheClient), 'raw' "
          "(ByteBuffer stream; k and v copied once into a staging buffer) or 'both'");
ABSL_FLAG(int, verify_batches, 4, "Batches re-read and checksummed after each Get cell (untimed)");
ABSL_FLAG(bool, diagnose, true, "Also print a latency breakdown of one client thread (1 vs 32 blocks, parse cost)");
ABSL_FLAG(bool, quick, false, "Smoke run: threads 1,4, 0.2 s cells, 64 MiB working set, no --diagnose");
ABSL_FLAG(bool, markdown, false, "Print the table as Markdown");
ABSL_FLAG(std::string, tmp_dir, "/tmp", "Where the servers' data directories and logs go");

namespace kvc::bench {
namespace {

namespace v1 = ::kvcache::v1;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kBytesPerToken = 2 /*k,v*/ * 8 /*heads*/ * 128 /*head_dim*/ * 2 /*fp16*/;

double Since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// ---------------------------------------------------------------- settings

struct Settings {
  std::string kvcached;
  std::string redis_server;
  std::vector<uint64_t> block_sizes;
  std::vector<int> threads;
  int batch = 32;
  uint64_t working_set = 0;
  uint64_t host_capacity = 0;
  std::string disk_capacity;
  int server_threads = 8;
  double cell_seconds = 1.5;
  uint64_t cell_bytes = 0;
  bool proto_path = true, raw_path = true;
  int verify_batches = 4;
  bool diagnose = true;
  bool markdown = false;
  std::string tmp_dir;
};

absl::StatusOr<std::string> FindKvcached(const std::string& flag, const char* argv0) {
  if (std::filesystem::exists(flag)) return std::filesystem::absolute(flag).string();
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) self = argv0;
  const std::filesystem::path alt = self.parent_path() / ".." / "cachesvc" / "server" / "kvcached";
  if (std::filesystem::exists(alt)) return std::filesystem::canonical(alt).string();
  return absl::NotFoundError(absl::StrCat("kvcached not found at ", flag, " nor ", alt.string()));
}

absl::StatusOr<Settings> ParseSettings(const char* argv0) {
  Settings s;
  KVC_ASSIGN_OR_RETURN(s.kvcached, FindKvcached(absl::GetFlag(FLAGS_kvcached), argv0));
  s.redis_server = absl::GetFlag(FLAGS_redis_server);
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_block_sizes), ',', absl::SkipEmpty())) {
    KVC_ASSIGN_OR_RETURN(uint64_t b, ParseByteSize(part));
    if (b == 0 || b % kBytesPerToken != 0) {
      return absl::InvalidArgumentError(absl::StrCat("--block_sizes: ", part, " is not a multiple of 4 KiB"));
    }
    s.block_sizes.push_back(b);
  }
  const bool quick = absl::GetFlag(FLAGS_quick);
  for (absl::string_view part : absl::StrSplit(quick ? "1,4" : absl::GetFlag(FLAGS_threads), ',', absl::SkipEmpty())) {
    int t = 0;
    if (!absl::SimpleAtoi(part, &t) || t < 1 || t > 256) {
      return absl::InvalidArgumentError(absl::StrCat("--threads: bad count '", part, "'"));
    }
    s.threads.push_back(t);
  }
  s.batch = absl::GetFlag(FLAGS_batch_blocks);
  if (s.batch < 1 || s.batch > 256) return absl::InvalidArgumentError("--batch_blocks must be in [1, 256]");
  KVC_ASSIGN_OR_RETURN(s.working_set, ParseByteSize(quick ? "64MiB" : absl::GetFlag(FLAGS_working_set_bytes)));
  KVC_ASSIGN_OR_RETURN(s.host_capacity, ParseByteSize(absl::GetFlag(FLAGS_host_capacity_bytes)));
  s.disk_capacity = absl::GetFlag(FLAGS_disk_capacity_bytes);
  s.server_threads = absl::GetFlag(FLAGS_server_threads);
  s.cell_seconds = quick ? 0.2 : absl::GetFlag(FLAGS_cell_seconds);
  KVC_ASSIGN_OR_RETURN(s.cell_bytes, ParseByteSize(absl::GetFlag(FLAGS_cell_bytes)));
  const std::string path = absl::GetFlag(FLAGS_kvcache_get_path);
  if (path != "proto" && path != "raw" && path != "both") {
    return absl::InvalidArgumentError("--kvcache_get_path must be proto, raw or both");
  }
  s.proto_path = path != "raw";
  s.raw_path = path != "proto";
  s.verify_batches = absl::GetFlag(FLAGS_verify_batches);
  s.diagnose = absl::GetFlag(FLAGS_diagnose) && !quick;
  s.markdown = absl::GetFlag(FLAGS_markdown);
  s.tmp_dir = absl::GetFlag(FLAGS_tmp_dir);
  return s;
}

// ---------------------------------------------------------------- servers

// kvcached in a fresh temporary data directory.
class Kvcached {
 public:
  static absl::StatusOr<std::unique_ptr<Kvcached>> Start(const Settings& s, uint64_t host_capacity,
                                                         const std::string& tag) {
    auto k = std::unique_ptr<Kvcached>(new Kvcached);
    std::string dir_template = s.tmp_dir + "/kvcache_bench_" + tag + "_XXXXXX";
    if (mkdtemp(dir_template.data()) == nullptr) return absl::InternalError("mkdtemp " + dir_template);
    k->dir_ = dir_template;
    const std::string port_file = k->dir_ + "/port";
    k->log_ = k->dir_ + "/kvcached.log";
    std::vector<std::string> argv = {
        s.kvcached,
        "--listen_address=127.0.0.1:0",
        "--port_file=" + port_file,
        "--data_dir=" + k->dir_ + "/data",
        "--metrics_address=",
        absl::StrCat("--host_capacity_bytes=", host_capacity),
        "--disk_capacity_bytes=" + s.disk_capacity,
        absl::StrCat("--worker_threads=", s.server_threads),
        "--flush_host_on_shutdown=false",
        "--log_level=warning",
    };
    k->cmd_ = absl::StrJoin(argv, " ");
    KVC_ASSIGN_OR_RETURN(k->proc_, ChildProcess::Start(argv, k->log_));
    const auto t0 = Clock::now();
    while (true) {
      std::ifstream in(port_file);
      int port = 0;
      if (in >> port && port > 0) {
        k->port_ = port;
        break;
      }
      if (!k->proc_->Running()) return absl::InternalError("kvcached exited at start; see " + k->log_);
      if (Since(t0) > 60) return absl::DeadlineExceededError("kvcached wrote no port file in 60 s; see " + k->log_);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ClientOptions opts;
    opts.address = k->address();
    KVC_ASSIGN_OR_RETURN(k->client_, CacheClient::Connect(opts));
    KVC_RETURN_IF_ERROR(k->client_->WaitForReady(absl::Seconds(30)));
    return k;
  }

  ~Kvcached() {
    client_.reset();
    if (proc_) proc_->Stop();
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  CacheClient* client() { return client_.get(); }
  const std::string& command() const { return cmd_; }

 private:
  Kvcached() = default;
  std::string dir_, log_, cmd_;
  int port_ = 0;
  std::unique_ptr<ChildProcess> proc_;
  std::unique_ptr<CacheClient> client_;
};

// ---------------------------------------------------------------- data

// The pre-generated blocks of one block size, in both systems' forms.
struct Workload {
  SyntheticSpec spec;
  uint64_t block_bytes = 0;
  int batch = 32;
  std::vector<BlockKey> keys;
  std::vector<std::string> redis_keys;    // BlockKey::Encode()
  std::vector<std::string> wire;          // serialized v1::Block (the Redis value)
  std::vector<uint64_t> checksums;        // XXH3 of k||v per block
  std::vector<v1::PutRequest> puts;       // one per batch
  std::vector<v1::GetRequest> gets;       // one per batch
  size_t batches() const { return puts.size(); }
};

Workload MakeWorkload(const Settings& s, uint64_t block_bytes) {
  Workload w;
  w.block_bytes = block_bytes;
  w.batch = s.batch;
  w.spec.block_tokens = static_cast<uint32_t>(block_bytes / kBytesPerToken);
  w.spec.seq_seed = block_bytes;
  const uint64_t batch_bytes = block_bytes * s.batch;
  const size_t nbatches = std::max<uint64_t>(
      {(s.working_set + batch_bytes - 1) / batch_bytes, static_cast<uint64_t>(*std::max_element(s.threads.begin(), s.threads.end())), 2});
  const uint32_t n = static_cast<uint32_t>(nbatches * s.batch);
  w.keys = SyntheticKeys(w.spec, n);
  w.puts.resize(nbatches);
  w.gets.resize(nbatches);
  v1::Block block;
  for (uint32_t i = 0; i < n; ++i) {
    SyntheticBlock(w.spec, i, w.keys[i], &block);
    w.checksums.push_back(block.checksum());
    w.wire.push_back(block.SerializeAsString());
    w.redis_keys.push_back(w.keys[i].Encode());
    *w.puts[i / s.batch].add_blocks() = block;
    w.keys[i].ToProto(w.gets[i / s.batch].add_keys());
  }
  return w;
}

// ---------------------------------------------------------------- cells

struct CellResult {
  double seconds = 0;
  uint64_t bytes = 0, blocks = 0;
  std::vector<double> batch_ms;
  uint64_t host_hits = 0, disk_hits = 0, misses = 0;

  double GBps() const { return seconds > 0 ? bytes / seconds / 1e9 : 0; }
  double BlocksPerSec() const { return seconds > 0 ? blocks / seconds : 0; }
  double Percentile(double p) const {
    if (batch_ms.empty()) return 0;
    std::vector<double> v = batch_ms;
    const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * v.size()));
    std::nth_element(v.begin(), v.begin() + i, v.end());
    return v[i];
  }
};

// What one batch did.
struct BatchOutcome {
  uint64_t blocks = 0, host = 0, disk = 0, misses = 0;
};

// Runs `fn(thread, batch_index)` on `threads` threads until the time or byte
// budget of the cell is spent. Batches are handed out round-robin over the
// working set, so concurrent threads work on different batches.
template <typename PerThread, typename Fn>
absl::StatusOr<CellResult> RunCell(const Settings& s, const Workload& w, std::vector<PerThread>& state, Fn fn) {
  const int threads = static_cast<int>(state.size());
  const uint64_t batch_bytes = w.block_bytes * w.batch;
  const uint64_t max_tickets = std::max<uint64_t>(s.cell_bytes / batch_bytes, threads);
  // At least two batches per thread, so slow cells still give a p50.
  const uint64_t min_tickets = std::min<uint64_t>(max_tickets, 2ull * threads);
  std::atomic<uint64_t> ticket{0};
  std::atomic<bool> stop{false};
  std::atomic<int> ready{0};
  std::vector<CellResult> per(threads);
  std::vector<absl::Status> errors(threads);
  Clock::time_point t0;
  std::atomic<bool> go{false};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      const auto deadline = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s.cell_seconds));
      while (!stop.load(std::memory_order_relaxed)) {
        const uint64_t k = ticket.fetch_add(1);
        if (k >= max_tickets || (k >= min_tickets && Clock::now() >= deadline)) break;
        const auto b0 = Clock::now();
        absl::StatusOr<BatchOutcome> out = fn(state[t], k % w.batches());
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - b0).count();
        if (!out.ok()) {
          errors[t] = out.status();
          stop = true;
          break;
        }
        per[t].batch_ms.push_back(ms);
        per[t].blocks += out->blocks;
        per[t].host_hits += out->host;
        per[t].disk_hits += out->disk;
        per[t].misses += out->misses;
      }
    });
  }
  while (ready.load() < threads) std::this_thread::yield();
  t0 = Clock::now();
  go.store(true, std::memory_order_release);
  for (std::thread& th : pool) th.join();
  CellResult r;
  r.seconds = Since(t0);
  for (int t = 0; t < threads; ++t) {
    if (!errors[t].ok()) return errors[t];
    r.blocks += per[t].blocks;
    r.host_hits += per[t].host_hits;
    r.disk_hits += per[t].disk_hits;
    r.misses += per[t].misses;
    r.batch_ms.insert(r.batch_ms.end(), per[t].batch_ms.begin(), per[t].batch_ms.end());
  }
  r.bytes = r.blocks * w.block_bytes;
  return r;
}

// ---------------------------------------------------------------- kvcache client

// One HTTP/2 connection per thread (see the file comment).
struct KvConn {
  std::unique_ptr<kvc::CacheClient> client;  // the same channel setup a worker uses
  std::shared_ptr<grpc::Channel> channel;
  v1::KVCache::Stub* stub = nullptr;
  std::string staging;  // raw path: where k and v of one batch land
  std::vector<grpc::Slice> slices;
};

KvConn MakeKvConn(const std::string& address, int index) {
  kvc::ClientOptions o;
  o.address = address;
  o.connection_index = index;  // distinct HTTP/2 connection per thread
  KvConn c;
  absl::StatusOr<std::unique_ptr<kvc::CacheClient>> client = kvc::CacheClient::Connect(o);
  if (!client.ok()) {
    std::fprintf(stderr, "kvcache_bench: %s\n", client.status().ToString().c_str());
    std::exit(1);
  }
  c.client = *std::move(client);
  c.channel = c.client->channel();
  c.stub = c.client->stub();
  return c;
}

void SetDeadline(grpc::ClientContext* ctx) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
}

absl::StatusOr<BatchOutcome> KvPut(KvConn& c, const v1::PutRequest& req) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::PutResponse resp;
  grpc::Status st = c.stub->Put(&ctx, req, &resp);
  if (!st.ok()) return FromGrpc(st);
  if (resp.stored() != static_cast<uint32_t>(req.blocks_size())) {
    return absl::InternalError(absl::StrCat("Put stored ", resp.stored(), " of ", req.blocks_size()));
  }
  return BatchOutcome{static_cast<uint64_t>(req.blocks_size()), 0, 0, 0};
}

void CountTier(int tier, BatchOutcome* out) {
  if (tier == v1::TIER_HOST) ++out->host;
  else if (tier == v1::TIER_DISK) ++out->disk;
  else ++out->misses;
}

// The CacheClient::Get path: every GetResponse parsed by protobuf. When
// `check` is set, each block's k||v is checksummed against `expected`.
absl::StatusOr<BatchOutcome> KvGetProto(KvConn& c, const v1::GetRequest& req, const uint64_t* expected) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  std::unique_ptr<grpc::ClientReader<v1::GetResponse>> reader = c.stub->Get(&ctx, req);
  v1::GetResponse resp;
  BatchOutcome out;
  while (reader->Read(&resp)) {
    if (resp.error_code() != 0) {
      ++out.misses;
      continue;
    }
    CountTier(resp.tier(), &out);
    ++out.blocks;
    if (expected != nullptr) {
      const uint64_t sum = BlockChecksum(resp.block().k(), resp.block().v());
      if (sum != expected[resp.index()] || resp.block().checksum() != sum) {
        return absl::DataLossError(absl::StrCat("kvcache block ", resp.index(), " checksum mismatch"));
      }
    }
  }
  KVC_RETURN_IF_ERROR(FromGrpc(reader->Finish()));
  return out;
}

// Walks protobuf wire format over a sequence of slices without copying,
// except for CopyOut.
class SliceReader {
 public:
  explicit SliceReader(const std::vector<grpc::Slice>& slices) : slices_(slices) { Normalize(); }
  uint64_t consumed() const { return consumed_; }
  bool ReadByte(uint8_t* b) {
    if (s_ >= slices_.size()) return false;
    *b = slices_[s_].begin()[off_];
    Advance(1);
    return true;
  }
  bool ReadVarint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b;
      if (!ReadByte(&b)) return false;
      *v |= uint64_t{b & 0x7fu} << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  }
  bool Skip(uint64_t n) { return CopyOut(nullptr, n); }
  // Copies the next n bytes to dst (dst may be null: skip).
  bool CopyOut(char* dst, uint64_t n) {
    while (n > 0) {
      if (s_ >= slices_.size()) return false;
      const size_t avail = slices_[s_].size() - off_;
      const size_t take = std::min<uint64_t>(avail, n);
      if (dst != nullptr) {
        std::memcpy(dst, slices_[s_].begin() + off_, take);
        dst += take;
      }
      Advance(take);
      n -= take;
    }
    return true;
  }

 private:
  void Advance(size_t n) {
    off_ += n;
    consumed_ += n;
    Normalize();
  }
  void Normalize() {
    while (s_ < slices_.size() && off_ >= slices_[s_].size()) {
      off_ = 0;
      ++s_;
    }
  }
  const std::vector<grpc::Slice>& slices_;
  size_t s_ = 0, off_ = 0;
  uint64_t consumed_ = 0;
};

bool SkipField(SliceReader& r, uint32_t wire_type) {
  uint64_t v;
  switch (wire_type) {
    case 0: return r.ReadVarint(&v);
    case 1: return r.Skip(8);
    case 2: return r.ReadVarint(&v) && r.Skip(v);
    case 5: return r.Skip(4);
    default: return false;
  }
}

// Parses one GetResponse; copies k to dst and v to dst + block_bytes/2.
struct RawHit {
  uint32_t index = 0;
  int tier = 0;
  int error_code = 0;
  bool has_block = false;
  uint64_t checksum = 0;
};

bool ParseRawResponse(SliceReader& r, uint64_t total, uint64_t block_bytes, char* dst_of_index0,
                      RawHit* hit) {
  while (r.consumed() < total) {
    uint64_t tag;
    if (!r.ReadVarint(&tag)) return false;
    const uint32_t field = static_cast<uint32_t>(tag >> 3), wt = tag & 7;
    uint64_t v;
    if (field == 1 && wt == 0) {
      if (!r.ReadVarint(&v)) return false;
      hit->index = static_cast<uint32_t>(v);
    } else if (field == 2 && wt == 0) {
      if (!r.ReadVarint(&v)) return false;
      hit->tier = static_cast<int>(v);
    } else if (field == 4 && wt == 0) {
      if (!r.ReadVarint(&v)) return false;
      hit->error_code = static_cast<int>(v);
    } else if (field == 3 && wt == 2) {
      uint64_t len;
      if (!r.ReadVarint(&len)) return false;
      const uint64_t end = r.consumed() + len;
      // index (field 1) precedes block (field 3) in the server's encoding.
      char* dst = dst_of_index0 + uint64_t{hit->index} * block_bytes;
      hit->has_block = true;
      while (r.consumed() < end) {
        uint64_t btag;
        if (!r.ReadVarint(&btag)) return false;
        const uint32_t bf = static_cast<uint32_t>(btag >> 3), bwt = btag & 7;
        if ((bf == 7 || bf == 8) && bwt == 2) {
          uint64_t n;
          if (!r.ReadVarint(&n) || n != block_bytes / 2) return false;
          if (!r.CopyOut(dst + (bf == 8 ? block_bytes / 2 : 0), n)) return false;
        } else if (bf == 9 && bwt == 1) {
          uint64_t sum = 0;
          if (!r.CopyOut(reinterpret_cast<char*>(&sum), 8)) return false;  // little endian host
          hit->checksum = sum;
        } else if (!SkipField(r, bwt)) {
          return false;
        }
      }
    } else if (!SkipField(r, wt)) {
      return false;
    }
  }
  return true;
}

// What a worker that lands KV in its own (e.g. pinned) buffer would do: read
// the stream as ByteBuffers and copy k and v once, straight from gRPC's slices.
absl::StatusOr<BatchOutcome> KvGetRaw(KvConn& c, const v1::GetRequest& req, uint64_t block_bytes,
                                      const uint64_t* expected) {
  static const grpc::internal::RpcMethod kGet("/kvcache.v1.KVCache/Get",
                                              grpc::internal::RpcMethod::SERVER_STREAMING);
  const uint64_t need = block_bytes * req.keys_size();
  if (c.staging.size() < need) c.staging.resize(need);
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader(
      grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(c.channel.get(), kGet, &ctx, req));
  grpc::ByteBuffer bb;
  BatchOutcome out;
  while (reader->Read(&bb)) {
    c.slices.clear();
    if (!bb.Dump(&c.slices).ok()) return absl::InternalError("ByteBuffer::Dump failed");
    SliceReader r(c.slices);
    RawHit hit;
    if (!ParseRawResponse(r, bb.Length(), block_bytes, c.staging.data(), &hit) ||
        hit.index >= static_cast<uint32_t>(req.keys_size())) {
      return absl::DataLossError("raw GetResponse does not parse");
    }
    if (hit.error_code != 0 || !hit.has_block) {
      ++out.misses;
      continue;
    }
    CountTier(hit.tier, &out);
    ++out.blocks;
    if (expected != nullptr) {
      const char* p = c.staging.data() + uint64_t{hit.index} * block_bytes;
      const uint64_t sum = BlockChecksum(absl::string_view(p, block_bytes / 2),
                                         absl::string_view(p + block_bytes / 2, block_bytes / 2));
      if (sum != expected[hit.index] || hit.checksum != sum) {
        return absl::DataLossError(absl::StrCat("kvcache (raw) block ", hit.index, " checksum mismatch"));
      }
    }
  }
  KVC_RETURN_IF_ERROR(FromGrpc(reader->Finish()));
  return out;
}

// ---------------------------------------------------------------- redis client

absl::StatusOr<BatchOutcome> RedisSet(redisContext* c, const Workload& w, size_t batch) {
  const size_t first = batch * w.batch;
  for (int i = 0; i < w.batch; ++i) {
    const std::string& k = w.redis_keys[first + i];
    const std::string& v = w.wire[first + i];
    if (redisAppendCommand(c, "SET %b %b", k.data(), k.size(), v.data(), v.size()) != REDIS_OK) {
      return absl::UnavailableError(absl::StrCat("redisAppendCommand: ", c->errstr));
    }
  }
  for (int i = 0; i < w.batch; ++i) {
    void* rp = nullptr;
    if (redisGetReply(c, &rp) != REDIS_OK) return absl::UnavailableError(absl::StrCat("SET: ", c->errstr));
    auto* r = static_cast<redisReply*>(rp);
    const bool ok = r->type == REDIS_REPLY_STATUS;
    freeReplyObject(r);
    if (!ok) return absl::InternalError("redis SET did not return OK");
  }
  return BatchOutcome{static_cast<uint64_t>(w.batch), 0, 0, 0};
}

// Pipelined GETs; with `verify` each value is parsed and checksummed.
absl::StatusOr<BatchOutcome> RedisGet(redisContext* c, const Workload& w, size_t batch, bool verify) {
  const size_t first = batch * w.batch;
  for (int i = 0; i < w.batch; ++i) {
    const std::string& k = w.redis_keys[first + i];
    if (redisAppendCommand(c, "GET %b", k.data(), k.size()) != REDIS_OK) {
      return absl::UnavailableError(absl::StrCat("redisAppendCommand: ", c->errstr));
    }
  }
  BatchOutcome out;
  absl::Status bad;
  for (int i = 0; i < w.batch; ++i) {
    void* rp = nullptr;
    if (redisGetReply(c, &rp) != REDIS_OK) return absl::UnavailableError(absl::StrCat("GET: ", c->errstr));
    auto* r = static_cast<redisReply*>(rp);
    if (r->type != REDIS_REPLY_STRING) {
      ++out.misses;
    } else {
      ++out.blocks;
      ++out.host;
      if (verify && bad.ok()) {
        v1::Block b;
        if (!b.ParseFromArray(r->str, static_cast<int>(r->len)) ||
            BlockChecksum(b.k(), b.v()) != w.checksums[first + i]) {
          bad = absl::DataLossError(absl::StrCat("redis block ", first + i, " checksum mismatch"));
        }
      }
    }
    freeReplyObject(r);
  }
  if (!bad.ok()) return bad;
  return out;
}

// ---------------------------------------------------------------- report

struct Row {
  std::string op, tier;
  uint64_t block_bytes = 0;
  int threads = 0;
  std::optional<CellResult> kv, redis;
};

std::string Fmt(double v, int prec) { return absl::StrFormat("%.*f", prec, v); }

std::string SizeName(uint64_t b) {
  if (b % (1 << 20) == 0) return absl::StrCat(b >> 20, " MiB");
  if (b % 1024 == 0) return absl::StrCat(b >> 10, " KiB");
  return absl::StrCat(b, " B");
}

void PrintTable(const std::vector<Row>& rows, bool markdown) {
  const std::vector<std::string> head = {"op",          "tier",       "block",      "thr",
                                         "kvc GB/s",    "kvc blk/s",  "kvc p50 ms", "kvc p99 ms",
                                         "redis GB/s",  "redis p50 ms", "redis p99 ms", "kvc/redis"};
  std::vector<std::vector<std::string>> cells;
  for (const Row& r : rows) {
    std::vector<std::string> c = {r.op, r.tier, SizeName(r.block_bytes), absl::StrCat(r.threads)};
    if (r.kv) {
      c.insert(c.end(), {Fmt(r.kv->GBps(), 2), Fmt(r.kv->BlocksPerSec(), 0), Fmt(r.kv->Percentile(0.5), 1),
                         Fmt(r.kv->Percentile(0.99), 1)});
    } else {
      c.insert(c.end(), {"-", "-", "-", "-"});
    }
    if (r.redis) {
      c.insert(c.end(), {Fmt(r.redis->GBps(), 2), Fmt(r.redis->Percentile(0.5), 1), Fmt(r.redis->Percentile(0.99), 1)});
      c.push_back(r.kv && r.redis->GBps() > 0 ? Fmt(r.kv->GBps() / r.redis->GBps(), 2) : "-");
    } else {
      c.insert(c.end(), {"n/a", "n/a", "n/a", "n/a"});
    }
    cells.push_back(std::move(c));
  }
  std::vector<size_t> width(head.size());
  for (size_t i = 0; i < head.size(); ++i) {
    width[i] = head[i].size();
    for (const auto& c : cells) width[i] = std::max(width[i], c[i].size());
  }
  auto line = [&](const std::vector<std::string>& c) {
    std::string s = markdown ? "|" : "";
    for (size_t i = 0; i < c.size(); ++i) {
      const bool left = i < 2;
      std::string pad(width[i] - c[i].size(), ' ');
      absl::StrAppend(&s, markdown ? " " : (i ? "  " : ""), left ? c[i] + pad : pad + c[i], markdown ? " |" : "");
    }
    std::printf("%s\n", s.c_str());
  };
  line(head);
  if (markdown) {
    std::string s = "|";
    for (size_t i = 0; i < head.size(); ++i) absl::StrAppend(&s, i < 2 ? ":" : "-", std::string(width[i], '-'), i < 2 ? "-|" : ":|");
    std::printf("%s\n", s.c_str());
  }
  for (const auto& c : cells) line(c);
}

std::string ReadFirst(const char* path, absl::string_view prefix) {
  std::ifstream in(path);
  std::string l;
  while (std::getline(in, l)) {
    if (absl::string_view(l).substr(0, prefix.size()) == prefix) {
      const size_t colon = l.find(':');
      std::string v = colon == std::string::npos ? l : l.substr(colon + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  }
  return "?";
}

std::string ShellQuote(const std::string& a) {
  if (!a.empty() && a.find_first_of(" \t\"'$\\*?;&|<>()") == std::string::npos) return a;
  std::string q = "'";
  for (char c : a) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

void PrintMachine(int argc, char** argv) {
  cpu_set_t set;
  CPU_ZERO(&set);
  const int cpus = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : -1;
  std::printf("machine: nproc=%d (hardware_concurrency=%u), cpu=%s, memory=%s\n", cpus,
              std::thread::hardware_concurrency(), ReadFirst("/proc/cpuinfo", "model name").c_str(),
              ReadFirst("/proc/meminfo", "MemTotal").c_str());
  std::vector<std::string> args;
  for (int i = 0; i < argc; ++i) args.push_back(ShellQuote(argv[i]));
  std::printf("command: %s\n", absl::StrJoin(args, " ").c_str());
}

// ESTABLISHED TCP connections whose remote end is 127.0.0.1:port (gRPC uses
// dual-stack sockets, so v4-mapped entries in /proc/net/tcp6 count too).
int CountConnectionsTo(int port) {
  int n = 0;
  for (const auto& [file, want] :
       {std::pair<const char*, std::string>{"/proc/net/tcp", absl::StrFormat("0100007F:%04X", port)},
        {"/proc/net/tcp6", absl::StrFormat("0000000000000000FFFF00000100007F:%04X", port)}}) {
    std::ifstream in(file);
    std::string l;
    std::getline(in, l);
    while (std::getline(in, l)) {
      std::istringstream f(l);
      std::string sl, local, remote, state;
      f >> sl >> local >> remote >> state;
      if (remote == want && state == "01") ++n;
    }
  }
  return n;
}

// ---------------------------------------------------------------- driver

class Bench {
 public:
  explicit Bench(Settings s) : s_(std::move(s)) {}

  absl::Status Run() {
    uint64_t max_ws = 0;
    for (uint64_t b : s_.block_sizes) max_ws = std::max(max_ws, b * s_.batch * std::max<uint64_t>(2, s_.working_set / (b * s_.batch) + 1));
    KVC_ASSIGN_OR_RETURN(redis_, RedisServer::Start(s_.redis_server, s_.tmp_dir, std::max<uint64_t>(1ull << 30, 2 * max_ws + (256ull << 20))));
    KVC_ASSIGN_OR_RETURN(kv_host_, Kvcached::Start(s_, s_.host_capacity, "host"));
    std::printf("kvcached: %s\nredis:    %s\n", kv_host_->command().c_str(), redis_->command().c_str());
    std::fflush(stdout);
    const int max_threads = *std::max_element(s_.threads.begin(), s_.threads.end());
    KVC_ASSIGN_OR_RETURN(redis_conns_, RedisConns(max_threads));

    for (uint64_t block_bytes : s_.block_sizes) {
      const auto g0 = Clock::now();
      const Workload w = MakeWorkload(s_, block_bytes);
      std::fprintf(stderr, "generated %zu blocks of %s in %.1f s\n", w.wire.size(), SizeName(block_bytes).c_str(), Since(g0));
      KVC_RETURN_IF_ERROR(RunSize(w));
      KVC_RETURN_IF_ERROR(RedisCommand(redis_conns_[0].get(), REDIS_REPLY_STATUS, "FLUSHALL"));
    }
    std::printf("\n");
    PrintTable(rows_, s_.markdown);
    if (!notes_.empty()) std::printf("\n%s", notes_.c_str());
    if (!diag_.empty()) std::printf("\n%s", diag_.c_str());
    return absl::OkStatus();
  }

 private:
  absl::StatusOr<std::vector<RedisConn>> RedisConns(int n) {
    std::vector<RedisConn> v;
    for (int i = 0; i < n; ++i) {
      KVC_ASSIGN_OR_RETURN(RedisConn c, RedisConnect(redis_->port()));
      v.push_back(std::move(c));
    }
    return v;
  }

  std::vector<KvConn> KvConns(const Kvcached& server, int n, uint64_t staging_bytes) {
    std::vector<KvConn> v;
    for (int i = 0; i < n; ++i) {
      v.push_back(MakeKvConn(server.address(), i));
      v.back().staging.assign(staging_bytes, '\0');  // faulted in before timing
    }
    return v;
  }

  // Untimed: stores every batch in kvcached (and Redis when `redis`).
  absl::Status Populate(const Workload& w, Kvcached& server, bool redis) {
    KvConn c = MakeKvConn(server.address(), 1000);
    for (size_t b = 0; b < w.batches(); ++b) {
      KVC_ASSIGN_OR_RETURN(BatchOutcome o, KvPut(c, w.puts[b]));
      (void)o;
      if (redis) {
        KVC_ASSIGN_OR_RETURN(BatchOutcome r, RedisSet(redis_conns_[0].get(), w, b));
        (void)r;
      }
    }
    return absl::OkStatus();
  }

  // Untimed: re-reads a few batches through each client and checks every block.
  absl::Status Verify(const Workload& w, Kvcached& server, bool redis) {
    KvConn c = MakeKvConn(server.address(), 2000);
    const size_t step = std::max<size_t>(1, w.batches() / std::max(1, s_.verify_batches));
    for (int i = 0; i < s_.verify_batches; ++i) {
      const size_t b = (i * step + i) % w.batches();
      const uint64_t* expected = &w.checksums[b * w.batch];
      if (s_.proto_path) {
        KVC_ASSIGN_OR_RETURN(BatchOutcome o, KvGetProto(c, w.gets[b], expected));
        if (o.blocks != static_cast<uint64_t>(w.batch)) return absl::DataLossError("kvcache verify: missing blocks");
      }
      if (s_.raw_path) {
        KVC_ASSIGN_OR_RETURN(BatchOutcome o, KvGetRaw(c, w.gets[b], w.block_bytes, expected));
        if (o.blocks != static_cast<uint64_t>(w.batch)) return absl::DataLossError("kvcache raw verify: missing blocks");
      }
      if (redis) {
        KVC_ASSIGN_OR_RETURN(BatchOutcome o, RedisGet(redis_conns_[0].get(), w, b, /*verify=*/true));
        if (o.blocks != static_cast<uint64_t>(w.batch)) return absl::DataLossError("redis verify: missing blocks");
      }
    }
    verified_blocks_ += s_.verify_batches * w.batch;
    return absl::OkStatus();
  }

  template <typename Fn>
  absl::StatusOr<CellResult> KvCell(const Workload& w, Kvcached& server, int threads, Fn fn) {
    std::vector<KvConn> conns = KvConns(server, threads, s_.raw_path ? w.block_bytes * w.batch : 0);
    // Connect every channel first so connection setup is not timed.
    for (KvConn& c : conns) {
      if (!c.channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
        return absl::UnavailableError("kvcache bench channel did not connect");
      }
    }
    if (!conn_check_done_ && threads > 1) {
      conn_check_done_ = true;
      const int port = std::stoi(server.address().substr(server.address().rfind(':') + 1));
      absl::StrAppend(&notes_, "kvcache client: ", threads, " channels opened ", CountConnectionsTo(port),
                      " established TCP connections to kvcached (incl. the control client)\n");
    }
    return RunCell(s_, w, conns, fn);
  }

  absl::StatusOr<CellResult> RedisCell(const Workload& w, int threads, bool put) {
    std::vector<redisContext*> ctxs;
    for (int i = 0; i < threads; ++i) ctxs.push_back(redis_conns_[i].get());
    return RunCell(s_, w, ctxs, [&](redisContext* c, size_t b) {
      return put ? RedisSet(c, w, b) : RedisGet(c, w, b, false);
    });
  }

  absl::Status RunSize(const Workload& w) {
    const uint64_t bb = w.block_bytes;
    // Put (host tier; the keys are overwritten round after round, as Redis's).
    KVC_RETURN_IF_ERROR(Populate(w, *kv_host_, true));
    for (int t : s_.threads) {
      Row row{"put", "host", bb, t, {}, {}};
      KVC_ASSIGN_OR_RETURN(row.kv, KvCell(w, *kv_host_, t, [&](KvConn& c, size_t b) { return KvPut(c, w.puts[b]); }));
      KVC_ASSIGN_OR_RETURN(row.redis, RedisCell(w, t, true));
      Progress(row);
      rows_.push_back(std::move(row));
    }
    KVC_RETURN_IF_ERROR(Populate(w, *kv_host_, true));
    KVC_RETURN_IF_ERROR(GetCells(w, *kv_host_, "host", /*redis=*/true));
    if (s_.diagnose) KVC_RETURN_IF_ERROR(Diagnose(w));

    // RocksDB tier: a host budget below one block per shard, so every block is
    // refused by the host tier and stored on (and served from) disk only.
    KVC_ASSIGN_OR_RETURN(std::unique_ptr<Kvcached> disk, Kvcached::Start(s_, 1 << 20, "disk"));
    KVC_RETURN_IF_ERROR(Populate(w, *disk, false));
    KVC_ASSIGN_OR_RETURN(v1::StatsResponse before, disk->client()->Stats());
    KVC_RETURN_IF_ERROR(GetCells(w, *disk, "disk", /*redis=*/false));
    KVC_ASSIGN_OR_RETURN(v1::StatsResponse after, disk->client()->Stats());
    absl::StrAppend(&notes_, "disk-tier check (", SizeName(bb), "): Stats() host hits +",
                    after.host().hits() - before.host().hits(), ", disk hits +",
                    after.disk().hits() - before.disk().hits(), "; host tier holds ", after.host().blocks(),
                    " blocks, disk tier ", after.disk().blocks(), "\n");
    return absl::OkStatus();
  }

  absl::Status GetCells(const Workload& w, Kvcached& server, const std::string& tier, bool redis) {
    for (int t : s_.threads) {
      std::optional<CellResult> redis_cell;
      if (redis) {
        KVC_ASSIGN_OR_RETURN(redis_cell, RedisCell(w, t, false));
      }
      if (s_.proto_path) {
        Row row{"get", tier, w.block_bytes, t, {}, {}};
        KVC_ASSIGN_OR_RETURN(row.kv, KvCell(w, server, t, [&](KvConn& c, size_t b) { return KvGetProto(c, w.gets[b], nullptr); }));
        row.redis = redis_cell;
        KVC_RETURN_IF_ERROR(CheckTier(*row.kv, tier, "get"));
        Progress(row);
        rows_.push_back(std::move(row));
      }
      if (s_.raw_path) {
        Row row{"get-raw", tier, w.block_bytes, t, {}, {}};
        KVC_ASSIGN_OR_RETURN(row.kv, KvCell(w, server, t, [&](KvConn& c, size_t b) {
                               return KvGetRaw(c, w.gets[b], w.block_bytes, nullptr);
                             }));
        row.redis = redis_cell;
        KVC_RETURN_IF_ERROR(CheckTier(*row.kv, tier, "get-raw"));
        Progress(row);
        rows_.push_back(std::move(row));
      }
    }
    return Verify(w, server, redis);
  }

  absl::Status CheckTier(const CellResult& c, const std::string& tier, const std::string& op) {
    const uint64_t want = tier == "host" ? c.host_hits : c.disk_hits;
    if (c.misses != 0 || want != c.blocks) {
      return absl::InternalError(absl::StrCat(op, "/", tier, ": ", c.host_hits, " host hits, ", c.disk_hits,
                                              " disk hits, ", c.misses, " misses; expected all from ", tier));
    }
    return absl::OkStatus();
  }

  void Progress(const Row& r) {
    std::fprintf(stderr, "  %-7s %-4s %-7s thr=%d  kvcache %.2f GB/s%s\n", r.op.c_str(), r.tier.c_str(),
                 SizeName(r.block_bytes).c_str(), r.threads, r.kv ? r.kv->GBps() : 0.0,
                 r.redis ? absl::StrFormat("  redis %.2f GB/s", r.redis->GBps()).c_str() : "");
  }

  // One client thread, host tier: Get of 1 vs all-batch blocks through each
  // client path, and the client-side cost of parsing one GetResponse.
  absl::Status Diagnose(const Workload& w) {
    const int reps = 30;
    KvConn c = MakeKvConn(kv_host_->address(), 3000);
    redisContext* rc = redis_conns_[0].get();
    auto median = [&](auto fn) -> absl::StatusOr<double> {
      std::vector<double> ms;
      for (int i = 0; i < reps; ++i) {
        const auto t0 = Clock::now();
        KVC_RETURN_IF_ERROR(fn(i));
        ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      }
      std::sort(ms.begin(), ms.end());
      return ms[ms.size() / 2];
    };
    // Per-block cost of one request of n blocks, for n up to the batch size.
    absl::StrAppend(&diag_, absl::StrFormat(
        "breakdown, %s blocks, 1 client thread, host tier: ms per block in one request of n blocks "
        "(median of %d requests)\n  %6s %12s %12s %12s %12s\n",
        SizeName(w.block_bytes), reps, "n", "kvc get", "kvc get-raw", "redis GET", "kvc put"));
    auto st = [](auto r) { return r.status(); };
    for (int n : {1, 4, 8, 16, 32}) {
      if (n > w.batch) break;
      Workload wn;  // an n-block view of the first blocks, for RedisGet
      wn.batch = n;
      wn.redis_keys.assign(w.redis_keys.begin(), w.redis_keys.begin() + n);
      wn.checksums.assign(w.checksums.begin(), w.checksums.begin() + n);
      v1::GetRequest get;
      v1::PutRequest put;
      for (int i = 0; i < n; ++i) {
        *get.add_keys() = w.gets[0].keys(i);
        *put.add_blocks() = w.puts[0].blocks(i);
      }
      KVC_ASSIGN_OR_RETURN(double g, median([&](int) { return st(KvGetProto(c, get, nullptr)); }));
      KVC_ASSIGN_OR_RETURN(double r, median([&](int) { return st(KvGetRaw(c, get, w.block_bytes, nullptr)); }));
      KVC_ASSIGN_OR_RETURN(double d, median([&](int) { return st(RedisGet(rc, wn, 0, false)); }));
      KVC_ASSIGN_OR_RETURN(double u, median([&](int) { return st(KvPut(c, put)); }));
      absl::StrAppend(&diag_, absl::StrFormat("  %6d %12.3f %12.3f %12.3f %12.3f\n", n, g / n, r / n, d / n, u / n));
    }
    // In-process costs of the client's share of one block.
    v1::GetResponse resp;
    resp.set_index(0);
    resp.set_tier(v1::TIER_HOST);
    (void)resp.mutable_block()->ParseFromString(w.wire[0]);
    const std::string wire = resp.SerializeAsString();
    v1::GetResponse parsed;
    std::string dst(w.block_bytes, '\0');
    KVC_ASSIGN_OR_RETURN(double parse_reused, median([&](int) {
                           return parsed.ParseFromString(wire) ? absl::OkStatus() : absl::InternalError("parse");
                         }));
    KVC_ASSIGN_OR_RETURN(double parse_fresh, median([&](int) {
                           v1::GetResponse fresh;
                           return fresh.ParseFromString(wire) ? absl::OkStatus() : absl::InternalError("parse");
                         }));
    KVC_ASSIGN_OR_RETURN(double copy, median([&](int) {
                           std::memcpy(dst.data(), wire.data() + wire.size() - w.block_bytes - 16, w.block_bytes);
                           return absl::OkStatus();
                         }));
    KVC_ASSIGN_OR_RETURN(double sum, median([&](int) {
                           volatile uint64_t x = BlockChecksum(parsed.block().k(), parsed.block().v());
                           (void)x;
                           return absl::OkStatus();
                         }));
    absl::StrAppend(&diag_, absl::StrFormat(
        "  in-process, one block: GetResponse parse into a reused message %.3f ms, into a fresh one %.3f ms;"
        " memcpy %.3f ms; XXH3 checksum %.3f ms\n",
        parse_reused, parse_fresh, copy, sum));
    return absl::OkStatus();
  }

  Settings s_;
  std::unique_ptr<RedisServer> redis_;
  std::unique_ptr<Kvcached> kv_host_;
  std::vector<RedisConn> redis_conns_;
  std::vector<Row> rows_;
  std::string notes_, diag_;
  uint64_t verified_blocks_ = 0;
  bool conn_check_done_ = false;
};

}  // namespace
}  // namespace kvc::bench

int main(int argc, char** argv) {
  // Both clients (gRPC and hiredis) run in this process; a worker would tune it the same way.
  kvc::TuneAllocatorForLargeBuffers();
  absl::SetProgramUsageMessage(
      "kvcache_bench: kvcached (host and RocksDB tiers) against redis-server, both started by the benchmark.\n"
      "Usage: kvcache_bench [--quick] [--markdown] [--threads=1,2,4,8] [--block_sizes=256KiB,2MiB] ...");
  absl::ParseCommandLine(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  absl::StatusOr<kvc::bench::Settings> s = kvc::bench::ParseSettings(argv[0]);
  if (!s.ok()) {
    std::fprintf(stderr, "kvcache_bench: %s\n", s.status().ToString().c_str());
    return 2;
  }
  kvc::bench::PrintMachine(argc, argv);
  const auto t0 = std::chrono::steady_clock::now();
  absl::Status st;
  {
    kvc::bench::Bench bench(*std::move(s));
    st = bench.Run();
  }  // servers stopped here, also on error
  if (!st.ok()) {
    std::fprintf(stderr, "kvcache_bench: FAILED: %s\n", st.ToString().c_str());
    return 1;
  }
  std::printf("total time %.1f s\n", kvc::bench::Since(t0));
  return 0;
}
