#include "transport/ucx_worker.h"

#include <netdb.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace kvc::ucx {
namespace {
// Longest epoll sleep; only bounds how late a Stop() is noticed if a wake-up
// were lost.
constexpr int kMaxSleepMs = 100;
}  // namespace

absl::StatusOr<std::unique_ptr<UcxWorker>> UcxWorker::Create(UcxContext* context, std::string name) {
  ucp_worker_params_t p{};
  p.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE | UCP_WORKER_PARAM_FIELD_NAME;
  p.thread_mode = UCS_THREAD_MODE_SINGLE;
  p.name = name.c_str();
  ucp_worker_h w = nullptr;
  if (ucs_status_t s = ucp_worker_create(context->handle(), &p, &w); s != UCS_OK) {
    return FromUcs(s, "ucp_worker_create");
  }
  auto worker = std::unique_ptr<UcxWorker>(new UcxWorker(context, w, std::move(name)));
  worker->wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  worker->epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (worker->wake_fd_ < 0 || worker->epoll_fd_ < 0) {
    return absl::InternalError(absl::StrCat("eventfd/epoll_create1: ", strerror(errno)));
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = worker->wake_fd_;
  epoll_ctl(worker->epoll_fd_, EPOLL_CTL_ADD, worker->wake_fd_, &ev);
  if (ucp_worker_get_efd(w, &worker->efd_) == UCS_OK) {
    ev.data.fd = worker->efd_;
    epoll_ctl(worker->epoll_fd_, EPOLL_CTL_ADD, worker->efd_, &ev);
  } else {
    worker->efd_ = -1;  // no wake-up support: the loop polls with short sleeps
    KVC_LOG(kWarning, "ucx_no_event_fd").With("worker", worker->name_);
  }
  return worker;
}

UcxWorker::~UcxWorker() {
  Stop([] {}, [] { return true; }, absl::Seconds(1));
  ucp_worker_destroy(worker_);
  if (epoll_fd_ >= 0) close(epoll_fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
}

absl::Status UcxWorker::SetAmHandler(uint16_t id, ucp_am_recv_callback_t cb, void* arg) {
  ucp_am_handler_param_t p{};
  p.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG |
                 UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
  p.id = id;
  p.cb = cb;
  p.arg = arg;
  p.flags = UCP_AM_FLAG_WHOLE_MSG;
  return FromUcs(ucp_worker_set_am_recv_handler(worker_, &p), "ucp_worker_set_am_recv_handler");
}

void UcxWorker::Start() { thread_ = std::thread([this] { Loop(); }); }

bool UcxWorker::Post(absl::AnyInvocable<void()> task) {
  {
    absl::MutexLock lock(&mu_);
    if (!accepting_) return false;
    tasks_.push_back(std::move(task));
  }
  if (sleeping_.load()) {
    const uint64_t one = 1;
    (void)!write(wake_fd_, &one, sizeof(one));
  }
  return true;
}

bool UcxWorker::RunTasks() {
  std::deque<absl::AnyInvocable<void()>> batch;
  {
    absl::MutexLock lock(&mu_);
    batch.swap(tasks_);
  }
  for (auto& t : batch) t();
  return !batch.empty();
}

void UcxWorker::Sleep() {
  sleeping_.store(true);
  {
    absl::MutexLock lock(&mu_);
    if (!tasks_.empty() || stop_.load()) {
      sleeping_.store(false);
      return;
    }
  }
  if (efd_ >= 0) {
    const ucs_status_t s = ucp_worker_arm(worker_);
    if (s == UCS_ERR_BUSY) {  // events arrived meanwhile
      sleeping_.store(false);
      return;
    }
  }
  epoll_event events[2];
  const int n = epoll_wait(epoll_fd_, events, 2, efd_ >= 0 ? kMaxSleepMs : 1);
  sleeping_.store(false);
  for (int i = 0; i < n; ++i) {
    if (events[i].data.fd == wake_fd_) {
      uint64_t v;
      (void)!read(wake_fd_, &v, sizeof(v));
    }
  }
}

void UcxWorker::Loop() {
  absl::Time idle_since = absl::Now();
  bool final_done = false;
  absl::AnyInvocable<bool()> drained;
  absl::Time deadline = absl::InfiniteFuture();
  while (true) {
    bool busy = RunTasks();
    while (ucp_worker_progress(worker_) != 0) busy = true;
    if (stop_.load()) {
      if (!final_done) {
        absl::AnyInvocable<void()> final_task;
        {
          absl::MutexLock lock(&mu_);
          final_task = std::move(final_task_);
          drained = std::move(drained_);
          deadline = stop_deadline_;
        }
        final_done = true;
        RunTasks();  // tasks posted before Stop run before the final task
        if (final_task) final_task();
        continue;
      }
      if ((!drained || drained()) || absl::Now() >= deadline) break;
      continue;  // keep progressing while draining
    }
    if (busy) {
      idle_since = absl::Now();
      continue;
    }
    if (absl::Now() - idle_since < spin_) continue;
    Sleep();
    idle_since = absl::Now();
  }
  // Tasks that raced with Stop are destroyed unrun (they own their state).
  absl::MutexLock lock(&mu_);
  tasks_.clear();
}

void UcxWorker::Stop(absl::AnyInvocable<void()> final_task, absl::AnyInvocable<bool()> drained,
                     absl::Duration grace) {
  absl::MutexLock stop_lock(&stop_mu_);
  if (stopped_) return;
  stopped_ = true;
  {
    absl::MutexLock lock(&mu_);
    accepting_ = false;
    final_task_ = std::move(final_task);
    drained_ = std::move(drained);
    stop_deadline_ = absl::Now() + grace;
  }
  stop_.store(true);
  const uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
  if (thread_.joinable()) {
    thread_.join();
  } else {
    // Never started: run the final task here, nothing else touches the worker.
    absl::AnyInvocable<void()> t;
    {
      absl::MutexLock lock(&mu_);
      t = std::move(final_task_);
      tasks_.clear();
    }
    if (t) t();
  }
}

ucs_status_t WaitOnProgressThread(ucp_worker_h worker, void* request, absl::Duration timeout) {
  if (request == nullptr) return UCS_OK;
  if (UCS_PTR_IS_ERR(request)) return UCS_PTR_STATUS(request);
  const absl::Time deadline = absl::Now() + timeout;
  ucs_status_t s;
  while ((s = ucp_request_check_status(request)) == UCS_INPROGRESS && absl::Now() < deadline) {
    ucp_worker_progress(worker);
  }
  if (s == UCS_INPROGRESS) {
    ucp_request_cancel(worker, request);
    while ((s = ucp_request_check_status(request)) == UCS_INPROGRESS) ucp_worker_progress(worker);
  }
  ucp_request_free(request);
  return s;
}

void CloseEndpoint(ucp_worker_h worker, ucp_ep_h ep, bool force, absl::Duration timeout) {
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  void* req = ucp_ep_close_nbx(ep, &p);
  if (req == nullptr || UCS_PTR_IS_ERR(req)) return;
  const absl::Time deadline = absl::Now() + timeout;
  while (ucp_request_check_status(req) == UCS_INPROGRESS && absl::Now() < deadline) ucp_worker_progress(worker);
  if (ucp_request_check_status(req) == UCS_INPROGRESS && !force) {
    // A flush close that does not finish in time: give up on the peer.
    ucp_request_free(req);
    CloseEndpoint(worker, ep, true, timeout);
    return;
  }
  ucp_request_free(req);
}

absl::StatusOr<ucp_listener_h> Listen(ucp_worker_h worker, absl::string_view address,
                                      ucp_listener_conn_callback_t cb, void* arg, int* port) {
  sockaddr_storage addr;
  socklen_t addr_len = 0;
  KVC_RETURN_IF_ERROR(ParseSockaddr(address, &addr, &addr_len));
  ucp_listener_params_t lp{};
  lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
  lp.sockaddr.addr = reinterpret_cast<const sockaddr*>(&addr);
  lp.sockaddr.addrlen = addr_len;
  lp.conn_handler.cb = cb;
  lp.conn_handler.arg = arg;
  ucp_listener_h listener = nullptr;
  if (ucs_status_t s = ucp_listener_create(worker, &lp, &listener); s != UCS_OK) {
    return FromUcs(s, absl::StrCat("UCX listen on '", address, "'"));
  }
  ucp_listener_attr_t attr{};
  attr.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
  if (ucs_status_t s = ucp_listener_query(listener, &attr); s != UCS_OK) {
    ucp_listener_destroy(listener);
    return FromUcs(s, "ucp_listener_query");
  }
  *port = attr.sockaddr.ss_family == AF_INET
              ? ntohs(reinterpret_cast<const sockaddr_in*>(&attr.sockaddr)->sin_port)
              : ntohs(reinterpret_cast<const sockaddr_in6*>(&attr.sockaddr)->sin6_port);
  return listener;
}

absl::StatusOr<ucp_ep_h> ConnectToListener(ucp_worker_h worker, const sockaddr_storage& addr, socklen_t len,
                                           ucp_err_handler_cb_t err_cb, void* err_arg) {
  ucp_ep_params_t ep{};
  ep.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                  UCP_EP_PARAM_FIELD_ERR_HANDLER;
  ep.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
  ep.sockaddr.addr = reinterpret_cast<const sockaddr*>(&addr);
  ep.sockaddr.addrlen = len;
  ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  ep.err_handler.cb = err_cb;
  ep.err_handler.arg = err_arg;
  ucp_ep_h out = nullptr;
  if (ucs_status_t s = ucp_ep_create(worker, &ep, &out); s != UCS_OK) return FromUcs(s, "ucp_ep_create");
  return out;
}

absl::Status ParseSockaddr(absl::string_view address, struct sockaddr_storage* out, socklen_t* len) {
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat("UCX address '", address, "' is not host:port"));
  }
  std::string host(address.substr(0, colon));
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  int port = 0;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("UCX address '", address, "' has a bad port"));
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res); rc != 0 || res == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("UCX address '", address, "': ", gai_strerror(rc)));
  }
  std::memset(out, 0, sizeof(*out));
  std::memcpy(out, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  freeaddrinfo(res);
  if (out->ss_family == AF_INET) {
    reinterpret_cast<sockaddr_in*>(out)->sin_port = htons(static_cast<uint16_t>(port));
  } else {
    reinterpret_cast<sockaddr_in6*>(out)->sin6_port = htons(static_cast<uint16_t>(port));
  }
  return absl::OkStatus();
}

}  // namespace kvc::ucx
