// What training LESS kernels (worker/eval/less_train.h) needs from one run
// of the frozen model over a token stream: per layer the pre-RoPE q, k, v
// of every position, the eviction policy's attention output and lse (the
// sparse part LESS combines with), the reference attention's output on the
// same q, k, v (what LESS should reproduce), and when the eviction policy
// evicted each token of each KV head (when LESS folds it).
//
// The model is driven by the eviction policy's output (or a `driver`
// policy's); the eviction and reference policies attend the same q, k, v on
// the side where they do not drive.
#ifndef KVC_WORKER_EVAL_LESS_SAMPLES_H_
#define KVC_WORKER_EVAL_LESS_SAMPLES_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/model/checkpoint.h"
#include "worker/model/transformer.h"

namespace kvc::eval {

struct LessLayerSamples {
  std::vector<float> q;           // [N][Hq][D], before RoPE
  std::vector<float> k, v;        // [N][Hkv][D], k before RoPE
  std::vector<float> sparse_out;  // [N][Hq][D]: the eviction policy's attention
  std::vector<float> sparse_lse;  // [N][Hq]: its natural-log lse
  std::vector<float> target;      // [N][Hq][D]: the reference policy's attention
  // [Hkv][N]: the Attend call (chunk) of this layer after which the token
  // left the eviction policy's hot set, i.e. was folded into LESS's state;
  // -1 if it never left. Queries of chunk c see the tokens with
  // 0 <= fold_chunk < c in the state.
  std::vector<int32_t> fold_chunk;
};

struct LessSamples {
  model::ModelConfig config;
  int64_t num_tokens = 0;                // N
  int32_t num_chunks = 0;                // Attend calls per layer
  std::vector<int32_t> chunk_of;         // [N]: the chunk of each position
  std::vector<LessLayerSamples> layers;  // [n_layers]
};

struct LessSampleOptions {
  // The eviction policy spec (worker/cache/policy_factory.h) whose
  // evictions LESS folds; it must report them (last_evictions()).
  std::string policy = "cascading:budget=64";
  // The attention LESS's combined output is trained to reproduce: a policy
  // spec run on the same q, k, v (e.g. "streaming:budget=256"), or, when
  // empty (the default), the eviction policy's attention joined with the
  // tokens it evicted: softmax over its logits and q_t . k_s / sqrt(D) (RoPE
  // at original positions) of every token s folded before t's chunk with
  // t - s < horizon. That is what LESS's low-rank term stands for (the
  // evicted tokens' share), limited to distances this model was trained on
  // (full attention collapses past seq_len).
  std::string reference;
  int32_t horizon = 0;  // tokens; 0 = the model's seq_len
  // The policy whose output drives the model; empty = `policy`. E.g. LESS
  // with kernels of an earlier round (less:inner=...,kernels=FILE), so a
  // second round trains on the hidden states LESS itself produces.
  std::string driver;
  int32_t stride = 16;                    // tokens per forward pass, as the evaluation reads
  std::function<void(int64_t)> progress;  // tokens read so far, after each chunk
};

// Runs `tokens` (from position 0) through `model` and records the samples.
// Memory: about N * n_layers * (4 Hq + 2 Hkv) * D floats, plus
// N * n_layers * Hkv * D doubles without a reference policy.
absl::StatusOr<LessSamples> CollectLessSamples(model::Transformer& model,
                                               absl::Span<const int32_t> tokens,
                                               const LessSampleOptions& options);

}  // namespace kvc::eval

#endif  // KVC_WORKER_EVAL_LESS_SAMPLES_H_
