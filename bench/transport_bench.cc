// transport_bench: the BlockClient transports against each other and against
// what a user would pick instead, in one run:
//   - UcxBlockClient over UCX sm and UCX tcp (loopback), GrpcBlockClient,
//     block Put and Get against a kvcached child process (host tier);
//   - ucx_perftest -t ucp_am_bw on the same UCX transport with the message
//     size equal to the serialized block (the UCX ceiling on this machine;
//     the same operation as a Get's block: one active message, rendezvous
//     above UCX's threshold, received with ucp_am_recv_data_nbx). Note what
//     it is not: perftest moves one buffer back and forth, so its bytes are
//     cache-hot, while a Get reads --working_set_bytes of stored blocks;
//   - a one-thread memcpy of the same blocks (the working set, batch by
//     batch, into a receive-pool-sized ring): the cold-memory copy every
//     transport here has to do at least once, next to perftest's hot figure;
//   - redis-server SET / GET of the same serialized blocks, pipelined.
// One client thread; each sample is one batch (--batch_blocks blocks per Put
// or Get call / Redis pipeline), timed from the call until its last byte is
// in client memory. Throughput counts the serialized block bytes moved
// (kvcache.v1.Block wire bytes, k+v plus ~60 bytes) in GiB/s = 2^30 B/s.
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/bench_kvcached.h"
#include "bench/child_process.h"
#include "bench/redis_util.h"
#include "common/allocator.h"
#include "common/help_flags.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "kvcache/v1/cache.pb.h"
#include "worker/kv/block_client_factory.h"
#include "worker/synthetic.h"

ABSL_FLAG(std::string, kvcached, "build/cachesvc/server/kvcached", "kvcached binary");
ABSL_FLAG(std::string, redis_server, "redis-server", "redis-server binary (PATH searched); empty skips Redis");
ABSL_FLAG(std::string, ucx_perftest, "ucx_perftest", "ucx_perftest binary (PATH searched); empty skips it");
ABSL_FLAG(std::string, block_sizes, "256KiB,2MiB", "Comma-separated k+v bytes per block (multiples of 4 KiB)");
ABSL_FLAG(std::string, transports, "ucx_sm,ucx_tcp,grpc", "Comma-separated: ucx_sm, ucx_tcp, grpc");
ABSL_FLAG(int, batch_blocks, 16, "Blocks per Put / Get call and per Redis pipeline");
ABSL_FLAG(std::string, working_set_bytes, "128MiB", "Distinct block bytes per block size");
ABSL_FLAG(double, cell_seconds, 2.0, "Time limit of one measurement cell");
ABSL_FLAG(std::string, perftest_bytes, "1GiB", "Bytes one ucx_perftest run moves (-n = this / message size)");
ABSL_FLAG(int, perftest_runs, 3, "ucx_perftest runs per cell; the median is reported");
ABSL_FLAG(bool, markdown, false, "Print the tables as Markdown");
ABSL_FLAG(std::string, tmp_dir, "/tmp", "Where the servers' data directories and logs go");

namespace kvc::bench {
namespace {

namespace v1 = ::kvcache::v1;
using Clock = std::chrono::steady_clock;
constexpr uint64_t kBytesPerToken = 2 * 8 * 128 * 2;  // k,v x 8 heads x 128 dims x fp16
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct Workload {
  uint64_t block_bytes = 0;
  std::vector<std::string> wire;
  std::vector<BlockKey> keys;
  std::vector<std::string> redis_keys;
  uint64_t wire_bytes_per_batch(int batch) const { return wire[0].size() * batch; }
};

Workload MakeWorkload(uint64_t block_bytes, uint64_t working_set, int batch) {
  Workload w;
  w.block_bytes = block_bytes;
  SyntheticSpec spec;
  spec.seq_seed = block_bytes * 7 + 1;
  spec.block_tokens = static_cast<uint32_t>(block_bytes / kBytesPerToken);
  const uint32_t n = static_cast<uint32_t>(std::max<uint64_t>(2, working_set / block_bytes / batch) * batch);
  w.keys = SyntheticKeys(spec, n);
  v1::Block b;
  for (uint32_t i = 0; i < n; ++i) {
    SyntheticBlock(spec, i, w.keys[i], &b);
    w.wire.push_back(b.SerializeAsString());
    w.redis_keys.push_back(w.keys[i].Encode());
  }
  return w;
}

struct Cell {
  double seconds = 0;
  uint64_t bytes = 0, blocks = 0;
  double GiBps() const { return seconds > 0 ? bytes / seconds / (1ull << 30) : 0; }
  double BlocksPerSec() const { return seconds > 0 ? blocks / seconds : 0; }
};

// Runs `batch_fn(b)` over batches round-robin until cell_seconds pass (at
// least one pass over the working set for puts).
template <typename Fn>
absl::StatusOr<Cell> Measure(const Workload& w, int batch, double seconds, bool full_pass, Fn batch_fn) {
  const size_t batches = w.wire.size() / batch;
  Cell c;
  const auto t0 = Clock::now();
  for (size_t i = 0;; ++i) {
    if (Since(t0) >= seconds && (!full_pass || i >= batches)) break;
    KVC_RETURN_IF_ERROR(batch_fn(i % batches));
    c.blocks += batch;
    c.bytes += w.wire_bytes_per_batch(batch);
  }
  c.seconds = Since(t0);
  return c;
}

// Receive pool size for a batch: two batches in flight, plus rounding slack.
size_t PoolBytesFor(const Workload& w, int batch) {
  return std::max<size_t>(64ull << 20, 2 * w.wire_bytes_per_batch(batch) + (1 << 20));
}

// One thread memcpy'ing the working set batch by batch into a ring the size
// of a client's receive pool, for `seconds`: the single copy out of cold
// memory that a Get needs at least.
Cell RunMemcpy(const Workload& w, int batch, double seconds) {
  const size_t ring = PoolBytesFor(w, batch);
  std::unique_ptr<char[]> dst(new char[ring]);
  std::memset(dst.get(), 0, ring);
  const size_t batches = w.wire.size() / batch;
  Cell c;
  size_t at = 0;
  const auto t0 = Clock::now();
  for (size_t i = 0; Since(t0) < seconds; ++i) {
    for (int k = 0; k < batch; ++k) {
      const std::string& b = w.wire[(i % batches) * batch + k];
      if (at + b.size() > ring) at = 0;
      std::memcpy(dst.get() + at, b.data(), b.size());
      at += b.size();
    }
    c.blocks += batch;
    c.bytes += w.wire_bytes_per_batch(batch);
  }
  c.seconds = Since(t0);
  return c;
}

absl::StatusOr<std::pair<Cell, Cell>> RunBlockClient(const TransportSpec& t, const Kvcached& k, const Workload& w,
                                                     int batch, double seconds) {
  BlockClientOptions o = ClientOptionsFor(t, k);
  o.ucx.recv_pool_bytes = PoolBytesFor(w, batch);
  o.ucx.send_pool_bytes = o.ucx.recv_pool_bytes;
  KVC_ASSIGN_OR_RETURN(std::unique_ptr<BlockClient> c, MakeBlockClient(o));
  if (c->transport() != t.transport) return absl::UnavailableError(t.name + " fell back to " + std::string(c->transport()));
  std::vector<absl::string_view> views(w.wire.begin(), w.wire.end());
  KVC_ASSIGN_OR_RETURN(Cell put, Measure(w, batch, seconds, true, [&](size_t b) {
                         return c->Put(std::span(views).subspan(b * batch, batch), false);
                       }));
  uint64_t checksum_errors = 0;
  KVC_ASSIGN_OR_RETURN(Cell get, Measure(w, batch, seconds, false, [&](size_t b) -> absl::Status {
                         absl::Status bad;
                         KVC_RETURN_IF_ERROR(c->Get(std::span(w.keys).subspan(b * batch, batch), [&](GotBlock& g) {
                           if (!g.status.ok()) bad = g.status;
                           else checksum_errors += g.block.k.empty();
                         }));
                         return bad;
                       }));
  if (checksum_errors > 0) return absl::DataLossError("empty blocks received");
  return std::pair{put, get};
}

absl::StatusOr<std::pair<Cell, Cell>> RunRedis(const RedisServer& r, const Workload& w, int batch, double seconds) {
  KVC_ASSIGN_OR_RETURN(RedisConn c, RedisConnect(r.port()));
  auto set = [&](size_t b) -> absl::Status {
    for (int i = 0; i < batch; ++i) {
      const std::string& k = w.redis_keys[b * batch + i];
      const std::string& v = w.wire[b * batch + i];
      redisAppendCommand(c.get(), "SET %b %b", k.data(), k.size(), v.data(), v.size());
    }
    for (int i = 0; i < batch; ++i) {
      void* rp = nullptr;
      if (redisGetReply(c.get(), &rp) != REDIS_OK) return absl::UnavailableError(c->errstr);
      freeReplyObject(rp);
    }
    return absl::OkStatus();
  };
  auto get = [&](size_t b) -> absl::Status {
    for (int i = 0; i < batch; ++i) {
      const std::string& k = w.redis_keys[b * batch + i];
      redisAppendCommand(c.get(), "GET %b", k.data(), k.size());
    }
    for (int i = 0; i < batch; ++i) {
      void* rp = nullptr;
      if (redisGetReply(c.get(), &rp) != REDIS_OK) return absl::UnavailableError(c->errstr);
      const bool hit = static_cast<redisReply*>(rp)->type == REDIS_REPLY_STRING;
      freeReplyObject(rp);
      if (!hit) return absl::InternalError("redis GET missed");
    }
    return absl::OkStatus();
  };
  KVC_ASSIGN_OR_RETURN(Cell put, Measure(w, batch, seconds, true, set));
  KVC_ASSIGN_OR_RETURN(Cell g, Measure(w, batch, seconds, false, get));
  return std::pair{put, g};
}

// ucx_perftest -t ucp_am_bw between two child processes with the transport's
// UCX_TLS / UCX_NET_DEVICES; returns GiB/s ("MB/s" in its output is MiB/s).
absl::StatusOr<double> RunPerftestOnce(const std::string& binary, const TransportSpec& t, uint64_t msg_bytes,
                                       uint64_t run_bytes, const std::string& tmp, std::string* command) {
  KVC_ASSIGN_OR_RETURN(int port, PickFreePort());
  const std::string tls = t.name == "ucx_sm" ? "sm" : "tcp";  // perftest's OOB socket needs no bootstrap
  std::vector<std::string> env = {"env", "UCX_TLS=" + tls};
  if (tls == "tcp") env.push_back("UCX_NET_DEVICES=" + t.net_devices);
  std::vector<std::string> server = env;
  server.insert(server.end(), {binary, "-p", absl::StrCat(port)});
  KVC_ASSIGN_OR_RETURN(auto proc, ChildProcess::Start(server, tmp + "/ucx_perftest_server.log"));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const int n = static_cast<int>(std::max<uint64_t>(100, run_bytes / msg_bytes));
  std::vector<std::string> client = env;
  client.insert(client.end(), {binary, "127.0.0.1", "-p", absl::StrCat(port), "-t", "ucp_am_bw", "-s",
                               absl::StrCat(msg_bytes), "-n", absl::StrCat(n), "-w", "20"});
  *command = absl::StrJoin(client, " ");
  std::string out;
  FILE* p = popen((*command + " 2>&1").c_str(), "r");
  if (p == nullptr) return absl::InternalError("popen ucx_perftest");
  char buf[4096];
  for (size_t k; (k = fread(buf, 1, sizeof(buf), p)) > 0;) out.append(buf, k);
  pclose(p);
  proc->Stop(absl::Seconds(2));
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    if (!absl::StartsWith(line, "Final:")) continue;
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    // Final: iters p50 avg overall bw_avg bw_overall rate_avg rate_overall
    double mibps = 0;
    if (f.size() >= 7 && absl::SimpleAtod(f[6], &mibps)) return mibps / 1024.0;
  }
  return absl::InternalError("ucx_perftest printed no Final line: " + out.substr(0, 400));
}

// The median of `runs` runs (failed runs skipped; an error when all fail).
absl::StatusOr<double> RunPerftest(const std::string& binary, const TransportSpec& t, uint64_t msg_bytes,
                                   uint64_t run_bytes, int runs, const std::string& tmp, std::string* command) {
  std::vector<double> v;
  absl::Status last;
  for (int i = 0; i < runs; ++i) {
    absl::StatusOr<double> r = RunPerftestOnce(binary, t, msg_bytes, run_bytes, tmp, command);
    if (r.ok()) v.push_back(*r);
    else last = r.status();
  }
  if (v.empty()) return last;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::string F(double v, int p = 2) { return absl::StrFormat("%.*f", p, v); }

void Print(const std::vector<std::vector<std::string>>& rows, bool md) {
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  for (size_t j = 0; j < rows.size(); ++j) {
    std::string line = md ? "|" : "";
    for (size_t i = 0; i < rows[j].size(); ++i) {
      line += absl::StrFormat(md ? " %-*s |" : "%-*s  ", width[i], rows[j][i]);
    }
    std::printf("%s\n", line.c_str());
    if (md && j == 0) {
      std::string sep = "|";
      for (size_t w : width) sep += std::string(w + 2, '-') + "|";
      std::printf("%s\n", sep.c_str());
    }
  }
}

int Main() {
  const int batch = absl::GetFlag(FLAGS_batch_blocks);
  const double seconds = absl::GetFlag(FLAGS_cell_seconds);
  const std::string tmp = absl::GetFlag(FLAGS_tmp_dir);
  absl::StatusOr<uint64_t> ws = ParseByteSize(absl::GetFlag(FLAGS_working_set_bytes));
  absl::StatusOr<uint64_t> perf_bytes = ParseByteSize(absl::GetFlag(FLAGS_perftest_bytes));
  std::vector<uint64_t> sizes;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_block_sizes), ',', absl::SkipEmpty())) {
    absl::StatusOr<uint64_t> b = ParseByteSize(s);
    if (!b.ok() || *b == 0 || *b % kBytesPerToken != 0) {
      std::fprintf(stderr, "transport_bench: --block_sizes: '%s' is not a multiple of 4 KiB\n", std::string(s).c_str());
      return 2;
    }
    sizes.push_back(*b);
  }
  if (!ws.ok() || !perf_bytes.ok() || *perf_bytes == 0 || absl::GetFlag(FLAGS_perftest_runs) < 1 || batch < 1 ||
      seconds <= 0 || sizes.empty()) {
    std::fprintf(stderr,
                 "transport_bench: bad --working_set_bytes, --perftest_bytes, --perftest_runs, --batch_blocks or "
                 "--cell_seconds\n");
    return 2;
  }
  std::vector<TransportSpec> transports;
  for (absl::string_view n : absl::StrSplit(absl::GetFlag(FLAGS_transports), ',', absl::SkipEmpty())) {
    if (n != "ucx_sm" && n != "ucx_tcp" && n != "grpc") {
      std::fprintf(stderr, "transport_bench: --transports: '%s' is not ucx_sm|ucx_tcp|grpc\n", std::string(n).c_str());
      return 2;
    }
    transports.push_back(SpecFor(std::string(n)));
  }
  absl::StatusOr<std::unique_ptr<Kvcached>> k = Kvcached::Start(absl::GetFlag(FLAGS_kvcached), tmp);
  if (!k.ok()) {
    std::fprintf(stderr, "transport_bench: %s\n", k.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<RedisServer> redis;
  if (!absl::GetFlag(FLAGS_redis_server).empty()) {
    auto r = RedisServer::Start(absl::GetFlag(FLAGS_redis_server), tmp, 4ull << 30);
    if (r.ok()) redis = *std::move(r);
    else std::fprintf(stderr, "transport_bench: redis skipped: %s\n", r.status().ToString().c_str());
  }
  std::printf("kvcached: %s\n", (*k)->command().c_str());
  if (redis) std::printf("redis:    %s\n", redis->command().c_str());
  std::printf("batch %d blocks, %.1f s cells, working set %s per block size, 1 client thread\n\n", batch, seconds,
              FormatBytes(*ws).c_str());

  std::vector<std::vector<std::string>> rows = {{"block", "transport", "put GiB/s", "put blk/s", "get GiB/s",
                                                 "get blk/s", "ucx_perftest GiB/s", "get/perftest", "get/redis GET",
                                                 "get/memcpy"}};
  std::vector<std::string> perf_cmds;
  for (uint64_t size : sizes) {
    Workload w = MakeWorkload(size, *ws, batch);
    const std::string bname = FormatBytes(size);
    const Cell copy = RunMemcpy(w, batch, seconds);
    std::optional<std::pair<Cell, Cell>> rc;
    if (redis) {
      auto r = RunRedis(*redis, w, batch, seconds);
      if (r.ok()) rc = *r;
      else std::fprintf(stderr, "redis: %s\n", r.status().ToString().c_str());
    }
    for (const TransportSpec& t : transports) {
      auto r = RunBlockClient(t, **k, w, batch, seconds);
      if (!r.ok()) {
        rows.push_back({bname, t.name, "error: " + r.status().ToString()});
        continue;
      }
      std::string perf = "-", ratio = "-";
      if (t.transport == "ucx" && !absl::GetFlag(FLAGS_ucx_perftest).empty()) {
        std::string cmd;
        auto p = RunPerftest(absl::GetFlag(FLAGS_ucx_perftest), t, w.wire[0].size(), *perf_bytes,
                             absl::GetFlag(FLAGS_perftest_runs), tmp, &cmd);
        perf_cmds.push_back(cmd);
        if (p.ok()) {
          perf = F(*p);
          ratio = absl::StrCat(F(100 * r->second.GiBps() / *p, 0), "%");
        } else {
          perf = "error";
          std::fprintf(stderr, "ucx_perftest: %s\n", p.status().ToString().c_str());
        }
      }
      rows.push_back({bname, t.name, F(r->first.GiBps()), F(r->first.BlocksPerSec(), 0), F(r->second.GiBps()),
                      F(r->second.BlocksPerSec(), 0), perf, ratio,
                      rc ? absl::StrCat(F(r->second.GiBps() / rc->second.GiBps()), "x") : "-",
                      absl::StrCat(F(100 * r->second.GiBps() / copy.GiBps(), 0), "%")});
    }
    if (rc) {
      rows.push_back({bname, "redis SET/GET", F(rc->first.GiBps()), F(rc->first.BlocksPerSec(), 0),
                      F(rc->second.GiBps()), F(rc->second.BlocksPerSec(), 0), "-", "-", "1.00x",
                      absl::StrCat(F(100 * rc->second.GiBps() / copy.GiBps(), 0), "%")});
    }
    rows.push_back({bname, "memcpy (1 thread)", "-", "-", F(copy.GiBps()), F(copy.BlocksPerSec(), 0), "-", "-", "-",
                    "100%"});
  }
  Print(rows, absl::GetFlag(FLAGS_markdown));
  std::printf("\nucx_perftest clients, median of %d runs (server: same env, `ucx_perftest -p <port>`):\n",
              absl::GetFlag(FLAGS_perftest_runs));
  for (const auto& c : perf_cmds) std::printf("  %s\n", c.c_str());
  std::printf("ucx_perftest reuses one send and one receive buffer (cache-hot); Gets read %s of stored blocks\n",
              FormatBytes(*ws).c_str());
  std::printf("targets: UCX get >= 70%% of ucx_perftest; UCX get >= 3x Redis GET\n");
  return 0;
}

}  // namespace
}  // namespace kvc::bench

int main(int argc, char** argv) {
  kvc::TuneAllocatorForLargeBuffers();
  kvc::ShowFlagsOfFileInHelp("transport_bench");
  absl::SetProgramUsageMessage(
      "transport_bench: block Put/Get over UCX sm, UCX tcp and gRPC against a kvcached child, next to\n"
      "ucx_perftest (ucp_am_bw, same transport and message size), a one-thread memcpy of the same blocks and\n"
      "redis-server SET/GET.\n"
      "Usage: transport_bench [--block_sizes=256KiB,2MiB] [--transports=ucx_sm,ucx_tcp,grpc] [--markdown]");
  absl::ParseCommandLine(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  return kvc::bench::Main();
}
