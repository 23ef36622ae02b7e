// A model shape for tests of the runtime and the cache policies (random
// weights come from model::Checkpoint::Random), and random token ids.
#ifndef KVC_TESTS_MODEL_TEST_UTIL_H_
#define KVC_TESTS_MODEL_TEST_UTIL_H_

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "worker/model/checkpoint.h"
#include "worker/model/transformer.h"

namespace kvc::testing {

inline model::ModelConfig ModelShape(int32_t dim, int32_t hidden, int32_t layers, int32_t heads, int32_t kv_heads,
                                     int32_t vocab, int32_t seq_len = 64) {
  model::ModelConfig c;
  c.dim = dim;
  c.hidden_dim = hidden;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.vocab_size = vocab;
  c.seq_len = seq_len;
  return c;
}

// A model small enough to run hundreds of times per test: 2 layers, 4
// query heads over 2 KV heads of dim 16, a vocabulary of 50.
inline model::ModelConfig TinyModel(int32_t seq_len = 64) { return ModelShape(64, 96, 2, 4, 2, 50, seq_len); }

// TinyModel with random weights (the same for the same seed), run in
// prefill passes of max_chunk tokens.
struct TinyModelRuntime {
  explicit TinyModelRuntime(uint64_t seed = 5, int max_chunk = 16, int32_t seq_len = 64)
      : ckpt(*model::Checkpoint::Random(TinyModel(seq_len), seed, 0.2f)) {
    model::TransformerOptions o;
    o.max_chunk = max_chunk;
    model = *model::Transformer::Create(ckpt.get(), o);
  }
  std::unique_ptr<model::Checkpoint> ckpt;
  std::unique_ptr<model::Transformer> model;
};

// n token ids in [0, vocab), the same for the same seed.
inline std::vector<int32_t> RandomTokens(int n, int32_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

}  // namespace kvc::testing

#endif  // KVC_TESTS_MODEL_TEST_UTIL_H_
