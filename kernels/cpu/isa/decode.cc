// Optimised CPU Decode (kernels/attention.h, kernel 2). Memory-bound: every
// key and value row is read once and shared by the g query heads of its
// group. Each gathered list is cut into chunks processed in parallel; a
// chunk covers every KV head of a shared list, so the RoPE angles of a
// token are computed once for all its heads. Chunks keep unnormalised
// partial states (O, running max m, running sum l) that are merged exactly
// afterwards (decode_finish.cc), which also does the score accumulation
// from logits kept in scratch.
#include <algorithm>
#include <cmath>
#include <limits>

#include "common/status_macros.h"
#include "kernels/cpu/isa/cpu_kernels.h"
#include "kernels/cpu/isa/decode_block.h"
#include "kernels/cpu/isa/decode_plan.h"

namespace kvc::kernels::KVC_CPU_NS {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct ChunkScratch {
  bool Allocate(int head_dim, int padded) {
    pair_angles = AllocateFloats(static_cast<size_t>(kDecodeBlock) * head_dim + 1);
    key_angles = AllocateFloats(static_cast<size_t>(kDecodeBlock) * 2 * padded);
    keys = AllocateFloats(static_cast<size_t>(kDecodeBlock) * padded);
    values = AllocateFloats(static_cast<size_t>(kDecodeBlock) * padded);
    return pair_angles && key_angles && keys && values;
  }
  // pair_angles: [16][cos | sin] per RoPE pair; key_angles: [16][2][padded]
  // expanded rows (rope.h ExpandAngles); keys, values: [16][padded].
  AlignedFloats pair_angles, key_angles, keys, values;
};

// One block of up to 16 keys for the query rows of one KV head.
template <class T>
struct Block {
  const typename T::Storage* const* keys;    // [count] rows
  const typename T::Storage* const* values;  // [count] rows; null: no output (scores only)
  const float* key_angles;                   // fused RoPE only
  int count;
  int64_t padded;
  int64_t logits_stride;
};

// G query rows: logits, online softmax update of (m, l), and
// O = alpha O + P V. `logits_out` (null = not kept): G rows logits_stride
// apart, this block's lanes written at offset 0.
template <class T, int G, int NV, RopeStyle kRope>
void BlockRows(const Block<T>& b, const float* q, float* o, float* m, float* l, float* logits_out) {
  const int nv = static_cast<int>(b.padded / kLanes);
  v16f logits[G];
  BlockLogits<T, G, NV, kRope>(b.keys, b.key_angles, b.count, q, b.padded, nv, logits);
  const v16i lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const v16i in_range = lane < b.count;
  float p[G * kDecodeBlock];
  float alpha[G];
  for (int r = 0; r < G; ++r) {
    const v16f x = in_range ? logits[r] : Splat(kNegInf);
    if (logits_out != nullptr) StorePartial(logits_out + r * b.logits_stride, x, b.count);
    const float m_new = std::max(m[r], ReduceMax(x));
    if (m_new == kNegInf) {
      alpha[r] = 1.0f;
      Store(p + r * kDecodeBlock, Zero());
      continue;
    }
    alpha[r] = m[r] == m_new ? 1.0f : std::exp(m[r] - m_new);
    const v16f pr = Exp(x - Splat(m_new));
    Store(p + r * kDecodeBlock, pr);
    l[r] = l[r] * alpha[r] + ReduceAdd(pr);
    m[r] = m_new;
  }
  if (b.values != nullptr) BlockAccumulate<T, G, NV>(b.values, b.count, p, alpha, nv, o, b.padded);
}

// The g query rows of one KV head, up to kDecodeRows at a time.
template <class T, int NV, RopeStyle kRope>
void BlockGroup(const Block<T>& b, int g, const float* q, float* o, float* m, float* l,
                float* logits_out) {
  for (int r0 = 0; r0 < g;) {
    const float* qr = q + r0 * b.padded;
    float* orow = o + r0 * b.padded;
    float* lo = logits_out != nullptr ? logits_out + r0 * b.logits_stride : nullptr;
    // 3 rows go as 2 + 1: fewer instantiations, and g = 3 is rare.
    const int rows = std::min(kDecodeRows, g - r0) == 4 ? 4 : std::min(2, g - r0);
    if (rows == 4) {
      BlockRows<T, 4, NV, kRope>(b, qr, orow, m + r0, l + r0, lo);
    } else if (rows == 2) {
      BlockRows<T, 2, NV, kRope>(b, qr, orow, m + r0, l + r0, lo);
    } else {
      BlockRows<T, 1, NV, kRope>(b, qr, orow, m + r0, l + r0, lo);
    }
    r0 += rows;
  }
}

// Attends chunk `task` of the plan into its partial state. NV > 0: rows
// used in place (plan.direct, head dim 16 * NV), keys rotated in registers
// when kRope is not kNone; NV == 0: rows converted into scratch first.
template <class Tag, int NV, RopeStyle kRope>
void DecodeChunk(const DecodePlan& plan, int64_t task, ChunkScratch& sc) {
  using Storage = typename Tag::Storage;
  const DecodeArgs& a = *plan.args;
  const AttentionSetup& setup = *plan.setup;
  const int g = setup.group, d_head = setup.head_dim, half = d_head / 2;
  const int64_t padded = setup.padded_dim;
  const ListInfo info = plan.List(plan.task_list[task]);
  const int64_t j_begin = plan.task_first_key[task];
  const int64_t j_end = std::min(info.size, j_begin + plan.chunk);
  const int rows = plan.rows_per_list;
  float* o = plan.State(task);
  float* m = o + rows * padded;
  float* l = m + rows;
  std::fill(o, o + rows * padded, 0.0f);
  std::fill(m, m + rows, kNegInf);
  std::fill(l, l + rows, 0.0f);

  const KvRows kv_rows(a.kv);
  const auto* k_base = static_cast<const Storage*>(a.kv.k);
  const auto* v_base = static_cast<const Storage*>(a.kv.v);
  // A scores-only call (out null) needs the logits and lse, not P V.
  const bool with_values = a.out != nullptr;
  const int32_t* indices = a.gather.indices + info.begin;
  const int32_t* positions = setup.rotate_keys ? a.gather.positions + info.begin : nullptr;
  const float* q_rows =
      setup.q.get() + (int64_t{info.batch} * a.num_q_heads + int64_t{info.first_head} * g) * padded;
  float* logits = plan.logits != nullptr ? plan.logits + info.begin * rows : nullptr;
  const int64_t row_bytes = int64_t{d_head} * static_cast<int64_t>(sizeof(Storage));

  // offsets[0]: this block's slots; offsets[1]: the next block's (prefetched).
  int64_t offsets[2][kDecodeBlock];
  const Storage* kp[kDecodeBlock];
  const Storage* vp[kDecodeBlock];
  const float* kf[kDecodeBlock];
  const float* vf[kDecodeBlock];
  for (int k = 0; k < kDecodeBlock; ++k) {
    kf[k] = sc.keys.get() + k * padded;
    vf[k] = sc.values.get() + k * padded;
  }
  const Block<Tag> direct{kp, with_values ? vp : nullptr, sc.key_angles.get(), 0, padded,
                          info.size};
  const Block<KvF32> converted{kf, with_values ? vf : nullptr, nullptr, 0, padded, info.size};
  auto block_offsets = [&](int64_t jb, int64_t* out) {
    const int count = static_cast<int>(std::min<int64_t>(kDecodeBlock, j_end - jb));
    for (int k = 0; k < count; ++k) out[k] = kv_rows.SlotOffset(indices[jb + k]);
    return count;
  };
  block_offsets(j_begin, offsets[1]);
  for (int64_t jb = j_begin; jb < j_end; jb += kDecodeBlock) {
    const int count = static_cast<int>(std::min<int64_t>(kDecodeBlock, j_end - jb));
    std::copy(offsets[1], offsets[1] + count, offsets[0]);
    if (jb + kDecodeBlock < j_end) {
      const int next = block_offsets(jb + kDecodeBlock, offsets[1]);
      for (int k = 0; k < next; ++k) {
        for (int hh = 0; hh < info.num_heads; ++hh) {
          const int64_t off = offsets[1][k] + (info.first_head + hh) * kv_rows.head_stride;
          PrefetchRow(k_base + off, row_bytes);
          if (with_values) PrefetchRow(v_base + off, row_bytes);
        }
      }
    }
    if (positions != nullptr) {  // angles of each token, shared by its heads
      for (int k = 0; k < count; ++k) {
        float* ang = sc.pair_angles.get() + k * d_head;
        setup.rope.Angles(positions[jb + k], ang, ang + half);
        if constexpr (kRope != RopeStyle::kNone) {
          ExpandAngles(kRope, d_head, ang, ang + half, sc.key_angles.get() + k * 2 * padded);
        }
      }
    }
    for (int hh = 0; hh < info.num_heads; ++hh) {
      const int64_t head_offset = (info.first_head + hh) * kv_rows.head_stride;
      const float* q = q_rows + int64_t{hh} * g * padded;
      float* oh = o + int64_t{hh} * g * padded;
      float* lo = logits != nullptr ? logits + int64_t{hh} * g * info.size + jb : nullptr;
      if constexpr (NV > 0) {  // plan.direct
        for (int k = 0; k < count; ++k) {
          kp[k] = k_base + offsets[0][k] + head_offset;
          if (with_values) vp[k] = v_base + offsets[0][k] + head_offset;
        }
        Block<Tag> b = direct;
        b.count = count;
        BlockGroup<Tag, NV, kRope>(b, g, q, oh, m + hh * g, l + hh * g, lo);
      } else {
        LoadRows<Tag>(k_base + head_offset, offsets[0], count, d_head, static_cast<int>(padded),
                      setup.style, positions != nullptr ? sc.pair_angles.get() : nullptr,
                      sc.keys.get());
        if (with_values) {
          LoadRows<Tag>(v_base + head_offset, offsets[0], count, d_head, static_cast<int>(padded),
                        RopeStyle::kNone, nullptr, sc.values.get());
        }
        Block<KvF32> b = converted;
        b.count = count;
        BlockGroup<KvF32, NV, RopeStyle::kNone>(b, g, q, oh, m + hh * g, l + hh * g, lo);
      }
    }
  }
}

template <class Tag, int NV, RopeStyle kRope>
absl::Status RunChunks(ThreadPool& pool, const DecodePlan& plan) {
  const bool ok = ForEachTask<ChunkScratch>(
      pool, plan.num_tasks(),
      [&](ChunkScratch& sc) { return sc.Allocate(plan.setup->head_dim, plan.setup->padded_dim); },
      [&](int64_t task, ChunkScratch& sc) { DecodeChunk<Tag, NV, kRope>(plan, task, sc); });
  if (!ok) return absl::ResourceExhaustedError("Decode: cannot allocate chunk scratch");
  return absl::OkStatus();
}

// Keys rotated in registers for head dims 64 and 128 (DecodePlan::direct).
template <class Tag, int NV>
absl::Status RunChunksForRope(ThreadPool& pool, const DecodePlan& plan) {
  if (plan.direct && plan.setup->rotate_keys) {
    if (plan.setup->style == RopeStyle::kHalf) {
      return RunChunks<Tag, NV, RopeStyle::kHalf>(pool, plan);
    }
    return RunChunks<Tag, NV, RopeStyle::kInterleaved>(pool, plan);
  }
  return RunChunks<Tag, NV, RopeStyle::kNone>(pool, plan);
}

template <class Tag>
absl::Status RunChunksForDim(ThreadPool& pool, const DecodePlan& plan) {
  if (plan.direct) {
    if (plan.setup->head_dim == 128) return RunChunksForRope<Tag, 8>(pool, plan);
    return RunChunksForRope<Tag, 4>(pool, plan);
  }
  // Scratch rows: the storage type only matters to the conversion.
  return RunChunks<Tag, 0, RopeStyle::kNone>(pool, plan);
}

}  // namespace

absl::Status Decode(const ExecContext& ctx, const DecodeArgs& args) {
  ThreadPool& pool = PoolOf(ctx);
  const int64_t num_lists =
      int64_t{args.batch} * (args.gather.per_kv_head ? args.kv.num_kv_heads : 1);
  AttentionSetup setup;
  KVC_RETURN_IF_ERROR(PrepareAttention(pool, args.q, args.q_positions, args.batch, args.num_q_heads,
                                       args.kv, args.gather, num_lists, args.scale, args.rope,
                                       /*kv_head_major=*/false, &setup));
  DecodePlan plan;
  KVC_RETURN_IF_ERROR(plan.Build(args, setup, num_lists, pool.num_threads()));
  KVC_RETURN_IF_ERROR(VisitKvType(
      args.kv.dtype, [&](auto tag) { return RunChunksForDim<decltype(tag)>(pool, plan); }));
  return FinishDecode(pool, plan);
}

}  // namespace kvc::kernels::KVC_CPU_NS
