// Quest, optimised CPU path (kernels/quest.h). Metadata: pages in parallel;
// per token the RoPE angles come from a RopeTable (shared by every head),
// keys are rotated and reduced in fp32, so min / max match the reference
// within one or two fp32 roundings of the rotation. Selection: the query is
// rotated in double like the reference; bounds are 16-lane fp32 sums over
// pages in parallel; top-k per KV head by the exact radix select of
// TokenSelect (same tie rule).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>

#include "kernels/cpu/isa/cpu_kernels.h"
#include "kernels/cpu/isa/rope.h"
#include "kernels/cpu/isa/simd.h"
#include "kernels/cpu/isa/token_select_topk.h"
#include "kernels/dtype.h"
#include "kernels/thread_pool.h"

namespace kvc::kernels::KVC_CPU_NS {
namespace {

ThreadPool& PoolOf(const ExecContext& ctx) {
  return ctx.pool != nullptr ? *ctx.pool : DefaultThreadPool();
}

// Key (slot, head) of the pool widened to fp32. out: [D].
void LoadKey(const KvPool& pool, int64_t slot, int32_t head, float* out) {
  const int64_t off = pool.Offset(slot, head);
  const int32_t D = pool.head_dim;
  if (pool.dtype == DType::kF32) {
    std::memcpy(out, static_cast<const float*>(pool.k) + off, D * sizeof(float));
    return;
  }
  const uint16_t* in = static_cast<const uint16_t*>(pool.k) + off;
  if (pool.dtype == DType::kBF16) {
    for (int32_t d = 0; d < D; ++d) out[d] = BF16ToFloat(in[d]);
  } else {
    for (int32_t d = 0; d < D; ++d) out[d] = F16ToFloat(in[d]);
  }
}

// Pages [page_begin, page_end): min / max over each page's tokens, all heads.
void UpdatePages(const QuestUpdateArgs& args, const RopeTable* table, int64_t page_begin,
                 int64_t page_end) {
  const KvPool& pool = args.pool;
  const QuestMeta& m = args.meta;
  const int32_t D = pool.head_dim, hkv = pool.num_kv_heads;
  const int64_t ps = m.page_size;
  // Scratch: a key row, cos / sin, then the page's min and max for every head.
  const size_t per_head = static_cast<size_t>(D);
  std::unique_ptr<float[]> scratch(new float[2 * per_head + 2 * per_head * hkv]);
  float* row = scratch.get();
  float* cos = row + D;
  float* sin = cos + D / 2;
  float* lo = row + 2 * per_head;
  float* hi = lo + per_head * hkv;
  for (int64_t p = page_begin; p < page_end; ++p) {
    std::fill(lo, lo + per_head * hkv, std::numeric_limits<float>::infinity());
    std::fill(hi, hi + per_head * hkv, -std::numeric_limits<float>::infinity());
    const int64_t begin = p * ps, end = std::min(begin + ps, args.num_tokens);
    for (int64_t s = begin; s < end; ++s) {
      if (table != nullptr) table->Angles(static_cast<int32_t>(s), cos, sin);
      for (int32_t h = 0; h < hkv; ++h) {
        LoadKey(pool, s, h, row);
        if (table != nullptr) RotateRow(args.rope.style, D, cos, sin, row);
        float* l = lo + h * per_head;
        float* u = hi + h * per_head;
        for (int32_t d = 0; d < D; ++d) {
          l[d] = row[d] < l[d] ? row[d] : l[d];
          u[d] = row[d] > u[d] ? row[d] : u[d];
        }
      }
    }
    std::memcpy(m.min + p * hkv * per_head, lo, per_head * hkv * sizeof(float));
    std::memcpy(m.max + p * hkv * per_head, hi, per_head * hkv * sizeof(float));
  }
}

// sum_d max(q_d lo_d, q_d hi_d) in fp32, 16 lanes at a time.
float PageBound(const float* q, const float* lo, const float* hi, int32_t D) {
  v16f acc = Zero();
  int32_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
    const v16f qv = Load(q + d);
    acc += Max(qv * Load(lo + d), qv * Load(hi + d));
  }
  if (d < D) {
    const int rest = D - d;
    const v16f qv = LoadPartial(q + d, rest);
    acc += Max(qv * LoadPartial(lo + d, rest), qv * LoadPartial(hi + d, rest));
  }
  return ReduceAdd(acc);
}

}  // namespace

absl::Status QuestUpdatePages(const ExecContext& ctx, const QuestUpdateArgs& args) {
  const int64_t ps = args.meta.page_size;
  const int64_t first_page = args.first_new / ps;
  const int64_t end_page = (args.num_tokens + ps - 1) / ps;
  if (first_page >= end_page) return absl::OkStatus();
  RopeTable table;
  const bool rotate = args.rope.style != RopeStyle::kNone;
  if (rotate && !table.Build(args.rope.theta, args.pool.head_dim, static_cast<int32_t>(first_page * ps),
                             static_cast<int32_t>(args.num_tokens - 1))) {
    return absl::ResourceExhaustedError("QuestUpdatePages: cannot allocate the RoPE table");
  }
  const RopeTable* t = rotate ? &table : nullptr;
  PoolOf(ctx).ParallelFor(end_page - first_page, 8, [&](int64_t begin, int64_t end) {
    UpdatePages(args, t, first_page + begin, first_page + end);
  });
  return absl::OkStatus();
}

absl::Status QuestSelect(const ExecContext& ctx, const QuestSelectArgs& args) {
  const QuestMeta& m = args.meta;
  const int32_t D = m.head_dim, hkv = m.num_kv_heads, hq = args.num_q_heads;
  const int32_t group = hq / hkv;
  const int64_t n = args.num_pages;
  // The query of every head rotated to its position, in double as the
  // reference does, then rounded to fp32.
  std::unique_ptr<float[]> q(new float[static_cast<size_t>(hq) * D]);
  std::memcpy(q.get(), args.q, sizeof(float) * hq * D);
  if (args.rope.style != RopeStyle::kNone) {
    const int32_t half = D / 2;
    for (int32_t i = 0; i < half; ++i) {
      const double freq = std::pow(static_cast<double>(args.rope.theta), -2.0 * i / D);
      const double angle = static_cast<double>(args.q_position) * freq;
      const double c = std::cos(angle), s = std::sin(angle);
      const int32_t a = args.rope.style == RopeStyle::kInterleaved ? 2 * i : i;
      const int32_t b = args.rope.style == RopeStyle::kInterleaved ? 2 * i + 1 : i + half;
      for (int32_t h = 0; h < hq; ++h) {
        const double xa = args.q[h * D + a], xb = args.q[h * D + b];
        q[h * D + a] = static_cast<float>(xa * c - xb * s);
        q[h * D + b] = static_cast<float>(xa * s + xb * c);
      }
    }
  }
  ThreadPool& pool = PoolOf(ctx);
  const float* qs = q.get();
  pool.ParallelFor(n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      for (int32_t kv = 0; kv < hkv; ++kv) {
        const float* lo = m.min + (p * hkv + kv) * D;
        const float* hi = m.max + (p * hkv + kv) * D;
        float best = -std::numeric_limits<float>::infinity();
        for (int32_t g = 0; g < group; ++g) {
          const float b = PageBound(qs + static_cast<int64_t>(kv * group + g) * D, lo, hi, D);
          best = b > best ? b : best;
        }
        args.scores[kv * n + p] = best;
      }
    }
  });
  pool.ParallelFor(hkv, 1, [&](int64_t begin, int64_t end) {
    for (int64_t kv = begin; kv < end; ++kv) {
      SelectTopK(args.scores + kv * n, n, args.k, 0, args.selected + kv * args.k, nullptr);
    }
  });
  return absl::OkStatus();
}

}  // namespace kvc::kernels::KVC_CPU_NS
