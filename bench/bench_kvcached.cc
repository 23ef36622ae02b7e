#include "bench/bench_kvcached.h"

#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace kvc::bench {

TransportSpec SpecFor(const std::string& name) {
  if (name == "ucx_sm") return {name, "ucx", "sm,tcp", "lo"};
  if (name == "ucx_tcp") return {name, "ucx", "tcp", "lo"};
  return {name, "grpc", "", ""};
}

BlockClientOptions ClientOptionsFor(const TransportSpec& t, const Kvcached& k) {
  BlockClientOptions o;
  o.transport = t.transport;
  o.grpc.address = absl::StrCat("127.0.0.1:", k.port());
  o.ucx.address = absl::StrCat("127.0.0.1:", k.ucx_port());
  o.ucx.ucx.tls = t.tls;
  o.ucx.ucx.net_devices = t.net_devices;
  return o;
}

absl::StatusOr<std::unique_ptr<Kvcached>> Kvcached::Start(const std::string& binary, const std::string& tmp,
                                                          const std::vector<std::string>& extra_args) {
  using Clock = std::chrono::steady_clock;
  auto k = std::unique_ptr<Kvcached>(new Kvcached);
  std::string dir = tmp + "/kvcached_bench_XXXXXX";
  if (mkdtemp(dir.data()) == nullptr) return absl::InternalError("mkdtemp " + dir);
  k->dir_ = dir;
  std::vector<std::string> argv = {binary, "--listen_address=127.0.0.1:0", "--port_file=" + dir + "/port",
                                   "--ucx_listen_address=127.0.0.1:0", "--ucx_port_file=" + dir + "/ucx_port",
                                   "--data_dir=" + dir + "/data", "--metrics_address=",
                                   "--host_capacity_bytes=2GiB", "--flush_host_on_shutdown=false",
                                   "--log_level=warning"};
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  k->cmd_ = absl::StrJoin(argv, " ");
  KVC_ASSIGN_OR_RETURN(k->proc_, ChildProcess::Start(argv, dir + "/kvcached.log"));
  const auto t0 = Clock::now();
  while (k->port_ == 0 || k->ucx_port_ == 0) {
    std::ifstream p(dir + "/port"), u(dir + "/ucx_port");
    if (p >> k->port_ && u >> k->ucx_port_) break;
    k->port_ = k->ucx_port_ = 0;
    if (!k->proc_->Running()) return absl::InternalError("kvcached exited at start; see " + dir + "/kvcached.log");
    if (std::chrono::duration<double>(Clock::now() - t0).count() > 60) {
      return absl::DeadlineExceededError("kvcached wrote no port files in 60 s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return k;
}

Kvcached::~Kvcached() {
  if (proc_) proc_->Stop();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

}  // namespace kvc::bench
