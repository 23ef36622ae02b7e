// An independent statement of the llama2.c forward pass, for tests: one
// token at a time, plain loops, fp64 accumulation, its own KV cache and its
// own RoPE (computed like llama2.c's run.c), sharing nothing with
// worker/model or kernels/ but the checkpoint's weights.
#ifndef KVC_TESTS_NAIVE_LLAMA_H_
#define KVC_TESTS_NAIVE_LLAMA_H_

#include <cstdint>
#include <vector>

#include "worker/model/checkpoint.h"

namespace kvc::testing {

class NaiveLlama {
 public:
  explicit NaiveLlama(const model::Checkpoint& checkpoint);
  // Logits after feeding `token` at the next position.
  std::vector<float> Step(int32_t token);
  int64_t position() const { return pos_; }

 private:
  const model::Checkpoint& ckpt_;
  int64_t pos_ = 0;
  // [layer][pos][kv_dim], post-RoPE keys as run.c caches them.
  std::vector<std::vector<double>> keys_, values_;
};

}  // namespace kvc::testing

#endif  // KVC_TESTS_NAIVE_LLAMA_H_
