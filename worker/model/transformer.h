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
#include "common/mapped_buffer.h"
#include "kernels/dense.h"
#include "kernels/device.h"
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
  // True when Attend takes device pointers and the runtime's CUDA context
  // (cache::DeviceFullAttention). A host cache on the CUDA runtime gets host
  // copies of q, k, v and a CPU context instead.
  virtual bool device_resident() const { return false; }
};

struct TransformerOptions {
  // kCpu, or kCuda: the weights and the activations live in device memory
  // and every dense kernel runs on the GPU; a device-resident cache
  // (cache::DeviceFullAttention) attends there, any other cache gets host
  // copies of q, k, v (and a CPU context) and its output is copied back.
  // Create is Unavailable without a CUDA device. Logits are always
  // written to host memory.
  kernels::ExecContext ctx;
  // The dtype of the copy of every matrix the model keeps (in one arena on
  // transparent huge pages, each layer's wq|wk|wv and w1|w3 adjacent so a
  // decode step reads each pair or triple with one GEMV). kF32: the
  // checkpoint's values; kBF16: rounded, half the bytes a decode step reads.
  kernels::DType weights = kernels::DType::kF32;
  // Also keep every matrix laid out for the batch kernels
  // (kernels::PackLinear, fp32: the matrices' fp32 size again), so a
  // prefill chunk does not lay the weights out on every call. CPU only.
  bool pack_weights = true;
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
  // of every token ([tokens.size()][vocab]) when all_logits; logits ==
  // nullptr skips the classifier (a prefill chunk whose logits nobody reads).
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
  // Sizes the activations for `rows` rows (host or device memory) and
  // points x_ .. hb2_ into them.
  absl::Status EnsureScratch(int64_t rows);
  bool cuda() const { return options_.ctx.backend == kernels::Backend::kCuda; }
  // The CUDA backend's weights, norms and activations (Create).
  absl::Status UploadToDevice();
  // x_ rows [0, rows) = the embeddings of `tokens`.
  absl::Status Embed(absl::Span<const int32_t> tokens);
  // cache.Attend(a), through host copies for a host cache on the CUDA backend.
  absl::Status Attend(AttentionCache& cache, const AttendArgs& a);
  // Every layer for `rows` rows of x_ (EnsureScratch(rows) first);
  // attend(layer) does the attention of q_, k_, v_ into att_.
  template <class AttendFn>
  absl::Status Layers(int64_t rows, AttendFn&& attend);
  // Final norm and classifier for rows [first, first + count) of x_.
  absl::Status Logits(int64_t first, int64_t count, float* logits);
  // y = x W^T for matrix `index` of matrices_; `n` output features (more
  // than the matrix's own for a fused call over adjacent matrices, which
  // then uses no pack).
  absl::Status Linear(const float* x, int64_t m, size_t index, int32_t k, int32_t n, float* y,
                      bool accumulate);

  const Checkpoint* checkpoint_;
  TransformerOptions options_;
  // Matrix pointers as Linear takes them (into arena_): per layer wq, wk,
  // wv, wo, w1, w2, w3; then the classifier. In arena_, each layer is laid
  // out wq, wk, wv, wo, w1, w3, w2 (fused reads, see Layers).
  std::vector<const void*> matrices_;
  std::vector<int32_t> matrix_rows_;         // n of each matrix
  std::vector<kernels::LinearPack> packs_;   // parallel to matrices_, when pack_weights
  // The weight copies, on an anonymous mapping with huge pages advised.
  MappedBuffer arena_{/*huge_pages=*/true};
  // Activations, [rows][...], in one buffer (host_act_ or device_act_):
  // x (residual), xb (normed), qkv (q, k, v one after the other, each
  // [rows][...]), att (attention output), h13 (gate hb then up hb2), hg
  // (silu(gate) * up).
  int64_t rows_ = 0;
  std::vector<float> host_act_;
  float *x_ = nullptr, *xb_ = nullptr, *att_ = nullptr, *hg_ = nullptr;
  float *q_ = nullptr, *k_ = nullptr, *v_ = nullptr, *hb_ = nullptr, *hb2_ = nullptr;
  // The RMSNorm weights as the kernels take them: the checkpoint's, or
  // their device copies.
  std::vector<const float*> rms_att_, rms_ffn_;
  const float* rms_final_ = nullptr;
  // CUDA: device copies of the weight arena and of the norms, the
  // activations and logits; host staging of the embeddings and of a host
  // cache's q, k, v and output.
  kernels::DeviceBuffer device_weights_, device_norms_, device_act_, device_logits_;
  int64_t logit_rows_ = 0;
  std::vector<float> staging_;
};

}  // namespace kvc::model

#endif  // KVC_WORKER_MODEL_TRANSFORMER_H_
