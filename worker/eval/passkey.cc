#include "worker/eval/passkey.h"

#include <chrono>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/model/sampler.h"

namespace kvc::eval {
namespace {

// Plain sentences in the model's register that mention no name.
const std::vector<std::string>& FillerSentences() {
  static const auto* s = new std::vector<std::string>{
      "The sun was warm and the grass was green.",
      "Birds sang in the tall trees by the river.",
      "The wind blew softly over the hills.",
      "A little dog ran across the big yard.",
      "The sky was blue and the clouds were white.",
      "Flowers grew in the garden near the house.",
      "The cat slept on the soft red rug.",
      "It was a quiet day in the small town.",
      "The children played with a ball in the park.",
      "The trees moved gently in the breeze.",
  };
  return *s;
}

}  // namespace

const std::vector<std::string>& PasskeyNames() {
  static const auto* n = new std::vector<std::string>{"Lily", "Tom", "Sue", "Ben", "Anna", "Max", "Lucy", "Sam",
                                                       "Mia",  "Jack", "Emma", "Tim", "Sara", "Leo", "Zoe", "Bob"};
  return *n;
}

PasskeyTrial MakePasskeyTrial(const model::Tokenizer& tokenizer, int64_t filler_tokens, uint64_t seed) {
  std::mt19937_64 rng(seed);
  PasskeyTrial t;
  t.name = PasskeyNames()[rng() % PasskeyNames().size()];
  const std::string intro = "Once upon a time, there was a little girl named";
  t.name_position = static_cast<int64_t>(tokenizer.Encode(intro, /*bos=*/true, /*eos=*/false).size());
  std::string filler;
  int64_t count = 0;
  while (count < filler_tokens) {
    const std::string& s = FillerSentences()[rng() % FillerSentences().size()];
    absl::StrAppend(&filler, " ", s);
    count += static_cast<int64_t>(tokenizer.Encode(s, false, false).size());
  }
  // The model names its protagonist at the start of the next scene; it
  // writes the name it was given when it can still see it, and a name of
  // its own (most often "Lily") when it cannot.
  const std::string question = " One day, her mom said, \"Let's go to the park!\" At the park,";
  // Encode the whole text once so merges across the joins are as the
  // tokenizer makes them.
  t.prompt = tokenizer.Encode(absl::StrCat(intro, " ", t.name, ". She liked to play in the park.", filler, question), true, false);
  const std::vector<int32_t> with_answer =
      tokenizer.Encode(absl::StrCat(intro, " ", t.name, ". She liked to play in the park.", filler, question, " ", t.name), true, false);
  t.answer.assign(with_answer.begin() + t.prompt.size(), with_answer.end());
  return t;
}

absl::StatusOr<PasskeyResult> RunPasskey(model::Transformer& model, const model::Tokenizer& tokenizer,
                                         cache::CachePolicy& policy, const PasskeyTrial& trial, int32_t stride,
                                         int32_t decode_tail) {
  if (stride < 1) return absl::InvalidArgumentError(absl::StrCat("passkey: stride ", stride, " < 1"));
  if (decode_tail < 0 || decode_tail >= static_cast<int64_t>(trial.prompt.size())) {
    return absl::InvalidArgumentError(absl::StrCat("passkey: decode_tail ", decode_tail, " not in [0, ",
                                                   trial.prompt.size(), ")"));
  }
  const int32_t vocab = model.config().vocab_size;
  std::vector<float> logits(vocab);
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t n = static_cast<int64_t>(trial.prompt.size()), prefill = n - decode_tail;
  for (int64_t begin = 0; begin < n;) {
    const int64_t len = begin < prefill ? std::min<int64_t>(stride, prefill - begin) : 1;
    KVC_RETURN_IF_ERROR(
        model.Forward(absl::MakeConstSpan(trial.prompt).subspan(begin, len), begin, policy, logits.data()));
    begin += len;
  }
  PasskeyResult r;
  std::vector<int32_t> generated;
  int32_t prev = trial.prompt.back();
  for (size_t i = 0; i < trial.answer.size(); ++i) {
    const int32_t next = model::ArgMax(logits);
    generated.push_back(next);
    absl::StrAppend(&r.generated, tokenizer.Decode(prev, next));
    prev = next;
    if (i + 1 < trial.answer.size()) {
      KVC_RETURN_IF_ERROR(model.Forward(absl::MakeConstSpan(&generated.back(), 1), n + static_cast<int64_t>(i),
                                        policy, logits.data()));
    }
  }
  r.correct = generated == trial.answer;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.stats = policy.stats();
  return r;
}

}  // namespace kvc::eval
