// kernels_bench: dense attention against the selected / gathered attention
// that replaces it, in one run, on one layer with Llama-3-8B shapes
// (32 query heads, 8 KV heads, head dim 128) and random data:
//   - one decode step over contexts of --contexts tokens: full attention vs
//     TokenSelect (k = 2048, n_init = 128, n_local = 512) when its selection
//     cache hits (gathered attention only) and when it misses (fingerprint,
//     scoring of every candidate, top-k, gathered attention);
//   - one 512-query prefill chunk at the end of the same contexts: dense
//     causal vs TokenSelect (selection + gathered attention);
//   - the cascading cache's strided prefill of a --cascade_len input (sinks
//     + sub-caches, attention with EMA score accumulation, insertion) vs dense
//     causal prefill of the same input.
// Every time is put against the machine measured in the same run: memcpy
// bandwidth, a read-only pass over the same keys, and the FMA peak. See
// docs/BENCHMARKS.md. Timings are the median of repeated runs (one run
// when a single run takes longer than --min_seconds).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/bench_memory.h"
#include "bench/machine_probe.h"
#include "common/progress.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "kernels/attention.h"
#include "kernels/cascade.h"
#include "kernels/device.h"
#include "kernels/dtype.h"
#include "kernels/thread_pool.h"
#include "kernels/token_select.h"

ABSL_FLAG(std::string, backend, "cpu", "Kernel path: cpu, cuda or reference");
ABSL_FLAG(std::string, contexts, "8192,32768,131072", "Comma-separated context lengths (tokens)");
ABSL_FLAG(std::string, dtype, "bf16", "KV element type: f32, bf16 or f16");
ABSL_FLAG(int, q_heads, 32, "Query heads");
ABSL_FLAG(int, kv_heads, 8, "KV heads");
ABSL_FLAG(int, head_dim, 128, "Head dimension");
ABSL_FLAG(int, topk, 2048, "TokenSelect k");
ABSL_FLAG(int, n_init, 128, "TokenSelect n_init (always attended)");
ABSL_FLAG(int, n_local, 512, "TokenSelect n_local (always attended)");
ABSL_FLAG(int, chunk, 512, "Prefill chunk (queries)");
ABSL_FLAG(int64_t, cascade_len, 16384, "Input length of the cascade vs dense prefill (0 = skip)");
ABSL_FLAG(int, cascade_stride, 1024, "Cascade prefill stride (queries per chunk)");
ABSL_FLAG(int, cascade_sinks, 64, "Cascade sinks S");
ABSL_FLAG(int, cascade_subcaches, 4, "Cascade sub-caches C");
ABSL_FLAG(int, cascade_window, 4096, "Cascade budget W (slots over all sub-caches)");
ABSL_FLAG(double, min_seconds, 1.0, "Repeat a cell until it has run this long (at least 3 runs)");
ABSL_FLAG(std::string, probe_bytes, "1GiB", "Buffer size of the memcpy / read bandwidth probe");

namespace kvc::bench {
namespace {

using kernels::Backend;
using kernels::DType;
using kernels::ExecContext;
using kernels::KvGather;
using kernels::KvPool;
using Clock = std::chrono::steady_clock;

struct Shape {
  int hq, hkv, d;
  DType dtype;
  size_t row_bytes() const { return static_cast<size_t>(hkv) * d * kernels::DTypeSize(dtype); }
};

// Runs fn until min_seconds have passed and at least 3 runs, after one
// warm-up; one run only if it alone takes longer than min_seconds. Returns
// the median in seconds.
absl::StatusOr<double> TimeIt(Backend backend, const std::function<absl::Status()>& fn) {
  const double min_s = absl::GetFlag(FLAGS_min_seconds);
  std::vector<double> runs;
  double total = 0;
  for (int i = 0;; ++i) {
    const auto t0 = Clock::now();
    KVC_RETURN_IF_ERROR(fn());
    KVC_RETURN_IF_ERROR(Sync(backend));
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (i == 0 && s > min_s) return s;
    if (i == 0) continue;  // warm-up
    runs.push_back(s);
    total += s;
    if (runs.size() >= 3 && total >= min_s) break;
  }
  std::sort(runs.begin(), runs.end());
  return runs[runs.size() / 2];
}

// Cheap random values in [-1, 1), encoded as `dtype`.
std::vector<uint8_t> RandomKv(DType dtype, size_t n, uint64_t seed) {
  std::vector<uint8_t> out(n * kernels::DTypeSize(dtype));
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    const float f = static_cast<float>(static_cast<int64_t>(x >> 40) - (1 << 23)) / (1 << 23);
    if (dtype == DType::kF32) {
      std::memcpy(out.data() + 4 * i, &f, 4);
    } else {
      const uint16_t h = dtype == DType::kBF16 ? kernels::FloatToBF16(f) : kernels::FloatToF16(f);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}
std::vector<float> RandomQ(size_t n, uint64_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> out(n);
  for (float& f : out) f = u(rng);
  return out;
}
std::vector<int32_t> Iota(int64_t begin, int64_t end) {
  std::vector<int32_t> v(end - begin);
  std::iota(v.begin(), v.end(), static_cast<int32_t>(begin));
  return v;
}

struct Row {
  std::string name;
  int64_t context;
  double seconds;
  double bytes;  // bytes of K/V read
  double flops;
  std::string vs;  // ratio text
};

void PrintRow(const Row& r) {
  std::printf("%-34s %8lld %10.3f %9.2f %9.1f  %s\n", r.name.c_str(), static_cast<long long>(r.context),
              r.seconds * 1e3, r.bytes / r.seconds / 1e9, r.flops / r.seconds / 1e9, r.vs.c_str());
  std::fflush(stdout);
}

// Attention FLOPs: QK and PV, 2 flops per multiply-add each.
double AttnFlops(const Shape& s, double query_key_pairs) { return 4.0 * s.hq * s.d * query_key_pairs; }

struct ContextData {
  Mem k, v;
  KvPool pool;
};

absl::Status RunContext(Backend backend, const Shape& s, int64_t n, const MachineProbe& probe,
                        kernels::ThreadPool& tp) {
  const ExecContext ctx{backend, &tp, nullptr};
  const int k_sel = absl::GetFlag(FLAGS_topk), n_init = absl::GetFlag(FLAGS_n_init);
  const int n_local = absl::GetFlag(FLAGS_n_local), chunk = absl::GetFlag(FLAGS_chunk);
  if (n <= n_init + k_sel + n_local || n < chunk) {
    return absl::InvalidArgumentError(absl::StrFormat("context %d is too short for k=%d, n_init=%d, n_local=%d",
                                                      n, k_sel, n_init, n_local));
  }
  const kernels::Rope rope{kernels::RopeStyle::kHalf, 500000.0f};
  ContextData c;
  KVC_ASSIGN_OR_RETURN(c.k, Mem::From(backend, RandomKv(s.dtype, n * s.hkv * s.d, 1)));
  KVC_ASSIGN_OR_RETURN(c.v, Mem::From(backend, RandomKv(s.dtype, n * s.hkv * s.d, 2)));
  c.pool = KvPool::Contiguous(c.k.get(), c.v.get(), s.dtype, n, s.hkv, s.d);
  const double kv_bytes = 2.0 * n * s.row_bytes();

  // ---- decode: dense ----
  KVC_ASSIGN_OR_RETURN(Mem q1, Mem::From(backend, RandomQ(s.hq * s.d, 3)));
  KVC_ASSIGN_OR_RETURN(Mem all_idx, Mem::From(backend, Iota(0, n)));
  KVC_ASSIGN_OR_RETURN(Mem all_ptr, Mem::From(backend, std::vector<int32_t>{0, static_cast<int32_t>(n)}));
  KVC_ASSIGN_OR_RETURN(Mem qpos_n, Mem::From(backend, std::vector<int32_t>{static_cast<int32_t>(n)}));
  KVC_ASSIGN_OR_RETURN(Mem out1, Mem::Make(backend, s.hq * s.d * 4));
  KVC_ASSIGN_OR_RETURN(Mem lse1, Mem::Make(backend, s.hq * 4));
  kernels::DecodeArgs dense;
  dense.q = q1.as<float>();
  dense.q_positions = qpos_n.as<int32_t>();
  dense.batch = 1;
  dense.num_q_heads = s.hq;
  dense.kv = c.pool;
  dense.gather = KvGather{all_ptr.as<int32_t>(), all_idx.as<int32_t>(), all_idx.as<int32_t>(), false};
  dense.rope = rope;
  dense.out = out1.as<float>();
  dense.lse = lse1.as<float>();
  KVC_ASSIGN_OR_RETURN(double t_dense, TimeIt(backend, [&] { return kernels::Decode(ctx, dense); }));
  const double floor_s = kv_bytes / (probe.memcpy_gbps * 1e9);
  PrintRow({"decode dense", n, t_dense, kv_bytes, AttnFlops(s, n),
            absl::StrFormat("%.2fx the memcpy floor (%.2f ms)", t_dense / floor_s, floor_s * 1e3)});

  // ---- decode: TokenSelect, selection-cache miss and hit ----
  const int64_t gathered = n_init + k_sel + n_local;
  KVC_ASSIGN_OR_RETURN(Mem qbar, Mem::Make(backend, s.hq * s.d * 4));
  KVC_ASSIGN_OR_RETURN(Mem selected, Mem::Make(backend, k_sel * 4));
  KVC_ASSIGN_OR_RETURN(Mem list, Mem::Make(backend, gathered * 4));
  KVC_ASSIGN_OR_RETURN(Mem list_ptr, Mem::From(backend, std::vector<int32_t>{0, static_cast<int32_t>(gathered)}));
  KVC_ASSIGN_OR_RETURN(Mem compact, Mem::From(backend, Iota(0, gathered)));
  KVC_ASSIGN_OR_RETURN(Mem qpos_g, Mem::From(backend, std::vector<int32_t>{static_cast<int32_t>(gathered)}));
  KVC_ASSIGN_OR_RETURN(Mem workspace, Mem::Make(backend, kernels::TokenSelectWorkspaceBytes(n, s.hq)));
  std::vector<int32_t> host_list(gathered), host_sel(k_sel);

  kernels::TokenSelectArgs sel;
  sel.qbar = qbar.as<float>();
  sel.num_q_heads = s.hq;
  sel.pool = c.pool;
  sel.num_candidates = n - n_local;
  sel.select_begin = n_init;
  sel.k = k_sel;
  sel.selected = selected.as<int32_t>();
  sel.workspace = workspace.get();
  sel.workspace_bytes = workspace.size();
  // [0, n_init) U selected U [n - n_local, n), built on the host.
  const auto build_list = [&](int64_t local_begin) -> absl::Status {
    KVC_RETURN_IF_ERROR(selected.Download(host_sel.data(), k_sel * 4));
    std::iota(host_list.begin(), host_list.begin() + n_init, 0);
    std::copy(host_sel.begin(), host_sel.end(), host_list.begin() + n_init);
    std::iota(host_list.begin() + n_init + k_sel, host_list.end(), static_cast<int32_t>(local_begin));
    return list.Upload(host_list.data(), gathered * 4);
  };
  kernels::DecodeArgs sparse = dense;
  sparse.q_positions = qpos_g.as<int32_t>();
  sparse.gather = KvGather{list_ptr.as<int32_t>(), list.as<int32_t>(), compact.as<int32_t>(), false};
  kernels::FingerprintArgs fp1{q1.as<float>(), 1, s.hq, s.d, rope, n_local, qbar.as<float>()};
  KVC_ASSIGN_OR_RETURN(double t_miss, TimeIt(backend, [&]() -> absl::Status {
                         KVC_RETURN_IF_ERROR(kernels::QueryFingerprint(ctx, fp1));
                         KVC_RETURN_IF_ERROR(kernels::TokenSelect(ctx, sel));
                         KVC_RETURN_IF_ERROR(build_list(n - n_local));
                         return kernels::Decode(ctx, sparse);
                       }));
  KVC_ASSIGN_OR_RETURN(double t_hit, TimeIt(backend, [&] { return kernels::Decode(ctx, sparse); }));
  const double key_bytes = (n - n_local) * static_cast<double>(s.row_bytes());
  double t_read_keys = 1e30;
  if (backend != Backend::kCuda) {
    for (int i = 0; i < 3; ++i) t_read_keys = std::min(t_read_keys, TimeReadOnce(tp, c.k.get(), key_bytes));
  } else {
    t_read_keys = key_bytes / (probe.read_gbps * 1e9);
  }
  const double sparse_flops = AttnFlops(s, gathered);
  PrintRow({"decode tokenselect miss", n, t_miss, key_bytes + 2.0 * gathered * s.row_bytes(),
            2.0 * s.hq * s.d * (n - n_local) + sparse_flops,
            absl::StrFormat("%.1fx faster than dense; %.2fx reading the keys once (%.2f ms)", t_dense / t_miss,
                            t_miss / t_read_keys, t_read_keys * 1e3)});
  PrintRow({"decode tokenselect hit", n, t_hit, 2.0 * gathered * s.row_bytes(), sparse_flops,
            absl::StrFormat("%.1fx faster than dense", t_dense / t_hit)});

  // ---- one prefill chunk at the end of the context ----
  KVC_ASSIGN_OR_RETURN(Mem qc, Mem::From(backend, RandomQ(static_cast<size_t>(chunk) * s.hq * s.d, 4)));
  KVC_ASSIGN_OR_RETURN(Mem outc, Mem::Make(backend, static_cast<size_t>(chunk) * s.hq * s.d * 4));
  KVC_ASSIGN_OR_RETURN(Mem qpos_dense, Mem::From(backend, Iota(n - chunk, n)));
  kernels::PrefillArgs pd;
  pd.q = qc.as<float>();
  pd.q_positions = qpos_dense.as<int32_t>();
  pd.num_q = chunk;
  pd.num_q_heads = s.hq;
  pd.kv = c.pool;
  pd.gather = dense.gather;
  pd.causal = true;
  pd.rope = rope;
  pd.out = outc.as<float>();
  KVC_ASSIGN_OR_RETURN(double t_pd, TimeIt(backend, [&] { return kernels::Prefill(ctx, pd); }));
  const double pairs_dense = static_cast<double>(chunk) * (n - chunk) + chunk * (chunk + 1) / 2.0;
  PrintRow({"prefill chunk dense", n, t_pd, kv_bytes, AttnFlops(s, pairs_dense),
            absl::StrFormat("%.0f%% of the FMA peak", 100.0 * AttnFlops(s, pairs_dense) / t_pd / 1e9 /
                                                          probe.peak_gflops)});
  KVC_ASSIGN_OR_RETURN(Mem qpos_sparse, Mem::From(backend, Iota(gathered - chunk, gathered)));
  kernels::FingerprintArgs fpc{qc.as<float>(), chunk, s.hq, s.d, rope, n_local, qbar.as<float>()};
  kernels::TokenSelectArgs selc = sel;
  selc.num_candidates = n - chunk;  // the chunk itself is the local window
  kernels::PrefillArgs ps = pd;
  ps.q_positions = qpos_sparse.as<int32_t>();
  ps.gather = sparse.gather;
  const int64_t local_begin = n - chunk;
  KVC_ASSIGN_OR_RETURN(double t_ps, TimeIt(backend, [&]() -> absl::Status {
                         KVC_RETURN_IF_ERROR(kernels::QueryFingerprint(ctx, fpc));
                         KVC_RETURN_IF_ERROR(kernels::TokenSelect(ctx, selc));
                         KVC_RETURN_IF_ERROR(build_list(local_begin));
                         return kernels::Prefill(ctx, ps);
                       }));
  const double pairs_sparse = static_cast<double>(chunk) * (gathered - chunk) + chunk * (chunk + 1) / 2.0;
  PrintRow({"prefill chunk tokenselect", n, t_ps, key_bytes + 2.0 * gathered * s.row_bytes(),
            2.0 * s.hq * s.d * (n - chunk) + AttnFlops(s, pairs_sparse),
            absl::StrFormat("%.1fx faster than dense", t_pd / t_ps)});
  return absl::OkStatus();
}

// The cascading cache's strided prefill of `len` tokens against dense causal
// prefill of the same tokens.
absl::Status RunCascade(Backend backend, const Shape& s, int64_t len, kernels::ThreadPool& tp,
                        const MachineProbe& probe) {
  const ExecContext ctx{backend, &tp, nullptr};
  const int stride = absl::GetFlag(FLAGS_cascade_stride);
  kernels::CascadeConfig cfg;
  cfg.num_sinks = absl::GetFlag(FLAGS_cascade_sinks);
  cfg.num_subcaches = absl::GetFlag(FLAGS_cascade_subcaches);
  cfg.subcache_slots = absl::GetFlag(FLAGS_cascade_window) / cfg.num_subcaches;
  KVC_RETURN_IF_ERROR(cfg.Validate());
  const kernels::Rope rope{kernels::RopeStyle::kHalf, 500000.0f};
  const int64_t slots = cfg.total_slots();
  const size_t row = s.row_bytes();

  KVC_ASSIGN_OR_RETURN(Mem k, Mem::From(backend, RandomKv(s.dtype, len * s.hkv * s.d, 5)));
  KVC_ASSIGN_OR_RETURN(Mem v, Mem::From(backend, RandomKv(s.dtype, len * s.hkv * s.d, 6)));
  KVC_ASSIGN_OR_RETURN(Mem q, Mem::From(backend, RandomQ(static_cast<size_t>(len) * s.hq * s.d, 7)));
  KVC_ASSIGN_OR_RETURN(Mem out, Mem::Make(backend, static_cast<size_t>(len) * s.hq * s.d * 4));

  // Dense causal prefill of the whole input.
  KVC_ASSIGN_OR_RETURN(Mem all_idx, Mem::From(backend, Iota(0, len)));
  KVC_ASSIGN_OR_RETURN(Mem all_ptr, Mem::From(backend, std::vector<int32_t>{0, static_cast<int32_t>(len)}));
  kernels::PrefillArgs dense;
  dense.q = q.as<float>();
  dense.q_positions = all_idx.as<int32_t>();
  dense.num_q = len;
  dense.num_q_heads = s.hq;
  dense.kv = KvPool::Contiguous(k.get(), v.get(), s.dtype, len, s.hkv, s.d);
  dense.gather = KvGather{all_ptr.as<int32_t>(), all_idx.as<int32_t>(), all_idx.as<int32_t>(), false};
  dense.rope = rope;
  dense.out = out.as<float>();
  KVC_ASSIGN_OR_RETURN(double t_dense, TimeIt(backend, [&] { return kernels::Prefill(ctx, dense); }));
  const double dense_pairs = static_cast<double>(len) * (len + 1) / 2.0;
  PrintRow({"cascade-input prefill dense", len, t_dense, 2.0 * len * row, AttnFlops(s, dense_pairs),
            absl::StrFormat("%.0f%% of the FMA peak", 100.0 * AttnFlops(s, dense_pairs) / t_dense / 1e9 /
                                                          probe.peak_gflops)});

  // Cascade state and per-chunk scratch.
  KVC_ASSIGN_OR_RETURN(Mem sk, Mem::Make(backend, slots * row));
  KVC_ASSIGN_OR_RETURN(Mem sv, Mem::Make(backend, slots * row));
  KVC_ASSIGN_OR_RETURN(Mem sscores, Mem::Make(backend, slots * s.hkv * 4));
  KVC_ASSIGN_OR_RETURN(Mem spos, Mem::Make(backend, slots * s.hkv * 4));
  KVC_ASSIGN_OR_RETURN(Mem rstart, Mem::Make(backend, cfg.num_subcaches * s.hkv * 4));
  KVC_ASSIGN_OR_RETURN(Mem rcount, Mem::Make(backend, cfg.num_subcaches * s.hkv * 4));
  KVC_ASSIGN_OR_RETURN(Mem gptr, Mem::Make(backend, (s.hkv + 1) * 4));
  KVC_ASSIGN_OR_RETURN(Mem gidx, Mem::Make(backend, slots * s.hkv * 4));
  KVC_ASSIGN_OR_RETURN(Mem gpos, Mem::Make(backend, slots * s.hkv * 4));
  KVC_ASSIGN_OR_RETURN(Mem chunk_ptr, Mem::Make(backend, 2 * 4));
  KVC_ASSIGN_OR_RETURN(Mem chunk_idx, Mem::From(backend, Iota(0, stride)));
  KVC_ASSIGN_OR_RETURN(Mem chunk_pos, Mem::Make(backend, stride * 4));
  KVC_ASSIGN_OR_RETURN(Mem chunk_scores, Mem::Make(backend, stride * s.hkv * 4));
  KVC_ASSIGN_OR_RETURN(Mem parts_out, Mem::Make(backend, 2ull * stride * s.hq * s.d * 4));
  KVC_ASSIGN_OR_RETURN(Mem parts_lse, Mem::Make(backend, 2ull * stride * s.hq * 4));
  KVC_ASSIGN_OR_RETURN(Mem lse, Mem::Make(backend, static_cast<size_t>(stride) * s.hq * 4));
  KVC_ASSIGN_OR_RETURN(Mem ev_k, Mem::Make(backend, s.hkv * stride * s.d * kernels::DTypeSize(s.dtype)));
  KVC_ASSIGN_OR_RETURN(Mem ev_v, Mem::Make(backend, s.hkv * stride * s.d * kernels::DTypeSize(s.dtype)));
  KVC_ASSIGN_OR_RETURN(Mem ev_pos, Mem::Make(backend, s.hkv * stride * 4));
  KVC_ASSIGN_OR_RETURN(Mem ev_count, Mem::Make(backend, s.hkv * 4));
  const std::vector<float> zeros(std::max<size_t>(slots, stride) * s.hkv, 0.0f);
  const std::vector<int32_t> izeros(cfg.num_subcaches * s.hkv, 0);

  kernels::CascadeState st;
  st.config = cfg;
  st.dtype = s.dtype;
  st.num_kv_heads = s.hkv;
  st.head_dim = s.d;
  st.k = sk.get();
  st.v = sv.get();
  st.scores = sscores.as<float>();
  st.positions = spos.as<int32_t>();
  st.ring_start = rstart.as<int32_t>();
  st.ring_count = rcount.as<int32_t>();
  int64_t evicted_total = 0;

  const auto run_cascade = [&]() -> absl::Status {
    st.tokens_seen = 0;
    KVC_RETURN_IF_ERROR(sscores.Upload(zeros.data(), slots * s.hkv * 4));
    KVC_RETURN_IF_ERROR(rstart.Upload(izeros.data(), izeros.size() * 4));
    KVC_RETURN_IF_ERROR(rcount.Upload(izeros.data(), izeros.size() * 4));
    std::vector<int32_t> pos(stride), ev(s.hkv);
    for (int64_t c0 = 0; c0 < len; c0 += stride) {
      const int64_t c = std::min<int64_t>(stride, len - c0);
      const int64_t cached = kernels::CascadeStoredTokens(cfg, st.tokens_seen);
      std::iota(pos.begin(), pos.begin() + c, static_cast<int32_t>(cached));
      const int32_t cptr[2] = {0, static_cast<int32_t>(c)};
      KVC_RETURN_IF_ERROR(chunk_ptr.Upload(cptr, 8));
      KVC_RETURN_IF_ERROR(chunk_pos.Upload(pos.data(), c * 4));
      KVC_RETURN_IF_ERROR(chunk_scores.Upload(zeros.data(), c * s.hkv * 4));
      kernels::CascadeGatherArgs g{&st, false, gptr.as<int32_t>(), gidx.as<int32_t>(), gpos.as<int32_t>()};
      KVC_RETURN_IF_ERROR(kernels::CascadeGather(ctx, g));

      const size_t rows = static_cast<size_t>(c) * s.hq;
      const float* qc = q.as<float>() + c0 * s.hq * s.d;
      const KvPool chunk_pool = KvPool::Contiguous(k.as<char>() + c0 * row, v.as<char>() + c0 * row, s.dtype, c,
                                                   s.hkv, s.d);
      // Part 1: the sinks and sub-caches (per-head lists), all visible.
      kernels::PrefillArgs cache;
      cache.q = qc;
      cache.q_positions = chunk_pos.as<int32_t>();
      cache.num_q = c;
      cache.num_q_heads = s.hq;
      cache.kv = st.AsPool();
      cache.gather = KvGather{gptr.as<int32_t>(), gidx.as<int32_t>(), gpos.as<int32_t>(), true};
      cache.causal = false;
      cache.rope = rope;
      cache.out = parts_out.as<float>();
      cache.lse = parts_lse.as<float>();
      KVC_RETURN_IF_ERROR(kernels::Prefill(ctx, cache));
      // Part 2: the chunk itself, causal.
      kernels::PrefillArgs own = cache;
      own.kv = chunk_pool;
      own.gather = KvGather{chunk_ptr.as<int32_t>(), chunk_idx.as<int32_t>(), chunk_pos.as<int32_t>(), false};
      own.causal = true;
      own.out = parts_out.as<float>() + rows * s.d;
      own.lse = parts_lse.as<float>() + rows;
      KVC_RETURN_IF_ERROR(kernels::Prefill(ctx, own));
      kernels::MergeStatesArgs m{parts_out.as<float>(), parts_lse.as<float>(), 2, static_cast<int64_t>(rows),
                                 s.d, out.as<float>() + c0 * s.hq * s.d, lse.as<float>()};
      KVC_RETURN_IF_ERROR(kernels::MergeStates(ctx, m));
      // EMA scores of both parts under the merged normaliser (scores only).
      cache.out = nullptr;
      cache.lse = nullptr;
      cache.accum = kernels::ScoreAccum{kernels::ScoreMode::kEma, kernels::GroupReduce::kMax, 0.999f, 0,
                                        st.scores, lse.as<float>()};
      KVC_RETURN_IF_ERROR(kernels::Prefill(ctx, cache));
      own.out = nullptr;
      own.lse = nullptr;
      own.accum = cache.accum;
      own.accum.scores = chunk_scores.as<float>();
      KVC_RETURN_IF_ERROR(kernels::Prefill(ctx, own));
      kernels::CascadeInsertArgs ins;
      ins.state = &st;
      ins.k = chunk_pool.k;
      ins.v = chunk_pool.v;
      ins.scores = chunk_scores.as<float>();
      ins.positions = all_idx.as<int32_t>() + c0;
      ins.num_tokens = c;
      ins.evicted_k = ev_k.get();
      ins.evicted_v = ev_v.get();
      ins.evicted_positions = ev_pos.as<int32_t>();
      ins.evicted_count = ev_count.as<int32_t>();
      KVC_RETURN_IF_ERROR(kernels::CascadeInsert(ctx, ins));
      KVC_RETURN_IF_ERROR(ev_count.Download(ev.data(), s.hkv * 4));
      evicted_total += ev[0];
    }
    return absl::OkStatus();
  };
  KVC_ASSIGN_OR_RETURN(double t_cascade, TimeIt(backend, run_cascade));
  double pairs = 0;
  for (int64_t c0 = 0; c0 < len; c0 += stride) {
    const int64_t c = std::min<int64_t>(stride, len - c0);
    pairs += 2.0 * c * kernels::CascadeStoredTokens(cfg, c0) + c * (c + 1);  // attention + score pass
  }
  PrintRow({absl::StrFormat("cascade prefill S=%d W=%d stride=%d", cfg.num_sinks, cfg.window(), stride), len,
            t_cascade, 2.0 * len * row, AttnFlops(s, pairs / 2) * 1.5,
            absl::StrFormat("%.1fx faster than dense", t_dense / t_cascade)});
  return absl::OkStatus();
}

absl::Status Main() {
  Backend backend;
  const std::string b = absl::GetFlag(FLAGS_backend);
  if (b == "cpu") backend = Backend::kCpu;
  else if (b == "cuda") backend = Backend::kCuda;
  else if (b == "reference") backend = Backend::kReference;
  else return absl::InvalidArgumentError("--backend must be cpu, cuda or reference, got '" + b + "'");
  if (backend == Backend::kCuda) KVC_RETURN_IF_ERROR(kernels::CudaAvailable());
  Shape s{absl::GetFlag(FLAGS_q_heads), absl::GetFlag(FLAGS_kv_heads), absl::GetFlag(FLAGS_head_dim), DType::kBF16};
  const std::string dt = absl::GetFlag(FLAGS_dtype);
  if (dt == "f32") s.dtype = DType::kF32;
  else if (dt == "f16") s.dtype = DType::kF16;
  else if (dt != "bf16") return absl::InvalidArgumentError("--dtype must be f32, bf16 or f16, got '" + dt + "'");
  std::vector<int64_t> contexts;
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_contexts), ',', absl::SkipEmpty())) {
    int64_t n;
    if (!absl::SimpleAtoi(part, &n) || n <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("--contexts: '", part, "' is not a positive integer"));
    }
    contexts.push_back(n);
  }
  KVC_ASSIGN_OR_RETURN(uint64_t probe_bytes, ParseByteSize(absl::GetFlag(FLAGS_probe_bytes)));

  kernels::ThreadPool& tp = kernels::DefaultThreadPool();
  const MachineProbe probe = ProbeMachine(tp, probe_bytes);
  std::string device = absl::StrFormat("%s, %d threads", probe.cpu, probe.threads);
  if (backend == Backend::kCuda) {
    auto name = kernels::CudaDeviceName();
    device = name.ok() ? *name : std::string(name.status().message());
  }
  std::printf("# kernels_bench backend=%s device: %s\n", b.c_str(), device.c_str());
  std::printf("# host: memcpy %.1f GB/s, read %.1f GB/s, fp32 FMA peak %.0f GFLOP/s (%d threads)\n",
              probe.memcpy_gbps, probe.read_gbps, probe.peak_gflops, probe.threads);
  std::printf("# shapes: Hq=%d Hkv=%d D=%d KV %s; TokenSelect k=%d n_init=%d n_local=%d; chunk=%d\n", s.hq, s.hkv,
              s.d, std::string(kernels::DTypeName(s.dtype)).c_str(), absl::GetFlag(FLAGS_topk),
              absl::GetFlag(FLAGS_n_init), absl::GetFlag(FLAGS_n_local), absl::GetFlag(FLAGS_chunk));
  std::printf("%-34s %8s %10s %9s %9s  %s\n", "case", "context", "time_ms", "GB/s", "GFLOP/s", "ratio");
  ProgressBar progress("kernels_bench", contexts.size() + 1, "cases");
  for (int64_t n : contexts) {
    KVC_RETURN_IF_ERROR(RunContext(backend, s, n, probe, tp));
    progress.Add(1);
  }
  if (const int64_t len = absl::GetFlag(FLAGS_cascade_len); len > 0) {
    KVC_RETURN_IF_ERROR(RunCascade(backend, s, len, tp, probe));
  }
  progress.Add(1);
  progress.Finish();
  return absl::OkStatus();
}

}  // namespace
}  // namespace kvc::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Dense attention vs TokenSelect's selected attention and the cascading cache's strided prefill, "
      "with the machine's memcpy bandwidth and FMA peak, in one run.\n"
      "  kernels_bench [--backend=cpu|cuda] [--contexts=8192,32768,131072] [--dtype=bf16]");
  absl::ParseCommandLine(argc, argv);
  const absl::Status s = kvc::bench::Main();
  if (!s.ok()) {
    std::fprintf(stderr, "kernels_bench: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}
