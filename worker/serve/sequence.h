// One sequence through the model, joined to the cache service when there is
// one: the prompt's cached prefix loaded (the rest computed), then tokens
// sampled one by one, every block written through. What `kvc-worker
// generate` runs once and `kvc-worker serve` runs per request.
#ifndef KVC_WORKER_SERVE_SEQUENCE_H_
#define KVC_WORKER_SERVE_SEQUENCE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "worker/cache/policy.h"
#include "worker/kv/service_link.h"
#include "worker/model/sampler.h"
#include "worker/model/transformer.h"

namespace kvc::serve {

struct SequenceParams {
  // Token ids, BOS included. At least one.
  std::vector<int32_t> prompt;
  // Tokens to sample at most (>= 0).
  int32_t max_tokens = 256;
  model::SamplerOptions sampler;
  // A loaded prefix is a multiple of this many tokens (LoadPrefix's align):
  // the model's max_chunk makes the logits equal to computing the prompt
  // (the prefill runs in the same chunks); 0 means the link's block_tokens.
  int64_t prefix_align = 0;
};

struct SequenceResult {
  // "length" (max_tokens sampled), "eos" (the model ended the text),
  // "cancelled" (the token sink asked to stop).
  std::string finish_reason;
  int64_t prefix_tokens = 0;  // leading prompt tokens loaded, not computed
  int64_t prefix_blocks = 0;  // blocks per layer they came in
  // The cached prefix could not be fetched after all: the prompt was computed.
  bool prefix_unusable = false;
  int32_t generated = 0;
  double first_token_seconds = 0;  // from the call to the first sampled token
  double decode_seconds = 0;       // from the first sampled token to the end
  int64_t blocks_written = 0;      // handed to the write-through
  bool offloaded = false;          // the policy keeps its full context in the service
  std::string policy;
  size_t resident_bytes = 0;
};

// Called with each sampled token (and the one before it, for decoding its
// text) before the model runs it; return false to stop the sequence.
using TokenSink = absl::FunctionRef<bool(int32_t prev, int32_t token)>;
using PolicyFactory = absl::FunctionRef<absl::StatusOr<std::unique_ptr<cache::CachePolicy>>()>;

// Runs one sequence on `model` (not thread-safe: one sequence at a time per
// model). `link` may be null (no cache service). The sequence ends at EOS,
// after max_tokens, or when `on_token` returns false; its end is reported to
// the link's metrics. Errors of the model or the policy are returned; a cache
// service that is away is not one (the link is degraded, the text the same).
absl::StatusOr<SequenceResult> RunSequence(model::Transformer& model, ServiceLink* link, PolicyFactory make_policy,
                                           const SequenceParams& params, TokenSink on_token);

}  // namespace kvc::serve

#endif  // KVC_WORKER_SERVE_SEQUENCE_H_
