// Next-token sampling from logits: greedy (temperature 0), or softmax at a
// temperature with optional nucleus (top-p) truncation. Deterministic in
// the seed (the xorshift generator of llama2.c, so a seed reproduces its
// choices).
#ifndef KVC_WORKER_MODEL_SAMPLER_H_
#define KVC_WORKER_MODEL_SAMPLER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace kvc::model {

struct SamplerOptions {
  float temperature = 0.0f;  // 0 = greedy; otherwise > 0
  float top_p = 0.9f;        // in (0, 1]; 1 = no truncation
  uint64_t seed = 1;         // != 0
  absl::Status Validate() const;
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& options);
  // The next token. Greedy ties go to the lower id.
  int32_t Sample(absl::Span<const float> logits);
  // A uniform float in [0, 1) (xorshift64*, as llama2.c).
  float NextUniform();

 private:
  SamplerOptions options_;
  uint64_t state_;
  std::vector<float> probs_;
  std::vector<int32_t> order_;
};

// Index of the largest value (lowest index on ties).
int32_t ArgMax(absl::Span<const float> logits);
// log softmax(logits)[token], in fp64 (for perplexity).
double LogProb(absl::Span<const float> logits, int32_t token);

}  // namespace kvc::model

#endif  // KVC_WORKER_MODEL_SAMPLER_H_
