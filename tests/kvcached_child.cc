#include "tests/kvcached_child.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "cachesvc/server/options.h"
#include "tests/server_fixture.h"

namespace kvc::testing {

KvcachedChild::KvcachedChild(const std::string& dir, KvcachedChildOptions options)
    : dir_(dir), options_(std::move(options)) {
  Start();
}

KvcachedChild::~KvcachedChild() {
  if (pid_ > 0) Kill(SIGKILL);
}

std::string KvcachedChild::address() const { return absl::StrCat(options_.host, ":", port_); }
std::string KvcachedChild::ucx_address() const { return absl::StrCat(options_.host, ":", ucx_port_); }

void KvcachedChild::Start() {
  std::filesystem::remove(dir_ + "/port");
  std::filesystem::remove(dir_ + "/ucx_port");
  const ServerOptions o = TestServerOptions(dir_);  // writes the tokens file
  std::vector<std::string> args = {KVC_KVCACHED_PATH,
                                   absl::StrCat("--listen_address=", options_.host, ":", options_.port),
                                   "--port_file=" + dir_ + "/port",
                                   "--data_dir=" + o.data_dir,
                                   "--metrics_address=",
                                   "--auth_tokens_file=" + o.auth_tokens_file,
                                   "--host_capacity_bytes=" + options_.host_capacity,
                                   "--host_shards=4",
                                   "--log_level=warning"};
  if (options_.ucx) {
    args.push_back(absl::StrCat("--ucx_listen_address=", options_.host, ":", options_.ucx_port));
    args.push_back("--ucx_port_file=" + dir_ + "/ucx_port");
  }
  args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());
  pid_ = fork();
  if (pid_ == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the test
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  port_ = ucx_port_ = 0;
  for (int i = 0; i < 300; ++i) {
    std::ifstream p(dir_ + "/port");
    std::ifstream u(dir_ + "/ucx_port");
    int port = 0, ucx_port = 0;
    const bool have_port = static_cast<bool>(p >> port);
    const bool have_ucx = !options_.ucx || static_cast<bool>(u >> ucx_port);
    if (have_port && have_ucx) {
      port_ = port;
      ucx_port_ = ucx_port;
      // A restart binds the same ports.
      options_.port = port;
      options_.ucx_port = ucx_port;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void KvcachedChild::Signal(int sig) {
  if (pid_ > 0) kill(pid_, sig);
}

int KvcachedChild::Kill(int sig) {
  if (pid_ <= 0) return 0;
  kill(pid_, sig);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return status;
}

bool KvcachedChild::Restart() {
  if (pid_ > 0) Kill(SIGKILL);
  Start();
  return port_ > 0;
}

}  // namespace kvc::testing
