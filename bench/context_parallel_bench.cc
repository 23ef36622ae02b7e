// context_parallel_bench: one sequence's context split over shard servers
// (worker/peer/), against the same TokenSelect on one worker, in one run
// (stories15M, this machine's CPU path; the shards run in this process,
// over UCX on loopback tcp):
//  - the decode step, one worker vs split, and whether their logits agree;
//  - the bytes moved per step (fingerprints, lse, candidate sets) against
//    the KV the shards hold, which moving the shards each step would cost.
// Results and the exact command: docs/BENCHMARKS.md.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/bench_table.h"
#include "common/progress.h"
#include "common/status_macros.h"
#include "worker/cache/token_select.h"
#include "worker/model/checkpoint.h"
#include "worker/model/transformer.h"
#include "worker/peer/context_parallel.h"
#include "worker/peer/context_shard.h"

ABSL_FLAG(std::string, model, "third_party/stories15M/model.bin", "llama2.c checkpoint");
ABSL_FLAG(int64_t, context, 16384, "Context length (tokens) before decoding");
ABSL_FLAG(int, shards, 2, "Shard servers");
ABSL_FLAG(int64_t, local_tokens, 4096, "Tokens the owner keeps per layer before moving a range out");
ABSL_FLAG(int64_t, range_tokens, 2048, "Tokens per range moved to a shard");
ABSL_FLAG(int64_t, lse_block, 1024,
          "TokenSelect's normaliser block (both runs); the ranges are whole blocks");
ABSL_FLAG(int, k, 128, "TokenSelect: tokens selected per step");
ABSL_FLAG(int, steps, 32, "Decode steps timed (the median is reported)");
ABSL_FLAG(std::string, ucx_tls, "tcp", "UCX transports between owner and shards");

namespace kvc::bench {
namespace {

using Clock = std::chrono::steady_clock;



absl::Status Run() {
  KVC_ASSIGN_OR_RETURN(std::unique_ptr<model::Checkpoint> ckpt, model::Checkpoint::Load(absl::GetFlag(FLAGS_model)));
  KVC_ASSIGN_OR_RETURN(std::unique_ptr<model::Transformer> m, model::Transformer::Create(ckpt.get(), {}));
  const model::ModelConfig& config = ckpt->config();
  const int64_t n = absl::GetFlag(FLAGS_context);
  std::vector<int32_t> prompt;
  for (int64_t i = 0; i < n; ++i) prompt.push_back(3 + static_cast<int32_t>((i * 7919) % 31997));

  ucx::UcxOptions ucx;
  ucx.tls = absl::GetFlag(FLAGS_ucx_tls);
  ucx.net_devices = "lo";
  std::vector<std::unique_ptr<peer::ContextShardServer>> servers;
  std::vector<std::string> addresses;
  for (int i = 0; i < absl::GetFlag(FLAGS_shards); ++i) {
    peer::ContextShardOptions so;
    so.rpc.ucx = ucx;
    so.max_bytes = 64ull << 30;
    KVC_ASSIGN_OR_RETURN(auto s, peer::ContextShardServer::Start(so));
    addresses.push_back(absl::StrCat("127.0.0.1:", s->port()));
    servers.push_back(std::move(s));
  }
  KVC_ASSIGN_OR_RETURN(auto peers, peer::ConnectPeers(addresses, ucx, absl::Seconds(30)));
  peer::ContextParallelOptions o;
  o.select.k = absl::GetFlag(FLAGS_k);
  o.select.n_local = 32;
  o.select.n_init = 4;
  o.select.theta = 1.0f;  // a selection every step: the communication each step costs
  o.local_tokens = absl::GetFlag(FLAGS_local_tokens);
  o.range_tokens = absl::GetFlag(FLAGS_range_tokens);
  o.select.lse_block = absl::GetFlag(FLAGS_lse_block);
  KVC_ASSIGN_OR_RETURN(auto split, peer::ContextParallelTokenSelect::Create(config, o, peers));
  KVC_ASSIGN_OR_RETURN(auto whole, cache::TokenSelectPolicy::Create(config, o.select));
  std::printf("# context_parallel_bench: stories15M, %lld-token context, %d shards (ucx %s on lo), k=%d, "
              "owner keeps %lld tokens, ranges of %lld\n",
              static_cast<long long>(n), absl::GetFlag(FLAGS_shards), ucx.tls.c_str(), o.select.k,
              static_cast<long long>(o.local_tokens), static_cast<long long>(o.range_tokens));

  std::vector<float> a(config.vocab_size), b(config.vocab_size);
  auto t0 = Clock::now();
  KVC_RETURN_IF_ERROR(m->Forward(prompt, 0, *whole, b.data()));
  const double prefill_whole = std::chrono::duration<double>(Clock::now() - t0).count();
  t0 = Clock::now();
  KVC_RETURN_IF_ERROR(m->Forward(prompt, 0, *split, a.data()));
  const double prefill_split = std::chrono::duration<double>(Clock::now() - t0).count();
  Row("prefill, one worker", absl::StrFormat("%.2f s", prefill_whole), "");
  Row("prefill, split", absl::StrFormat("%.2f s", prefill_split),
      absl::StrFormat("%.2fx one worker (ranges move out as the context grows)", prefill_split / prefill_whole));

  const int steps = std::max(1, absl::GetFlag(FLAGS_steps));
  std::vector<double> t_whole, t_split, bytes;
  const auto max_diff = [&] {
    float d = 0;
    for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(a[i] - b[i]));
    return d;
  };
  bool identical = a == b;
  float worst = max_diff();
  int64_t prefill_differing = 0;
  for (int32_t l = 0; l < config.n_layers; ++l) prefill_differing += split->selection(l) != whole->selection(l) ? 1 : 0;
  Row("prefill logits", identical ? "identical" : absl::StrFormat("differ by %.3g", worst),
      absl::StrFormat("%lld layers' last selections differ", static_cast<long long>(prefill_differing)));
  int64_t differing = 0;
  std::vector<int32_t> tokens = prompt;
  kvc::ProgressBar progress("decode", static_cast<uint64_t>(steps), "steps");
  for (int s = 0; s < steps; ++s) {
    tokens.push_back(static_cast<int32_t>(std::max_element(b.begin(), b.end()) - b.begin()));
    const int64_t pos = static_cast<int64_t>(tokens.size()) - 1;
    t0 = Clock::now();
    KVC_RETURN_IF_ERROR(m->Forward(absl::MakeConstSpan(&tokens.back(), 1), pos, *whole, b.data()));
    t_whole.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    t0 = Clock::now();
    KVC_RETURN_IF_ERROR(m->Forward(absl::MakeConstSpan(&tokens.back(), 1), pos, *split, a.data()));
    t_split.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    bytes.push_back(static_cast<double>(split->last_step_bytes()));
    identical = identical && a == b;
    for (int32_t l = 0; l < config.n_layers; ++l) differing += split->selection(l) != whole->selection(l) ? 1 : 0;
    worst = std::max(worst, max_diff());
    progress.Add(1);
  }
  progress.Finish();
  const double tw = Median(t_whole), ts = Median(t_split), moved = Median(bytes);
  const double shard_bytes = static_cast<double>(split->remote_kv_bytes());
  Row("decode step, one worker", absl::StrFormat("%.2f ms", tw * 1e3), "");
  Row("decode step, split", absl::StrFormat("%.2f ms", ts * 1e3),
      absl::StrFormat("%.2fx one worker; logits %s", ts / tw,
                      identical ? "identical at every step"
                                : absl::StrFormat("differ (largest logit difference %.3g; %lld of %lld layer "
                                                  "selections differ)",
                                                  worst, static_cast<long long>(differing),
                                                  static_cast<long long>(steps) * config.n_layers)
                                      .c_str()));
  Row("bytes moved per step (all layers)", absl::StrFormat("%.1f KiB", moved / 1024),
      absl::StrFormat("vs %.1f MiB of KV on the shards: %.0fx less than moving them", shard_bytes / 1048576.0,
                      shard_bytes / std::max(1.0, moved)));
  return absl::OkStatus();
}

}  // namespace
}  // namespace kvc::bench

int main(int argc, char** argv) {
  return kvc::bench::BenchMain(
      argc, argv, "context_parallel_bench",
      "TokenSelect with the context split over shard servers vs one worker.\n"
      "  context_parallel_bench [--context=16384 --shards=2 --k=128 --steps=32]",
      &kvc::bench::Run);
}
