#include "worker/kv/ucx_block_client.h"

#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kvcache/v1/cache.pb.h"
#include "transport/buffer_pool.h"
#include "transport/ucx_worker.h"
#include "transport/wire_protocol.h"
#include "worker/kv/grpc_block_client.h"

namespace kvc {
namespace {

namespace v1 = ::kvcache::v1;
using ucx::BufferPool;
using ucx::FrameHeader;
using ucx::Op;

size_t VarintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

char* PutVarint(uint64_t v, char* p) {
  while (v >= 0x80) {
    *p++ = static_cast<char>(v | 0x80);
    v >>= 7;
  }
  *p++ = static_cast<char>(v);
  return p;
}

// The bytes of one payload: a region of a registered pool, memory of its own
// (a control message's text; a counted fallback, see UcxBlockClient), or
// nothing. Move-only; gives the region back on destruction.
class Buffer {
 public:
  Buffer() = default;
  static Buffer Pooled(BufferPool::Lease lease) {
    Buffer b;
    b.lease_ = std::move(lease);
    return b;
  }
  static Buffer Heap(size_t n) {
    Buffer b;
    b.heap_.reset(new char[std::max<size_t>(n, 1)]);
    return b;
  }
  static Buffer Text(std::string s) {
    Buffer b;
    b.text_ = std::move(s);
    b.is_text_ = true;
    return b;
  }
  Buffer(Buffer&&) noexcept = default;
  Buffer& operator=(Buffer&&) noexcept = default;

  char* data() { return lease_ ? lease_.data() : is_text_ ? text_.data() : heap_.get(); }
  ucp_mem_h memh() const { return lease_.memh(); }

 private:
  BufferPool::Lease lease_;
  std::unique_ptr<char[]> heap_;
  std::string text_;
  bool is_text_ = false;
};

// One block of a Get as it arrived.
struct Frame {
  bool ready = false;
  BlockTier tier = BlockTier::kNone;
  absl::Status status;
  Buffer buffer;
  size_t length = 0;
};

// A request waiting for its replies. The progress thread fills it; the
// calling thread waits on it.
struct Pending {
  Pending(Op op, size_t frames) : op(op), frames(frames) {}
  const Op op;
  absl::Mutex mu;
  bool done ABSL_GUARDED_BY(mu) = false;  // finished (reply or failure); a Get only on failure
  absl::Status status ABSL_GUARDED_BY(mu);
  uint32_t value ABSL_GUARDED_BY(mu) = 0;
  std::string text ABSL_GUARDED_BY(mu);
  std::vector<Frame> frames ABSL_GUARDED_BY(mu);
  size_t frames_ready ABSL_GUARDED_BY(mu) = 0;
  bool abandoned ABSL_GUARDED_BY(mu) = false;  // the caller stopped waiting
  // A Get: the frame the caller waits for next. A block whose receive was
  // deferred for want of pool room is received into memory of its own once
  // the caller waits for it, so the pool can never fill up with blocks
  // that only a later wait would release.
  size_t next_wanted ABSL_GUARDED_BY(mu) = 0;

  void Complete(absl::Status s, uint32_t v = 0, std::string t = "") {
    absl::MutexLock lock(&mu);
    if (done) return;
    done = true;
    status = std::move(s);
    value = v;
    text = std::move(t);
  }
};

}  // namespace

absl::Status UcxBlockClientOptions::Validate() const {
  if (address.empty() || address.find(':') == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("UCX client address '", address, "' is not host:port"));
  }
  if (connect != "auto" && connect != "listener" && connect != "worker_address") {
    return absl::InvalidArgumentError(absl::StrCat("UCX client connect '", connect,
                                                   "' is not auto|listener|worker_address"));
  }
  if (timeout <= absl::ZeroDuration()) return absl::InvalidArgumentError("UCX client timeout must be > 0");
  if (recv_pool_bytes < (1u << 20) || send_pool_bytes < (1u << 20)) {
    return absl::InvalidArgumentError("UCX client pools must be at least 1 MiB each");
  }
  return ucx.Validate();
}

class UcxBlockClient::Impl {
 public:
  ~Impl();

  absl::Status Init(const UcxBlockClientOptions& options);
  absl::Status Put(std::span<const absl::string_view> blocks, bool write_through);
  absl::Status Get(std::span<const BlockKey> keys, absl::FunctionRef<void(GotBlock&)> on_block);

  UcxBlockClientOptions options_;
  std::unique_ptr<ucx::UcxContext> context_;
  std::unique_ptr<BufferPool> send_pool_;
  std::unique_ptr<BufferPool> recv_pool_;
  std::unique_ptr<CacheClient> grpc_;
  std::string tenant_;
  std::atomic<uint64_t> fallbacks_{0};

 private:
  struct SendOp {
    Impl* impl;
    uint64_t id;
    FrameHeader::Bytes header;
    Buffer payload;
  };
  struct RecvOp {
    Impl* impl;
    uint64_t id;
    FrameHeader header;
    std::shared_ptr<Pending> pending;
    Buffer buffer;
    size_t length;
  };
  // A Get block announced by rendezvous whose receive waits for pool room;
  // UCX keeps its payload at the server meanwhile (`desc`).
  struct Deferred {
    FrameHeader header;
    std::shared_ptr<Pending> pending;
    void* desc;
    size_t length;
  };

  absl::Status Broken() {
    absl::MutexLock lock(&broken_mu_);
    return broken_;
  }
  // Runs `p` as request `id`: registers it and sends op + payload (`index`
  // in the header). Progress thread.
  void Start(uint64_t id, std::shared_ptr<Pending> p, Op op, Buffer payload, size_t length, uint32_t index = 0);
  // Receives rendezvous payload `desc` into `buffer`, then OnPayload. Progress thread.
  void Receive(const FrameHeader& h, const std::shared_ptr<Pending>& p, void* desc, Buffer buffer, size_t length);
  // Starts the deferred receives that fit now, or that their caller waits for. Progress thread.
  void RetryDeferred();
  void ReleaseDeferred();  // drops every deferred payload unread. Progress thread.
  // Asks the progress thread to RetryDeferred, when any are waiting. Any thread.
  void KickDeferred();
  // Waits for `p` to finish; on timeout abandons it. Caller thread.
  absl::Status Await(uint64_t id, const std::shared_ptr<Pending>& p, absl::Time deadline, absl::string_view what);
  void Abandon(uint64_t id, const std::shared_ptr<Pending>& p);
  // A complete reply payload of request `id` (progress thread). `payload`
  // lies in `buffer` when that holds memory, else it is valid for the call.
  void OnPayload(const FrameHeader& h, const std::shared_ptr<Pending>& p, absl::string_view payload, Buffer buffer);
  void FailAll(const absl::Status& s);

  static ucs_status_t OnReply(void* arg, const void* header, size_t header_length, void* data, size_t length,
                              const ucp_am_recv_param_t* param);
  static void OnRecvDone(void* request, ucs_status_t status, size_t length, void* user_data);
  static void OnSendDone(void* request, ucs_status_t status, void* user_data);
  static void OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status);

  std::atomic<uint64_t> next_id_{1};
  // Progress thread only.
  ucp_ep_h ep_ = nullptr;       // requests go here
  ucp_ep_h boot_ep_ = nullptr;  // the listener connection, when ep_ is by worker address
  void* boot_close_request_ = nullptr;
  // A worker-address endpoint whose HELLO went unanswered: closed with the
  // client, forced (its requests may never leave the wireup queue).
  ucp_ep_h unanswered_ep_ = nullptr;
  // Init finished: ep_ is wired up. Until then a close must be forced, since
  // UCX 1.13 aborts in ucp_worker_destroy on a request still queued on an
  // endpoint in wireup (a flush close of it never completes).
  std::atomic<bool> connected_{false};
  absl::flat_hash_map<uint64_t, std::shared_ptr<Pending>> pending_;
  std::deque<Deferred> deferred_;
  std::atomic<size_t> deferred_count_{0};  // deferred_.size(), for other threads
  void* close_request_ = nullptr;
  std::atomic<int64_t> outstanding_{0};

  absl::Mutex broken_mu_;
  absl::Status broken_ ABSL_GUARDED_BY(broken_mu_);

  // Last, so it is destroyed first: ucp_worker_destroy completes the
  // requests still pending (a send to a peer that never answered) and their
  // callbacks use the members above (pending_, the pools). Regression: a
  // client destroyed with such a send spun forever in a destroyed pending_.
  std::unique_ptr<ucx::UcxWorker> worker_;
};

absl::Status UcxBlockClient::Impl::Init(const UcxBlockClientOptions& options) {
  options_ = options;
  KVC_RETURN_IF_ERROR(options.Validate());
  sockaddr_storage addr;
  socklen_t addr_len = 0;
  KVC_RETURN_IF_ERROR(ucx::ParseSockaddr(options.address, &addr, &addr_len));
  KVC_ASSIGN_OR_RETURN(context_, ucx::UcxContext::Create(options.ucx));
  KVC_ASSIGN_OR_RETURN(auto send_mem, ucx::RegisteredMemory::Allocate(context_.get(), options.send_pool_bytes));
  KVC_ASSIGN_OR_RETURN(auto recv_mem, ucx::RegisteredMemory::Allocate(context_.get(), options.recv_pool_bytes));
  send_pool_ = std::make_unique<BufferPool>(std::move(send_mem));
  recv_pool_ = std::make_unique<BufferPool>(std::move(recv_mem));
  recv_pool_->SetOnFree([this] { KickDeferred(); });
  KVC_ASSIGN_OR_RETURN(worker_, ucx::UcxWorker::Create(context_.get(), "kvc-ucx-client"));
  KVC_RETURN_IF_ERROR(worker_->SetAmHandler(ucx::kAmIdReply, &Impl::OnReply, this));
  worker_->Start();
  KVC_ASSIGN_OR_RETURN(grpc_, CacheClient::Connect(options.grpc));
  // A host that answers nothing (gone, partitioned) is found out over gRPC,
  // which carries lookups and health anyway, before any UCX connect: fail
  // fast, and no endpoint is left in wireup.
  if (absl::Status s = grpc_->Reach(options.timeout); !s.ok()) {
    return absl::UnavailableError(absl::StrCat("UCX connect to ", options.address, ": ", s.message()));
  }

  const uint64_t id = next_id_.fetch_add(1);
  auto p = std::make_shared<Pending>(Op::kHello, 0);
  const std::string authorization = options.token.empty() ? "" : absl::StrCat("Bearer ", options.token);
  const absl::Time deadline = absl::Now() + options.timeout;
  const auto with_context = [&](const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat("UCX connect to ", options.address, " (tls='", options.ucx.tls,
                                               "'): ", s.message()));
  };
  const bool posted = worker_->Post([this, id, p, addr, addr_len, authorization]() mutable {
    absl::StatusOr<ucp_ep_h> ep = ucx::ConnectToListener(worker_->handle(), addr, addr_len, &Impl::OnEpError, this);
    if (!ep.ok()) {
      ep_ = nullptr;
      p->Complete(ep.status());
      return;
    }
    ep_ = *ep;
    const size_t n = authorization.size();
    Start(id, p, Op::kHello, Buffer::Text(authorization), n);
  });
  if (!posted) return absl::UnavailableError("UCX client is shutting down");
  absl::Status s = Await(id, p, deadline, "connect + HELLO");
  if (!s.ok()) return with_context(s);
  absl::StatusOr<ucx::HelloReply> hello;
  uint32_t session = 0;
  {
    absl::MutexLock lock(&p->mu);
    hello = ucx::DecodeHelloReply(p->text);
    session = p->value;
  }
  if (!hello.ok()) return with_context(hello.status());
  tenant_ = hello->tenant;

  bool by_address = options.connect == "worker_address";
  if (options.connect == "auto") {
    for (absl::string_view t : {"sm", "posix", "sysv", "cma", "shm"}) by_address |= absl::StrContains(options.ucx.tls, t);
  }
  if (by_address) {
    if (hello->worker_address.empty()) return with_context(absl::UnavailableError("server sent no worker address"));
    const uint64_t id2 = next_id_.fetch_add(1);
    auto p2 = std::make_shared<Pending>(Op::kHello, 0);
    if (session == 0) {
      return with_context(absl::FailedPreconditionError(
          "the server's HELLO reply carries no session id, so it cannot tie a worker-address endpoint to this "
          "connection; use connect=listener with this server"));
    }
    if (!worker_->Post([this, id2, p2, address = hello->worker_address, authorization, session]() mutable {
          ucp_ep_params_t ep{};
          // Error mode NONE: UCX 1.13's sysv and posix transports offer no
          // peer-failure handling (only with UCX_MM_ERROR_HANDLING=y, which
          // measured several times slower with ucx_perftest -e), so asking
          // for it would silently select tcp. A dead server is noticed on
          // the bootstrap endpoint instead (mode PEER), which fails every call.
          // The HELLO below names this connection's session, so the server
          // drops the endpoint with the bootstrap connection (it cannot
          // notice a dead peer on it either).
          ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                          UCP_EP_PARAM_FIELD_ERR_HANDLER;
          ep.address = reinterpret_cast<const ucp_address_t*>(address.data());
          ep.err_mode = UCP_ERR_HANDLING_MODE_NONE;
          ep.err_handler.cb = &Impl::OnEpError;
          ep.err_handler.arg = this;
          ucp_ep_h data_ep = nullptr;
          if (ucs_status_t s = ucp_ep_create(worker_->handle(), &ep, &data_ep); s != UCS_OK) {
            p2->Complete(ucx::FromUcs(s, "ucp_ep_create to the server's worker address"));
            return;
          }
          boot_ep_ = ep_;
          ep_ = data_ep;
          const size_t n = authorization.size();
          Start(id2, p2, Op::kHello, Buffer::Text(authorization), n, session);
        })) {
      return absl::UnavailableError("UCX client is shutting down");
    }
    // It answers within milliseconds when it works at all.
    const absl::Time sm_deadline = std::min(deadline, absl::Now() + absl::Seconds(2));
    const absl::Status sm = Await(id2, p2, sm_deadline, "HELLO over the worker address");
    if (!sm.ok() && !absl::IsDeadlineExceeded(sm)) return with_context(sm);
    if (!sm.ok()) {
      // No answer over shared memory (under UCX 1.13 a client that died
      // mid-transfer can leave the server's shared-memory receive queue
      // stuck): the data goes over the listener connection instead. The
      // unanswered endpoint is closed with the client (error mode NONE
      // allows no forced close).
      KVC_LOG(kWarning, "ucx_worker_address_unanswered").With("address", options.address).With("fallback", "listener");
      absl::Notification swapped;
      if (!worker_->Post([this, &swapped] {
            unanswered_ep_ = std::exchange(ep_, std::exchange(boot_ep_, nullptr));
            swapped.Notify();
          })) {
        return absl::UnavailableError("UCX client is shutting down");
      }
      swapped.WaitForNotification();
    }
  }
  connected_.store(true);
  if (std::getenv("KVC_UCX_PRINT_EP") != nullptr) {  // diagnostics: the lanes UCX chose
    absl::Notification printed;
    if (worker_->Post([this, &printed] {
          if (ep_ != nullptr) ucp_ep_print_info(ep_, stderr);
          printed.Notify();
        })) {
      printed.WaitForNotificationWithTimeout(absl::Seconds(1));
    }
  }
  return absl::OkStatus();
}

UcxBlockClient::Impl::~Impl() {
  if (!worker_) return;
  worker_->Stop(
      [this] {
        FailAll(absl::UnavailableError("UCX client closed"));
        for (auto [ep, req] : {std::pair{&ep_, &close_request_}, std::pair{&boot_ep_, &boot_close_request_}}) {
          if (*ep == nullptr) continue;
          ucp_request_param_t p{};
          if (!connected_.load()) {
            p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
            p.flags = UCP_EP_CLOSE_FLAG_FORCE;
          }
          void* r = ucp_ep_close_nbx(*ep, &p);
          if (r != nullptr && !UCS_PTR_IS_ERR(r)) *req = r;
          *ep = nullptr;
        }
        if (unanswered_ep_ != nullptr) {
          ucx::CloseEndpoint(worker_->handle(), std::exchange(unanswered_ep_, nullptr), /*force=*/true,
                             absl::Seconds(1));
        }
      },
      [this] {
        for (void* r : {close_request_, boot_close_request_}) {
          if (r != nullptr && ucp_request_check_status(r) == UCS_INPROGRESS) return false;
        }
        return outstanding_.load() == 0;
      },
      absl::Seconds(2));
  for (void* r : {close_request_, boot_close_request_}) {
    if (r == nullptr) continue;
    if (ucp_request_check_status(r) == UCS_INPROGRESS) ucp_request_cancel(worker_->handle(), r);
    ucp_request_free(r);
  }
}

void UcxBlockClient::Impl::FailAll(const absl::Status& s) {
  for (auto& [id, p] : pending_) p->Complete(s);
  pending_.clear();
  ReleaseDeferred();
}

void UcxBlockClient::Impl::KickDeferred() {
  if (deferred_count_.load() == 0) return;
  (void)worker_->Post([this] { RetryDeferred(); });
}

void UcxBlockClient::Impl::ReleaseDeferred() {
  for (Deferred& d : deferred_) ucp_am_data_release(worker_->handle(), d.desc);
  deferred_.clear();
  deferred_count_.store(0);
}

void UcxBlockClient::Impl::RetryDeferred() {
  std::deque<Deferred> still;
  std::deque<Deferred> batch;
  batch.swap(deferred_);
  bool blocked = false;
  for (Deferred& d : batch) {
    bool gone = false, awaited = false;
    {
      absl::MutexLock lock(&d.pending->mu);
      gone = d.pending->abandoned || d.pending->done;
      awaited = d.pending->next_wanted == d.header.index;
    }
    if (gone || !pending_.contains(d.header.request_id)) {
      ucp_am_data_release(worker_->handle(), d.desc);  // nobody waits for it: dropped unread
      continue;
    }
    // In arrival order: once one does not fit, later ones wait behind it
    // (only an awaited block may pass).
    Buffer buffer;
    BufferPool::Lease lease = blocked && !awaited ? BufferPool::Lease() : recv_pool_->TryLease(d.length);
    if (lease) {
      buffer = Buffer::Pooled(std::move(lease));
    } else if (awaited) {
      fallbacks_.fetch_add(1);  // see Pending::next_wanted: bounded by one block per waiting Get
      buffer = Buffer::Heap(d.length);
    } else {
      blocked = true;
      still.push_back(std::move(d));
      continue;
    }
    Receive(d.header, d.pending, d.desc, std::move(buffer), d.length);
  }
  for (Deferred& d : deferred_) still.push_back(std::move(d));  // deferred meanwhile by Receive failures (none today)
  deferred_.swap(still);
  deferred_count_.store(deferred_.size());
}

void UcxBlockClient::Impl::Start(uint64_t id, std::shared_ptr<Pending> p, Op op, Buffer payload, size_t length,
                                 uint32_t index) {
  if (ep_ == nullptr) {
    absl::Status b = Broken();
    p->Complete(b.ok() ? absl::UnavailableError("UCX endpoint is not connected") : b);
    return;
  }
  pending_[id] = p;
  FrameHeader h;
  h.op = op;
  h.request_id = id;
  h.index = index;
  auto* op_state = new SendOp{this, id, h.Encode(), std::move(payload)};
  ucp_request_param_t prm{};
  prm.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  prm.flags = UCP_AM_SEND_FLAG_REPLY;
  prm.cb.send = &Impl::OnSendDone;
  prm.user_data = op_state;
  if (ucp_mem_h memh = op_state->payload.memh(); memh != nullptr) {
    prm.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
    prm.memh = memh;
  }
  void* r = ucp_am_send_nbx(ep_, ucx::kAmIdRequest, op_state->header.data(), op_state->header.size(),
                            op_state->payload.data(), length, &prm);
  if (r == nullptr) {
    delete op_state;
  } else if (UCS_PTR_IS_ERR(r)) {
    delete op_state;
    pending_.erase(id);
    p->Complete(ucx::FromUcs(UCS_PTR_STATUS(r), absl::StrCat("UCX send of ", ucx::OpName(op))));
  } else {
    outstanding_.fetch_add(1);
  }
}

void UcxBlockClient::Impl::OnSendDone(void* request, ucs_status_t status, void* user_data) {
  std::unique_ptr<SendOp> op(static_cast<SendOp*>(user_data));  // frees the send buffer
  ucp_request_free(request);
  Impl* self = op->impl;
  self->outstanding_.fetch_sub(1);
  if (status == UCS_OK) return;
  if (auto it = self->pending_.find(op->id); it != self->pending_.end()) {
    it->second->Complete(ucx::FromUcs(status, "UCX send"));
    self->pending_.erase(it);
  }
}

void UcxBlockClient::Impl::OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status) {
  auto* self = static_cast<Impl*>(arg);
  absl::Status s = ucx::FromUcs(status, absl::StrCat("UCX connection to ", self->options_.address, " lost"));
  if (s.code() != absl::StatusCode::kUnavailable) s = absl::UnavailableError(s.message());
  {
    absl::MutexLock lock(&self->broken_mu_);
    self->broken_ = s;
  }
  KVC_LOG(kWarning, "ucx_connection_lost").With("address", self->options_.address).With("error", s.ToString());
  self->FailAll(s);
  std::vector<ucp_ep_h> close = {ep};
  if (self->ep_ == ep) self->ep_ = nullptr;
  if (self->boot_ep_ == ep) {
    // The liveness channel broke: the data endpoint (error mode NONE) goes too.
    self->boot_ep_ = nullptr;
    if (self->ep_ != nullptr) close.push_back(std::exchange(self->ep_, nullptr));
  }
  ucx::UcxWorker* worker = self->worker_.get();
  (void)worker->Post([worker, close] {
    for (ucp_ep_h e : close) ucx::CloseEndpoint(worker->handle(), e, /*force=*/true, absl::Seconds(1));
  });
}

ucs_status_t UcxBlockClient::Impl::OnReply(void* arg, const void* header, size_t header_length, void* data,
                                           size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<Impl*>(arg);
  absl::StatusOr<FrameHeader> h = FrameHeader::Decode(header, header_length);
  if (!h.ok()) {
    KVC_LOG(kWarning, "ucx_bad_reply").With("error", h.status().ToString());
    return UCS_OK;
  }
  auto it = self->pending_.find(h->request_id);
  if (it == self->pending_.end()) return UCS_OK;  // abandoned (timed out) or failed: dropped
  std::shared_ptr<Pending> p = it->second;
  const bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  if (!(h->op == Op::kGetBlock && h->status == 0)) {
    // Control replies and per-block errors: short text, read in place when eager.
    if (!rndv) {
      self->OnPayload(*h, p, absl::string_view(static_cast<const char*>(data), length), Buffer());
      return UCS_OK;
    }
    self->Receive(*h, p, data, Buffer::Heap(length), length);
    return UCS_OK;
  }
  // A block: into the receive pool, straight off the wire when it comes by
  // rendezvous (the pool region is what the caller's BlockView points into).
  const bool fits_pool = length <= self->recv_pool_->capacity();
  if (rndv && fits_pool && !self->deferred_.empty()) {
    // Blocks announced earlier wait for room: queue behind them, so a later
    // block never takes the room an earlier one (maybe the awaited one) needs.
    self->deferred_.push_back(Deferred{*h, p, data, length});
    self->deferred_count_.store(self->deferred_.size());
    self->KickDeferred();
    return UCS_INPROGRESS;
  }
  Buffer buffer;
  if (BufferPool::Lease lease = self->recv_pool_->TryLease(std::max<size_t>(length, 1))) {
    buffer = Buffer::Pooled(std::move(lease));
  } else {
    bool awaited = false;
    {
      absl::MutexLock lock(&p->mu);
      awaited = p->next_wanted == h->index;
    }
    if (rndv && fits_pool && !awaited) {
      // Wait for room: the payload stays at the server until then.
      self->deferred_.push_back(Deferred{*h, p, data, length});
      self->deferred_count_.store(self->deferred_.size());
      return UCS_INPROGRESS;
    }
    // Eager (must be copied now; small), larger than the pool, or the block
    // the caller waits for (which no wait of this client would make room for).
    self->fallbacks_.fetch_add(1);
    buffer = Buffer::Heap(length);
  }
  if (!rndv) {
    std::memcpy(buffer.data(), data, length);  // eager: small; valid only during this callback
    const absl::string_view payload(buffer.data(), length);
    self->OnPayload(*h, p, payload, std::move(buffer));
    return UCS_OK;
  }
  self->Receive(*h, p, data, std::move(buffer), length);
  return UCS_OK;
}

void UcxBlockClient::Impl::Receive(const FrameHeader& h, const std::shared_ptr<Pending>& p, void* desc,
                                   Buffer buffer, size_t length) {
  auto* op = new RecvOp{this, h.request_id, h, p, std::move(buffer), length};
  ucp_request_param_t prm{};
  prm.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  prm.cb.recv_am = &Impl::OnRecvDone;
  prm.user_data = op;
  if (ucp_mem_h memh = op->buffer.memh(); memh != nullptr) {
    prm.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
    prm.memh = memh;
  }
  void* r = ucp_am_recv_data_nbx(worker_->handle(), desc, op->buffer.data(), length, &prm);
  if (r == nullptr) {
    std::unique_ptr<RecvOp> done(op);
    const absl::string_view payload(done->buffer.data(), done->length);
    OnPayload(done->header, done->pending, payload, std::move(done->buffer));
  } else if (UCS_PTR_IS_ERR(r)) {
    std::unique_ptr<RecvOp> failed(op);
    pending_.erase(failed->id);
    failed->pending->Complete(ucx::FromUcs(UCS_PTR_STATUS(r), "UCX receive"));
  } else {
    outstanding_.fetch_add(1);
  }
}

void UcxBlockClient::Impl::OnRecvDone(void* request, ucs_status_t status, size_t length, void* user_data) {
  std::unique_ptr<RecvOp> op(static_cast<RecvOp*>(user_data));
  ucp_request_free(request);
  Impl* self = op->impl;
  self->outstanding_.fetch_sub(1);
  if (status != UCS_OK) {
    self->pending_.erase(op->id);
    op->pending->Complete(ucx::FromUcs(status, "UCX receive"));
    return;
  }
  const absl::string_view payload(op->buffer.data(), op->length);
  self->OnPayload(op->header, op->pending, payload, std::move(op->buffer));
}

void UcxBlockClient::Impl::OnPayload(const FrameHeader& h, const std::shared_ptr<Pending>& p,
                                     absl::string_view payload, Buffer buffer) {
  const size_t length = payload.size();
  switch (h.op) {
    case Op::kHelloReply:
    case Op::kPutReply:
    case Op::kGetFailed:
      pending_.erase(h.request_id);
      p->Complete(ucx::ReplyStatus(h, payload), h.index, std::string(payload));
      return;
    case Op::kGetBlock: {
      Buffer dropped;  // freed outside the lock
      bool finished = false;
      {
        absl::MutexLock lock(&p->mu);
        if (p->abandoned || p->done) {
          dropped = std::move(buffer);
        } else if (h.index >= p->frames.size() || p->frames[h.index].ready) {
          dropped = std::move(buffer);
          p->done = true;
          p->status = absl::InternalError(absl::StrCat("UCX Get: server sent block index ", h.index,
                                                       " twice or out of range (", p->frames.size(), " keys)"));
          finished = true;
        } else {
          Frame& f = p->frames[h.index];
          f.ready = true;
          f.tier = static_cast<BlockTier>(h.tier <= 2 ? h.tier : 0);
          f.status = ucx::ReplyStatus(h, payload);
          f.length = length;
          if (f.status.ok()) f.buffer = std::move(buffer);
          finished = ++p->frames_ready == p->frames.size();
        }
      }
      if (finished) pending_.erase(h.request_id);
      return;
    }
    default:
      KVC_LOG(kWarning, "ucx_unexpected_reply").With("op", ucx::OpName(h.op));
      return;
  }
}

absl::Status UcxBlockClient::Impl::Await(uint64_t id, const std::shared_ptr<Pending>& p, absl::Time deadline,
                                         absl::string_view what) {
  {
    absl::MutexLock lock(&p->mu);
    auto done = [&p]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu) { return p->done; };
    if (p->mu.AwaitWithDeadline(absl::Condition(&done), deadline)) return p->status;
  }
  Abandon(id, p);
  return absl::DeadlineExceededError(
      absl::StrCat("UCX ", what, ": no answer within ", absl::FormatDuration(options_.timeout)));
}

void UcxBlockClient::Impl::Abandon(uint64_t id, const std::shared_ptr<Pending>& p) {
  std::vector<Frame> frames;
  {
    absl::MutexLock lock(&p->mu);
    p->abandoned = true;
    frames.swap(p->frames);  // give pool regions back now
  }
  (void)worker_->Post([this, id] {
    pending_.erase(id);
    if (!deferred_.empty()) RetryDeferred();  // drops this request's deferred blocks
  });
}

absl::Status UcxBlockClient::Impl::Put(std::span<const absl::string_view> blocks, bool write_through) {
  KVC_RETURN_IF_ERROR(Broken());
  // The PutRequest wire format: field 1 (blocks) per block, then field 2.
  size_t total = write_through ? 2 : 0;
  for (absl::string_view b : blocks) total += 1 + VarintSize(b.size()) + b.size();
  const absl::Time deadline = absl::Now() + options_.timeout;
  Buffer buffer;
  if (total <= send_pool_->capacity()) {
    // Regions come back as earlier sends complete (never on anything this
    // caller holds), so waiting cannot deadlock; it is bounded by the timeout.
    BufferPool::Lease lease = send_pool_->LeaseWithin(std::max<size_t>(total, 1), deadline);
    if (!lease) {
      return absl::DeadlineExceededError(absl::StrCat("UCX Put of ", total, " bytes: no room in the send pool (",
                                                      options_.send_pool_bytes, " bytes) within ",
                                                      absl::FormatDuration(options_.timeout)));
    }
    buffer = Buffer::Pooled(std::move(lease));
  } else {
    // A single Put larger than the whole pool: memory of its own, counted.
    fallbacks_.fetch_add(1);
    buffer = Buffer::Heap(total);
  }
  char* w = buffer.data();
  for (absl::string_view b : blocks) {
    *w++ = 0x0a;
    w = PutVarint(b.size(), w);
    std::memcpy(w, b.data(), b.size());
    w += b.size();
  }
  if (write_through) {
    *w++ = 0x10;
    *w++ = 0x01;
  }
  const uint64_t id = next_id_.fetch_add(1);
  auto p = std::make_shared<Pending>(Op::kPut, 0);
  if (!worker_->Post([this, id, p, buffer = std::move(buffer), total]() mutable {
        Start(id, p, Op::kPut, std::move(buffer), total);
      })) {
    return absl::UnavailableError("UCX client is shutting down");
  }
  return Await(id, p, deadline, absl::StrCat("Put of ", blocks.size(), " blocks"));
}

absl::Status UcxBlockClient::Impl::Get(std::span<const BlockKey> keys, absl::FunctionRef<void(GotBlock&)> on_block) {
  KVC_RETURN_IF_ERROR(Broken());
  v1::GetRequest req;
  for (const BlockKey& k : keys) k.ToProto(req.add_keys());
  std::string payload = req.SerializeAsString();
  const size_t length = payload.size();
  const uint64_t id = next_id_.fetch_add(1);
  auto p = std::make_shared<Pending>(Op::kGet, keys.size());
  const absl::Time deadline = absl::Now() + options_.timeout;
  if (!worker_->Post([this, id, p, payload = std::move(payload), length]() mutable {
        Start(id, p, Op::kGet, Buffer::Text(std::move(payload)), length);
      })) {
    return absl::UnavailableError("UCX client is shutting down");
  }
  // An empty request still waits: the server answers it with an error.
  for (size_t next = 0; next < keys.size() || keys.empty(); ++next) {
    Frame f;
    bool have = false, timed_out = false;
    absl::Status failed;
    {
      absl::MutexLock lock(&p->mu);
      p->next_wanted = next;
      auto ready = [&p, next]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu) {
        return p->done || (next < p->frames.size() && p->frames[next].ready);
      };
      p->mu.AwaitWithDeadline(absl::Condition(&ready), deadline);
      have = next < p->frames.size() && p->frames[next].ready;
      if (have) {
        f = std::move(p->frames[next]);
      } else {
        timed_out = !p->done;
        failed = p->status;
      }
    }
    if (!have) {
      Abandon(id, p);
      if (!timed_out) return failed;
      return absl::DeadlineExceededError(absl::StrCat("UCX Get of ", keys.size(), " blocks: block ", next,
                                                      " not received within ",
                                                      absl::FormatDuration(options_.timeout)));
    }
    GotBlock g;
    g.index = static_cast<uint32_t>(next);
    g.tier = f.tier;
    g.status = f.status;
    if (g.status.ok()) {
      absl::StatusOr<BlockView> view = BlockView::Parse(absl::string_view(f.buffer.data(), f.length));
      if (view.ok()) {
        g.block = *view;
      } else {
        g.status = absl::DataLossError(absl::StrCat("UCX Get: block ", next, " does not parse: ",
                                                    view.status().message()));
      }
    }
    on_block(g);
    // In this order: the region goes back before the next block counts as
    // waited for, so that block never takes memory of its own only because
    // this one still held the pool.
    f.buffer = Buffer();
    {
      absl::MutexLock lock(&p->mu);
      p->next_wanted = next + 1;
    }
    KickDeferred();  // the block waited for next may be a deferred one
  }
  return absl::OkStatus();
}

// --- UcxBlockClient -----------------------------------------------------------

UcxBlockClient::UcxBlockClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
UcxBlockClient::~UcxBlockClient() = default;

absl::StatusOr<std::unique_ptr<UcxBlockClient>> UcxBlockClient::Create(const UcxBlockClientOptions& options) {
  auto impl = std::make_unique<Impl>();
  KVC_RETURN_IF_ERROR(impl->Init(options));
  return std::unique_ptr<UcxBlockClient>(new UcxBlockClient(std::move(impl)));
}

absl::Status UcxBlockClient::Put(std::span<const absl::string_view> blocks, bool write_through) {
  return impl_->Put(blocks, write_through);
}

absl::Status UcxBlockClient::Get(std::span<const BlockKey> keys, absl::FunctionRef<void(GotBlock&)> on_block) {
  return impl_->Get(keys, on_block);
}

absl::StatusOr<uint32_t> UcxBlockClient::Lookup(absl::string_view tenant, absl::string_view model,
                                                std::span<const uint32_t> layers, std::span<const Hash128> hashes) {
  return LookupChain(*impl_->grpc_, tenant, model, layers, hashes);
}

absl::StatusOr<bool> UcxBlockClient::Healthy() { return impl_->grpc_->Healthy(); }

const std::string& UcxBlockClient::tenant() const { return impl_->tenant_; }
uint64_t UcxBlockClient::pool_fallbacks() const { return impl_->fallbacks_.load(); }

}  // namespace kvc
