// kvc-worker: the model runtime with a chosen cache policy.
//
//   kvc-worker generate   --prompt="Once upon a time" --policy=cascading:budget=128
//   kvc-worker serve      --listen_address=0.0.0.0:50061 --cache_service=HOST:PORT   (kvcache.v1.Worker over gRPC)
//   kvc-worker ask        --worker=HOST:PORT --prompt="Once upon a time"
//   kvc-worker perplexity --text=moby --tokens=8192 --policies="full;streaming;cascading" --budgets=64,128,256
//   kvc-worker passkey    --filler=1024,4096 --trials=20 --policies="streaming;cascading" --budgets=128
//   kvc-worker speed      --contexts=1024,8192,32768 --policies="full;cascading" --budgets=256
//   kvc-worker less-train --text=generated --seed=7 --tokens=4096 --less_policy=cascading:budget=64 --out=FILE
//
// Policies are separated by ';' (a spec has commas: see
// worker/cache/policy_factory.h); each policy other than "full" runs once
// per --budgets entry with budget=B appended.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/time/time.h"
#include "kvcache/v1/worker.grpc.pb.h"
#include <grpcpp/grpcpp.h>
#include <prometheus/exposer.h>
#include <prometheus/registry.h>
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/allocator.h"
#include "common/help_flags.h"
#include "common/progress.h"
#include "common/status_macros.h"
#include "kernels/thread_pool.h"
#include "worker/cache/device_full_attention.h"
#include "worker/cache/policy_factory.h"
#include "worker/cache/token_select.h"
#include "worker/eval/passkey.h"
#include "worker/kv/service_link.h"
#include "worker/eval/less_samples.h"
#include "worker/eval/less_train.h"
#include "worker/eval/perplexity.h"
#include "worker/model/checkpoint.h"
#include "worker/model/sampler.h"
#include "worker/model/tokenizer.h"
#include "worker/model/transformer.h"
#include "worker/peer/context_parallel.h"
#include "worker/serve/sequence.h"
#include "worker/serve/worker_service.h"

ABSL_FLAG(std::string, model, "third_party/stories15M/model.bin", "llama2.c checkpoint");
ABSL_FLAG(std::string, tokenizer, "third_party/stories15M/tokenizer.bin", "llama2.c tokenizer");
ABSL_FLAG(std::string, weights, "f32", "Weight type in the runtime: f32 or bf16");
ABSL_FLAG(int, threads, 0, "CPU threads (0 = all cores, or $KVC_KERNEL_THREADS)");
ABSL_FLAG(std::string, backend, "cpu",
          "cpu, or cuda: weights and activations on the GPU; policy 'full' then keeps its KV there too, any "
          "other policy attends on the CPU with host copies of q, k, v");
ABSL_FLAG(std::string, policy, "full", "generate: the cache policy spec");
ABSL_FLAG(std::string, policies, "full;streaming;cascading", "Policy specs separated by ';'");
ABSL_FLAG(std::string, budgets, "64,128,256", "KV budgets (tokens per layer) for every policy but full");
ABSL_FLAG(std::string, prompt, "Once upon a time", "generate: the prompt");
ABSL_FLAG(int, steps, 256, "generate: tokens to generate");
ABSL_FLAG(double, temperature, 0.0, "generate: 0 = greedy");
ABSL_FLAG(double, top_p, 0.9, "generate: nucleus sampling mass");
ABSL_FLAG(uint64_t, seed, 1, "Sampling / trial seed");
ABSL_FLAG(std::string, text, "moby",
          "perplexity: 'moby' (third_party/moby_dick/moby_dick.txt), 'generated' (stories the model writes), "
          "or a file path");
ABSL_FLAG(std::string, moby, "third_party/moby_dick/moby_dick.txt", "The Moby Dick text");
ABSL_FLAG(int64_t, tokens, 8192, "perplexity: tokens of text to read");
ABSL_FLAG(int, stride, 16, "Tokens per forward pass while reading a long input");
ABSL_FLAG(int64_t, segment, 1024, "perplexity: tokens per reported segment");
ABSL_FLAG(std::string, filler, "1024,4096", "passkey: filler lengths in tokens");
ABSL_FLAG(int, trials, 20, "passkey: trials (seeds) per length and policy");
ABSL_FLAG(int, decode_tail, 0,
          "passkey: the prompt's last N tokens are read one at a time as decode steps (SnapKV compresses "
          "after its prompt, Quest and RefreshKV act on decode steps only)");
ABSL_FLAG(std::string, contexts, "1024,8192,32768", "speed: context lengths");
ABSL_FLAG(int, decode_steps, 32, "speed: decode steps timed at each context");
ABSL_FLAG(std::string, less_policy, "cascading:budget=64", "less-train: the eviction policy whose evictions are folded");
ABSL_FLAG(std::string, less_reference, "",
          "less-train: a policy spec whose attention LESS is trained to reproduce; empty = the eviction policy's "
          "attention joined with its evicted tokens within --less_horizon");
ABSL_FLAG(int, less_horizon, 0, "less-train: evicted tokens farther than this are not in the target (0 = seq_len)");
ABSL_FLAG(std::string, less_driver, "", "less-train: the policy driving the model (empty = --less_policy)");
ABSL_FLAG(std::string, less_init, "", "less-train: start from this kernels file (--less_steps=0 measures it)");
ABSL_FLAG(int, less_streams, 3, "less-train: streams of --tokens tokens to fit on");
ABSL_FLAG(int, less_validation_streams, 1, "less-train: further streams that choose the step (early stopping)");
ABSL_FLAG(int, less_rank, 8, "less-train: features per map (R)");
ABSL_FLAG(int, less_hidden, 0, "less-train: hidden GELU units per map (0 = linear map + activation)");
ABSL_FLAG(std::string, less_activation, "exp", "less-train: the maps' activation, exp or elu");
ABSL_FLAG(int, less_steps, 200, "less-train: full-batch Adam steps per layer");
ABSL_FLAG(double, less_lr, 0.02, "less-train: Adam learning rate");
ABSL_FLAG(std::string, out, "less_kernels.bin", "less-train: the kernels file to write");
ABSL_FLAG(std::string, cache_service, "",
          "generate: the cache service's gRPC address: host:port, or a cluster as h1:p1,h2:p2 or dns:///name:port "
          "(every A/AAAA record a member, e.g. a headless Service; re-resolved while running). The sequence's KV "
          "is written through to it, its prompt's cached prefix is loaded, and RefreshKV keeps its full context "
          "there. \"\" = none");
ABSL_FLAG(std::string, cache_ucx, "",
          "generate: the cache service's UCX address (host:port) for bulk KV, with one --cache_service member");
ABSL_FLAG(int, cache_ucx_port, 0,
          "generate: the UCX port of every cache-service member (same host as its gRPC address); 0 = gRPC only "
          "(or --cache_ucx)");
ABSL_FLAG(int, cache_replicas, 1,
          "generate, cluster: copies of each block written with --cache_write_through_disk (1 or 2); other blocks "
          "are written once");
ABSL_FLAG(int, cache_member_timeout_ms, 2000,
          "generate, cluster: bound on every call to one member; a member that fails or exceeds it is skipped "
          "(its blocks are misses) for --cache_member_backoff_ms");
ABSL_FLAG(int, cache_member_backoff_ms, 5000, "generate, cluster: how long a failed member is skipped");
ABSL_FLAG(bool, cache_write_through_disk, false,
          "generate: the service syncs each written block to disk before acknowledging it (durable)");
ABSL_FLAG(std::string, transport, "auto", "generate: ucx, grpc, or auto (UCX when --cache_ucx answers, else gRPC)");
ABSL_FLAG(std::string, ucx_tls, "", "generate: UCX transports of the client (UCX_TLS), e.g. sm or tcp");
ABSL_FLAG(std::string, ucx_net_devices, "", "generate: UCX network devices of the client (UCX_NET_DEVICES), e.g. lo");
ABSL_FLAG(std::string, cache_token, "", "generate: bearer token for the cache service (\"\" when it runs without auth)");
ABSL_FLAG(std::string, cache_tls_ca_file, "",
          "generate: PEM file of the root certificate(s) that sign the cache service's gRPC certificate; set, the "
          "worker speaks TLS to every member (kvcached --tls_cert_file). The UCX data plane is not encrypted");
ABSL_FLAG(std::string, cache_tls_server_name, "",
          "generate, with --cache_tls_ca_file: the name to check the certificate against instead of the host in "
          "--cache_service");
ABSL_FLAG(std::string, cache_tenant, "default", "generate: tenant of the sequence's blocks (the token's tenant)");
ABSL_FLAG(std::string, cache_model, "stories15M", "generate: model id of the sequence's blocks");
ABSL_FLAG(int, block_tokens, 64, "generate: tokens per KV block in the cache service");
ABSL_FLAG(bool, prefix_reuse, true, "generate: load the prompt's cached prefix instead of computing it");
ABSL_FLAG(bool, prefix_exact, true,
          "generate: load whole prefill chunks only (256 tokens), so the logits are bit for bit those of computing "
          "the prompt; false loads every cached block (the rest runs in other chunks: equal within fp32 rounding)");
ABSL_FLAG(std::string, context_peers, "",
          "generate: kvc-shard addresses (host:port,...) to spread the context over (context parallelism; the "
          "policy must be tokenselect, whose lse_block defaults to --context_range_tokens here)");
ABSL_FLAG(int64_t, context_local_tokens, 8192,
          "generate, with --context_peers: tokens a layer keeps locally before its oldest range moves to a peer");
ABSL_FLAG(int64_t, context_range_tokens, 4096, "generate, with --context_peers: tokens per range moved to a peer");
ABSL_FLAG(std::string, listen_address, "0.0.0.0:50061", "serve: host:port of the kvcache.v1.Worker gRPC service");
ABSL_FLAG(int, max_queued, 8, "serve: requests that may wait for the model beside the running one (more: RESOURCE_EXHAUSTED)");
ABSL_FLAG(int, max_tokens_limit, 4096, "serve: the most tokens one request may ask for (--steps is the default)");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(30),
          "serve: on SIGTERM, how long admitted requests may still run (then they are cancelled)");
ABSL_FLAG(std::string, worker, "127.0.0.1:50061", "ask: host:port of a kvc-worker serve");
ABSL_FLAG(bool, wait_for_write_through, false,
          "ask: the worker answers last once the cache service stored this request's blocks (so the next request "
          "finds its prefix)");
ABSL_FLAG(std::string, metrics_address, "", "generate, serve: serve Prometheus /metrics here (host:port) while running");

namespace {

using kvc::cache::CachePolicy;
using kvc::model::Checkpoint;
using kvc::model::Tokenizer;
using kvc::model::Transformer;

constexpr char kUsage[] = R"(run the model with a KV cache policy.

  kvc-worker generate   [--prompt=TEXT --steps=N --temperature=T --top_p=P --policy=SPEC --backend=cpu|cuda]
                        [--cache_service=HOST:PORT --cache_ucx=HOST:PORT --transport=auto|ucx|grpc --cache_token=T]
                        [--cache_service=H1:P1,H2:P2|dns:///NAME:PORT --cache_ucx_port=P --cache_replicas=1|2
                         --cache_member_timeout_ms=2000 --cache_write_through_disk]
                        [--context_peers=H1:P1,H2:P2 --context_local_tokens=8192 --context_range_tokens=4096]
  kvc-worker serve      [--listen_address=0.0.0.0:50061 --policy=SPEC --steps=N(default max tokens) --max_queued=8
                         --max_tokens_limit=4096 --shutdown_grace=30s --metrics_address=HOST:PORT] [cache flags as generate]
  kvc-worker ask        [--worker=HOST:PORT --prompt=TEXT --steps=N --temperature=T --top_p=P --seed=S --wait_for_write_through]
  kvc-worker perplexity [--text=moby|generated|FILE --tokens=N --policies=A;B --budgets=64,128 --stride=16]
  kvc-worker passkey    [--filler=1024,4096 --trials=20 --policies=A;B --budgets=...]
  kvc-worker speed      [--contexts=1024,8192,32768 --policies=A;B --budgets=...]
  kvc-worker less-train [--text=... --tokens=N --less_policy=SPEC --less_reference=SPEC --less_driver=SPEC --less_init=FILE --less_rank=8
                         --less_hidden=0 --less_steps=200 --out=FILE]  (then less:inner=...,kernels=FILE)

Policy specs (worker/cache/policy_factory.h): full | streaming | cascading | tokenselect | h2o | snapkv |
quest | refreshkv | combined | less:inner=cascading|h2o|streaming, each with key=value options, e.g.
cascading:sinks=4,subcaches=8,beta=0.999; budget=B sizes each policy to B tokens of KV per layer. The model and tokenizer default to the
stories15M files scripts/setup.sh fetches (run from the repository root).)";

struct Runtime {
  std::unique_ptr<Checkpoint> checkpoint;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<kvc::kernels::ThreadPool> pool;
  std::unique_ptr<Transformer> model;
};

absl::StatusOr<Runtime> LoadRuntime() {
  Runtime r;
  KVC_ASSIGN_OR_RETURN(r.checkpoint, Checkpoint::Load(absl::GetFlag(FLAGS_model)));
  KVC_ASSIGN_OR_RETURN(Tokenizer tok,
                       Tokenizer::Load(absl::GetFlag(FLAGS_tokenizer), r.checkpoint->config().vocab_size));
  r.tokenizer = std::make_unique<Tokenizer>(std::move(tok));
  kvc::model::TransformerOptions o;
  if (absl::GetFlag(FLAGS_threads) > 0) {
    r.pool = std::make_unique<kvc::kernels::ThreadPool>(absl::GetFlag(FLAGS_threads));
    o.ctx.pool = r.pool.get();
  }
  const std::string w = absl::GetFlag(FLAGS_weights);
  if (w != "f32" && w != "bf16") return absl::InvalidArgumentError("--weights must be f32 or bf16, got " + w);
  o.weights = w == "bf16" ? kvc::kernels::DType::kBF16 : kvc::kernels::DType::kF32;
  o.max_chunk = 256;
  const std::string backend = absl::GetFlag(FLAGS_backend);
  if (backend != "cpu" && backend != "cuda") return absl::InvalidArgumentError("--backend must be cpu or cuda, got " + backend);
  if (backend == "cuda") o.ctx.backend = kvc::kernels::Backend::kCuda;
  KVC_ASSIGN_OR_RETURN(r.model, Transformer::Create(r.checkpoint.get(), o));
  return r;
}

// The policy specs of --policies x --budgets.
absl::StatusOr<std::vector<std::string>> PolicySpecs() {
  std::vector<int64_t> budgets;
  for (absl::string_view b : absl::StrSplit(absl::GetFlag(FLAGS_budgets), ',', absl::SkipEmpty())) {
    int64_t v;
    if (!absl::SimpleAtoi(b, &v) || v < 1) return absl::InvalidArgumentError(absl::StrCat("--budgets: bad value ", b));
    budgets.push_back(v);
  }
  std::vector<std::string> specs;
  for (absl::string_view p : absl::StrSplit(absl::GetFlag(FLAGS_policies), ';', absl::SkipEmpty())) {
    const std::string spec(p);
    if (spec == "full" || spec.rfind("full:", 0) == 0 || budgets.empty() || spec.find("window=") != std::string::npos) {
      specs.push_back(spec);
      continue;
    }
    for (int64_t b : budgets) {
      specs.push_back(absl::StrCat(spec, spec.find(':') == std::string::npos ? ":" : ",", "budget=", b));
    }
  }
  if (specs.empty()) return absl::InvalidArgumentError("--policies is empty");
  return specs;
}

absl::StatusOr<std::vector<int64_t>> IntList(const std::string& flag, const std::string& text) {
  std::vector<int64_t> out;
  for (absl::string_view s : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int64_t v;
    if (!absl::SimpleAtoi(s, &v) || v < 1) return absl::InvalidArgumentError(absl::StrCat("--", flag, ": bad value ", s));
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, " is empty"));
  return out;
}

std::string Bytes(size_t b) {
  if (b >= (1u << 20)) return absl::StrFormat("%.1f MiB", b / 1048576.0);
  return absl::StrFormat("%.1f KiB", b / 1024.0);
}

// Stories the model writes itself (temperature 1, top-p 0.9), joined,
// until `tokens` tokens.
absl::StatusOr<std::vector<int32_t>> GeneratedText(Runtime& r, int64_t tokens,
                                                   uint64_t seed = absl::GetFlag(FLAGS_seed)) {
  std::vector<int32_t> out;
  kvc::model::SamplerOptions so;
  so.temperature = 1.0f;
  so.top_p = 0.9f;
  so.seed = seed;
  kvc::model::Sampler sampler(so);
  const int32_t vocab = r.model->config().vocab_size, window = r.model->config().seq_len;
  std::vector<float> logits(vocab);
  kvc::ProgressBar bar("generating stories", tokens, "tokens");
  while (static_cast<int64_t>(out.size()) < tokens) {
    KVC_ASSIGN_OR_RETURN(auto policy, kvc::cache::MakePolicy(r.model->config(), "full"));
    int32_t token = 1;  // BOS
    for (int32_t pos = 0; pos < window && static_cast<int64_t>(out.size()) < tokens; ++pos) {
      KVC_RETURN_IF_ERROR(r.model->Forward(absl::MakeConstSpan(&token, 1), pos, *policy, logits.data()));
      token = sampler.Sample(logits);
      if (token == 1 || token == 2) break;  // the story ended
      out.push_back(token);
      bar.Add(1);
    }
  }
  bar.Finish();
  return out;
}

// --text, `count` streams of --tokens tokens: for generated text with seeds
// --seed, --seed + 1, ...; for a file its consecutive parts.
absl::StatusOr<std::vector<std::vector<int32_t>>> TextStreams(Runtime& r, int count);

absl::StatusOr<std::vector<int32_t>> TextTokens(Runtime& r) {
  KVC_ASSIGN_OR_RETURN(auto streams, TextStreams(r, 1));
  return std::move(streams[0]);
}

absl::StatusOr<std::vector<std::vector<int32_t>>> TextStreams(Runtime& r, int count) {
  const std::string text = absl::GetFlag(FLAGS_text);
  const int64_t tokens = absl::GetFlag(FLAGS_tokens);
  std::vector<std::vector<int32_t>> streams;
  if (text == "generated") {
    for (int i = 0; i < count; ++i) {
      KVC_ASSIGN_OR_RETURN(std::vector<int32_t> s, GeneratedText(r, tokens, absl::GetFlag(FLAGS_seed) + i));
      streams.push_back(std::move(s));
    }
    return streams;
  }
  const std::string path = text == "moby" ? absl::GetFlag(FLAGS_moby) : text;
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read text ", path, " (scripts/setup.sh fetches moby)"));
  std::stringstream ss;
  ss << in.rdbuf();
  std::vector<int32_t> ids = r.tokenizer->Encode(ss.str(), /*bos=*/true, /*eos=*/false);
  if (static_cast<int64_t>(ids.size()) < tokens * count) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " has ", ids.size(), " tokens, fewer than ", count, " x --tokens=", tokens));
  }
  for (int i = 0; i < count; ++i) streams.emplace_back(ids.begin() + i * tokens, ids.begin() + (i + 1) * tokens);
  return streams;
}

// The cache-service link of --cache_service and the flags around it.
absl::StatusOr<kvc::ServiceLinkOptions> LinkOptionsFromFlags() {
  kvc::ServiceLinkOptions lo;
  lo.client.transport = absl::GetFlag(FLAGS_transport);
  lo.client.grpc.address = absl::GetFlag(FLAGS_cache_service);
  lo.client.grpc.token = absl::GetFlag(FLAGS_cache_token);
  lo.client.grpc.timeout = absl::Seconds(10);
  if (const std::string ca = absl::GetFlag(FLAGS_cache_tls_ca_file); !ca.empty()) {
    std::ifstream in(ca);
    std::stringstream pem;
    pem << in.rdbuf();
    if (!in || pem.str().find("-----BEGIN CERTIFICATE-----") == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("--cache_tls_ca_file: '", ca, "' cannot be read or holds no PEM certificate"));
    }
    lo.client.grpc.tls_root_certs_pem = pem.str();
    lo.client.grpc.tls_server_name = absl::GetFlag(FLAGS_cache_tls_server_name);
  } else if (!absl::GetFlag(FLAGS_cache_tls_server_name).empty()) {
    return absl::InvalidArgumentError("--cache_tls_server_name needs --cache_tls_ca_file");
  }
  lo.client.ucx.address = absl::GetFlag(FLAGS_cache_ucx);
  lo.client.ucx.ucx.tls = absl::GetFlag(FLAGS_ucx_tls);
  lo.client.ucx.ucx.net_devices = absl::GetFlag(FLAGS_ucx_net_devices);
  lo.client.ucx.timeout = absl::Seconds(10);
  // Several members: blocks placed over them by rendezvous hashing (worker/kv/cluster_block_client.h).
  KVC_ASSIGN_OR_RETURN(lo.cluster, kvc::ParseClusterTarget(absl::GetFlag(FLAGS_cache_service)));
  lo.cluster.ucx_port = absl::GetFlag(FLAGS_cache_ucx_port);
  lo.cluster.replicas = absl::GetFlag(FLAGS_cache_replicas);
  lo.cluster.member_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_cache_member_timeout_ms));
  lo.cluster.down_backoff = absl::Milliseconds(absl::GetFlag(FLAGS_cache_member_backoff_ms));
  if (!lo.cluster.single() && !lo.client.ucx.address.empty()) {
    return absl::InvalidArgumentError(
        "--cache_ucx is one member's UCX address; with several members give --cache_ucx_port");
  }
  lo.writer.write_through_disk = absl::GetFlag(FLAGS_cache_write_through_disk);
  lo.sync.tenant = absl::GetFlag(FLAGS_cache_tenant);
  lo.sync.model = absl::GetFlag(FLAGS_cache_model);
  lo.sync.block_tokens = absl::GetFlag(FLAGS_block_tokens);
  lo.prefix_reuse = absl::GetFlag(FLAGS_prefix_reuse);
  lo.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  return lo;
}

absl::Status Generate() {
  KVC_ASSIGN_OR_RETURN(Runtime r, LoadRuntime());
  kvc::model::SamplerOptions so;
  so.temperature = static_cast<float>(absl::GetFlag(FLAGS_temperature));
  so.top_p = static_cast<float>(absl::GetFlag(FLAGS_top_p));
  so.seed = absl::GetFlag(FLAGS_seed);
  KVC_RETURN_IF_ERROR(so.Validate());
  const std::vector<int32_t> prompt = r.tokenizer->Encode(absl::GetFlag(FLAGS_prompt), true, false);
  std::unique_ptr<kvc::cache::CachePolicy> policy;
  if (absl::GetFlag(FLAGS_policy) == "full" && r.model->options().ctx.backend == kvc::kernels::Backend::kCuda) {
    // Full attention with its KV on the device, sized for the whole run.
    KVC_ASSIGN_OR_RETURN(policy, kvc::cache::DeviceFullAttention::Create(
                                     r.model->config(), static_cast<int64_t>(prompt.size()) + absl::GetFlag(FLAGS_steps) + 1));
  } else {
    KVC_ASSIGN_OR_RETURN(policy, kvc::cache::MakePolicy(r.model->config(), absl::GetFlag(FLAGS_policy)));
  }
  if (const std::string peers = absl::GetFlag(FLAGS_context_peers); !peers.empty()) {
    // The context spread over kvc-shard peers (worker/peer/context_parallel.h).
    const auto* ts = dynamic_cast<const kvc::cache::TokenSelectPolicy*>(policy.get());
    if (ts == nullptr) return absl::InvalidArgumentError("--context_peers needs --policy=tokenselect:...");
    kvc::peer::ContextParallelOptions co;
    co.select = ts->options();
    co.local_tokens = absl::GetFlag(FLAGS_context_local_tokens);
    co.range_tokens = absl::GetFlag(FLAGS_context_range_tokens);
    if (co.select.lse_block == 0) co.select.lse_block = co.range_tokens;
    kvc::ucx::UcxOptions ucx;
    ucx.tls = absl::GetFlag(FLAGS_ucx_tls);
    ucx.net_devices = absl::GetFlag(FLAGS_ucx_net_devices);
    KVC_ASSIGN_OR_RETURN(auto clients, kvc::peer::ConnectPeers(absl::StrSplit(peers, ','), ucx, absl::Seconds(30)));
    KVC_ASSIGN_OR_RETURN(policy, kvc::peer::ContextParallelTokenSelect::Create(r.model->config(), co, std::move(clients)));
  }
  // With a cache service: write-through, rehydration, the cached prefix.
  std::unique_ptr<kvc::ServiceLink> link;
  if (!absl::GetFlag(FLAGS_cache_service).empty()) {
    KVC_ASSIGN_OR_RETURN(kvc::ServiceLinkOptions lo, LinkOptionsFromFlags());
    KVC_ASSIGN_OR_RETURN(link, kvc::ServiceLink::Start(lo));
  }
  std::fputs(r.tokenizer->DecodeAll(prompt).c_str(), stdout);
  kvc::serve::SequenceParams sp;
  sp.prompt = prompt;
  sp.max_tokens = absl::GetFlag(FLAGS_steps);
  sp.sampler = so;
  sp.prefix_align = absl::GetFlag(FLAGS_prefix_exact) ? r.model->options().max_chunk : absl::GetFlag(FLAGS_block_tokens);
  // The policy built above; should the cached prefix prove unusable, a fresh one of --policy.
  auto make_policy = [&]() -> absl::StatusOr<std::unique_ptr<kvc::cache::CachePolicy>> {
    if (policy) return std::move(policy);
    return kvc::cache::MakePolicy(r.model->config(), absl::GetFlag(FLAGS_policy));
  };
  KVC_ASSIGN_OR_RETURN(const kvc::serve::SequenceResult res,
                       kvc::serve::RunSequence(*r.model, link.get(), make_policy, sp, [&](int32_t prev, int32_t next) {
                         std::fputs(r.tokenizer->Decode(prev, next).c_str(), stdout);
                         std::fflush(stdout);
                         return true;
                       }));
  if (res.prefix_unusable) std::fprintf(stderr, "\nkvc-worker: cached prefix unusable; the prompt was computed\n");
  std::fprintf(stderr, "\n%d tokens in %.2f s: %.1f tokens/s (policy %s, resident KV %s); first token after %.1f ms\n",
               res.generated, res.decode_seconds, res.generated / std::max(res.decode_seconds, 1e-9), res.policy.c_str(),
               Bytes(res.resident_bytes).c_str(), res.first_token_seconds * 1e3);
  if (link) {
    // Wait for the write-through to finish, but not for a service that is
    // away (degraded): what is queued then is lost with the process.
    const absl::Status flushed =
        link->writer().Flush(link->writer().degraded() ? absl::Seconds(2) : absl::Seconds(30));
    const kvc::BlockWriterStats ws = link->writer().stats();
    std::fprintf(stderr,
                 "cache service (%s): prefix %lld of %zu prompt tokens loaded (%lld blocks per layer); write-through "
                 "stored %llu blocks (%s), dropped %llu, rejected %llu%s%s%s\n",
                 std::string(link->client().transport()).c_str(), static_cast<long long>(res.prefix_tokens), prompt.size(),
                 static_cast<long long>(res.prefix_blocks), static_cast<unsigned long long>(ws.stored),
                 Bytes(ws.stored_bytes).c_str(), static_cast<unsigned long long>(ws.dropped),
                 static_cast<unsigned long long>(ws.rejected), res.offloaded ? "; full context kept in the service" : "",
                 ws.degraded ? "; DEGRADED: the service was unreachable" : "",
                 flushed.ok() ? "" : absl::StrCat("; not flushed: ", flushed.message()).c_str());
    if (const kvc::ClusterBlockClient* c = link->cluster(); c != nullptr) {
      const kvc::ClusterStats cs = c->stats();
      std::fprintf(stderr,
                   "cache cluster: %lld members (%lld down), %llu member failures, %llu misses on down members, "
                   "%llu fallback puts, %llu fallback hits\n",
                   static_cast<long long>(cs.members), static_cast<long long>(cs.down),
                   static_cast<unsigned long long>(cs.member_failures), static_cast<unsigned long long>(cs.down_misses),
                   static_cast<unsigned long long>(cs.fallback_puts), static_cast<unsigned long long>(cs.fallback_hits));
    }
  }
  std::printf("\n");
  return absl::OkStatus();
}

// `serve`: the kvcache.v1.Worker gRPC service until SIGTERM or SIGINT.
absl::Status Serve() {
  // Before any thread: only sigwait below takes the shutdown signals.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  if (!absl::GetFlag(FLAGS_context_peers).empty()) {
    return absl::InvalidArgumentError("serve: --context_peers is for generate only (one sequence per shard set)");
  }
  KVC_ASSIGN_OR_RETURN(Runtime r, LoadRuntime());
  std::unique_ptr<kvc::ServiceLink> link;
  if (!absl::GetFlag(FLAGS_cache_service).empty()) {
    KVC_ASSIGN_OR_RETURN(kvc::ServiceLinkOptions lo, LinkOptionsFromFlags());
    KVC_ASSIGN_OR_RETURN(link, kvc::ServiceLink::Start(lo));
  }
  auto registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<prometheus::Exposer> exposer;
  if (link != nullptr) {
    link->ExposeToo(registry);
  } else if (const std::string m = absl::GetFlag(FLAGS_metrics_address); !m.empty()) {
    try {
      exposer = std::make_unique<prometheus::Exposer>(m, 1);
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat("cannot serve metrics on ", m, ": ", e.what()));
    }
    exposer->RegisterCollectable(registry);
  }
  kvc::serve::WorkerServiceOptions so;
  so.listen_address = absl::GetFlag(FLAGS_listen_address);
  so.policy = absl::GetFlag(FLAGS_policy);
  so.max_queued = absl::GetFlag(FLAGS_max_queued);
  so.max_tokens_limit = absl::GetFlag(FLAGS_max_tokens_limit);
  so.default_max_tokens = std::min(absl::GetFlag(FLAGS_steps), so.max_tokens_limit);
  so.prefix_align = absl::GetFlag(FLAGS_prefix_exact) ? r.model->options().max_chunk : 0;
  KVC_ASSIGN_OR_RETURN(auto server,
                       kvc::serve::WorkerServer::Start(so, r.model.get(), r.tokenizer.get(), link.get(), registry.get()));
  std::fprintf(stderr, "kvc-worker: serving kvcache.v1.Worker on port %d (policy %s%s)\n", server->port(),
               so.policy.c_str(), link ? ", with the cache service" : ", no cache service");
  int sig = 0;
  sigwait(&signals, &sig);
  server->Shutdown(absl::GetFlag(FLAGS_shutdown_grace));
  if (link) {
    // What is queued goes out, but not to a service that is away.
    const absl::Status flushed =
        link->writer().Flush(link->writer().degraded() ? absl::Seconds(2) : absl::Seconds(30));
    if (!flushed.ok()) std::fprintf(stderr, "kvc-worker: write-through not flushed: %s\n", std::string(flushed.message()).c_str());
  }
  return absl::OkStatus();
}

// `ask`: one Generate request to a `serve`, its text to stdout as it comes.
absl::Status Ask() {
  auto channel = grpc::CreateChannel(absl::GetFlag(FLAGS_worker), grpc::InsecureChannelCredentials());
  auto stub = kvcache::v1::Worker::NewStub(channel);
  kvcache::v1::GenerateRequest req;
  req.set_prompt(absl::GetFlag(FLAGS_prompt));
  req.set_max_tokens(absl::GetFlag(FLAGS_steps));
  req.set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
  req.set_top_p(static_cast<float>(absl::GetFlag(FLAGS_top_p)));
  req.set_seed(absl::GetFlag(FLAGS_seed));
  req.set_wait_for_write_through(absl::GetFlag(FLAGS_wait_for_write_through));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
  std::fputs(req.prompt().c_str(), stdout);
  auto reader = stub->Generate(&ctx, req);
  kvcache::v1::GenerateResponse resp;
  kvcache::v1::GenerateDone done;
  while (reader->Read(&resp)) {
    std::fputs(resp.text().c_str(), stdout);
    std::fflush(stdout);
    if (resp.has_done()) done = resp.done();
  }
  const grpc::Status s = reader->Finish();
  std::printf("\n");
  if (!s.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                        absl::StrCat("worker ", absl::GetFlag(FLAGS_worker), ": ", s.error_message()));
  }
  std::fprintf(stderr,
               "worker %s: prefix %d of %d prompt tokens loaded; %d tokens (%s), first token after %.1f ms (queued "
               "%.1f ms), %.1f tokens/s; %lld blocks written through; policy %s, resident KV %s%s\n",
               absl::GetFlag(FLAGS_worker).c_str(), done.prefix_tokens_loaded(), done.prompt_tokens(),
               done.generated_tokens(), done.finish_reason().c_str(), done.first_token_ms(), done.queued_ms(),
               done.tokens_per_second(), static_cast<long long>(done.blocks_written()), done.policy().c_str(),
               Bytes(static_cast<size_t>(done.resident_kv_bytes())).c_str(),
               done.degraded() ? "; DEGRADED: the cache service was unreachable" : "");
  return absl::OkStatus();
}

absl::Status Perplexity() {
  KVC_ASSIGN_OR_RETURN(Runtime r, LoadRuntime());
  KVC_ASSIGN_OR_RETURN(std::vector<std::string> specs, PolicySpecs());
  KVC_ASSIGN_OR_RETURN(std::vector<int32_t> tokens, TextTokens(r));
  std::printf("# perplexity: text=%s tokens=%zu stride=%d\n", absl::GetFlag(FLAGS_text).c_str(), tokens.size(),
              absl::GetFlag(FLAGS_stride));
  std::printf("%-44s %10s %12s %9s  %s\n", "policy", "ppl", "resident KV", "seconds", "ppl per segment");
  for (const std::string& spec : specs) {
    KVC_ASSIGN_OR_RETURN(auto policy, kvc::cache::MakePolicy(r.model->config(), spec));
    kvc::ProgressBar bar(spec, tokens.size(), "tokens");
    kvc::eval::PerplexityOptions o;
    o.stride = absl::GetFlag(FLAGS_stride);
    o.segment = absl::GetFlag(FLAGS_segment);
    int64_t done = 0;
    o.progress = [&](int64_t now) {
      bar.Add(now - done);
      done = now;
    };
    KVC_ASSIGN_OR_RETURN(kvc::eval::PerplexityResult res,
                         kvc::eval::StreamingPerplexity(*r.model, *policy, tokens, o));
    bar.Finish();
    std::vector<std::string> segs;
    for (const auto& s : res.segments) segs.push_back(absl::StrFormat("%.1f", s.perplexity));
    std::printf("%-44s %10.2f %12s %9.1f  %s\n", spec.c_str(), res.perplexity, Bytes(res.stats.resident_bytes).c_str(),
                res.seconds, absl::StrJoin(segs, " ").c_str());
    std::fflush(stdout);
  }
  return absl::OkStatus();
}

absl::Status Passkey() {
  KVC_ASSIGN_OR_RETURN(Runtime r, LoadRuntime());
  KVC_ASSIGN_OR_RETURN(std::vector<std::string> specs, PolicySpecs());
  KVC_ASSIGN_OR_RETURN(std::vector<int64_t> fillers, IntList("filler", absl::GetFlag(FLAGS_filler)));
  const int trials = absl::GetFlag(FLAGS_trials);
  if (trials < 1) return absl::InvalidArgumentError("--trials must be >= 1");
  std::printf("# passkey: trials=%d stride=%d decode_tail=%d (name at ~token 10, question at the end)\n", trials,
              absl::GetFlag(FLAGS_stride), absl::GetFlag(FLAGS_decode_tail));
  std::printf("%-44s %8s %10s %12s %9s\n", "policy", "filler", "accuracy", "resident KV", "seconds");
  for (const std::string& spec : specs) {
    for (int64_t filler : fillers) {
      int correct = 0;
      double seconds = 0;
      size_t bytes = 0;
      kvc::ProgressBar bar(absl::StrCat(spec, " @", filler), trials, "trials");
      for (int t = 0; t < trials; ++t) {
        KVC_ASSIGN_OR_RETURN(auto policy, kvc::cache::MakePolicy(r.model->config(), spec));
        const kvc::eval::PasskeyTrial trial =
            kvc::eval::MakePasskeyTrial(*r.tokenizer, filler, absl::GetFlag(FLAGS_seed) + t);
        KVC_ASSIGN_OR_RETURN(kvc::eval::PasskeyResult res,
                             kvc::eval::RunPasskey(*r.model, *r.tokenizer, *policy, trial, absl::GetFlag(FLAGS_stride),
                                                   absl::GetFlag(FLAGS_decode_tail)));
        correct += res.correct;
        seconds += res.seconds;
        bytes = res.stats.resident_bytes;
        bar.Add(1);
      }
      bar.Finish();
      std::printf("%-44s %8lld %9.0f%% %12s %9.1f\n", spec.c_str(), static_cast<long long>(filler),
                  100.0 * correct / trials, Bytes(bytes).c_str(), seconds);
      std::fflush(stdout);
    }
  }
  return absl::OkStatus();
}

absl::Status Speed() {
  KVC_ASSIGN_OR_RETURN(Runtime r, LoadRuntime());
  KVC_ASSIGN_OR_RETURN(std::vector<std::string> specs, PolicySpecs());
  KVC_ASSIGN_OR_RETURN(std::vector<int64_t> contexts, IntList("contexts", absl::GetFlag(FLAGS_contexts)));
  const int steps = absl::GetFlag(FLAGS_decode_steps);
  const int32_t vocab = r.model->config().vocab_size;
  std::printf("# speed: decode tokens/s after a context of N tokens (prefill stride %d), %d steps timed\n",
              absl::GetFlag(FLAGS_stride), steps);
  std::printf("%-44s %8s %12s %12s %12s\n", "policy", "context", "prefill s", "decode tok/s", "resident KV");
  std::vector<float> logits(vocab);
  for (const std::string& spec : specs) {
    for (int64_t n : contexts) {
      KVC_ASSIGN_OR_RETURN(auto policy, kvc::cache::MakePolicy(r.model->config(), spec));
      std::vector<int32_t> tokens(n);
      for (int64_t i = 0; i < n; ++i) tokens[i] = 3 + static_cast<int32_t>((i * 7919) % (vocab - 3));
      kvc::ProgressBar bar(absl::StrCat(spec, " @", n), n, "tokens");
      const auto t0 = std::chrono::steady_clock::now();
      const int stride = absl::GetFlag(FLAGS_stride);
      for (int64_t b = 0; b < n; b += stride) {
        const int64_t len = std::min<int64_t>(stride, n - b);
        KVC_RETURN_IF_ERROR(r.model->Forward(absl::MakeConstSpan(tokens).subspan(b, len), b, *policy, logits.data()));
        bar.Add(len);
      }
      bar.Finish();
      const auto t1 = std::chrono::steady_clock::now();
      for (int s = 0; s < steps; ++s) {
        const int32_t next = kvc::model::ArgMax(logits);
        KVC_RETURN_IF_ERROR(r.model->Forward(absl::MakeConstSpan(&next, 1), n + s, *policy, logits.data()));
      }
      const auto t2 = std::chrono::steady_clock::now();
      const double prefill = std::chrono::duration<double>(t1 - t0).count();
      const double decode = std::chrono::duration<double>(t2 - t1).count();
      std::printf("%-44s %8lld %12.2f %12.1f %12s\n", spec.c_str(), static_cast<long long>(n), prefill,
                  steps / decode, Bytes(policy->stats().resident_bytes).c_str());
      std::fflush(stdout);
    }
  }
  return absl::OkStatus();
}

// Fits LESS kernels (worker/eval/less_train.h) on --text and writes them.
absl::Status LessTrain() {
  KVC_ASSIGN_OR_RETURN(Runtime r, LoadRuntime());
  kvc::eval::LessSampleOptions so;
  so.policy = absl::GetFlag(FLAGS_less_policy);
  so.reference = absl::GetFlag(FLAGS_less_reference);
  so.driver = absl::GetFlag(FLAGS_less_driver);
  so.horizon = absl::GetFlag(FLAGS_less_horizon);
  so.stride = absl::GetFlag(FLAGS_stride);
  kvc::eval::LessTrainOptions to;
  to.rank = absl::GetFlag(FLAGS_less_rank);
  to.hidden = absl::GetFlag(FLAGS_less_hidden);
  const std::string act = absl::GetFlag(FLAGS_less_activation);
  if (act != "exp" && act != "elu") return absl::InvalidArgumentError("--less_activation must be exp or elu, got " + act);
  to.activation = act == "exp" ? kvc::kernels::FeatureActivation::kExp : kvc::kernels::FeatureActivation::kEluPlusOne;
  to.steps = absl::GetFlag(FLAGS_less_steps);
  to.learning_rate = absl::GetFlag(FLAGS_less_lr);
  to.seed = absl::GetFlag(FLAGS_seed);
  to.threads = absl::GetFlag(FLAGS_threads) > 0 ? absl::GetFlag(FLAGS_threads)
                                                : std::max(1u, std::thread::hardware_concurrency());
  if (!absl::GetFlag(FLAGS_less_init).empty()) {
    KVC_ASSIGN_OR_RETURN(kvc::cache::LessKernels init, kvc::cache::ReadLessKernels(absl::GetFlag(FLAGS_less_init)));
    to.rank = init.rank;
    to.init = std::make_shared<const kvc::cache::LessKernels>(std::move(init));
  }
  KVC_RETURN_IF_ERROR(to.Validate());
  const int n_train = absl::GetFlag(FLAGS_less_streams), n_check = absl::GetFlag(FLAGS_less_validation_streams);
  if (n_train < 1 || n_check < 0) {
    return absl::InvalidArgumentError("--less_streams must be >= 1 and --less_validation_streams >= 0");
  }
  const auto t0 = std::chrono::steady_clock::now();
  KVC_ASSIGN_OR_RETURN(auto streams, TextStreams(r, n_train + n_check));
  std::vector<kvc::eval::LessSamples> samples;
  for (size_t i = 0; i < streams.size(); ++i) {
    kvc::ProgressBar bar(absl::StrCat("reading stream ", i + 1, "/", streams.size(), " with ", so.policy),
                         streams[i].size(), "tokens");
    int64_t done = 0;
    so.progress = [&](int64_t now) {
      bar.Add(now - done);
      done = now;
    };
    KVC_ASSIGN_OR_RETURN(kvc::eval::LessSamples s, kvc::eval::CollectLessSamples(*r.model, streams[i], so));
    samples.push_back(std::move(s));
    bar.Finish();
  }
  std::vector<const kvc::eval::LessSamples*> train, check;
  for (int i = 0; i < n_train + n_check; ++i) (i < n_train ? train : check).push_back(&samples[i]);
  const auto t1 = std::chrono::steady_clock::now();
  kvc::eval::LessTrainResult res;
  {
    const int32_t layers = r.model->config().n_layers;
    kvc::ProgressBar bar("fitting phi/psi", static_cast<uint64_t>(layers) * to.steps, "steps");
    int64_t done = 0;
    to.progress = [&](int64_t now) {
      bar.Add(now - done);
      done = now;
    };
    KVC_ASSIGN_OR_RETURN(res, kvc::eval::FitLessKernels(train, check, to));
    bar.Finish();
  }
  const auto t2 = std::chrono::steady_clock::now();
  KVC_RETURN_IF_ERROR(kvc::cache::WriteLessKernels(res.kernels, absl::GetFlag(FLAGS_out)));
  const std::string reference =
      so.reference.empty() ? absl::StrCat("sparse+evicted within ", so.horizon > 0 ? so.horizon : r.model->config().seq_len)
                           : so.reference;
  std::printf("# less-train: text=%s streams=%d+%d x %lld tokens policy=%s reference=%s rank=%d hidden=%d act=%s steps=%d\n",
              absl::GetFlag(FLAGS_text).c_str(), n_train, n_check, static_cast<long long>(absl::GetFlag(FLAGS_tokens)),
              so.policy.c_str(), reference.c_str(), to.rank, to.hidden, act.c_str(), to.steps);
  std::printf("# mean |a - reference|^2 over the rows LESS changes (a = the eviction policy's output alone, or LESS's);\n"
              "# fit = the training streams, held = the validation streams; the maps of the best held-out step\n");
  std::printf("%6s %6s %11s %11s %8s %11s %11s %8s\n", "layer", "step", "fit: alone", "fit: LESS", "ratio",
              "held: alone", "held: LESS", "ratio");
  for (size_t l = 0; l < res.layers.size(); ++l) {
    const kvc::eval::LessLayerFit& f = res.layers[l];
    auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
    std::printf("%6zu %6d %11.5f %11.5f %8.3f %11.5f %11.5f %8.3f\n", l, f.best_step, f.sparse_loss, f.final_loss,
                ratio(f.final_loss, f.sparse_loss), f.validation_sparse_loss, f.validation_final_loss,
                ratio(f.validation_final_loss, f.validation_sparse_loss));
  }
  std::printf("# reading %.1f s, fitting %.1f s; wrote %s\n", std::chrono::duration<double>(t1 - t0).count(),
              std::chrono::duration<double>(t2 - t1).count(), absl::GetFlag(FLAGS_out).c_str());
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  kvc::TuneAllocatorForLargeBuffers();
  absl::SetProgramUsageMessage(kUsage);
  kvc::ShowFlagsOfFileInHelp("kvc_worker_main");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) {
    std::fprintf(stderr, "%s\n\nkvc-worker: expected one command (see --help)\n", kUsage);
    return 2;
  }
  const std::string cmd = args[1];
  absl::Status s;
  if (cmd == "generate") {
    s = Generate();
  } else if (cmd == "serve") {
    s = Serve();
  } else if (cmd == "ask") {
    s = Ask();
  } else if (cmd == "perplexity") {
    s = Perplexity();
  } else if (cmd == "passkey") {
    s = Passkey();
  } else if (cmd == "speed") {
    s = Speed();
  } else if (cmd == "less-train") {
    s = LessTrain();
  } else {
    std::fprintf(stderr, "kvc-worker: unknown command \"%s\" (generate, serve, ask, perplexity, passkey, speed, less-train)\n", cmd.c_str());
    return 2;
  }
  if (!s.ok()) {
    std::fprintf(stderr, "kvc-worker: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
