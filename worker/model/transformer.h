// The forward pass of a Llama-architecture model (RMSNorm, RoPE, GQA
// attention, SwiGLU) on the kernels of kernels/. Attention over the
// sequence's past is not done here: each layer hands the chunk's queries,
// keys and values (before RoPE) to the sequence's AttentionCache, which is
// where a cache policy decides what is kept and what is attended.
#ifndef KVC_WORKER_MODEL_TRANSFORMER_H_
#define KVC_WORKER_MODEL_TRANSFORMER_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/types.h"
#include "worker/model/checkpoint.h"

namespace kvc::model {

// One layer's attention for a chunk of new tokens of one sequence.
struct AttendArgs {
  int32_t layer = 0;
  int64_t num_tokens = 0;
  // Original position (index in the sequence) of the chunk's first token;
  // the chunk's tokens are consecutive.
  int64_t first_position = 0;
  const float* q = nullptr;  // [num_tokens][Hq][D], before RoPE
  const float* k = nullptr;  // [num_tokens][Hkv][D], before RoPE
  const float* v = nullptr;  // [num_tokens][Hkv][D]
  float* out = nullptr;      // [num_tokens][Hq][D]
  // Optional: when non-null, the cache also writes the natural-log
  // log-sum-exp of each query row's attention logits over the keys it
  // attended ([num_tokens][Hq]), so outputs can be merged or combined.
  float* lse = nullptr;  // [num_tokens][Hq]
};

// A sequence's KV under some cache policy (worker/cache). Attend keeps the
// chunk's keys and values as the policy decides and writes, for every query
// of the chunk, attention over what the policy lets it see (causal: never
// a later token).
class AttentionCache {
 public:
  virtual ~AttentionCache() = default;
  virtual absl::Status Attend(const kernels::ExecContext& ctx, const AttendArgs& args) = 0;
};

struct TransformerOptions {
  kernels::ExecContext ctx;  // CPU paths only so far
  // kF32 uses the checkpoint's weights in place; kBF16 keeps a bf16 copy of
  // every matrix (half the bytes a decode step reads).
  kernels::DType weights = kernels::DType::kF32;
  int32_t max_chunk = 256;  // tokens per pass; longer inputs are split
};

class Transformer {
 public:
  // `checkpoint` must outlive the Transformer.
  static absl::StatusOr<std::unique_ptr<Transformer>> Create(const Checkpoint* checkpoint,
                                                             const TransformerOptions& options);

  const ModelConfig& config() const { return checkpoint_->config(); }
  const TransformerOptions& options() const { return options_; }

  // Runs `tokens` of one sequence, at original positions first_position,
  // first_position + 1, ..., through every layer (in chunks of at most
  // max_chunk). Writes the logits of the last token to `logits` [vocab], or
  // of every token ([tokens.size()][vocab]) when all_logits.
  absl::Status Forward(absl::Span<const int32_t> tokens, int64_t first_position, AttentionCache& cache,
                       float* logits, bool all_logits = false);

  // One decode step for a batch of sequences: token b at position
  // positions[b] of the sequence whose cache is caches[b]. The dense layers
  // run once for the whole batch. logits: [batch][vocab].
  absl::Status DecodeBatch(absl::Span<const int32_t> tokens, absl::Span<const int64_t> positions,
                           absl::Span<AttentionCache* const> caches, float* logits);

 private:
  Transformer(const Checkpoint* checkpoint, const TransformerOptions& options);
  absl::Status CheckTokens(absl::Span<const int32_t> tokens) const;
  void EnsureScratch(int64_t rows);
  // Every layer for `rows` rows of x_; attend(layer) does the attention of
  // q_, k_, v_ into att_.
  template <class AttendFn>
  absl::Status Layers(int64_t rows, AttendFn&& attend);
  // Final norm and classifier for rows [first, first + count) of x_.
  absl::Status Logits(int64_t first, int64_t count, float* logits);
  absl::Status Linear(const float* x, int64_t m, const void* w, int32_t k, int32_t n, float* y,
                      bool accumulate);

  const Checkpoint* checkpoint_;
  TransformerOptions options_;
  // Matrix pointers as Linear takes them (into the checkpoint, or the bf16
  // copies): per layer wq, wk, wv, wo, w1, w2, w3; then the classifier.
  std::vector<const void*> matrices_;
  std::vector<uint16_t> bf16_;
  // Activations, [rows][...]: x (residual), xb (normed), q, k, v, att
  // (attention output), hb / hb2 (gate / up), hg (silu(gate) * up).
  int64_t rows_ = 0;
  std::vector<float> x_, xb_, q_, k_, v_, att_, hb_, hb2_, hg_;
};

}  // namespace kvc::model

#endif  // KVC_WORKER_MODEL_TRANSFORMER_H_
