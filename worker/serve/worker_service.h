// `kvc-worker serve`: the kvcache.v1.Worker gRPC service (proto/kvcache/v1/
// worker.proto) over one model, one sequence at a time, each joined to the
// cache service through a shared ServiceLink (write-through, prefix reuse,
// rehydration; degraded, not failing, while the service is away).
//
//   auto server = WorkerServer::Start(options, model, tokenizer, link, registry);
//   ...                                // SIGTERM:
//   (*server)->Shutdown(absl::Seconds(30));
//
// Requests wait for the model in arrival order; beyond max_queued waiting,
// one is refused with RESOURCE_EXHAUSTED at once (a client retries
// elsewhere). Health (grpc.health.v1) is SERVING until Shutdown, which
// refuses new requests with UNAVAILABLE and lets the running and queued ones
// finish within its grace.
//
// Metrics (on `registry`, when given):
//   kvc_worker_requests_total{code}          counter  (OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, CANCELLED, ...)
//   kvc_worker_request_seconds               histogram (admission to the last response)
//   kvc_worker_first_token_seconds           histogram (admission to the first sampled token)
//   kvc_worker_queue_seconds                 histogram (waiting for the model)
//   kvc_worker_generated_tokens_total        counter
//   kvc_worker_prompt_tokens_total{source}   counter  (loaded: from the cache service; computed)
//   kvc_worker_requests_running              gauge
//   kvc_worker_requests_queued               gauge
#ifndef KVC_WORKER_SERVE_WORKER_SERVICE_H_
#define KVC_WORKER_SERVE_WORKER_SERVICE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/kv/service_link.h"
#include "worker/model/tokenizer.h"
#include "worker/model/transformer.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace kvc::serve {

struct WorkerServiceOptions {
  // host:port to serve on; port 0 picks a free one. Default "0.0.0.0:50061".
  std::string listen_address = "0.0.0.0:50061";
  // The cache policy of every sequence (worker/cache/policy_factory.h). Default "full".
  std::string policy = "full";
  // Requests that may wait for the model beside the running one. Default 8.
  int max_queued = 8;
  // max_tokens when a request gives 0, and the most a request may ask. Defaults 256, 4096.
  int32_t default_max_tokens = 256;
  int32_t max_tokens_limit = 4096;
  // Largest prompt, in bytes of text. Default 1 MiB.
  size_t max_prompt_bytes = 1 << 20;
  // A loaded prefix is a multiple of this (SequenceParams::prefix_align; the
  // model's max_chunk makes the logits those of computing the prompt). 0:
  // the link's block_tokens. Default 0.
  int64_t prefix_align = 0;
  // Bound of a request's wait_for_write_through. Default 10 s.
  absl::Duration flush_timeout = absl::Seconds(10);

  absl::Status Validate() const;
};

class WorkerServer {
 public:
  // `model` and `tokenizer` must outlive the server; `link` (null: no cache
  // service) and `registry` (null: no metrics) too.
  static absl::StatusOr<std::unique_ptr<WorkerServer>> Start(const WorkerServiceOptions& options,
                                                             model::Transformer* model,
                                                             const model::Tokenizer* tokenizer, ServiceLink* link,
                                                             prometheus::Registry* registry);
  ~WorkerServer();

  int port() const;
  // NOT_SERVING, new requests refused with UNAVAILABLE, those admitted
  // finish within `grace` (then they are cancelled). Idempotent.
  void Shutdown(absl::Duration grace);

  class Impl;

 private:
  explicit WorkerServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvc::serve

#endif  // KVC_WORKER_SERVE_WORKER_SERVICE_H_
