// worker_bench: the model runtime's speed targets, each against what it
// replaces, in one run (stories15M, this machine's CPU path):
//  - generation of 256 tokens under full attention, against the published
//    llama2.c figure for these two cores (--reference_tok_s, 580 tokens/s);
//  - prefill of a long input (--context, 32K) with dense attention against
//    the same input through a policy's strided prefill (--prefill_policy,
//    the median of --prefill_rounds);
//  - decode tokens/s at that context, full attention against a policy
//    (--decode_policy), each after its own prefill: --rounds rounds of
//    --decode_steps steps, the two alternating so that a slow spell of the
//    machine hits both; the medians are compared.
// Results and the exact command: docs/EVALUATION.md.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "common/allocator.h"
#include "common/status_macros.h"
#include "kernels/thread_pool.h"
#include "worker/cache/combined.h"
#include "worker/cache/policy_factory.h"
#include "worker/model/checkpoint.h"
#include "worker/model/sampler.h"
#include "worker/model/transformer.h"

ABSL_FLAG(std::string, model, "third_party/stories15M/model.bin", "llama2.c checkpoint");
ABSL_FLAG(int64_t, context, 32768, "Context length of the prefill and decode cases");
ABSL_FLAG(int, stride, 256, "Tokens per forward pass while prefilling (dense and policy)");
ABSL_FLAG(std::string, prefill_policy, "cascading:budget=256", "Policy whose strided prefill is timed");
ABSL_FLAG(std::string, decode_policy, "combined:budget=256", "Policy whose decode is timed against full");
ABSL_FLAG(int, decode_steps, 64, "Decode steps per round timed at the context");
ABSL_FLAG(int, prefill_rounds, 3, "Prefills by the policy (each fresh; the dense one, 10x longer, runs once)");
ABSL_FLAG(int, warmup_steps, 16,
          "Untimed decode steps of each policy before the rounds (the first steps after a long prefill touch "
          "memory idle since the prefill)");
ABSL_FLAG(int, rounds, 5, "Decode rounds per policy, alternating full and the policy (medians compared)");
ABSL_FLAG(int, gen_tokens, 256, "Tokens generated in the short full-attention case");
ABSL_FLAG(double, reference_tok_s, 580.0, "llama2.c (run.c, OpenMP) tokens/s for 256 tokens on this machine");
ABSL_FLAG(std::string, weights, "f32", "f32 or bf16 weights");

namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct Bench {
  std::unique_ptr<kvc::model::Checkpoint> ckpt;
  std::unique_ptr<kvc::model::Transformer> model;
  std::vector<float> logits;

  absl::StatusOr<std::unique_ptr<kvc::cache::CachePolicy>> Policy(const std::string& spec) {
    return kvc::cache::MakePolicy(ckpt->config(), spec);
  }
  // Seconds to read `n` tokens through `policy` in chunks of `stride`
  // (logits of the last chunk only, which decode starts from).
  absl::StatusOr<double> Prefill(kvc::cache::CachePolicy& policy, int64_t n, int stride) {
    std::vector<int32_t> tokens(n);
    for (int64_t i = 0; i < n; ++i) tokens[i] = 3 + static_cast<int32_t>((i * 7919) % 31997);
    const auto t0 = Clock::now();
    for (int64_t b = 0; b < n; b += stride) {
      const int64_t len = std::min<int64_t>(stride, n - b);
      float* out = b + len == n ? logits.data() : nullptr;
      KVC_RETURN_IF_ERROR(model->Forward(absl::MakeConstSpan(tokens).subspan(b, len), b, policy, out));
    }
    return Since(t0);
  }
  // Tokens/s of `steps` greedy decode steps after `start` tokens.
  absl::StatusOr<double> Decode(kvc::cache::CachePolicy& policy, int64_t start, int steps) {
    const auto t0 = Clock::now();
    for (int s = 0; s < steps; ++s) {
      const int32_t next = kvc::model::ArgMax(logits);
      KVC_RETURN_IF_ERROR(model->Forward(absl::MakeConstSpan(&next, 1), start + s, policy, logits.data()));
    }
    return steps / Since(t0);
  }
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t h = v.size() / 2;
  return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

// "min-max" of the rounds' rates.
std::string Spread(const std::vector<double>& v) {
  const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  return absl::StrFormat("rounds %.1f-%.1f", *lo, *hi);
}

void Row(const std::string& name, const std::string& value, const std::string& ratio) {
  std::printf("%-52s %16s  %s\n", name.c_str(), value.c_str(), ratio.c_str());
  std::fflush(stdout);
}

absl::Status Run() {
  Bench b;
  KVC_ASSIGN_OR_RETURN(b.ckpt, kvc::model::Checkpoint::Load(absl::GetFlag(FLAGS_model)));
  kvc::model::TransformerOptions o;
  o.weights = absl::GetFlag(FLAGS_weights) == "bf16" ? kvc::kernels::DType::kBF16 : kvc::kernels::DType::kF32;
  o.max_chunk = 256;
  KVC_ASSIGN_OR_RETURN(b.model, kvc::model::Transformer::Create(b.ckpt.get(), o));
  b.logits.resize(b.ckpt->config().vocab_size);
  const int64_t n = absl::GetFlag(FLAGS_context);
  const int stride = absl::GetFlag(FLAGS_stride), steps = absl::GetFlag(FLAGS_decode_steps);
  std::printf("# worker_bench: stories15M (%s), %s weights, %d threads, context %lld, stride %d\n",
              b.ckpt->config().ToString().c_str(), absl::GetFlag(FLAGS_weights).c_str(),
              kvc::kernels::DefaultThreadPool().num_threads(), static_cast<long long>(n), stride);

  // 1. Short generation under full attention (prompt = BOS).
  {
    KVC_ASSIGN_OR_RETURN(auto full, b.Policy("full"));
    KVC_RETURN_IF_ERROR(b.Prefill(*full, 1, 1).status());
    KVC_ASSIGN_OR_RETURN(double tok_s, b.Decode(*full, 1, absl::GetFlag(FLAGS_gen_tokens) - 1));
    const double ref = absl::GetFlag(FLAGS_reference_tok_s);
    Row(absl::StrFormat("generate %d tokens, full attention", absl::GetFlag(FLAGS_gen_tokens)),
        absl::StrFormat("%.0f tok/s", tok_s), absl::StrFormat("%.2fx llama2.c (%.0f tok/s)", tok_s / ref, ref));
  }
  // 2. Prefill of n tokens: dense vs the policy; 3. decode after each.
  KVC_ASSIGN_OR_RETURN(auto full, b.Policy("full"));
  KVC_ASSIGN_OR_RETURN(double t_dense, b.Prefill(*full, n, stride));
  const std::vector<float> dense_logits = b.logits;
  Row(absl::StrFormat("prefill %lld tokens, dense (full attention)", static_cast<long long>(n)),
      absl::StrFormat("%.2f s", t_dense), "");
  const std::string pp = absl::GetFlag(FLAGS_prefill_policy), dp = absl::GetFlag(FLAGS_decode_policy);
  // The policy's prefill is short enough to repeat (a fresh policy each
  // time; the last one is kept for decode): the median of --prefill_rounds.
  std::unique_ptr<kvc::cache::CachePolicy> prefill_policy;
  std::vector<double> prefill_times;
  for (int r = 0; r < std::max(1, absl::GetFlag(FLAGS_prefill_rounds)); ++r) {
    prefill_policy.reset();
    KVC_ASSIGN_OR_RETURN(prefill_policy, b.Policy(pp));
    KVC_ASSIGN_OR_RETURN(double t, b.Prefill(*prefill_policy, n, stride));
    prefill_times.push_back(t);
  }
  const double t_policy = Median(prefill_times);
  const auto [t_lo, t_hi] = std::minmax_element(prefill_times.begin(), prefill_times.end());
  Row(absl::StrFormat("prefill %lld tokens, %s", static_cast<long long>(n), pp.c_str()),
      absl::StrFormat("%.2f s", t_policy),
      absl::StrFormat("%.1fx faster than dense (median of %zu: %.2f-%.2f s)", t_dense / t_policy,
                      prefill_times.size(), *t_lo, *t_hi));
  std::unique_ptr<kvc::cache::CachePolicy> decode_policy;
  if (dp == pp) {
    decode_policy = std::move(prefill_policy);
  } else {
    prefill_policy.reset();
    KVC_ASSIGN_OR_RETURN(decode_policy, b.Policy(dp));
    KVC_RETURN_IF_ERROR(b.Prefill(*decode_policy, n, stride).status());
  }
  // The combined policy's work during the timed steps: how often its
  // selection was reused and how many (layer) steps were full steps.
  const auto* combined = dynamic_cast<const kvc::cache::Combined*>(decode_policy.get());
  // Rounds alternate, each policy continuing its own sequence (the context
  // grows by rounds * steps tokens, 2% at the defaults).
  const int rounds = std::max(1, absl::GetFlag(FLAGS_rounds)), warmup = std::max(0, absl::GetFlag(FLAGS_warmup_steps));
  std::vector<float> full_logits = dense_logits, policy_logits = b.logits;
  if (warmup > 0) {
    b.logits.swap(full_logits);
    KVC_RETURN_IF_ERROR(b.Decode(*full, n, warmup).status());
    b.logits.swap(full_logits);
    b.logits.swap(policy_logits);
    KVC_RETURN_IF_ERROR(b.Decode(*decode_policy, n, warmup).status());
    b.logits.swap(policy_logits);
  }
  const int64_t sel0 = combined ? combined->selections() : 0, hit0 = combined ? combined->selection_hits() : 0,
                full0 = combined ? combined->full_steps() : 0;
  std::vector<double> full_rates, policy_rates;
  for (int r = 0; r < rounds; ++r) {
    const int64_t at = n + warmup + static_cast<int64_t>(r) * steps;
    b.logits.swap(full_logits);
    KVC_ASSIGN_OR_RETURN(double f, b.Decode(*full, at, steps));
    b.logits.swap(full_logits);
    b.logits.swap(policy_logits);
    KVC_ASSIGN_OR_RETURN(double p, b.Decode(*decode_policy, at, steps));
    b.logits.swap(policy_logits);
    full_rates.push_back(f);
    policy_rates.push_back(p);
  }
  const double full_tok_s = Median(full_rates), policy_tok_s = Median(policy_rates);
  Row(absl::StrFormat("decode at %lld, full attention", static_cast<long long>(n)),
      absl::StrFormat("%.1f tok/s", full_tok_s), absl::StrFormat("median of %d rounds of %d steps (%s)", rounds, steps, Spread(full_rates)));
  Row(absl::StrFormat("decode at %lld, %s", static_cast<long long>(n), dp.c_str()),
      absl::StrFormat("%.1f tok/s", policy_tok_s),
      absl::StrFormat("%.1fx full attention (%s)", policy_tok_s / full_tok_s, Spread(policy_rates)));
  if (combined != nullptr) {
    const int64_t layer_steps = static_cast<int64_t>(steps) * rounds * b.ckpt->config().n_layers;
    const int64_t sel = combined->selections() - sel0, hit = combined->selection_hits() - hit0,
                  full_steps = combined->full_steps() - full0;
    std::printf("  %lld layer-steps: %lld full steps, %lld selections made, %lld reused (%.0f%% of sparse steps)\n",
                static_cast<long long>(layer_steps), static_cast<long long>(full_steps), static_cast<long long>(sel),
                static_cast<long long>(hit), sel + hit > 0 ? 100.0 * hit / (sel + hit) : 0.0);
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  kvc::TuneAllocatorForLargeBuffers();
  absl::SetProgramUsageMessage(
      "worker_bench: the model runtime's speed targets against dense attention and llama2.c, in one run.\n"
      "  worker_bench [--context=32768] [--prefill_policy=SPEC] [--decode_policy=SPEC] [--rounds=5]\n"
      "               [--decode_steps=64] [--weights=f32|bf16]");
  absl::ParseCommandLine(argc, argv);
  const absl::Status s = Run();
  if (!s.ok()) {
    std::fprintf(stderr, "worker_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
