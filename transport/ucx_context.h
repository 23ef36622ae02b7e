// RAII over UCX's ucp layer: the context (with its own transport
// configuration), registered memory, and UCX error codes as absl::Status.
#ifndef KVC_TRANSPORT_UCX_CONTEXT_H_
#define KVC_TRANSPORT_UCX_CONTEXT_H_

#include <ucp/api/ucp.h>

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace kvc::ucx {

// UCX settings applied to one ucp context (ucp_config_read +
// ucp_config_modify), so one process can run contexts with different
// transports side by side. An empty field leaves UCX's own default (which the
// UCX_* environment variables still override).
struct UcxOptions {
  // UCX_TLS for this context, e.g. "sm" (same host), "tcp", "sm,tcp". Default "" (UCX picks).
  std::string tls;
  // UCX_NET_DEVICES for this context, e.g. "lo" or "eth0". Default "".
  std::string net_devices;
  // UCX_RNDV_SCHEME, e.g. "put_zcopy"; "" keeps UCX's "auto". Default "".
  std::string rndv_scheme;
  // UCX_CM_REUSEADDR: a listener may bind a port whose earlier connections
  // are still in TIME_WAIT (a service restarted on its port). Default false.
  bool reuse_address = false;
  // How long a UcxWorker's progress thread keeps polling after its last
  // event before it sleeps in epoll (transport/ucx_worker.h). A spin saves
  // the wake-up (tens of us on a VM) when the next event comes within it,
  // and costs a core meanwhile. Default 0: on the 2-core development VM
  // with its cores contended, 0 beat 20 us and 100 us on block Get (medians
  // of 5 runs: 256 KiB +60% (sm) and +85% (tcp), 2 MiB sm +12%, 2 MiB tcp
  // -30%); on the same VM when quiet, 100 us was up to 28% ahead
  // (docs/BENCHMARKS.md). Worth setting to 20-100 us on a host with cores
  // to spare. At most 1 s.
  absl::Duration progress_spin = absl::ZeroDuration();

  absl::Status Validate() const;
};

// Maps a UCX status to an absl::Status: UNAVAILABLE for unreachable or
// closed peers and timeouts of the transport, CANCELLED for cancelled
// requests, INVALID_ARGUMENT for bad parameters, INTERNAL otherwise. The
// message is "<what>: <ucs_status_string>".
absl::Status FromUcs(ucs_status_t s, absl::string_view what);

// Thread-safe (created with multi-threaded workers allowed; this library
// still drives each worker from one thread).
class UcxContext {
 public:
  static absl::StatusOr<std::unique_ptr<UcxContext>> Create(const UcxOptions& options);
  ~UcxContext();
  UcxContext(const UcxContext&) = delete;
  UcxContext& operator=(const UcxContext&) = delete;

  ucp_context_h handle() const { return context_; }
  const UcxOptions& options() const { return options_; }

 private:
  UcxContext(ucp_context_h c, UcxOptions o) : context_(c), options_(std::move(o)) {}
  ucp_context_h context_;
  UcxOptions options_;
};

// `bytes` of host memory allocated and registered by ucp_mem_map once, freed
// and deregistered by the destructor. REQUIRES: the context outlives it.
class RegisteredMemory {
 public:
  // `populate`: fault every page in now (MAP_POPULATE); false leaves pages to
  // be faulted in as they are first written, so a large pool that is rarely
  // full costs only what is used.
  static absl::StatusOr<std::unique_ptr<RegisteredMemory>> Allocate(UcxContext* context, size_t bytes,
                                                                   bool populate = true);
  ~RegisteredMemory();
  RegisteredMemory(const RegisteredMemory&) = delete;
  RegisteredMemory& operator=(const RegisteredMemory&) = delete;

  char* data() const { return data_; }
  size_t size() const { return size_; }
  ucp_mem_h memh() const { return memh_; }

 private:
  RegisteredMemory(UcxContext* c, ucp_mem_h m, char* d, size_t n) : context_(c), memh_(m), data_(d), size_(n) {}
  UcxContext* context_;
  ucp_mem_h memh_;
  char* data_;
  size_t size_;
};

}  // namespace kvc::ucx

#endif  // KVC_TRANSPORT_UCX_CONTEXT_H_
