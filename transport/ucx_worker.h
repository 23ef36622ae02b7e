// UcxWorker: one ucp worker driven by one progress thread it owns.
//
// Threads: every UCX call on the worker, its endpoints and its listener runs
// on the progress thread (the worker is created UCS_THREAD_MODE_SINGLE).
// Other threads hand work to it with Post(), which never blocks on the
// network. The loop progresses the worker while there is traffic, spins
// briefly when it goes quiet, then sleeps in epoll on the worker's event fd
// (ucp_worker_get_efd + ucp_worker_arm) and an eventfd Post() writes to, so
// an idle worker costs no CPU and a new request or message wakes it at once.
// The spin is the context's UcxOptions::progress_spin (default 0: no spin).
#ifndef KVC_TRANSPORT_UCX_WORKER_H_
#define KVC_TRANSPORT_UCX_WORKER_H_

#include <ucp/api/ucp.h>

#include <atomic>
#include <deque>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "transport/ucx_context.h"

namespace kvc::ucx {

// Thread-safe: Post and Stop may be called from any thread; handle() only
// from tasks running on the progress thread (or before Start).
class UcxWorker {
 public:
  // REQUIRES: `context` outlives the worker.
  static absl::StatusOr<std::unique_ptr<UcxWorker>> Create(UcxContext* context, std::string name);
  // Stop() if still running, then destroys the worker.
  ~UcxWorker();
  UcxWorker(const UcxWorker&) = delete;
  UcxWorker& operator=(const UcxWorker&) = delete;

  ucp_worker_h handle() const { return worker_; }
  UcxContext* context() const { return context_; }

  // Registers an active-message handler. Before Start(), or from a task.
  absl::Status SetAmHandler(uint16_t id, ucp_am_recv_callback_t cb, void* arg);

  // Starts the progress thread.
  void Start();
  // Runs `task` on the progress thread, in posting order. Returns false (and
  // destroys the task unrun) once Stop() has begun.
  bool Post(absl::AnyInvocable<void()> task);
  bool OnProgressThread() const { return std::this_thread::get_id() == thread_.get_id(); }

  // Runs `final_task` on the progress thread (close endpoints there), then
  // keeps progressing until `drained()` returns true or `grace` passes, and
  // joins the thread. Tasks posted after this are dropped. Idempotent.
  void Stop(absl::AnyInvocable<void()> final_task, absl::AnyInvocable<bool()> drained, absl::Duration grace);

 private:
  UcxWorker(UcxContext* c, ucp_worker_h w, std::string name)
      : context_(c), worker_(w), name_(std::move(name)), spin_(c->options().progress_spin) {}
  void Loop();
  bool RunTasks();  // true when it ran any
  void Sleep();

  UcxContext* const context_;
  ucp_worker_h worker_;
  const std::string name_;
  const absl::Duration spin_;
  int efd_ = -1;     // the worker's event fd, -1 when UCX gives none
  int wake_fd_ = -1; // eventfd Post writes to
  int epoll_fd_ = -1;
  std::thread thread_;
  std::atomic<bool> sleeping_{false};
  std::atomic<bool> stop_{false};

  absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool accepting_ ABSL_GUARDED_BY(mu_) = true;
  absl::AnyInvocable<void()> final_task_ ABSL_GUARDED_BY(mu_);
  absl::AnyInvocable<bool()> drained_ ABSL_GUARDED_BY(mu_);
  absl::Time stop_deadline_ ABSL_GUARDED_BY(mu_);
  bool stopped_ = false;  // Stop() finished (only the stopping thread writes it)
  absl::Mutex stop_mu_;
};

// Waits on the progress thread for `request` (from a *_nbx call) to finish,
// progressing the worker, for at most `timeout`; frees it. For teardown
// paths only (closing endpoints): it blocks the progress loop.
ucs_status_t WaitOnProgressThread(ucp_worker_h worker, void* request, absl::Duration timeout);

// Closes `ep` (force: outstanding requests complete with an error at once)
// and waits up to `timeout` for the close. On the progress thread only.
void CloseEndpoint(ucp_worker_h worker, ucp_ep_h ep, bool force, absl::Duration timeout);

// A listener on `address` ("host:port"; port 0 picks one) that hands each
// connection request to cb(request, arg); *port gets the bound port. On
// the progress thread, or before the worker starts.
absl::StatusOr<ucp_listener_h> Listen(ucp_worker_h worker, absl::string_view address,
                                      ucp_listener_conn_callback_t cb, void* arg, int* port);

// An endpoint to a listener at `addr` (ucp_ep_create with
// UCP_EP_PARAMS_FLAGS_CLIENT_SERVER), with peer-failure handling that
// reports to err_cb(err_arg, ep, status). On the progress thread.
absl::StatusOr<ucp_ep_h> ConnectToListener(ucp_worker_h worker, const struct sockaddr_storage& addr, socklen_t len,
                                           ucp_err_handler_cb_t err_cb, void* err_arg);

// Splits "host:port" into a sockaddr; INVALID_ARGUMENT naming the address
// when it is not an IPv4/IPv6 literal or a resolvable name with a port.
absl::Status ParseSockaddr(absl::string_view address, struct sockaddr_storage* out, socklen_t* len);

}  // namespace kvc::ucx

#endif  // KVC_TRANSPORT_UCX_WORKER_H_
