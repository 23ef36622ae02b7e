// kvc-shard: holds token ranges of other workers' sequences and answers
// their context-parallel TokenSelect (worker/peer/context_shard.h) over UCX.
//
//   kvc-shard --listen=0.0.0.0:7100 --ucx_tls=tcp --max_bytes=68719476736 --metrics_address=0.0.0.0:9466
//
// Runs until SIGTERM or SIGINT. Logs JSON lines on stderr.
#include <signal.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <prometheus/metric_family.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "common/allocator.h"
#include "common/help_flags.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "worker/peer/context_shard.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:0", "UCX listen address host:port (port 0 picks one)");
ABSL_FLAG(std::string, port_file, "", "Write the bound port here once listening (for tests and scripts)");
ABSL_FLAG(std::string, ucx_tls, "", "UCX transports (UCX_TLS), e.g. tcp; \"\" lets UCX choose");
ABSL_FLAG(std::string, ucx_net_devices, "", "UCX network devices (UCX_NET_DEVICES), e.g. eth0 or lo");
ABSL_FLAG(int, threads, 2, "Threads answering requests");
ABSL_FLAG(uint64_t, max_bytes, 8ull << 30, "KV bytes held for all sequences; appends beyond are refused");
ABSL_FLAG(std::string, metrics_address, "", "Serve Prometheus /metrics here (host:port); \"\" = off");

namespace {

// kvc_shard_sequences, kvc_shard_kv_bytes: read at scrape time.
class ShardMetrics : public prometheus::Collectable {
 public:
  explicit ShardMetrics(const kvc::peer::ContextShardServer* s) : s_(s) {}
  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<prometheus::MetricFamily> out;
    const auto gauge = [&](const char* name, const char* help, double v) {
      prometheus::MetricFamily f{name, help, prometheus::MetricType::Gauge, {}};
      prometheus::ClientMetric m;
      m.gauge.value = v;
      f.metric.push_back(m);
      out.push_back(std::move(f));
    };
    gauge("kvc_shard_sequences", "Sequences with context held here.", s_->sequences());
    gauge("kvc_shard_kv_bytes", "Bytes of KV held for other workers' sequences.",
          static_cast<double>(s_->bytes_held()));
    return out;
  }

 private:
  const kvc::peer::ContextShardServer* s_;
};

absl::Status Run() {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);  // every thread started below inherits it

  kvc::peer::ContextShardOptions o;
  o.rpc.listen_address = absl::GetFlag(FLAGS_listen);
  o.rpc.ucx.tls = absl::GetFlag(FLAGS_ucx_tls);
  o.rpc.ucx.net_devices = absl::GetFlag(FLAGS_ucx_net_devices);
  o.rpc.threads = absl::GetFlag(FLAGS_threads);
  o.max_bytes = absl::GetFlag(FLAGS_max_bytes);
  if (o.rpc.threads < 1) return absl::InvalidArgumentError("--threads must be >= 1");
  KVC_ASSIGN_OR_RETURN(std::unique_ptr<kvc::peer::ContextShardServer> server, kvc::peer::ContextShardServer::Start(o));
  std::unique_ptr<prometheus::Exposer> exposer;
  auto metrics = std::make_shared<ShardMetrics>(server.get());
  if (!absl::GetFlag(FLAGS_metrics_address).empty()) {
    try {
      exposer = std::make_unique<prometheus::Exposer>(absl::GetFlag(FLAGS_metrics_address), 1);
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat("--metrics_address: ", e.what()));
    }
    exposer->RegisterCollectable(metrics);
  }
  if (const std::string f = absl::GetFlag(FLAGS_port_file); !f.empty()) {
    std::ofstream(f + ".tmp") << server->port() << "\n";
    if (std::rename((f + ".tmp").c_str(), f.c_str()) != 0) {
      return absl::InternalError(absl::StrCat("cannot write --port_file ", f));
    }
  }
  KVC_LOG(kInfo, "context_shard_listening").With("port", server->port()).With("tls", o.rpc.ucx.tls);
  int sig = 0;
  sigwait(&stop, &sig);
  KVC_LOG(kInfo, "context_shard_stopping").With("signal", sig).With("sequences", server->sequences());
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  kvc::TuneAllocatorForLargeBuffers();
  absl::SetProgramUsageMessage(
      "holds token ranges of other workers' sequences and answers their context-parallel TokenSelect over UCX.\n"
      "  kvc-shard --listen=HOST:PORT [--ucx_tls=tcp --ucx_net_devices=eth0 --max_bytes=N --metrics_address=H:P]");
  kvc::ShowFlagsOfFileInHelp("kvc_shard_main");
  absl::ParseCommandLine(argc, argv);
  const absl::Status s = Run();
  if (!s.ok()) {
    std::fprintf(stderr, "kvc-shard: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
