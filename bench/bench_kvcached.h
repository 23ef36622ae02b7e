// kvcached as a child process of a benchmark (gRPC and UCX on free ports),
// and the UCX transports the benchmarks compare.
#ifndef KVC_BENCH_BENCH_KVCACHED_H_
#define KVC_BENCH_BENCH_KVCACHED_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/child_process.h"
#include "worker/kv/block_client_factory.h"

namespace kvc::bench {

struct TransportSpec {
  std::string name;       // ucx_sm | ucx_tcp | grpc
  std::string transport;  // ucx | grpc
  std::string tls, net_devices;
};

// ucx_sm: tls "sm,tcp" (tcp on lo only bootstraps, see ucx_block_client.h);
// ucx_tcp: tcp on lo; anything else: gRPC.
TransportSpec SpecFor(const std::string& name);

// BlockClient options for `t` against `k`'s ports.
class Kvcached;
BlockClientOptions ClientOptionsFor(const TransportSpec& t, const Kvcached& k);

class Kvcached {
 public:
  // Starts `binary` over a fresh directory under `tmp` (removed on
  // destruction) with `extra_args`, and waits up to 60 s for its ports.
  static absl::StatusOr<std::unique_ptr<Kvcached>> Start(const std::string& binary, const std::string& tmp,
                                                         const std::vector<std::string>& extra_args = {});
  ~Kvcached();
  int port() const { return port_; }
  int ucx_port() const { return ucx_port_; }
  const std::string& command() const { return cmd_; }

 private:
  Kvcached() = default;
  std::string dir_, cmd_;
  int port_ = 0, ucx_port_ = 0;
  std::unique_ptr<ChildProcess> proc_;
};

}  // namespace kvc::bench

#endif  // KVC_BENCH_BENCH_KVCACHED_H_
