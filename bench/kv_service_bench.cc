// kv_service_bench: the worker joined to the cache service, end to end, in
// one run (stories15M on this machine's CPU path, kvcached as a child
// process, every transport):
//  - time to first token of a --prompt_tokens prompt (16K) whose prefix the
//    service holds (looked up, fetched and loaded, the last chunk computed),
//    against computing the whole prompt (full attention, dense prefill), and
//    what writing the prompt's blocks through costs that prefill;
//  - the cost of a RefreshKV refresh step at that context with the full
//    context in the service (rehydrated: fetched, then attended) against the
//    same step with it in memory, and against a partial step;
//  - a selecting policy (combined by default) with its values in the service,
//    fetched back when a selection or a full step needs them, against
//    keeping them in memory.
// Results and the exact command: docs/BENCHMARKS.md.
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
#include "absl/strings/str_split.h"
#include "bench/bench_table.h"
#include "bench/bench_kvcached.h"
#include "common/status_macros.h"
#include "worker/cache/policy_factory.h"
#include "worker/cache/combined.h"
#include "worker/cache/refresh_kv.h"
#include "worker/cache/token_select.h"
#include "worker/kv/service_link.h"
#include "worker/model/checkpoint.h"
#include "worker/model/transformer.h"

ABSL_FLAG(std::string, kvcached, "build/cachesvc/server/kvcached", "kvcached binary");
ABSL_FLAG(std::string, model, "third_party/stories15M/model.bin", "llama2.c checkpoint");
ABSL_FLAG(int64_t, prompt_tokens, 16384, "Prompt length (tokens)");
ABSL_FLAG(std::string, transports, "ucx_sm,ucx_tcp,grpc", "Comma-separated: ucx_sm, ucx_tcp, grpc");
ABSL_FLAG(int, block_tokens, 256, "Tokens per KV block in the service");
ABSL_FLAG(int, rounds, 3, "Cached-prefix requests per transport (the median is reported)");
ABSL_FLAG(int, refresh_steps, 5, "Decode steps timed per refresh case (the median is reported)");
ABSL_FLAG(std::string, select_policy, "combined:budget=256",
          "Policy of the fetch-back case (TokenSelect or combined: values in the service, fetched back)");
ABSL_FLAG(int, select_block_tokens, 64, "Tokens per KV block in the fetch-back case");
ABSL_FLAG(int, select_steps, 48, "Decode steps timed in the fetch-back case (the median is reported)");
ABSL_FLAG(std::string, tmp_dir, "/tmp", "Where kvcached's data directory and log go");

namespace kvc::bench {
namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }



struct Bench {
  std::unique_ptr<model::Checkpoint> ckpt;
  std::unique_ptr<model::Transformer> model;
  std::vector<int32_t> prompt;
  std::vector<float> logits;

  const model::ModelConfig& config() const { return ckpt->config(); }

  // Runs prompt[first..] through `cache` (a WriteThroughCache when `seq`).
  absl::Status Prefill(cache::CachePolicy& cache, WriteThroughCache* seq, int64_t first) {
    const auto rest = absl::MakeConstSpan(prompt).subspan(first);
    if (seq != nullptr) seq->AppendTokens(rest);
    return model->Forward(rest, first, cache, logits.data());
  }
  // Seconds per decode step, for `steps` greedy steps.
  absl::StatusOr<std::vector<double>> Decode(cache::CachePolicy& cache, WriteThroughCache* seq, int steps) {
    std::vector<double> times;
    int64_t pos = static_cast<int64_t>(prompt.size());
    for (int s = 0; s < steps; ++s, ++pos) {
      const int32_t next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      if (seq != nullptr) seq->AppendTokens(absl::MakeConstSpan(&next, 1));
      const auto t0 = Clock::now();
      KVC_RETURN_IF_ERROR(model->Forward(absl::MakeConstSpan(&next, 1), pos, cache, logits.data()));
      times.push_back(Since(t0));
    }
    return times;
  }
};

ServiceLinkOptions LinkOptions(const TransportSpec& t, const Kvcached& k) {
  ServiceLinkOptions o;
  o.client = ClientOptionsFor(t, k);
  o.client.ucx.recv_pool_bytes = 256ull << 20;  // a layer's 16K tokens arrive in one Get
  o.sync.tenant = "bench";
  o.sync.model = "stories15M";
  o.sync.block_tokens = absl::GetFlag(FLAGS_block_tokens);
  return o;
}

absl::Status Run() {
  Bench b;
  KVC_ASSIGN_OR_RETURN(b.ckpt, model::Checkpoint::Load(absl::GetFlag(FLAGS_model)));
  model::TransformerOptions mo;
  mo.max_chunk = 256;
  KVC_ASSIGN_OR_RETURN(b.model, model::Transformer::Create(b.ckpt.get(), mo));
  b.logits.resize(b.config().vocab_size);
  const int64_t n = absl::GetFlag(FLAGS_prompt_tokens);
  if (n < 2 * mo.max_chunk) return absl::InvalidArgumentError("--prompt_tokens must be at least 512");
  for (int64_t i = 0; i < n; ++i) b.prompt.push_back(3 + static_cast<int32_t>((i * 7919) % 31997));
  std::vector<TransportSpec> transports;
  for (absl::string_view t : absl::StrSplit(absl::GetFlag(FLAGS_transports), ',', absl::SkipEmpty())) {
    transports.push_back(SpecFor(std::string(t)));
  }
  KVC_ASSIGN_OR_RETURN(std::unique_ptr<Kvcached> k,
                       Kvcached::Start(absl::GetFlag(FLAGS_kvcached), absl::GetFlag(FLAGS_tmp_dir)));
  std::printf("# kv_service_bench: stories15M (%s), prompt %lld tokens, blocks of %d tokens (%s KiB of KV per "
              "layer-block)\n# kvcached: %s\n",
              b.config().ToString().c_str(), static_cast<long long>(n), absl::GetFlag(FLAGS_block_tokens),
              absl::StrFormat("%.0f", 2.0 * absl::GetFlag(FLAGS_block_tokens) * b.config().n_kv_heads *
                                          b.config().head_dim() * 4 / 1024)
                  .c_str(),
              k->command().c_str());

  // 1. Computing the prompt: without the service, then writing it through.
  double t_compute = 0;
  {
    KVC_ASSIGN_OR_RETURN(auto full, cache::MakePolicy(b.config(), "full"));
    const auto t0 = Clock::now();
    KVC_RETURN_IF_ERROR(b.Prefill(*full, nullptr, 0));
    t_compute = Since(t0);
    Row(absl::StrFormat("first token, %lld-token prompt computed (full attention)", static_cast<long long>(n)),
        absl::StrFormat("%.0f ms", t_compute * 1e3), "");
  }
  {
    KVC_ASSIGN_OR_RETURN(auto link, ServiceLink::Start(LinkOptions(transports.front(), *k)));
    KVC_ASSIGN_OR_RETURN(auto seq, link->Attach(b.config(), *cache::MakePolicy(b.config(), "full")));
    const auto t0 = Clock::now();
    KVC_RETURN_IF_ERROR(b.Prefill(*seq, seq.get(), 0));
    const double t_wt = Since(t0);
    KVC_RETURN_IF_ERROR(link->writer().Flush(absl::Seconds(120)));
    const double t_stored = Since(t0);
    const BlockWriterStats ws = link->writer().stats();
    Row("  same, writing its blocks through (" + transports.front().name + ")",
        absl::StrFormat("%.0f ms", t_wt * 1e3),
        absl::StrFormat("%.2fx compute; all %llu blocks (%.0f MiB) stored after %.0f ms", t_wt / t_compute,
                        static_cast<unsigned long long>(ws.stored), ws.stored_bytes / 1048576.0, t_stored * 1e3));
  }

  // 2. The prefix cached: lookup, then the last chunk computed while each
  // layer's blocks stream in. And, apart, the fetch alone: every layer's
  // blocks fetched, checked and loaded before any compute.
  for (const TransportSpec& t : transports) {
    KVC_ASSIGN_OR_RETURN(auto link, ServiceLink::Start(LinkOptions(t, *k)));
    std::vector<double> ttft, fetch_s;
    PrefixLoad last;
    for (int r = 0; r < std::max(1, absl::GetFlag(FLAGS_rounds)); ++r) {
      KVC_ASSIGN_OR_RETURN(auto seq, link->Attach(b.config(), *cache::MakePolicy(b.config(), "full")));
      const auto t0 = Clock::now();
      KVC_ASSIGN_OR_RETURN(last, link->LoadPrefix(b.config(), b.prompt, *seq, mo.max_chunk));
      KVC_RETURN_IF_ERROR(b.Prefill(*seq, seq.get(), last.tokens));
      ttft.push_back(Since(t0));
      KVC_ASSIGN_OR_RETURN(auto plain, cache::MakePolicy(b.config(), "full"));
      const auto t1 = Clock::now();
      KVC_ASSIGN_OR_RETURN(PrefixLoad fetched,
                           LoadCachedPrefix(link->client(), link->options().sync, b.config(), b.prompt, *plain,
                                            mo.max_chunk));
      fetch_s.push_back(Since(t1));
      if (fetched.tokens != last.tokens) return absl::InternalError("the synchronous load found another prefix");
    }
    if (link->client().transport() != t.transport) {
      return absl::UnavailableError(t.name + " fell back to " + std::string(link->client().transport()));
    }
    const double tt = Median(ttft), tf = Median(fetch_s);
    Row(absl::StrFormat("first token, prefix cached, %s", t.name), absl::StrFormat("%.0f ms", tt * 1e3),
        absl::StrFormat("%.1fx faster than computing; %lld tokens loaded, %lld computed; fetching alone %.0f ms "
                        "(%.2f GiB/s of KV)",
                        t_compute / tt, static_cast<long long>(last.tokens), static_cast<long long>(n - last.tokens),
                        tf * 1e3, last.bytes / tf / (1 << 30)));
  }

  // 3. RefreshKV at this context: every step a full step (stride 1), with
  // Cf in memory or in the service; and a partial step.
  const int steps = std::max(1, absl::GetFlag(FLAGS_refresh_steps));
  const std::string every_step = "refreshkv:k=256,stride=1,mode=fixed";
  double t_local = 0;
  {
    KVC_ASSIGN_OR_RETURN(auto local, cache::MakePolicy(b.config(), every_step));
    KVC_RETURN_IF_ERROR(b.Prefill(*local, nullptr, 0));
    KVC_ASSIGN_OR_RETURN(std::vector<double> times, b.Decode(*local, nullptr, steps));
    t_local = Median(times);
    Row("refresh step, Cf in memory", absl::StrFormat("%.1f ms", t_local * 1e3),
        absl::StrFormat("all %d layers attend %lld tokens", b.config().n_layers, static_cast<long long>(n)));
    KVC_ASSIGN_OR_RETURN(auto partial, cache::MakePolicy(b.config(), "refreshkv:k=256,stride=1000000,mode=fixed"));
    KVC_RETURN_IF_ERROR(b.Prefill(*partial, nullptr, 0));
    KVC_ASSIGN_OR_RETURN(times, b.Decode(*partial, nullptr, steps));
    Row("partial step (the hot set of 256 tokens)", absl::StrFormat("%.1f ms", Median(times) * 1e3),
        absl::StrFormat("%.1fx faster than a refresh step", t_local / Median(times)));
  }
  for (const TransportSpec& t : transports) {
    KVC_ASSIGN_OR_RETURN(auto link, ServiceLink::Start(LinkOptions(t, *k)));
    KVC_ASSIGN_OR_RETURN(auto seq, link->Attach(b.config(), *cache::MakePolicy(b.config(), every_step)));
    if (!seq->offloaded()) return absl::InternalError("refreshkv did not take the cold store");
    KVC_RETURN_IF_ERROR(b.Prefill(*seq, seq.get(), 0));
    KVC_RETURN_IF_ERROR(link->writer().Flush(absl::Seconds(120)));
    KVC_ASSIGN_OR_RETURN(std::vector<double> times, b.Decode(*seq, seq.get(), steps));
    const auto& r = dynamic_cast<const cache::RefreshKv&>(seq->inner());
    const double tr = Median(times);
    Row(absl::StrFormat("refresh step, Cf rehydrated from the service, %s", t.name),
        absl::StrFormat("%.1f ms", tr * 1e3),
        absl::StrFormat("%.2fx the in-memory step; %lld tokens fetched; %s of KV resident (vs all of Cf)",
                        tr / t_local, static_cast<long long>(r.rehydrated_tokens()),
                        absl::StrFormat("%.1f MiB", seq->stats().resident_bytes / 1048576.0)));
  }

  // 4. A selecting policy (the combined one by default) with its values in
  // memory or in the service: the decode step, what it fetches back, and
  // the memory it keeps.
  const std::string select_policy = absl::GetFlag(FLAGS_select_policy);
  const int select_steps = std::max(1, absl::GetFlag(FLAGS_select_steps));
  double t_select = 0;
  {
    KVC_ASSIGN_OR_RETURN(auto local, cache::MakePolicy(b.config(), select_policy));
    KVC_RETURN_IF_ERROR(b.Prefill(*local, nullptr, 0));
    KVC_ASSIGN_OR_RETURN(std::vector<double> times, b.Decode(*local, nullptr, select_steps));
    t_select = Median(times);
    double mean = 0;
    for (const double x : times) mean += x / static_cast<double>(times.size());
    Row(absl::StrFormat("%s decode step, values in memory", select_policy),
        absl::StrFormat("%.1f ms (mean %.1f)", t_select * 1e3, mean * 1e3),
        absl::StrFormat("%.1f MiB of KV resident", local->stats().resident_bytes / 1048576.0));
  }
  for (const TransportSpec& t : transports) {
    ServiceLinkOptions lo = LinkOptions(t, *k);
    lo.sync.block_tokens = absl::GetFlag(FLAGS_select_block_tokens);
    KVC_ASSIGN_OR_RETURN(auto link, ServiceLink::Start(lo));
    KVC_ASSIGN_OR_RETURN(auto seq, link->Attach(b.config(), *cache::MakePolicy(b.config(), select_policy)));
    if (!seq->offloaded()) return absl::InternalError(absl::StrCat(select_policy, " did not take the cold store"));
    KVC_RETURN_IF_ERROR(b.Prefill(*seq, seq.get(), 0));
    KVC_RETURN_IF_ERROR(link->writer().Flush(absl::Seconds(120)));
    KVC_ASSIGN_OR_RETURN(std::vector<double> times, b.Decode(*seq, seq.get(), select_steps));
    cache::ColdValueStats cold;
    int64_t full_steps = 0;
    if (auto* c = dynamic_cast<cache::Combined*>(&seq->inner())) {
      cold = c->cold_stats();
      full_steps = c->full_steps();
    } else if (auto* ts = dynamic_cast<cache::TokenSelectPolicy*>(&seq->inner())) {
      cold = ts->cold_stats();
    }
    std::sort(times.begin(), times.end());
    const double tm = Median(times);
    double mean = 0;
    for (const double x : times) mean += x / static_cast<double>(times.size());
    Row(absl::StrFormat("%s decode step, values fetched back, %s", select_policy, t.name),
        absl::StrFormat("%.1f ms (mean %.1f, p90 %.1f)", tm * 1e3, mean * 1e3, times[times.size() * 9 / 10] * 1e3),
        absl::StrFormat("%.2fx in memory; %.1f blocks of %d fetched per step (%lld full steps of %lld layer-steps); "
                        "%.1f MiB of KV resident",
                        tm / t_select, static_cast<double>(cold.fetched_blocks) / select_steps,
                        lo.sync.block_tokens, static_cast<long long>(full_steps),
                        static_cast<long long>(select_steps) * b.config().n_layers,
                        seq->stats().resident_bytes / 1048576.0));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace kvc::bench

int main(int argc, char** argv) {
  return kvc::bench::BenchMain(
      argc, argv, "kv_service_bench",
      "time to first token with a cached prefix and the cost of a refresh step, against a "
      "kvcached child.\n  kv_service_bench [--prompt_tokens=16384] [--transports=ucx_sm,ucx_tcp,grpc] "
      "[--block_tokens=256]",
      &kvc::bench::Run);
}
