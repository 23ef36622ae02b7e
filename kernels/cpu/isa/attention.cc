// Per-call preparation shared by the optimised Prefill and Decode
// (attention_common.h): the RoPE table over every position of the call, and
// the queries rotated once, scaled and padded.
#include <algorithm>

#include "kernels/cpu/isa/attention_common.h"

namespace kvc::kernels::KVC_CPU_NS {

absl::Status PrepareAttention(ThreadPool& pool, const float* q, const int32_t* q_positions,
                              int64_t num_tokens, int32_t num_q_heads, const KvPool& kv,
                              const KvGather& gather, int64_t num_lists, float scale,
                              const Rope& rope, bool kv_head_major, AttentionSetup* setup) {
  const int d_head = kv.head_dim;
  const int padded = PaddedHeadDim(d_head);
  const int group = num_q_heads / kv.num_kv_heads;
  setup->head_dim = d_head;
  setup->padded_dim = padded;
  setup->group = group;
  setup->scale = LogitScale(scale, d_head);
  setup->style = rope.style;
  const int64_t num_keys = gather.indptr[num_lists];
  setup->rotate_keys = rope.style != RopeStyle::kNone && gather.positions != nullptr;

  if (rope.style != RopeStyle::kNone) {
    int32_t lo, hi;
    PositionRange(q_positions, num_tokens, &lo, &hi);
    if (setup->rotate_keys && num_keys > 0) {
      int32_t klo, khi;
      PositionRange(gather.positions, num_keys, &klo, &khi);
      lo = std::min(lo, klo);
      hi = std::max(hi, khi);
    }
    if (!setup->rope.Build(rope.theta, d_head, lo, hi)) {
      return absl::ResourceExhaustedError("attention: cannot allocate the RoPE table");
    }
  }

  const int64_t num_rows = num_tokens * num_q_heads;
  setup->q = AllocateFloats(static_cast<size_t>(num_rows) * padded);
  if (!setup->q) return absl::ResourceExhaustedError("attention: cannot allocate query scratch");
  float* q_out = setup->q.get();
  const float s = setup->scale;
  const int half = d_head / 2;
  const RopeTable* table = &setup->rope;
  pool.ParallelFor(num_tokens, 0, [&](int64_t begin, int64_t end) {
    AlignedFloats angles = AllocateFloats(static_cast<size_t>(2 * half + 1));
    for (int64_t i = begin; i < end; ++i) {
      if (rope.style != RopeStyle::kNone) {
        table->Angles(q_positions[i], angles.get(), angles.get() + half);
      }
      for (int32_t h = 0; h < num_q_heads; ++h) {
        const int64_t row =
            kv_head_major ? (static_cast<int64_t>(h / group) * num_tokens + i) * group + h % group
                          : i * num_q_heads + h;
        float* dst = q_out + row * padded;
        const float* src = q + (i * num_q_heads + h) * d_head;
        for (int d = 0; d < d_head; ++d) dst[d] = src[d];
        for (int d = d_head; d < padded; ++d) dst[d] = 0.0f;
        if (rope.style != RopeStyle::kNone) {
          RotateRow(rope.style, d_head, angles.get(), angles.get() + half, dst);
        }
        for (int d = 0; d < d_head; ++d) dst[d] *= s;
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace kvc::kernels::KVC_CPU_NS
