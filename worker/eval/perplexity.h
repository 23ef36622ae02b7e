// Streaming perplexity: the model reads a long token stream through a cache
// policy, in chunks of `stride` tokens, and every token after the first is
// scored by the logits of the position before it.
#ifndef KVC_WORKER_EVAL_PERPLEXITY_H_
#define KVC_WORKER_EVAL_PERPLEXITY_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/cache/policy.h"
#include "worker/model/transformer.h"

namespace kvc::eval {

struct PerplexityOptions {
  int32_t stride = 16;  // tokens per forward pass (prefill stride)
  // Report a segment every this many scored tokens (0 = one segment).
  int64_t segment = 1024;
  // Called after each chunk with the tokens done so far.
  std::function<void(int64_t)> progress;
};

struct PerplexitySegment {
  int64_t end = 0;         // tokens read when the segment closed
  double perplexity = 0;   // exp(mean NLL) over the segment's tokens
};

struct PerplexityResult {
  double perplexity = 0;  // over every scored token
  double seconds = 0;
  std::vector<PerplexitySegment> segments;
  cache::PolicyStats stats;  // the policy's, at the end
};

// REQUIRES: `policy` is fresh (has seen no tokens). tokens.size() >= 2.
absl::StatusOr<PerplexityResult> StreamingPerplexity(model::Transformer& model, cache::CachePolicy& policy,
                                                     absl::Span<const int32_t> tokens,
                                                     const PerplexityOptions& options);

}  // namespace kvc::eval

#endif  // KVC_WORKER_EVAL_PERPLEXITY_H_
