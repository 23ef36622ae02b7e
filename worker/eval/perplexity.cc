#include "worker/eval/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/model/sampler.h"

namespace kvc::eval {

absl::StatusOr<PerplexityResult> StreamingPerplexity(model::Transformer& model, cache::CachePolicy& policy,
                                                     absl::Span<const int32_t> tokens,
                                                     const PerplexityOptions& options) {
  if (tokens.size() < 2) return absl::InvalidArgumentError("perplexity: need at least 2 tokens");
  if (options.stride < 1) {
    return absl::InvalidArgumentError(absl::StrCat("perplexity: stride ", options.stride, " < 1"));
  }
  const int32_t vocab = model.config().vocab_size;
  const int64_t n = static_cast<int64_t>(tokens.size());
  std::vector<float> logits(static_cast<size_t>(options.stride) * vocab);
  PerplexityResult result;
  double total_nll = 0, segment_nll = 0;
  int64_t scored = 0, segment_scored = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t begin = 0; begin < n - 1; begin += options.stride) {
    // The last chunk stops before the last token: nothing scores after it.
    const int64_t len = std::min<int64_t>(options.stride, n - 1 - begin);
    KVC_RETURN_IF_ERROR(model.Forward(tokens.subspan(begin, len), begin, policy, logits.data(), true));
    for (int64_t i = 0; i < len; ++i) {
      const double nll = -model::LogProb(absl::MakeConstSpan(logits.data() + i * vocab, vocab), tokens[begin + i + 1]);
      total_nll += nll;
      segment_nll += nll;
      ++scored;
      if (++segment_scored == options.segment) {
        result.segments.push_back({begin + i + 2, std::exp(segment_nll / segment_scored)});
        segment_nll = 0;
        segment_scored = 0;
      }
    }
    if (options.progress) options.progress(begin + len);
  }
  if (segment_scored > 0) result.segments.push_back({n, std::exp(segment_nll / segment_scored)});
  result.perplexity = std::exp(total_nll / scored);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  result.stats = policy.stats();
  return result;
}

}  // namespace kvc::eval
