// Passkey retrieval for a story model: a name is introduced near the start
// ("Once upon a time, there was a little girl named Zoe."), a long filler of
// plain sentences follows, and the prompt ends where the story names its
// protagonist again ("... At the park,"). The model must produce the name's
// tokens greedily. stories15M retrieves names well within
// its trained 256 positions; the test is whether a cache policy keeps the
// name reachable at 1K-16K tokens of filler.
#ifndef KVC_WORKER_EVAL_PASSKEY_H_
#define KVC_WORKER_EVAL_PASSKEY_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/cache/policy.h"
#include "worker/model/tokenizer.h"
#include "worker/model/transformer.h"

namespace kvc::eval {

struct PasskeyTrial {
  std::string name;
  std::vector<int32_t> prompt;  // BOS, intro with the name, filler, question
  std::vector<int32_t> answer;  // the name's tokens as they follow the question
  int64_t name_position = 0;    // token index of the name in the prompt
};

// A trial of about `filler_tokens` filler tokens, the name and the filler
// sentences chosen by `seed`.
PasskeyTrial MakePasskeyTrial(const model::Tokenizer& tokenizer, int64_t filler_tokens, uint64_t seed);

struct PasskeyResult {
  bool correct = false;
  std::string generated;  // decoded greedy continuation of answer length
  double seconds = 0;
  cache::PolicyStats stats;
};

// Reads the prompt through `policy` in chunks of `stride`, the last
// `decode_tail` prompt tokens one at a time as decode steps (so that a
// policy that compresses after its prompt, SnapKV, or acts on decode steps
// only, Quest and RefreshKV, answers from its decode-time state), then
// decodes greedily as many tokens as the answer has.
absl::StatusOr<PasskeyResult> RunPasskey(model::Transformer& model, const model::Tokenizer& tokenizer,
                                         cache::CachePolicy& policy, const PasskeyTrial& trial, int32_t stride,
                                         int32_t decode_tail = 0);

// The names trials draw from (each a few tokens at most in the vocabulary).
const std::vector<std::string>& PasskeyNames();

}  // namespace kvc::eval

#endif  // KVC_WORKER_EVAL_PASSKEY_H_
