// The real kvcached binary as a child process of a test, on free ports over
// a data directory: for tests that kill the service (SIGKILL, SIGTERM) and
// restart it, and for tests where the worker and the service must be
// separate processes.
#ifndef KVC_TESTS_KVCACHED_CHILD_H_
#define KVC_TESTS_KVCACHED_CHILD_H_

#include <sys/types.h>

#include <string>
#include <vector>

namespace kvc::testing {

struct KvcachedChildOptions {
  // Also listen for UCX (--ucx_listen_address on 127.0.0.1).
  bool ucx = false;
  // Host tier budget (small: blocks spill to RocksDB soon). Default 4 MiB.
  std::string host_capacity = "4MiB";
  // The address to listen on (gRPC and UCX): any 127.x.y.z is loopback, so
  // several children can share ports on different addresses. Default 127.0.0.1.
  std::string host = "127.0.0.1";
  // Ports to bind; 0 picks free ones (a restart then reuses the chosen ones).
  int port = 0;
  int ucx_port = 0;
  std::vector<std::string> extra_args;
};

class KvcachedChild {
 public:
  // Starts kvcached over `dir` (the tokens file of TestServerOptions: tenants
  // a, b, q) and waits up to 6 s for its port files. port() is 0 when it did
  // not come up.
  KvcachedChild(const std::string& dir, KvcachedChildOptions options = {});
  // SIGKILL if still running.
  ~KvcachedChild();
  KvcachedChild(const KvcachedChild&) = delete;
  KvcachedChild& operator=(const KvcachedChild&) = delete;

  int port() const { return port_; }
  // The child's process id, -1 when it is not running.
  pid_t pid() const { return pid_; }
  int ucx_port() const { return ucx_port_; }
  std::string address() const;
  std::string ucx_address() const;
  void Signal(int sig);
  // Sends `sig`, waits for the exit and returns the wait status.
  int Kill(int sig);
  // Starts it again on the same ports and data directory; false when it did
  // not come up.
  bool Restart();

 private:
  void Start();

  std::string dir_;
  KvcachedChildOptions options_;
  pid_t pid_ = -1;
  int port_ = 0;
  int ucx_port_ = 0;
};

}  // namespace kvc::testing

#endif  // KVC_TESTS_KVCACHED_CHILD_H_
