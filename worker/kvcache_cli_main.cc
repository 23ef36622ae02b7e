// kvcache-cli: put, get, lookup, delete, pin, stats and info against a
// running cache service, plus `demo`, which walks a block through the tiers.
//
// Blocks are synthetic (worker/synthetic.h): a sequence seed names a token
// stream whose blocks carry real chained prefix hashes, and every payload can
// be regenerated, so `get` verifies what comes back byte for byte.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/allocator.h"
#include "common/help_flags.h"
#include "common/progress.h"
#include "common/units.h"
#include "worker/cache_client.h"
#include "worker/synthetic.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "Cache service address host:port");
ABSL_FLAG(std::string, token, "", "Bearer token (or use --token_file)");
ABSL_FLAG(std::string, token_file, "", "File whose first line is the bearer token");
ABSL_FLAG(std::string, tls_ca_file, "", "PEM root certificate; enables TLS");
ABSL_FLAG(std::string, tls_server_name, "", "Expected TLS server name, if not the target host");
ABSL_FLAG(std::string, tenant, "default", "Tenant namespace of the keys");
ABSL_FLAG(std::string, model, "synthetic", "Model id of the keys");
ABSL_FLAG(std::string, layers, "0", "Comma-separated layer indexes");
ABSL_FLAG(uint64_t, seq, 1, "Synthetic sequence seed");
ABSL_FLAG(uint32_t, blocks, 16, "Blocks of the sequence to act on");
ABSL_FLAG(uint32_t, block_tokens, 16, "Tokens per block");
ABSL_FLAG(uint32_t, kv_heads, 8, "KV heads");
ABSL_FLAG(uint32_t, head_dim, 128, "Head dimension");
ABSL_FLAG(std::string, dtype, "fp16", "fp32, fp16 or bf16");
ABSL_FLAG(uint32_t, batch, 32, "Blocks per request");
ABSL_FLAG(bool, write_through, false, "put: sync to RocksDB before acknowledging (durable)");
ABSL_FLAG(uint32_t, lease_ms, 30000, "pin: lease length");
ABSL_FLAG(uint64_t, lease_id, 0, "unpin: the lease to release");

namespace {

namespace v1 = ::kvcache::v1;

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "kvcache-cli: %s\n", s.ToString().c_str());
  return 1;
}

absl::StatusOr<std::unique_ptr<kvc::CacheClient>> MakeClient() {
  kvc::ClientOptions o;
  o.address = absl::GetFlag(FLAGS_target);
  o.token = absl::GetFlag(FLAGS_token);
  if (!absl::GetFlag(FLAGS_token_file).empty()) {
    std::ifstream in(absl::GetFlag(FLAGS_token_file));
    if (!in) return absl::NotFoundError("cannot read --token_file " + absl::GetFlag(FLAGS_token_file));
    std::getline(in, o.token);
    o.token = std::string(absl::StripAsciiWhitespace(o.token));
  }
  if (!absl::GetFlag(FLAGS_tls_ca_file).empty()) {
    std::ifstream in(absl::GetFlag(FLAGS_tls_ca_file));
    if (!in) return absl::NotFoundError("cannot read --tls_ca_file " + absl::GetFlag(FLAGS_tls_ca_file));
    std::stringstream ss;
    ss << in.rdbuf();
    o.tls_root_certs_pem = ss.str();
    o.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  }
  auto c = kvc::CacheClient::Connect(o);
  if (!c.ok()) return c.status();
  if (absl::Status s = (*c)->WaitForReady(absl::Seconds(10)); !s.ok()) return s;
  return c;
}

absl::StatusOr<std::vector<uint32_t>> Layers() {
  std::vector<uint32_t> out;
  for (absl::string_view p : absl::StrSplit(absl::GetFlag(FLAGS_layers), ',', absl::SkipEmpty())) {
    uint32_t l;
    if (!absl::SimpleAtoi(p, &l)) return absl::InvalidArgumentError(absl::StrCat("--layers: '", p, "' is not a layer index"));
    out.push_back(l);
  }
  if (out.empty()) return absl::InvalidArgumentError("--layers is empty");
  return out;
}

absl::StatusOr<kvc::SyntheticSpec> Spec(uint32_t layer) {
  kvc::SyntheticSpec s;
  s.tenant = absl::GetFlag(FLAGS_tenant);
  s.model = absl::GetFlag(FLAGS_model);
  s.layer = layer;
  s.seq_seed = absl::GetFlag(FLAGS_seq);
  s.block_tokens = absl::GetFlag(FLAGS_block_tokens);
  s.num_kv_heads = absl::GetFlag(FLAGS_kv_heads);
  s.head_dim = absl::GetFlag(FLAGS_head_dim);
  const std::string d = absl::GetFlag(FLAGS_dtype);
  if (d == "fp32") s.dtype = v1::DTYPE_FP32;
  else if (d == "fp16") s.dtype = v1::DTYPE_FP16;
  else if (d == "bf16") s.dtype = v1::DTYPE_BF16;
  else return absl::InvalidArgumentError(absl::StrCat("--dtype: '", d, "' is not fp32, fp16 or bf16"));
  return s;
}

const char* TierName(int t) { return t == v1::TIER_HOST ? "host" : t == v1::TIER_DISK ? "disk" : "none"; }

struct GetTally {
  uint64_t host = 0, disk = 0, missing = 0, corrupt = 0, mismatched = 0;
};

// put: every block of the sequence, for every layer.
absl::Status CmdPut(kvc::CacheClient& c, const char* label = "put") {
  auto layers = Layers();
  if (!layers.ok()) return layers.status();
  const uint32_t n = absl::GetFlag(FLAGS_blocks), batch = std::max(1u, absl::GetFlag(FLAGS_batch));
  kvc::ProgressBar bar(label, uint64_t{n} * layers->size(), "blocks");
  for (uint32_t layer : *layers) {
    auto spec = Spec(layer);
    if (!spec.ok()) return spec.status();
    const std::vector<kvc::BlockKey> keys = kvc::SyntheticKeys(*spec, n);
    for (uint32_t i = 0; i < n; i += batch) {
      v1::PutRequest req;
      req.set_write_through(absl::GetFlag(FLAGS_write_through));
      const uint32_t end = std::min(n, i + batch);
      for (uint32_t j = i; j < end; ++j) kvc::SyntheticBlock(*spec, j, keys[j], req.add_blocks());
      auto r = c.Put(req);
      if (!r.ok()) return absl::Status(r.status().code(), absl::StrCat("layer ", layer, " blocks [", i, ", ", end, "): ", r.status().message()));
      bar.Add(end - i, (end - i) * spec->BlockBytes());
    }
  }
  bar.Finish();
  return absl::OkStatus();
}

// get: fetches and verifies every block of the sequence.
// newest_first: read the last batches first (they are the ones still in host memory).
absl::StatusOr<GetTally> CmdGet(kvc::CacheClient& c, const char* label = "get", bool newest_first = false) {
  auto layers = Layers();
  if (!layers.ok()) return layers.status();
  const uint32_t n = absl::GetFlag(FLAGS_blocks), batch = std::max(1u, absl::GetFlag(FLAGS_batch));
  GetTally t;
  kvc::ProgressBar bar(label, uint64_t{n} * layers->size(), "blocks");
  for (uint32_t layer : *layers) {
    auto spec = Spec(layer);
    if (!spec.ok()) return spec.status();
    const std::vector<kvc::BlockKey> keys = kvc::SyntheticKeys(*spec, n);
    std::vector<uint32_t> starts;
    for (uint32_t i = 0; i < n; i += batch) starts.push_back(i);
    if (newest_first) std::reverse(starts.begin(), starts.end());
    for (uint32_t i : starts) {
      const uint32_t end = std::min(n, i + batch);
      absl::Status s = c.Get(std::span(keys).subspan(i, end - i), [&](v1::GetResponse& r) {
        if (r.error_code() != 0) {
          (r.error_code() == static_cast<int>(absl::StatusCode::kDataLoss) ? t.corrupt : t.missing)++;
          return;
        }
        v1::Block want;
        kvc::SyntheticBlock(*spec, i + r.index(), keys[i + r.index()], &want);
        if (r.block().k() != want.k() || r.block().v() != want.v() || r.block().checksum() != want.checksum()) {
          ++t.mismatched;
        }
        (r.tier() == v1::TIER_HOST ? t.host : t.disk)++;
        bar.Add(1, spec->BlockBytes());
      });
      if (!s.ok()) return s;
    }
  }
  bar.Finish();
  return t;
}

void PrintTally(const GetTally& t) {
  std::printf("get: %llu from host, %llu from disk, %llu missing, %llu corrupt, %llu mismatched\n",
              (unsigned long long)t.host, (unsigned long long)t.disk, (unsigned long long)t.missing,
              (unsigned long long)t.corrupt, (unsigned long long)t.mismatched);
}

absl::Status CmdLookup(kvc::CacheClient& c) {
  auto layers = Layers();
  if (!layers.ok()) return layers.status();
  auto spec = Spec(layers->front());
  if (!spec.ok()) return spec.status();
  v1::LookupRequest req;
  req.set_tenant(spec->tenant);
  req.set_model(spec->model);
  for (uint32_t l : *layers) req.add_layers(l);
  for (const kvc::Hash128& h : kvc::SyntheticChain(*spec, absl::GetFlag(FLAGS_blocks))) {
    auto* p = req.add_hashes();
    p->set_hi(h.hi);
    p->set_lo(h.lo);
  }
  auto r = c.Lookup(req);
  if (!r.ok()) return r.status();
  uint32_t host = 0, disk = 0;
  for (int t : r->tiers()) (t == v1::TIER_HOST ? host : disk)++;
  std::printf("lookup: %u of %d leading blocks cached for every layer (%u in host memory, %u on disk)\n",
              r->cached_blocks(), req.hashes_size(), host, disk);
  return absl::OkStatus();
}

absl::Status AllKeys(std::vector<kvc::BlockKey>* keys) {
  auto layers = Layers();
  if (!layers.ok()) return layers.status();
  for (uint32_t l : *layers) {
    auto spec = Spec(l);
    if (!spec.ok()) return spec.status();
    for (auto& k : kvc::SyntheticKeys(*spec, absl::GetFlag(FLAGS_blocks))) keys->push_back(std::move(k));
  }
  return absl::OkStatus();
}

absl::Status CmdStats(kvc::CacheClient& c) {
  auto r = c.Stats();
  if (!r.ok()) return r.status();
  std::printf("%-5s %12s %12s %8s %10s %10s %10s\n", "tier", "bytes", "budget", "blocks", "hits", "misses", "evictions");
  for (auto [name, t] : {std::pair{"host", &r->host()}, std::pair{"disk", &r->disk()}}) {
    std::printf("%-5s %12s %12s %8llu %10llu %10llu %10llu\n", name, kvc::FormatBytes(t->bytes()).c_str(),
                kvc::FormatBytes(t->budget_bytes()).c_str(), (unsigned long long)t->blocks(),
                (unsigned long long)t->hits(), (unsigned long long)t->misses(), (unsigned long long)t->evictions());
  }
  std::printf("pinned blocks %llu, corrupt blocks dropped %llu\n", (unsigned long long)r->pinned_blocks(),
              (unsigned long long)r->corrupt_blocks_dropped());
  if (!r->tenant().empty()) {
    std::printf("tenant %s: host %s, disk %s, quota %s\n", r->tenant().c_str(),
                kvc::FormatBytes(r->tenant_host_bytes()).c_str(), kvc::FormatBytes(r->tenant_disk_bytes()).c_str(),
                r->tenant_quota_bytes() ? kvc::FormatBytes(r->tenant_quota_bytes()).c_str() : "none");
  }
  return absl::OkStatus();
}

// demo: writes several times the host budget, so blocks are evicted to
// RocksDB, then reads them all back and shows which tier served each.
absl::Status CmdDemo(kvc::CacheClient& c) {
  auto stats = c.Stats();
  if (!stats.ok()) return stats.status();
  auto spec = Spec(0);
  if (!spec.ok()) return spec.status();
  const uint64_t host_budget = stats->host().budget_bytes();
  const uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(4096, 3 * host_budget / spec->BlockBytes() + 1));
  absl::SetFlag(&FLAGS_blocks, n);
  absl::SetFlag(&FLAGS_layers, "0");
  std::printf("demo: host tier budget %s; writing %u blocks of %s (%s, 3x the host budget)\n",
              kvc::FormatBytes(host_budget).c_str(), n, kvc::FormatBytes(spec->BlockBytes()).c_str(),
              kvc::FormatBytes(uint64_t{n} * spec->BlockBytes()).c_str());
  if (absl::Status s = CmdPut(c); !s.ok()) return s;
  std::printf("\nafter put: the host tier is full and older blocks were evicted to RocksDB\n");
  if (absl::Status s = CmdStats(c); !s.ok()) return s;
  std::printf("\n");
  if (absl::Status s = CmdLookup(c); !s.ok()) return s;
  std::printf("\nreading every block back, newest first, and verifying it byte for byte\n");
  auto t = CmdGet(c, "get", /*newest_first=*/true);
  if (!t.ok()) return t.status();
  PrintTally(*t);
  std::printf("\nafter get: disk hits were promoted back into host memory\n");
  if (absl::Status s = CmdStats(c); !s.ok()) return s;
  if (t->missing || t->corrupt || t->mismatched) {
    return absl::DataLossError("demo: some blocks did not come back intact");
  }
  std::printf("\ndemo: all %u blocks came back intact (%llu from host memory, %llu from RocksDB)\n", n,
              (unsigned long long)t->host, (unsigned long long)t->disk);
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  kvc::TuneAllocatorForLargeBuffers();
  absl::SetProgramUsageMessage(
      "Client of the KV-cache service.\n"
      "Usage: kvcache-cli [--target=host:port] [--token=T] <command>\n"
      "Commands:\n"
      "  health   grpc.health.v1 check; exit 0 when SERVING\n"
      "  info     version and request limits\n"
      "  stats    tier usage, hits, misses, evictions; the caller's tenant usage\n"
      "  put      store --blocks synthetic blocks of sequence --seq for --layers\n"
      "  get      fetch them back and verify every byte; exit 1 on any miss\n"
      "  lookup   how many leading blocks of the sequence are cached\n"
      "  delete   remove the sequence's blocks\n"
      "  pin      pin them in host memory for --lease_ms; prints the lease id\n"
      "  unpin    release --lease_id\n"
      "  demo     write 3x the host budget, read everything back, show the tiers");
  kvc::ShowFlagsOfFileInHelp("kvcache_cli_main");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) {
    std::fprintf(stderr, "kvcache-cli: expected exactly one command; see --help\n");
    return 2;
  }
  const std::string cmd = args[1];
  auto client = MakeClient();
  if (!client.ok()) return Fail(client.status());
  kvc::CacheClient& c = **client;

  if (cmd == "health") {
    auto h = c.Healthy();
    if (!h.ok()) return Fail(h.status());
    std::printf("%s\n", *h ? "SERVING" : "NOT_SERVING");
    return *h ? 0 : 1;
  }
  if (cmd == "info") {
    auto r = c.Info();
    if (!r.ok()) return Fail(r.status());
    std::printf("version %s\n%s", r->version().c_str(), r->limits().DebugString().c_str());
    return 0;
  }
  if (cmd == "stats") {
    absl::Status s = CmdStats(c);
    return s.ok() ? 0 : Fail(s);
  }
  if (cmd == "put") {
    absl::Status s = CmdPut(c);
    return s.ok() ? 0 : Fail(s);
  }
  if (cmd == "get") {
    auto t = CmdGet(c);
    if (!t.ok()) return Fail(t.status());
    PrintTally(*t);
    return (t->missing || t->corrupt || t->mismatched) ? 1 : 0;
  }
  if (cmd == "lookup") {
    absl::Status s = CmdLookup(c);
    return s.ok() ? 0 : Fail(s);
  }
  if (cmd == "delete" || cmd == "pin") {
    std::vector<kvc::BlockKey> keys;
    if (absl::Status s = AllKeys(&keys); !s.ok()) return Fail(s);
    if (cmd == "delete") {
      auto n = c.Delete(keys);
      if (!n.ok()) return Fail(n.status());
      std::printf("deleted %u of %zu blocks\n", *n, keys.size());
    } else {
      auto r = c.Pin(keys, absl::GetFlag(FLAGS_lease_ms));
      if (!r.ok()) return Fail(r.status());
      std::printf("lease %llu pins %u blocks until unix ms %lld\n", (unsigned long long)r->lease_id(),
                  r->pinned(), (long long)r->expires_unix_ms());
    }
    return 0;
  }
  if (cmd == "unpin") {
    auto n = c.Unpin(absl::GetFlag(FLAGS_lease_id));
    if (!n.ok()) return Fail(n.status());
    std::printf("released %u blocks\n", *n);
    return 0;
  }
  if (cmd == "demo") {
    absl::Status s = CmdDemo(c);
    return s.ok() ? 0 : Fail(s);
  }
  std::fprintf(stderr, "kvcache-cli: unknown command '%s'; see --help\n", cmd.c_str());
  return 2;
}
