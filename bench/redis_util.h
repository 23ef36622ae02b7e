// Redis for the benchmarks: a redis-server child process with no
// persistence on a free port, and hiredis connections tuned for
// megabyte values. Shared by kvcache_bench and transport_bench.
#ifndef KVC_BENCH_REDIS_UTIL_H_
#define KVC_BENCH_REDIS_UTIL_H_

#include <hiredis/hiredis.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "bench/child_process.h"

namespace kvc::bench {

struct RedisContextDeleter {
  void operator()(redisContext* c) const { redisFree(c); }
};
using RedisConn = std::unique_ptr<redisContext, RedisContextDeleter>;

// A connection to 127.0.0.1:`port` whose read buffer is never shrunk (the
// best case for large replies).
absl::StatusOr<RedisConn> RedisConnect(int port);

// One command, synchronously; the reply must be of `type`.
absl::Status RedisCommand(redisContext* c, int type, const char* cmd);

// Not thread-safe: one owner. Stops the server and removes its directory on
// destruction.
class RedisServer {
 public:
  // `binary` (searched in PATH) with --save "" --appendonly no, maxmemory
  // `maxmemory` (noeviction), its directory under `tmp_dir`. Waits (up to
  // 30 s) until it answers PING.
  static absl::StatusOr<std::unique_ptr<RedisServer>> Start(const std::string& binary, const std::string& tmp_dir,
                                                            uint64_t maxmemory);
  ~RedisServer();
  int port() const { return port_; }
  // The command line, for the benchmark's report.
  const std::string& command() const { return cmd_; }

 private:
  RedisServer() = default;
  std::string dir_, cmd_;
  int port_ = 0;
  std::unique_ptr<ChildProcess> proc_;
};

}  // namespace kvc::bench

#endif  // KVC_BENCH_REDIS_UTIL_H_
