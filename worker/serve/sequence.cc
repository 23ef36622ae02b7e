#include "worker/serve/sequence.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace kvc::serve {
namespace {

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

absl::StatusOr<SequenceResult> RunSequence(model::Transformer& model, ServiceLink* link, PolicyFactory make_policy,
                                           const SequenceParams& params, TokenSink on_token) {
  const auto t_start = std::chrono::steady_clock::now();
  if (params.prompt.empty()) return absl::InvalidArgumentError("the prompt has no tokens");
  if (params.max_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens must be >= 0, got ", params.max_tokens));
  }
  KVC_RETURN_IF_ERROR(params.sampler.Validate());
  const model::ModelConfig& config = model.config();
  const std::span<const int32_t> prompt(params.prompt);
  SequenceResult res;

  KVC_ASSIGN_OR_RETURN(std::unique_ptr<cache::CachePolicy> policy, make_policy());
  std::unique_ptr<WriteThroughCache> synced;
  PrefixLoad load;
  if (link != nullptr) {
    KVC_ASSIGN_OR_RETURN(synced, link->Attach(config, std::move(policy)));
    const int64_t align = params.prefix_align > 0 ? params.prefix_align : link->options().sync.block_tokens;
    KVC_ASSIGN_OR_RETURN(load, link->LoadPrefix(config, prompt, *synced, align));
    synced->AppendTokens(prompt.subspan(static_cast<size_t>(load.tokens)));
  }
  std::vector<float> logits(config.vocab_size);
  auto cache = [&]() -> cache::CachePolicy& { return synced ? *synced : *policy; };
  absl::Status prefilled =
      model.Forward(absl::MakeConstSpan(params.prompt).subspan(static_cast<size_t>(load.tokens)), load.tokens, cache(),
                    logits.data());
  if (!prefilled.ok() && load.tokens > 0) {
    // A streamed prefix block could not be had after all: the whole prompt, computed.
    KVC_LOG(kWarning, "cached_prefix_unusable").With("error", prefilled.ToString()).With("prefix_tokens", load.tokens);
    res.prefix_unusable = true;
    link->Finish(*synced);
    KVC_ASSIGN_OR_RETURN(auto fresh, make_policy());
    KVC_ASSIGN_OR_RETURN(synced, link->Attach(config, std::move(fresh)));
    load = PrefixLoad{};
    synced->AppendTokens(prompt);
    prefilled = model.Forward(absl::MakeConstSpan(params.prompt), 0, *synced, logits.data());
  }
  KVC_RETURN_IF_ERROR(prefilled);
  res.prefix_tokens = load.tokens;
  res.prefix_blocks = load.blocks;

  model::Sampler sampler(params.sampler);
  int32_t prev = prompt.back();
  res.finish_reason = "length";
  std::chrono::steady_clock::time_point t_first{};
  for (; res.generated < params.max_tokens; ++res.generated) {
    const int32_t next = sampler.Sample(logits);
    if (res.generated == 0) {
      t_first = std::chrono::steady_clock::now();
      res.first_token_seconds = std::chrono::duration<double>(t_first - t_start).count();
    }
    if (next == 1 || next == 2) {  // BOS or EOS: the text ended
      res.finish_reason = "eos";
      break;
    }
    if (!on_token(prev, next)) {
      res.finish_reason = "cancelled";
      break;
    }
    prev = next;
    if (synced) synced->AppendTokens(std::span<const int32_t>(&next, 1));
    KVC_RETURN_IF_ERROR(model.Forward(absl::MakeConstSpan(&next, 1),
                                      static_cast<int64_t>(prompt.size()) + res.generated, cache(), logits.data()));
  }
  if (res.generated > 0 || res.finish_reason == "eos") res.decode_seconds = Since(t_first);
  res.policy = cache().name();
  res.resident_bytes = cache().stats().resident_bytes;
  if (synced) {
    res.blocks_written = synced->blocks_written();
    res.offloaded = synced->offloaded();
    link->Finish(*synced);
  }
  return res;
}

}  // namespace kvc::serve
