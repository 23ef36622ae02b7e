#include "worker/serve/worker_service.h"

#include <chrono>
#include <cmath>
#include <deque>
#include <utility>

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"
#include "kvcache/v1/worker.grpc.pb.h"
#include "worker/cache/policy_factory.h"
#include "worker/serve/sequence.h"

namespace kvc::serve {
namespace {

namespace v1 = ::kvcache::v1;
using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

// Latency buckets from 5 ms to 2 min.
prometheus::Histogram::BucketBoundaries SecondsBuckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
}

}  // namespace

absl::Status WorkerServiceOptions::Validate() const {
  if (listen_address.empty()) return absl::InvalidArgumentError("worker service: listen_address is empty");
  if (max_queued < 0) return absl::InvalidArgumentError(absl::StrCat("worker service: max_queued must be >= 0, got ", max_queued));
  if (max_tokens_limit < 1) {
    return absl::InvalidArgumentError(absl::StrCat("worker service: max_tokens_limit must be >= 1, got ", max_tokens_limit));
  }
  if (default_max_tokens < 1 || default_max_tokens > max_tokens_limit) {
    return absl::InvalidArgumentError(absl::StrCat("worker service: default_max_tokens must be in [1, ",
                                                   max_tokens_limit, "], got ", default_max_tokens));
  }
  if (max_prompt_bytes == 0) return absl::InvalidArgumentError("worker service: max_prompt_bytes must be > 0");
  if (prefix_align < 0) return absl::InvalidArgumentError("worker service: prefix_align must be >= 0");
  return absl::OkStatus();
}

class WorkerServer::Impl final : public v1::Worker::Service {
 public:
  Impl(const WorkerServiceOptions& options, model::Transformer* model, const model::Tokenizer* tokenizer,
       ServiceLink* link, prometheus::Registry* registry)
      : options_(options), model_(model), tokenizer_(tokenizer), link_(link) {
    if (registry == nullptr) return;
    requests_ = &prometheus::BuildCounter()
                     .Name("kvc_worker_requests_total")
                     .Help("Generate requests, by final status code.")
                     .Register(*registry);
    request_seconds_ = &prometheus::BuildHistogram()
                            .Name("kvc_worker_request_seconds")
                            .Help("Generate requests from admission to the last response.")
                            .Register(*registry)
                            .Add({}, SecondsBuckets());
    first_token_seconds_ = &prometheus::BuildHistogram()
                                .Name("kvc_worker_first_token_seconds")
                                .Help("Generate requests from admission to the first sampled token.")
                                .Register(*registry)
                                .Add({}, SecondsBuckets());
    queue_seconds_ = &prometheus::BuildHistogram()
                          .Name("kvc_worker_queue_seconds")
                          .Help("Time a request waited for the model.")
                          .Register(*registry)
                          .Add({}, SecondsBuckets());
    generated_ = &prometheus::BuildCounter()
                      .Name("kvc_worker_generated_tokens_total")
                      .Help("Tokens sampled for requests.")
                      .Register(*registry)
                      .Add({});
    auto& prompt = prometheus::BuildCounter()
                       .Name("kvc_worker_prompt_tokens_total")
                       .Help("Prompt tokens, by whether they were loaded from the cache service or computed.")
                       .Register(*registry);
    prompt_loaded_ = &prompt.Add({{"source", "loaded"}});
    prompt_computed_ = &prompt.Add({{"source", "computed"}});
    running_gauge_ = &prometheus::BuildGauge()
                          .Name("kvc_worker_requests_running")
                          .Help("Requests running on the model (0 or 1).")
                          .Register(*registry)
                          .Add({});
    queued_gauge_ = &prometheus::BuildGauge()
                         .Name("kvc_worker_requests_queued")
                         .Help("Requests waiting for the model.")
                         .Register(*registry)
                         .Add({});
  }

  absl::Status Listen() {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort(options_.listen_address, grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
    if (server_ == nullptr || port_ == 0) {
      return absl::UnavailableError(absl::StrCat("worker service: cannot listen on '", options_.listen_address, "'"));
    }
    server_->GetHealthCheckService()->SetServingStatus(true);
    KVC_LOG(kInfo, "worker_serving")
        .With("port", static_cast<int64_t>(port_))
        .With("policy", options_.policy)
        .With("max_queued", static_cast<int64_t>(options_.max_queued))
        .With("cache_service", link_ != nullptr);
    return absl::OkStatus();
  }

  int port() const { return port_; }

  void Shutdown(absl::Duration grace) {
    {
      absl::MutexLock lock(&mu_);
      if (draining_) return;
      draining_ = true;
    }
    if (server_ == nullptr) return;
    server_->GetHealthCheckService()->SetServingStatus(false);
    KVC_LOG(kInfo, "worker_draining").With("grace_ms", absl::ToInt64Milliseconds(grace));
    server_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(grace));
    server_->Wait();
  }

  grpc::Status Generate(grpc::ServerContext* ctx, const v1::GenerateRequest* req,
                        grpc::ServerWriter<v1::GenerateResponse>* out) override {
    const auto t0 = Clock::now();
    grpc::Status s = Run(ctx, *req, out, t0);
    if (requests_ != nullptr) {
      requests_->Add({{"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code()))}}).Increment();
      if (s.ok()) request_seconds_->Observe(Since(t0));
    }
    return s;
  }

 private:
  absl::StatusOr<SequenceParams> Parse(const v1::GenerateRequest& req) const {
    SequenceParams p;
    if (req.prompt().empty()) return absl::InvalidArgumentError("prompt is empty");
    if (req.prompt().size() > options_.max_prompt_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("prompt is ", req.prompt().size(),
                                                     " bytes, more than this worker's max_prompt_bytes (",
                                                     options_.max_prompt_bytes, ")"));
    }
    if (req.max_tokens() < 0 || req.max_tokens() > options_.max_tokens_limit) {
      return absl::InvalidArgumentError(absl::StrCat("max_tokens is ", req.max_tokens(), ", must be in [0, ",
                                                     options_.max_tokens_limit, "] (0: ", options_.default_max_tokens,
                                                     ")"));
    }
    p.max_tokens = req.max_tokens() == 0 ? options_.default_max_tokens : req.max_tokens();
    if (!(req.temperature() >= 0) || !std::isfinite(req.temperature())) {
      return absl::InvalidArgumentError(absl::StrCat("temperature is ", req.temperature(), ", must be >= 0"));
    }
    if (!(req.top_p() >= 0 && req.top_p() <= 1)) {
      return absl::InvalidArgumentError(absl::StrCat("top_p is ", req.top_p(), ", must be in (0, 1] (0: 0.9)"));
    }
    p.sampler.temperature = req.temperature();
    p.sampler.top_p = req.top_p() == 0 ? 0.9f : req.top_p();
    p.sampler.seed = req.seed() == 0 ? 1 : req.seed();
    if (absl::Status s = p.sampler.Validate(); !s.ok()) return s;
    p.prompt = tokenizer_->Encode(req.prompt(), /*bos=*/true, /*eos=*/false);
    p.prefix_align = options_.prefix_align;
    return p;
  }

  // Waits for the model in arrival order. False when the caller went away
  // first (its place is given up).
  bool Acquire(grpc::ServerContext* ctx, uint64_t ticket) {
    absl::MutexLock lock(&mu_);
    auto turn = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !running_ && queue_.front() == ticket; };
    while (!mu_.AwaitWithTimeout(absl::Condition(&turn), absl::Milliseconds(50))) {
      if (ctx->IsCancelled()) {
        for (auto it = queue_.begin(); it != queue_.end(); ++it) {
          if (*it == ticket) {
            queue_.erase(it);
            break;
          }
        }
        SetGauges();
        return false;
      }
    }
    queue_.pop_front();
    running_ = true;
    SetGauges();
    return true;
  }

  void Release() {
    absl::MutexLock lock(&mu_);
    running_ = false;
    SetGauges();
  }

  void SetGauges() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (running_gauge_ == nullptr) return;
    running_gauge_->Set(running_ ? 1 : 0);
    queued_gauge_->Set(static_cast<double>(queue_.size()));
  }

  grpc::Status Run(grpc::ServerContext* ctx, const v1::GenerateRequest& req,
                   grpc::ServerWriter<v1::GenerateResponse>* out, Clock::time_point t0) {
    absl::StatusOr<SequenceParams> params = Parse(req);
    if (!params.ok()) return ToGrpc(params.status());
    uint64_t ticket = 0;
    {
      absl::MutexLock lock(&mu_);
      if (draining_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the worker is shutting down");
      const size_t waiting = queue_.size() + (running_ ? 1 : 0);
      if (waiting > static_cast<size_t>(options_.max_queued)) {
        return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                            absl::StrCat("the worker is busy: ", queue_.size(), " requests wait for the model (max_queued ",
                                         options_.max_queued, ")"));
      }
      ticket = next_ticket_++;
      queue_.push_back(ticket);
      SetGauges();
    }
    if (!Acquire(ctx, ticket)) return grpc::Status(grpc::StatusCode::CANCELLED, "the caller went away while queued");
    const double queued = Since(t0);
    if (queue_seconds_ != nullptr) queue_seconds_->Observe(queued);
    const uint64_t episodes_before = link_ != nullptr ? link_->writer().stats().degraded_episodes : 0;

    bool write_failed = false;
    auto make_policy = [&]() { return cache::MakePolicy(model_->config(), options_.policy); };
    absl::StatusOr<SequenceResult> res =
        RunSequence(*model_, link_, make_policy, *params, [&](int32_t prev, int32_t token) {
          if (ctx->IsCancelled()) return false;
          v1::GenerateResponse r;
          r.set_token(token);
          r.set_text(tokenizer_->Decode(prev, token));
          if (!out->Write(r)) {
            write_failed = true;
            return false;
          }
          return true;
        });
    Release();
    if (!res.ok()) {
      KVC_LOG(kWarning, "generate_failed").With("error", res.status().ToString());
      return ToGrpc(res.status());
    }
    if (res->finish_reason == "cancelled" || ctx->IsCancelled()) {
      return grpc::Status(grpc::StatusCode::CANCELLED,
                          write_failed ? "the caller went away" : "cancelled (deadline or shutdown)");
    }
    if (first_token_seconds_ != nullptr) {
      first_token_seconds_->Observe(queued + res->first_token_seconds);
      generated_->Increment(res->generated);
      prompt_loaded_->Increment(static_cast<double>(res->prefix_tokens));
      prompt_computed_->Increment(static_cast<double>(params->prompt.size() - res->prefix_tokens));
    }
    bool degraded = false;
    if (link_ != nullptr) {
      if (req.wait_for_write_through()) {
        if (absl::Status f = link_->writer().Flush(options_.flush_timeout); !f.ok()) {
          KVC_LOG(kWarning, "write_through_not_flushed").With("error", f.ToString());
        }
      }
      const BlockWriterStats ws = link_->writer().stats();
      degraded = ws.degraded || ws.degraded_episodes != episodes_before;
    }
    v1::GenerateResponse last;
    last.set_token(-1);
    v1::GenerateDone* d = last.mutable_done();
    d->set_finish_reason(res->finish_reason);
    d->set_prompt_tokens(static_cast<int32_t>(params->prompt.size()));
    d->set_prefix_tokens_loaded(static_cast<int32_t>(res->prefix_tokens));
    d->set_generated_tokens(res->generated);
    d->set_first_token_ms((queued + res->first_token_seconds) * 1e3);
    d->set_tokens_per_second(res->decode_seconds > 0 ? res->generated / res->decode_seconds : 0);
    d->set_blocks_written(res->blocks_written);
    d->set_degraded(degraded);
    d->set_policy(res->policy);
    d->set_resident_kv_bytes(static_cast<int64_t>(res->resident_bytes));
    d->set_queued_ms(queued * 1e3);
    out->Write(last);
    return grpc::Status::OK;
  }

  const WorkerServiceOptions options_;
  model::Transformer* const model_;
  const model::Tokenizer* const tokenizer_;
  ServiceLink* const link_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;

  absl::Mutex mu_;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool running_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<uint64_t> queue_ ABSL_GUARDED_BY(mu_);  // tickets waiting for the model, in arrival order
  uint64_t next_ticket_ ABSL_GUARDED_BY(mu_) = 1;

  prometheus::Family<prometheus::Counter>* requests_ = nullptr;
  prometheus::Histogram* request_seconds_ = nullptr;
  prometheus::Histogram* first_token_seconds_ = nullptr;
  prometheus::Histogram* queue_seconds_ = nullptr;
  prometheus::Counter* generated_ = nullptr;
  prometheus::Counter* prompt_loaded_ = nullptr;
  prometheus::Counter* prompt_computed_ = nullptr;
  prometheus::Gauge* running_gauge_ = nullptr;
  prometheus::Gauge* queued_gauge_ = nullptr;
};

absl::StatusOr<std::unique_ptr<WorkerServer>> WorkerServer::Start(const WorkerServiceOptions& options,
                                                                  model::Transformer* model,
                                                                  const model::Tokenizer* tokenizer, ServiceLink* link,
                                                                  prometheus::Registry* registry) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  // The policy spec is checked once here, not per request.
  if (absl::StatusOr<std::unique_ptr<cache::CachePolicy>> p = cache::MakePolicy(model->config(), options.policy); !p.ok()) {
    return p.status();
  }
  auto impl = std::make_unique<Impl>(options, model, tokenizer, link, registry);
  if (absl::Status s = impl->Listen(); !s.ok()) return s;
  return std::unique_ptr<WorkerServer>(new WorkerServer(std::move(impl)));
}

WorkerServer::WorkerServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

WorkerServer::~WorkerServer() { Shutdown(absl::Seconds(5)); }

int WorkerServer::port() const { return impl_->port(); }

void WorkerServer::Shutdown(absl::Duration grace) { impl_->Shutdown(grace); }

}  // namespace kvc::serve
