#include "worker/peer/ucx_rpc.h"

#include <netinet/in.h>
#include <ucp/api/ucp.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "transport/ucx_worker.h"

namespace kvc::peer {
namespace {

constexpr uint32_t kMagic = 0x5043564B;
constexpr uint8_t kVersion = 1;
constexpr size_t kHeaderBytes = 24;

struct Header {
  uint8_t op = 0;
  uint32_t status = 0;
  uint64_t id = 0;

  std::string Encode() const {
    std::string h(kHeaderBytes, '\0');
    std::memcpy(h.data(), &kMagic, 4);
    h[4] = static_cast<char>(kVersion);
    h[5] = static_cast<char>(op);
    std::memcpy(h.data() + 8, &status, 4);
    std::memcpy(h.data() + 16, &id, 8);
    return h;
  }
  static absl::StatusOr<Header> Decode(const void* data, size_t n) {
    if (n != kHeaderBytes) return absl::InvalidArgumentError(absl::StrCat("peer RPC header of ", n, " bytes"));
    const auto* p = static_cast<const char*>(data);
    uint32_t magic = 0;
    std::memcpy(&magic, p, 4);
    if (magic != kMagic || static_cast<uint8_t>(p[4]) != kVersion) {
      return absl::InvalidArgumentError("peer RPC header: bad magic or version");
    }
    Header h;
    h.op = static_cast<uint8_t>(p[5]);
    std::memcpy(&h.status, p + 8, 4);
    std::memcpy(&h.id, p + 16, 8);
    return h;
  }
};

// One AM send whose header and payload live until UCX is done with them.
struct SendOp {
  std::string header, payload;
};

void OnSendDone(void* request, ucs_status_t /*status*/, void* user_data) {
  delete static_cast<SendOp*>(user_data);
  ucp_request_free(request);
}

// Sends on the progress thread; the payload is moved into the operation.
void SendAm(ucp_ep_h ep, uint16_t am_id, const Header& h, std::string payload, uint32_t flags) {
  auto* op = new SendOp{h.Encode(), std::move(payload)};
  ucp_request_param_t prm{};
  prm.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  prm.flags = flags;
  prm.cb.send = &OnSendDone;
  prm.user_data = op;
  void* r = ucp_am_send_nbx(ep, am_id, op->header.data(), op->header.size(), op->payload.data(), op->payload.size(),
                            &prm);
  if (r == nullptr || UCS_PTR_IS_ERR(r)) delete op;
}

// Receives an AM payload: copied now when eager, else by a rendezvous
// receive into `buffer`; `done` runs on the progress thread either way.
struct RecvOp {
  std::string buffer;
  std::function<void(absl::Status, std::string)> done;
};

void OnRecvDone(void* request, ucs_status_t status, size_t /*length*/, void* user_data) {
  std::unique_ptr<RecvOp> op(static_cast<RecvOp*>(user_data));
  ucp_request_free(request);
  op->done(status == UCS_OK ? absl::OkStatus() : ucx::FromUcs(status, "peer RPC receive"), std::move(op->buffer));
}

void ReceivePayload(ucp_worker_h worker, void* data, size_t length, const ucp_am_recv_param_t* param,
                    std::function<void(absl::Status, std::string)> done) {
  if (!(param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV)) {
    done(absl::OkStatus(), std::string(static_cast<const char*>(data), length));
    return;
  }
  auto* op = new RecvOp{std::string(length, '\0'), std::move(done)};
  ucp_request_param_t prm{};
  prm.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  prm.cb.recv_am = &OnRecvDone;
  prm.user_data = op;
  void* r = ucp_am_recv_data_nbx(worker, data, op->buffer.data(), length, &prm);
  if (r == nullptr) {
    std::unique_ptr<RecvOp> finished(op);
    finished->done(absl::OkStatus(), std::move(finished->buffer));
  } else if (UCS_PTR_IS_ERR(r)) {
    std::unique_ptr<RecvOp> failed(op);
    failed->done(ucx::FromUcs(UCS_PTR_STATUS(r), "peer RPC receive"), "");
  }
}

thread_local uint64_t current_connection = 0;

}  // namespace

// ---------------------------------------------------------------- server

class RpcServer::Impl {
 public:
  Impl(const RpcServerOptions& options, RpcHandler handler) : options_(options), handler_(std::move(handler)) {}

  absl::Status Start() {
    ucx::UcxOptions u = options_.ucx;
    u.reuse_address = true;
    KVC_ASSIGN_OR_RETURN(context_, ucx::UcxContext::Create(u));
    KVC_ASSIGN_OR_RETURN(worker_, ucx::UcxWorker::Create(context_.get(), "kvc-peer-server"));
    KVC_RETURN_IF_ERROR(worker_->SetAmHandler(kAmRpcRequest, &Impl::OnRequest, this));
    KVC_ASSIGN_OR_RETURN(listener_,
                         ucx::Listen(worker_->handle(), options_.listen_address, &Impl::OnConnRequest, this, &port_));
    for (int i = 0; i < std::max(1, options_.threads); ++i) threads_.emplace_back([this] { Serve(); });
    worker_->Start();
    return absl::OkStatus();
  }

  void Stop() {
    {
      std::lock_guard<std::mutex> lock(jobs_mu_);
      stopping_ = true;
    }
    jobs_cv_.notify_all();
    for (std::thread& t : threads_) t.join();
    threads_.clear();
    if (worker_ != nullptr) {
      worker_->Stop(
          [this] {
            if (listener_ != nullptr) ucp_listener_destroy(listener_);
            listener_ = nullptr;
            for (auto& [ep, id] : conns_) ucx::CloseEndpoint(worker_->handle(), ep, /*force=*/true, absl::Seconds(1));
            conns_.clear();
            connections_.store(0);
          },
          [] { return true; }, absl::Seconds(2));
      worker_.reset();
    }
  }

  int port() const { return port_; }
  int connections() const { return connections_.load(); }
  std::function<void(uint64_t)> on_disconnect;

 private:
  struct Job {
    ucp_ep_h ep;
    uint64_t conn;
    Header header;
    std::string payload;
  };

  static void OnConnRequest(ucp_conn_request_h request, void* arg) {
    auto* self = static_cast<Impl*>(arg);
    ucp_ep_params_t p{};
    p.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                   UCP_EP_PARAM_FIELD_ERR_HANDLER;
    p.conn_request = request;
    p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    p.err_handler.cb = &Impl::OnEpError;
    p.err_handler.arg = self;
    ucp_ep_h ep = nullptr;
    if (ucs_status_t s = ucp_ep_create(self->worker_->handle(), &p, &ep); s != UCS_OK) {
      KVC_LOG(kWarning, "peer_accept_failed").With("error", ucs_status_string(s));
      return;
    }
    self->conns_[ep] = ++self->next_conn_;
    self->connections_.store(static_cast<int>(self->conns_.size()));
  }

  static void OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status) {
    auto* self = static_cast<Impl*>(arg);
    auto it = self->conns_.find(ep);
    if (it == self->conns_.end()) return;
    const uint64_t conn = it->second;
    self->conns_.erase(it);
    self->connections_.store(static_cast<int>(self->conns_.size()));
    KVC_LOG(kInfo, "peer_disconnected").With("connection", conn).With("error", ucs_status_string(status));
    if (self->on_disconnect) self->on_disconnect(conn);
    ucx::UcxWorker* worker = self->worker_.get();
    (void)worker->Post([worker, ep] { ucx::CloseEndpoint(worker->handle(), ep, /*force=*/true, absl::Seconds(1)); });
  }

  static ucs_status_t OnRequest(void* arg, const void* header, size_t header_length, void* data, size_t length,
                                const ucp_am_recv_param_t* param) {
    auto* self = static_cast<Impl*>(arg);
    absl::StatusOr<Header> h = Header::Decode(header, header_length);
    if (!h.ok() || !(param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP)) {
      KVC_LOG(kWarning, "peer_bad_request").With("error", h.ok() ? "no reply endpoint" : h.status().ToString());
      return UCS_OK;
    }
    ucp_ep_h ep = param->reply_ep;
    auto it = self->conns_.find(ep);
    const uint64_t conn = it == self->conns_.end() ? 0 : it->second;
    if (length > self->options_.max_request_bytes) {
      Header reply = *h;
      reply.status = static_cast<uint32_t>(absl::StatusCode::kResourceExhausted);
      SendAm(ep, kAmRpcReply, reply,
             absl::StrCat("peer request of ", length, " bytes; the limit is ", self->options_.max_request_bytes), 0);
      return UCS_OK;
    }
    const Header request = *h;
    ReceivePayload(self->worker_->handle(), data, length, param,
                   [self, ep, conn, request](absl::Status s, std::string payload) {
                     if (!s.ok()) return;  // the client went away mid-transfer
                     {
                       std::lock_guard<std::mutex> lock(self->jobs_mu_);
                       self->jobs_.push_back(Job{ep, conn, request, std::move(payload)});
                     }
                     self->jobs_cv_.notify_one();
                   });
    return UCS_OK;
  }

  void Serve() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(jobs_mu_);
        jobs_cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
        if (stopping_) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      current_connection = job.conn;
      // Op 0 is the client's connect probe.
      absl::StatusOr<std::string> result =
          job.header.op == 0 ? absl::StatusOr<std::string>(std::string()) : handler_(job.header.op, job.payload);
      current_connection = 0;
      Header reply = job.header;
      std::string payload;
      if (result.ok()) {
        payload = std::move(*result);
      } else {
        reply.status = static_cast<uint32_t>(result.status().code());
        payload = std::string(result.status().message());
      }
      // Answer on the progress thread, if the client is still there.
      (void)worker_->Post([this, ep = job.ep, conn = job.conn, reply, payload = std::move(payload)]() mutable {
        auto it = conns_.find(ep);
        if (it == conns_.end() || it->second != conn) return;
        SendAm(ep, kAmRpcReply, reply, std::move(payload), 0);
      });
    }
  }

  RpcServerOptions options_;
  RpcHandler handler_;
  std::unique_ptr<ucx::UcxContext> context_;
  std::unique_ptr<ucx::UcxWorker> worker_;
  ucp_listener_h listener_ = nullptr;
  int port_ = 0;
  // Progress thread only.
  absl::flat_hash_map<ucp_ep_h, uint64_t> conns_;
  uint64_t next_conn_ = 0;
  std::atomic<int> connections_{0};
  std::mutex jobs_mu_;
  std::condition_variable jobs_cv_;
  std::deque<Job> jobs_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

RpcServer::RpcServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RpcServer::~RpcServer() { impl_->Stop(); }

absl::StatusOr<std::unique_ptr<RpcServer>> RpcServer::Start(const RpcServerOptions& options, RpcHandler handler) {
  auto impl = std::make_unique<Impl>(options, std::move(handler));
  if (absl::Status s = impl->Start(); !s.ok()) {
    impl->Stop();
    return s;
  }
  return std::unique_ptr<RpcServer>(new RpcServer(std::move(impl)));
}

int RpcServer::port() const { return impl_->port(); }
int RpcServer::connections() const { return impl_->connections(); }
void RpcServer::OnDisconnect(std::function<void(uint64_t)> fn) { impl_->on_disconnect = std::move(fn); }
uint64_t RpcServer::CurrentConnection() { return current_connection; }

// ---------------------------------------------------------------- client

class RpcClient::Call {
 public:
  absl::Mutex mu;
  bool done ABSL_GUARDED_BY(mu) = false;
  absl::StatusOr<std::string> result ABSL_GUARDED_BY(mu);
  void Complete(absl::StatusOr<std::string> r) {
    absl::MutexLock lock(&mu);
    if (done) return;
    result = std::move(r);
    done = true;
  }
};

class RpcClient::Impl {
 public:
  explicit Impl(const RpcClientOptions& options) : options_(options) {}

  absl::Status Connect() {
    sockaddr_storage addr;
    socklen_t addr_len = 0;
    KVC_RETURN_IF_ERROR(ucx::ParseSockaddr(options_.address, &addr, &addr_len));
    KVC_ASSIGN_OR_RETURN(context_, ucx::UcxContext::Create(options_.ucx));
    KVC_ASSIGN_OR_RETURN(worker_, ucx::UcxWorker::Create(context_.get(), "kvc-peer-client"));
    KVC_RETURN_IF_ERROR(worker_->SetAmHandler(kAmRpcReply, &Impl::OnReply, this));
    worker_->Start();
    auto created = std::make_shared<RpcClient::Call>();
    const bool posted = worker_->Post([this, addr, addr_len, created] {
      absl::StatusOr<ucp_ep_h> ep =
          ucx::ConnectToListener(worker_->handle(), addr, addr_len, &Impl::OnEpError, this);
      if (!ep.ok()) {
        created->Complete(ep.status());
        return;
      }
      ep_ = *ep;
      created->Complete(std::string());
    });
    if (!posted) return absl::UnavailableError("peer client is shutting down");
    absl::StatusOr<std::string> made = WaitFor(created, options_.connect_timeout, "connect");
    if (!made.ok()) return made.status();
    // A round trip proves the peer is there (ucp_ep_create does not wait).
    return Wait(Send(0, std::string()), options_.connect_timeout).status();
  }

  void Stop() {
    if (worker_ == nullptr) return;
    worker_->Stop(
        [this] {
          if (ep_ != nullptr) ucx::CloseEndpoint(worker_->handle(), ep_, /*force=*/false, absl::Seconds(1));
          ep_ = nullptr;
          FailAll(absl::UnavailableError(absl::StrCat("peer ", options_.address, ": client closed")));
        },
        [] { return true; }, absl::Seconds(2));
    worker_.reset();
  }

  std::shared_ptr<RpcClient::Call> Send(uint8_t op, std::string payload) {
    auto call = std::make_shared<RpcClient::Call>();
    if (absl::Status b = Broken(); !b.ok()) {
      call->Complete(b);
      return call;
    }
    sent_.fetch_add(payload.size());
    const uint64_t id = next_id_.fetch_add(1);
    const bool posted = worker_->Post([this, id, op, call, payload = std::move(payload)]() mutable {
      if (ep_ == nullptr) {
        absl::Status b = Broken();
        call->Complete(b.ok() ? absl::UnavailableError(absl::StrCat("peer ", options_.address, ": not connected")) : b);
        return;
      }
      pending_[id] = call;
      Header h;
      h.op = op;
      h.id = id;
      SendAm(ep_, kAmRpcRequest, h, std::move(payload), UCP_AM_SEND_FLAG_REPLY);
    });
    if (!posted) call->Complete(absl::UnavailableError(absl::StrCat("peer ", options_.address, ": client closed")));
    return call;
  }

  absl::StatusOr<std::string> Wait(const std::shared_ptr<RpcClient::Call>& call, absl::Duration timeout) {
    return WaitFor(call, timeout, "call");
  }

  const RpcClientOptions& options() const { return options_; }
  uint64_t sent() const { return sent_.load(); }
  uint64_t received() const { return received_.load(); }

 private:
  absl::StatusOr<std::string> WaitFor(const std::shared_ptr<RpcClient::Call>& call, absl::Duration timeout,
                                      absl::string_view what) {
    absl::MutexLock lock(&call->mu);
    const auto ready = [&call]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(call->mu) { return call->done; };
    if (!call->mu.AwaitWithTimeout(absl::Condition(&ready), timeout)) {
      return absl::UnavailableError(absl::StrCat("peer ", options_.address, ": no answer to a ", what, " within ",
                                                 absl::FormatDuration(timeout)));
    }
    return call->result;
  }

  absl::Status Broken() const {
    absl::MutexLock lock(&broken_mu_);
    return broken_;
  }

  void FailAll(const absl::Status& s) {
    for (auto& [id, call] : pending_) call->Complete(s);
    pending_.clear();
  }

  static void OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status) {
    auto* self = static_cast<Impl*>(arg);
    const absl::Status s = absl::UnavailableError(
        absl::StrCat("peer ", self->options_.address, " is gone: ", ucs_status_string(status)));
    {
      absl::MutexLock lock(&self->broken_mu_);
      self->broken_ = s;
    }
    self->FailAll(s);
    if (ep == self->ep_) self->ep_ = nullptr;
    ucx::UcxWorker* worker = self->worker_.get();
    (void)worker->Post([worker, ep] { ucx::CloseEndpoint(worker->handle(), ep, /*force=*/true, absl::Seconds(1)); });
  }

  static ucs_status_t OnReply(void* arg, const void* header, size_t header_length, void* data, size_t length,
                              const ucp_am_recv_param_t* param) {
    auto* self = static_cast<Impl*>(arg);
    absl::StatusOr<Header> h = Header::Decode(header, header_length);
    if (!h.ok()) return UCS_OK;
    auto it = self->pending_.find(h->id);
    if (it == self->pending_.end()) return UCS_OK;  // timed out and forgotten
    std::shared_ptr<RpcClient::Call> call = std::move(it->second);
    self->pending_.erase(it);
    self->received_.fetch_add(length);
    const uint32_t status = h->status;
    ReceivePayload(self->worker_->handle(), data, length, param,
                   [call, status](absl::Status s, std::string payload) {
                     if (!s.ok()) {
                       call->Complete(s);
                     } else if (status != 0) {
                       call->Complete(absl::Status(static_cast<absl::StatusCode>(status), payload));
                     } else {
                       call->Complete(std::move(payload));
                     }
                   });
    return UCS_OK;
  }

  RpcClientOptions options_;
  std::unique_ptr<ucx::UcxContext> context_;
  std::unique_ptr<ucx::UcxWorker> worker_;
  ucp_ep_h ep_ = nullptr;  // progress thread
  absl::flat_hash_map<uint64_t, std::shared_ptr<RpcClient::Call>> pending_;  // progress thread
  std::atomic<uint64_t> next_id_{1};
  std::atomic<uint64_t> sent_{0}, received_{0};
  mutable absl::Mutex broken_mu_;
  absl::Status broken_ ABSL_GUARDED_BY(broken_mu_);
};

RpcClient::RpcClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RpcClient::~RpcClient() { impl_->Stop(); }

absl::StatusOr<std::unique_ptr<RpcClient>> RpcClient::Connect(const RpcClientOptions& options) {
  auto impl = std::make_unique<Impl>(options);
  if (absl::Status s = impl->Connect(); !s.ok()) {
    impl->Stop();
    return absl::Status(s.code(), absl::StrCat("peer connect to ", options.address, ": ", s.message()));
  }
  return std::unique_ptr<RpcClient>(new RpcClient(std::move(impl)));
}

std::shared_ptr<RpcClient::Call> RpcClient::Send(uint8_t op, std::string payload) {
  return impl_->Send(op, std::move(payload));
}
absl::StatusOr<std::string> RpcClient::Wait(const std::shared_ptr<Call>& call) {
  return impl_->Wait(call, impl_->options().call_timeout);
}
const std::string& RpcClient::address() const { return impl_->options().address; }
uint64_t RpcClient::bytes_sent() const { return impl_->sent(); }
uint64_t RpcClient::bytes_received() const { return impl_->received(); }

}  // namespace kvc::peer
