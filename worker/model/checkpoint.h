// A Llama-architecture checkpoint in the llama2.c format: the stories15M
// model the project's setup fetches, or random weights of any shape for
// tests.
//
// File format (llama2.c `run.c`): a header of 7 int32 (dim, hidden_dim,
// n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size
// means the classifier is stored separately, a positive one that it shares
// the token embedding), then fp32 arrays in this order:
//   tok_emb [vocab][dim], rms_att [L][dim], wq [L][dim][dim],
//   wk [L][kv_dim][dim], wv [L][kv_dim][dim], wo [L][dim][dim],
//   rms_ffn [L][dim], w1 [L][hidden][dim], w2 [L][dim][hidden],
//   w3 [L][hidden][dim], rms_final [dim], freq_cis_real [seq][hd/2],
//   freq_cis_imag [seq][hd/2], and wcls [vocab][dim] when not shared.
// Every matrix is [out][in], the layout kernels::Linear takes. The freq_cis
// tables are not used: the attention kernels compute RoPE (interleaved
// pairs, theta 10000) at any position.
#ifndef KVC_WORKER_MODEL_CHECKPOINT_H_
#define KVC_WORKER_MODEL_CHECKPOINT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvc::model {

struct ModelConfig {
  int32_t dim = 0;
  int32_t hidden_dim = 0;
  int32_t n_layers = 0;
  int32_t n_heads = 0;
  int32_t n_kv_heads = 0;
  int32_t vocab_size = 0;
  int32_t seq_len = 0;  // the trained context
  bool shared_classifier = true;
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;

  int32_t head_dim() const { return n_heads > 0 ? dim / n_heads : 0; }
  int32_t kv_dim() const { return head_dim() * n_kv_heads; }
  // InvalidArgument naming the field when a value is out of range.
  absl::Status Validate() const;
  // Bytes of a llama2.c file of this shape.
  size_t FileBytes() const;
  std::string ToString() const;
};

struct LayerWeights {
  const float* rms_att;  // [dim]
  const float* wq;       // [dim][dim]
  const float* wk;       // [kv_dim][dim]
  const float* wv;       // [kv_dim][dim]
  const float* wo;       // [dim][dim]
  const float* rms_ffn;  // [dim]
  const float* w1;       // [hidden][dim] (gate)
  const float* w2;       // [dim][hidden] (down)
  const float* w3;       // [hidden][dim] (up)
};

// Immutable after construction; the weights are a read-only mapping of the
// file, or owned memory for random weights.
class Checkpoint {
 public:
  // Maps a llama2.c file. Errors name the file: missing, shorter than its
  // header, a header out of range, or a size other than the header implies.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Load(const std::string& path);
  // Weights drawn uniformly from [-scale, scale] (RMSNorm weights around 1),
  // deterministic in `seed`.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Random(const ModelConfig& config, uint64_t seed,
                                                            float scale = 0.05f);
  // Writes this checkpoint as a llama2.c file (for tests and tools).
  absl::Status Save(const std::string& path) const;

  ~Checkpoint();
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;

  const ModelConfig& config() const { return config_; }
  const float* tok_emb() const { return tok_emb_; }    // [vocab][dim]
  const LayerWeights& layer(int32_t l) const { return layers_[l]; }
  const float* rms_final() const { return rms_final_; }  // [dim]
  const float* classifier() const { return wcls_; }      // [vocab][dim]
  size_t weight_bytes() const { return floats_ * sizeof(float); }

 private:
  Checkpoint() = default;
  // Points every weight into `data` ([floats] fp32 after the header).
  void Bind(const float* data);

  ModelConfig config_;
  const float* tok_emb_ = nullptr;
  const float* rms_final_ = nullptr;
  const float* wcls_ = nullptr;
  std::vector<LayerWeights> layers_;
  size_t floats_ = 0;
  void* mapping_ = nullptr;  // mmap of the whole file, or null
  size_t mapping_bytes_ = 0;
  std::vector<float> owned_;  // random weights
};

}  // namespace kvc::model

#endif  // KVC_WORKER_MODEL_CHECKPOINT_H_
