#include "cachesvc/server/ucx_service.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cstring>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "cachesvc/cached_block.h"
#include "cachesvc/server/put_request.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kvcache/v1/cache.pb.h"
#include "transport/buffer_pool.h"
#include "transport/ucx_worker.h"
#include "transport/wire_protocol.h"

namespace kvc {
namespace {

namespace v1 = ::kvcache::v1;
using ucx::FrameHeader;
using ucx::Op;

class InFlight;
struct Conn;

// A UCX send or receive in flight on one endpoint, from its *_nbx call to
// its completion callback. Progress thread only.
struct UcxOp {
  std::shared_ptr<Conn> conn;
  std::shared_ptr<InFlight> request;
  // The endpoint was dropped first: `request` was settled then; UCX still
  // owns the operation's memory until it calls back.
  bool orphaned = false;
};

// One client endpoint. Touched only on the progress thread.
struct Conn {
  ucp_ep_h ep = nullptr;
  std::string authorization;  // as sent in HELLO; re-checked on every request
  bool hello_ok = false;
  bool dead = false;  // dropped: no more sends, its requests are settled
  // Created by UCX when a client connected to our worker address (shared
  // memory) rather than through the listener: UCX owns it, and it has no
  // error callback of ours (error mode NONE), so it is never closed or
  // touched again once dropped.
  bool by_address = false;
  // Listener connections: the session id its HELLO reply carries. Worker-
  // address endpoints: the session they are tied to.
  uint32_t session = 0;
  // Listener connections: the worker-address endpoints tied to it.
  std::vector<std::shared_ptr<Conn>> linked;
  // Sends and receives in flight on this endpoint.
  absl::flat_hash_set<UcxOp*> ops;
};

// A PUT or GET from arrival to its last reply: counted in the service's
// in-flight calls (so graceful shutdown waits for it) and recorded in the
// metrics when the last reference goes, wherever that happens (a completed
// send, a dropped executor task), so no path can leak the count.
class InFlight {
 public:
  InFlight(CacheService* svc, Op op) : svc_(svc), op_(op), start_(absl::Now()) { svc_->CallStarted(); }
  ~InFlight() {
    svc_->metrics()->ObserveUcxRequest(ucx::OpName(op_), static_cast<grpc::StatusCode>(code_.load()),
                                       absl::Now() - start_);
    svc_->CallEnded();
  }
  // Keeps the first error.
  void Fail(absl::StatusCode code) {
    int expected = 0;
    code_.compare_exchange_strong(expected, static_cast<int>(code));
  }

 private:
  CacheService* const svc_;
  const Op op_;
  const absl::Time start_;
  std::atomic<int> code_{0};
};

Op ReplyOpFor(Op request) {
  switch (request) {
    case Op::kHello: return Op::kHelloReply;
    case Op::kPut: return Op::kPutReply;
    default: return Op::kGetFailed;
  }
}

}  // namespace

class UcxService::Impl {
 public:
  explicit Impl(CacheService* svc) : svc_(svc) {}

  absl::Status Init(const UcxServiceOptions& options, int* port);
  void Stop(absl::Duration grace);
  size_t endpoints() const { return endpoints_.load(); }

 private:
  // A send in flight: the header and what keeps the payload alive.
  struct SendOp : UcxOp {
    Impl* impl;
    FrameHeader::Bytes header;
    BlockPtr block;    // a hit: the payload is block->wire()
    std::string text;  // otherwise the payload (error message, tenant)
  };
  // A rendezvous receive in flight, into a region of the receive pool.
  struct RecvOp : UcxOp {
    Impl* impl;
    FrameHeader header;
    ucx::BufferPool::Lease buffer;
    size_t length;
  };

  static void OnConnRequest(ucp_conn_request_h request, void* arg);
  static void OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status);
  static ucs_status_t OnAm(void* arg, const void* header, size_t header_length, void* data, size_t length,
                           const ucp_am_recv_param_t* param);
  static void OnRecvDone(void* request, ucs_status_t status, size_t length, void* user_data);
  static void OnSendDone(void* request, ucs_status_t status, void* user_data);

  ucs_status_t Receive(const FrameHeader& h, void* data, size_t length, const ucp_am_recv_param_t* param);
  // `payload` is in `buffer` when that holds a region, else valid only for
  // the call (an eager message still in UCX's hands).
  void Dispatch(const std::shared_ptr<Conn>& conn, const FrameHeader& h, absl::string_view payload,
                ucx::BufferPool::Lease buffer, std::shared_ptr<InFlight> request);
  void HandleHello(const std::shared_ptr<Conn>& conn, const FrameHeader& h, absl::string_view payload);
  void HandlePut(const std::shared_ptr<Conn>& conn, const FrameHeader& h, ucx::BufferPool::Lease buffer,
                 size_t length, std::shared_ptr<InFlight> request);
  void HandleGet(const std::shared_ptr<Conn>& conn, const FrameHeader& h, absl::string_view payload,
                 std::shared_ptr<InFlight> request);
  void SendResult(const std::shared_ptr<Conn>& conn, uint64_t id, uint32_t index, const BlockKey& key,
                  absl::StatusOr<FoundBlock> found, const std::shared_ptr<InFlight>& request);
  // Replies with `status` (an error, or OK with `text` as payload).
  void Reply(const std::shared_ptr<Conn>& conn, Op op, uint64_t id, const absl::Status& status,
             std::shared_ptr<InFlight> request, uint32_t index = 0, std::string text = "");
  void Send(const std::shared_ptr<Conn>& conn, const FrameHeader& h, BlockPtr block, std::string text,
            std::shared_ptr<InFlight> request);
  std::shared_ptr<Conn> FindConn(ucp_ep_h ep) const {
    auto it = conns_.find(ep);
    return it == conns_.end() ? nullptr : it->second;
  }
  void AddConn(std::shared_ptr<Conn> conn);
  // Forgets `conn` and the worker-address endpoints tied to it, settles
  // their requests in flight (UNAVAILABLE) and refuses their later sends.
  // Does not close the endpoint (the caller does, where UCX allows it).
  void DropConn(const std::shared_ptr<Conn>& conn);
  // An operation started (`op` is in flight) or gave its callback.
  void Track(UcxOp* op);
  void Untrack(UcxOp* op);

  CacheService* const svc_;
  // Declaration order is destruction order reversed: the worker goes first
  // (UCX may still call back into the members below while it is destroyed),
  // then the pool, then the context both were made from.
  std::unique_ptr<ucx::UcxContext> context_;
  std::unique_ptr<ucx::BufferPool> recv_pool_;
  ucp_listener_h listener_ = nullptr;
  // Progress thread only.
  absl::flat_hash_map<ucp_ep_h, std::shared_ptr<Conn>> conns_;
  absl::flat_hash_map<uint32_t, std::shared_ptr<Conn>> sessions_;  // listener connections by session id
  uint32_t next_session_ = 1;
  std::vector<void*> closing_;  // ep close requests issued by Stop
  std::atomic<int64_t> outstanding_{0};  // UCX sends and receives in flight
  std::atomic<int64_t> orphaned_{0};     // of those, on dropped endpoints
  std::atomic<size_t> endpoints_{0};
  std::atomic<bool> stopping_{false};
  std::string worker_address_;  // ucp_worker_get_address, sent in HELLO replies
  std::unique_ptr<ucx::UcxWorker> worker_;
};

void UcxService::Impl::AddConn(std::shared_ptr<Conn> conn) {
  conns_[conn->ep] = std::move(conn);
  endpoints_.store(conns_.size());
  svc_->metrics()->SetUcxEndpoints(conns_.size());
}

void UcxService::Impl::DropConn(const std::shared_ptr<Conn>& conn) {
  if (conn->dead) return;
  conn->dead = true;
  conns_.erase(conn->ep);
  if (conn->session != 0 && !conn->by_address) sessions_.erase(conn->session);
  for (UcxOp* op : conn->ops) {
    if (op->orphaned) continue;
    op->orphaned = true;
    orphaned_.fetch_add(1);
    if (op->request) op->request->Fail(absl::StatusCode::kUnavailable);
    op->request.reset();  // the request ends here, not when UCX gives the op back
  }
  std::vector<std::shared_ptr<Conn>> linked = std::move(conn->linked);
  for (const auto& l : linked) DropConn(l);
  endpoints_.store(conns_.size());
  svc_->metrics()->SetUcxEndpoints(conns_.size());
}

void UcxService::Impl::Track(UcxOp* op) {
  outstanding_.fetch_add(1);
  op->conn->ops.insert(op);
  if (op->conn->dead) {  // dropped before the op started: settle it now too
    op->orphaned = true;
    orphaned_.fetch_add(1);
    if (op->request) op->request->Fail(absl::StatusCode::kUnavailable);
    op->request.reset();
  }
}

void UcxService::Impl::Untrack(UcxOp* op) {
  outstanding_.fetch_sub(1);
  if (op->orphaned) orphaned_.fetch_sub(1);
  op->conn->ops.erase(op);
}

absl::Status UcxService::Impl::Init(const UcxServiceOptions& options, int* port) {
  KVC_ASSIGN_OR_RETURN(context_, ucx::UcxContext::Create(options.ucx));
  const size_t pool_bytes = std::max<size_t>(options.recv_pool_bytes, svc_->limits().max_message_bytes);
  KVC_ASSIGN_OR_RETURN(auto pool_memory,
                       ucx::RegisteredMemory::Allocate(context_.get(), pool_bytes, /*populate=*/false));
  recv_pool_ = std::make_unique<ucx::BufferPool>(std::move(pool_memory));
  KVC_ASSIGN_OR_RETURN(worker_, ucx::UcxWorker::Create(context_.get(), "kvcached-ucx"));
  KVC_RETURN_IF_ERROR(worker_->SetAmHandler(ucx::kAmIdRequest, &Impl::OnAm, this));
  {
    ucp_address_t* address = nullptr;
    size_t address_len = 0;
    if (ucs_status_t s = ucp_worker_get_address(worker_->handle(), &address, &address_len); s != UCS_OK) {
      return ucx::FromUcs(s, "ucp_worker_get_address");
    }
    worker_address_.assign(reinterpret_cast<const char*>(address), address_len);
    ucp_worker_release_address(worker_->handle(), address);
  }

  KVC_ASSIGN_OR_RETURN(listener_, ucx::Listen(worker_->handle(), options.listen_address, &Impl::OnConnRequest, this, port));
  worker_->Start();
  return absl::OkStatus();
}

void UcxService::Impl::Stop(absl::Duration grace) {
  stopping_.store(true);
  if (!worker_) return;
  worker_->Stop(
      [this] {
        if (listener_ != nullptr) ucp_listener_destroy(listener_);
        listener_ = nullptr;
        // Flush-close every endpoint: replies already posted still go out.
        for (auto& [ep, conn] : conns_) {
          conn->dead = true;
          if (conn->by_address) continue;  // UCX's own; the worker's destruction closes it
          ucp_request_param_t p{};
          void* r = ucp_ep_close_nbx(ep, &p);
          if (r != nullptr && !UCS_PTR_IS_ERR(r)) closing_.push_back(r);
        }
        conns_.clear();
        sessions_.clear();
        endpoints_.store(0);
        svc_->metrics()->SetUcxEndpoints(0);
      },
      [this] {
        for (void* r : closing_) {
          if (ucp_request_check_status(r) == UCS_INPROGRESS) return false;
        }
        // Operations on dropped endpoints were settled already; a dead
        // shared-memory peer never gives them back.
        return outstanding_.load() == orphaned_.load();
      },
      grace);
  // The progress thread has exited: this thread may touch the worker now.
  for (void* r : closing_) {
    if (ucp_request_check_status(r) == UCS_INPROGRESS) ucp_request_cancel(worker_->handle(), r);
    ucp_request_free(r);
  }
  closing_.clear();
}

void UcxService::Impl::OnConnRequest(ucp_conn_request_h request, void* arg) {
  auto* self = static_cast<Impl*>(arg);
  if (self->stopping_.load() || self->svc_->draining()) {
    ucp_listener_reject(self->listener_, request);
    return;
  }
  ucp_ep_params_t p{};
  p.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                 UCP_EP_PARAM_FIELD_ERR_HANDLER;
  p.conn_request = request;
  p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  p.err_handler.cb = &Impl::OnEpError;
  p.err_handler.arg = self;
  ucp_ep_h ep = nullptr;
  if (ucs_status_t s = ucp_ep_create(self->worker_->handle(), &p, &ep); s != UCS_OK) {
    KVC_LOG(kWarning, "ucx_accept_failed").With("error", ucs_status_string(s));
    return;
  }
  auto conn = std::make_shared<Conn>();
  conn->ep = ep;
  conn->session = self->next_session_++;
  if (conn->session == 0) conn->session = self->next_session_++;  // 0 means none
  self->sessions_[conn->session] = conn;
  self->AddConn(std::move(conn));
}

void UcxService::Impl::OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status) {
  auto* self = static_cast<Impl*>(arg);
  std::shared_ptr<Conn> conn = self->FindConn(ep);
  if (conn == nullptr) return;
  self->DropConn(conn);  // and the worker-address endpoints tied to it
  self->svc_->metrics()->CountUcxError(ServiceMetrics::UcxError::kPeerError);
  KVC_LOG(kInfo, "ucx_peer_error").With("error", ucs_status_string(status));
  // Close outside the callback; outstanding operations on it complete with errors.
  ucx::UcxWorker* worker = self->worker_.get();
  (void)worker->Post([worker, ep, conn] { ucx::CloseEndpoint(worker->handle(), ep, /*force=*/true, absl::Seconds(1)); });
}

ucs_status_t UcxService::Impl::OnAm(void* arg, const void* header, size_t header_length, void* data, size_t length,
                                    const ucp_am_recv_param_t* param) {
  auto* self = static_cast<Impl*>(arg);
  absl::StatusOr<FrameHeader> h = FrameHeader::Decode(header, header_length);
  if (!h.ok()) {
    self->svc_->metrics()->CountUcxError(ServiceMetrics::UcxError::kBadFrame);
    KVC_LOG(kWarning, "ucx_bad_frame").With("error", h.status().ToString());
    return UCS_OK;  // no request id to answer; a rendezvous payload is released unread
  }
  return self->Receive(*h, data, length, param);
}

ucs_status_t UcxService::Impl::Receive(const FrameHeader& h, void* data, size_t length,
                                       const ucp_am_recv_param_t* param) {
  const bool has_ep = (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0;
  std::shared_ptr<Conn> conn = has_ep ? FindConn(param->reply_ep) : nullptr;
  if (conn == nullptr && has_ep && h.op == Op::kHello && !stopping_.load()) {
    // A client that connected to our worker address (see HELLO reply).
    conn = std::make_shared<Conn>();
    conn->ep = param->reply_ep;
    conn->by_address = true;
    AddConn(conn);
  }
  if (conn == nullptr || conn->dead) {
    svc_->metrics()->CountUcxError(ServiceMetrics::UcxError::kBadFrame);
    return UCS_OK;  // not from an endpoint we accepted (or sent without a reply endpoint)
  }
  svc_->metrics()->CountUcxBytes(/*in=*/true, length);
  if (h.op != Op::kHello && h.op != Op::kPut && h.op != Op::kGet) {
    svc_->metrics()->CountUcxError(ServiceMetrics::UcxError::kBadFrame);
    Reply(conn, Op::kGetFailed, h.request_id,
          absl::InvalidArgumentError(absl::StrCat("op ", ucx::OpName(h.op), " is not a request")), nullptr);
    return UCS_OK;
  }
  std::shared_ptr<InFlight> request;
  if (h.op != Op::kHello) request = std::make_shared<InFlight>(svc_, h.op);
  const uint64_t limit = h.op == Op::kHello ? ucx::kMaxHelloBytes : svc_->limits().max_message_bytes;
  if (length > limit) {
    Reply(conn, ReplyOpFor(h.op), h.request_id,
          absl::ResourceExhaustedError(absl::StrCat(ucx::OpName(h.op), " payload is ", length,
                                                    " bytes; the limit (max_message_bytes) is ", limit)),
          std::move(request));
    return UCS_OK;
  }
  if (h.op != Op::kHello && !conn->hello_ok) {  // refuse before taking memory for the payload
    Reply(conn, ReplyOpFor(h.op), h.request_id,
          absl::UnauthenticatedError(absl::StrCat("UCX ", ucx::OpName(h.op), " before a successful HELLO")),
          std::move(request));
    return UCS_OK;
  }
  if (svc_->draining() || stopping_.load()) {
    Reply(conn, ReplyOpFor(h.op), h.request_id, absl::UnavailableError("server is shutting down"),
          std::move(request));
    return UCS_OK;
  }
  const bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  if (!rndv && h.op != Op::kPut) {
    // HELLO and Get are small and handled before this callback returns: read
    // them where UCX put them.
    Dispatch(conn, h, absl::string_view(static_cast<const char*>(data), length), {}, std::move(request));
    return UCS_OK;
  }
  ucx::BufferPool::Lease buffer = recv_pool_->TryLease(std::max<size_t>(length, 1));
  if (!buffer) {
    // Refused, not queued: regions come back as the executor parses earlier
    // Puts, and a client retrying later costs nothing here meanwhile. A
    // rendezvous payload is dropped unread (UCX completes the client's send).
    Reply(conn, ReplyOpFor(h.op), h.request_id,
          absl::ResourceExhaustedError(absl::StrCat("server busy: the UCX receive pool (", recv_pool_->capacity(),
                                                    " bytes) has no room for a ", length,
                                                    "-byte payload now; retry later")),
          std::move(request));
    return UCS_OK;
  }
  if (!rndv) {
    std::memcpy(buffer.data(), data, length);  // eager: small, valid only during this callback
    const absl::string_view payload(buffer.data(), length);
    Dispatch(conn, h, payload, std::move(buffer), std::move(request));
    return UCS_OK;
  }
  auto* op = new RecvOp;
  op->conn = conn;
  op->request = std::move(request);
  op->impl = this;
  op->header = h;
  op->buffer = std::move(buffer);
  op->length = length;
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_MEMH;
  p.cb.recv_am = &Impl::OnRecvDone;
  p.user_data = op;
  p.memh = op->buffer.memh();
  void* r = ucp_am_recv_data_nbx(worker_->handle(), data, op->buffer.data(), length, &p);
  if (r == nullptr) {  // completed in place; the callback is not called
    std::unique_ptr<RecvOp> done(op);
    const absl::string_view payload(done->buffer.data(), done->length);
    Dispatch(done->conn, done->header, payload, std::move(done->buffer), std::move(done->request));
  } else if (UCS_PTR_IS_ERR(r)) {
    std::unique_ptr<RecvOp> failed(op);
    svc_->metrics()->CountUcxError(ServiceMetrics::UcxError::kRecvFailed);
    if (failed->request) failed->request->Fail(absl::StatusCode::kUnavailable);
  } else {
    Track(op);
  }
  return UCS_OK;
}

void UcxService::Impl::OnRecvDone(void* request, ucs_status_t status, size_t length, void* user_data) {
  std::unique_ptr<RecvOp> op(static_cast<RecvOp*>(user_data));
  ucp_request_free(request);
  Impl* self = op->impl;
  self->Untrack(op.get());
  if (status != UCS_OK || op->conn->dead) {
    // The client went away mid-transfer: only this request fails.
    self->svc_->metrics()->CountUcxError(ServiceMetrics::UcxError::kRecvFailed);
    if (op->request) op->request->Fail(absl::StatusCode::kUnavailable);
    KVC_LOG(kDebug, "ucx_recv_failed").With("op", ucx::OpName(op->header.op)).With("error", ucs_status_string(status));
    return;
  }
  const absl::string_view payload(op->buffer.data(), op->length);
  self->Dispatch(op->conn, op->header, payload, std::move(op->buffer), std::move(op->request));
}

void UcxService::Impl::Dispatch(const std::shared_ptr<Conn>& conn, const FrameHeader& h, absl::string_view payload,
                                ucx::BufferPool::Lease buffer, std::shared_ptr<InFlight> request) {
  switch (h.op) {
    case Op::kHello:
      HandleHello(conn, h, payload);
      return;
    case Op::kPut:
      HandlePut(conn, h, std::move(buffer), payload.size(), std::move(request));
      return;
    case Op::kGet:
      HandleGet(conn, h, payload, std::move(request));
      return;
    default:
      return;
  }
}

void UcxService::Impl::HandleHello(const std::shared_ptr<Conn>& conn, const FrameHeader& h, absl::string_view payload) {
  absl::StatusOr<Caller> caller = svc_->AuthenticateAuthorization(payload);
  absl::Status status = caller.status();
  std::shared_ptr<Conn> session;
  if (status.ok() && conn->by_address) {
    // Tie this endpoint to the listener connection it names, so it goes when
    // that one fails or closes (it has no failure detection of its own).
    auto it = h.index != 0 ? sessions_.find(h.index) : sessions_.end();
    if (it == sessions_.end() || it->second->dead || !it->second->hello_ok ||
        it->second->authorization != payload) {
      status = absl::FailedPreconditionError(absl::StrCat(
          "UCX HELLO over the worker address names session ", h.index,
          ", which is not a live listener connection with the same credentials (a client must HELLO over "
          "the listener first and send the session id its reply carried)"));
    } else {
      session = it->second;
    }
  }
  svc_->metrics()->ObserveUcxRequest("hello", static_cast<grpc::StatusCode>(status.code()), absl::ZeroDuration());
  if (!status.ok()) {
    Reply(conn, Op::kHelloReply, h.request_id, status, nullptr);
    // A refused worker-address endpoint is not kept: nothing would ever drop it.
    if (conn->by_address) DropConn(conn);
    return;
  }
  conn->authorization = std::string(payload);
  conn->hello_ok = true;
  if (session != nullptr && conn->session == 0) {
    conn->session = session->session;
    session->linked.push_back(conn);
  }
  Reply(conn, Op::kHelloReply, h.request_id, absl::OkStatus(), nullptr, conn->by_address ? 0 : conn->session,
        ucx::EncodeHelloReply(caller->tenant, worker_address_));
}

void UcxService::Impl::HandlePut(const std::shared_ptr<Conn>& conn, const FrameHeader& h,
                                 ucx::BufferPool::Lease buffer, size_t length, std::shared_ptr<InFlight> request) {
  if (!conn->hello_ok) {
    Reply(conn, Op::kPutReply, h.request_id, absl::UnauthenticatedError("UCX PUT before a successful HELLO"),
          std::move(request));
    return;
  }
  // Re-authenticated per request, as gRPC does, so a revoked token stops working.
  absl::StatusOr<Caller> caller = svc_->AuthenticateAuthorization(conn->authorization);
  if (!caller.ok()) {
    Reply(conn, Op::kPutReply, h.request_id, caller.status(), std::move(request));
    return;
  }
  const uint64_t id = h.request_id;
  auto task = [this, conn, id, caller = *std::move(caller), buffer = std::move(buffer), length,
               request]() mutable {
    absl::StatusOr<uint32_t> stored = [&]() -> absl::StatusOr<uint32_t> {
      absl::StatusOr<RawPutRequest> req = ReadPutRequest(absl::string_view(buffer.data(), length), svc_->limits());
      buffer.Reset();  // every block has its own bytes now (or none): the region goes back
      if (!req.ok()) return req.status();
      return svc_->StoreBlocks(caller, *std::move(req));
    }();
    (void)worker_->Post([this, conn, id, stored = std::move(stored), request = std::move(request)]() mutable {
      Reply(conn, Op::kPutReply, id, stored.status(), std::move(request), stored.ok() ? *stored : 0);
    });
  };
  if (!svc_->executor()->TrySubmit(std::move(task))) {
    Reply(conn, Op::kPutReply, id,
          absl::ResourceExhaustedError("server busy: request queue is full (max_queued_requests)"),
          std::move(request));
  }
}

void UcxService::Impl::HandleGet(const std::shared_ptr<Conn>& conn, const FrameHeader& h, absl::string_view payload,
                                 std::shared_ptr<InFlight> request) {
  const uint64_t id = h.request_id;
  v1::GetRequest req;
  absl::Status s;
  if (!conn->hello_ok) {
    s = absl::UnauthenticatedError("UCX GET before a successful HELLO");
  } else if (!req.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
    s = absl::InvalidArgumentError("GetRequest does not parse");
  }
  absl::StatusOr<Caller> caller = Caller{};
  if (s.ok()) {
    caller = svc_->AuthenticateAuthorization(conn->authorization);
    s = caller.status();
  }
  if (s.ok()) s = svc_->CheckBatch(req.keys_size(), "Get keys");
  for (int i = 0; s.ok() && i < req.keys_size(); ++i) s = svc_->CheckKey(*caller, req.keys(i), absl::StrCat("keys[", i, "]"));
  if (!s.ok()) {
    Reply(conn, Op::kGetFailed, id, s, std::move(request));
    return;
  }
  // Host-tier hits go out from here; the rest may read RocksDB: executor.
  std::vector<std::pair<uint32_t, BlockKey>> misses;
  for (int i = 0; i < req.keys_size(); ++i) {
    BlockKey key = BlockKey::FromProto(req.keys(i));
    if (std::optional<FoundBlock> hot = svc_->store()->GetFromMemory(key)) {
      SendResult(conn, id, i, key, *std::move(hot), request);
    } else {
      misses.emplace_back(i, std::move(key));
    }
  }
  if (misses.empty()) return;
  auto task = [this, conn, id, misses, request] {
    for (const auto& [i, key] : misses) {
      absl::StatusOr<FoundBlock> found = svc_->store()->GetAfterMemoryMiss(key);
      (void)worker_->Post([this, conn, id, i, key, found = std::move(found), request]() mutable {
        SendResult(conn, id, i, key, std::move(found), request);
      });
    }
  };
  if (!svc_->executor()->TrySubmit(std::move(task))) {
    for (const auto& [i, key] : misses) {
      SendResult(conn, id, i, key,
                 absl::ResourceExhaustedError("server busy: request queue is full (max_queued_requests)"), request);
    }
  }
}

void UcxService::Impl::SendResult(const std::shared_ptr<Conn>& conn, uint64_t id, uint32_t index, const BlockKey& key,
                                  absl::StatusOr<FoundBlock> found, const std::shared_ptr<InFlight>& request) {
  FrameHeader h;
  h.op = Op::kGetBlock;
  h.request_id = id;
  h.index = index;
  if (found.ok()) {
    svc_->metrics()->CountGet(found->tier == Tier::kHost ? GetResult::kHost : GetResult::kDisk);
    svc_->metrics()->CountBytesOut(found->block->wire().size());
    h.tier = found->tier == Tier::kHost ? v1::TIER_HOST : v1::TIER_DISK;
    Send(conn, h, std::move(found->block), "", request);
    return;
  }
  const bool corrupt = found.status().code() == absl::StatusCode::kDataLoss;
  svc_->metrics()->CountGet(corrupt ? GetResult::kCorrupt : GetResult::kMiss);
  if (corrupt) {
    KVC_LOG(kWarning, "corrupt_block_dropped").With("key", key.DebugString()).With("error", found.status().ToString());
  }
  h.status = static_cast<uint32_t>(found.status().code());
  Send(conn, h, nullptr, std::string(found.status().message()), request);
}

void UcxService::Impl::Reply(const std::shared_ptr<Conn>& conn, Op op, uint64_t id, const absl::Status& status,
                             std::shared_ptr<InFlight> request, uint32_t index, std::string text) {
  FrameHeader h;
  h.op = op;
  h.request_id = id;
  h.status = static_cast<uint32_t>(status.code());
  h.index = index;
  if (!status.ok()) {
    text = std::string(status.message());
    if (request) request->Fail(status.code());
  }
  Send(conn, h, nullptr, std::move(text), std::move(request));
}

void UcxService::Impl::Send(const std::shared_ptr<Conn>& conn, const FrameHeader& h, BlockPtr block,
                            std::string text, std::shared_ptr<InFlight> request) {
  if (conn->dead) {
    if (request) request->Fail(absl::StatusCode::kCancelled);
    return;
  }
  auto* op = new SendOp;
  op->conn = conn;
  op->request = std::move(request);
  op->impl = this;
  op->header = h.Encode();
  op->block = std::move(block);
  op->text = std::move(text);
  const void* data = op->block ? static_cast<const void*>(op->block->wire().data()) : op->text.data();
  const size_t length = op->block ? op->block->wire().size() : op->text.size();
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.cb.send = &Impl::OnSendDone;
  p.user_data = op;
  void* r = ucp_am_send_nbx(conn->ep, ucx::kAmIdReply, op->header.data(), op->header.size(), data, length, &p);
  if (r == nullptr) {
    svc_->metrics()->CountUcxBytes(/*in=*/false, length);
    delete op;
  } else if (UCS_PTR_IS_ERR(r)) {
    svc_->metrics()->CountUcxError(ServiceMetrics::UcxError::kSendFailed);
    if (op->request) op->request->Fail(absl::StatusCode::kUnavailable);
    delete op;
  } else {
    Track(op);
  }
}

void UcxService::Impl::OnSendDone(void* request, ucs_status_t status, void* user_data) {
  std::unique_ptr<SendOp> op(static_cast<SendOp*>(user_data));
  ucp_request_free(request);
  Impl* self = op->impl;
  self->Untrack(op.get());
  if (status == UCS_OK) {
    self->svc_->metrics()->CountUcxBytes(
        /*in=*/false, op->block ? op->block->wire().size() : op->text.size());
  } else {
    self->svc_->metrics()->CountUcxError(ServiceMetrics::UcxError::kSendFailed);
    if (op->request) op->request->Fail(absl::StatusCode::kUnavailable);
  }
}

absl::StatusOr<std::unique_ptr<UcxService>> UcxService::Start(const UcxServiceOptions& options,
                                                              CacheService* service) {
  auto svc = std::unique_ptr<UcxService>(new UcxService());
  svc->impl_ = std::make_unique<Impl>(service);
  KVC_RETURN_IF_ERROR(svc->impl_->Init(options, &svc->port_));
  return svc;
}

UcxService::~UcxService() { Stop(absl::Seconds(1)); }

size_t UcxService::endpoints() const { return impl_ ? impl_->endpoints() : 0; }

void UcxService::Stop(absl::Duration grace) {
  if (impl_) impl_->Stop(grace);
}

}  // namespace kvc
