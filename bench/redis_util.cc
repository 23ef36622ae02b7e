#include "bench/redis_util.h"

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace kvc::bench {

absl::StatusOr<RedisConn> RedisConnect(int port) {
  RedisConn c(redisConnect("127.0.0.1", port));
  if (c == nullptr) return absl::UnavailableError("redisConnect: out of memory");
  if (c->err) return absl::UnavailableError(absl::StrCat("redisConnect: ", c->errstr));
  // hiredis frees its read buffer whenever it is empty and over 16 KiB, so a
  // 2 MiB reply regrows it from 16 KiB by doubling; 0 keeps it (hiredis's
  // documented knob for large replies), Redis's best case.
  c->reader->maxbuf = 0;
  return c;
}

absl::Status RedisCommand(redisContext* c, int type, const char* cmd) {
  auto* r = static_cast<redisReply*>(redisCommand(c, cmd));
  if (r == nullptr) return absl::UnavailableError(absl::StrCat("redis ", cmd, ": ", c->errstr));
  const bool ok = r->type == type;
  std::string got = r->str ? std::string(r->str, r->len) : "";
  freeReplyObject(r);
  if (!ok) return absl::InternalError(absl::StrCat("redis ", cmd, ": unexpected reply '", got, "'"));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<RedisServer>> RedisServer::Start(const std::string& binary, const std::string& tmp_dir,
                                                                 uint64_t maxmemory) {
  auto r = std::unique_ptr<RedisServer>(new RedisServer);
  std::string dir_template = tmp_dir + "/kvcache_bench_redis_XXXXXX";
  if (mkdtemp(dir_template.data()) == nullptr) return absl::InternalError("mkdtemp " + dir_template);
  r->dir_ = dir_template;
  KVC_ASSIGN_OR_RETURN(r->port_, PickFreePort());
  std::vector<std::string> argv = {binary,          "--port",       absl::StrCat(r->port_),
                                   "--bind",        "127.0.0.1",    "--save",
                                   "",              "--appendonly", "no",
                                   "--protected-mode", "no",        "--maxmemory",
                                   absl::StrCat(maxmemory), "--maxmemory-policy", "noeviction",
                                   "--dir",         r->dir_,        "--daemonize",
                                   "no"};
  r->cmd_ = absl::StrJoin(argv, " ", [](std::string* out, const std::string& a) {
    absl::StrAppend(out, a.empty() ? "\"\"" : a);
  });
  KVC_ASSIGN_OR_RETURN(r->proc_, ChildProcess::Start(argv, r->dir_ + "/redis.log"));
  const auto t0 = std::chrono::steady_clock::now();
  while (true) {
    absl::StatusOr<RedisConn> c = RedisConnect(r->port_);
    if (c.ok() && RedisCommand(c->get(), REDIS_REPLY_STATUS, "PING").ok()) break;
    if (!r->proc_->Running()) return absl::InternalError("redis-server exited at start; see " + r->dir_);
    if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(30)) {
      return absl::DeadlineExceededError("redis-server did not answer PING in 30 s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return r;
}

RedisServer::~RedisServer() {
  if (proc_) proc_->Stop();
  std::error_code ec;
  if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
}

}  // namespace kvc::bench
