// Pieces shared by the optimised CPU Prefill and Decode: cheap per-key
// addressing into a paged pool, and the per-call preparation of queries
// (rotated, scaled, zero-padded) and of the RoPE table.
#ifndef KVC_KERNELS_CPU_ISA_ATTENTION_COMMON_H_
#define KVC_KERNELS_CPU_ISA_ATTENTION_COMMON_H_

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cpu/isa/isa.h"
#include "kernels/cpu/isa/rope.h"
#include "kernels/cpu/isa/simd.h"
#include "kernels/thread_pool.h"
#include "kernels/types.h"

namespace kvc::kernels::KVC_CPU_NS {

// Element offsets into KvPool::k / v with one division per key (none for
// page size 1): Offset(slot, h) == SlotOffset(slot) + h * head_stride.
struct KvRows {
  explicit KvRows(const KvPool& kv)
      : page_size(kv.page_size),
        row_stride(kv.layout == KvLayout::kNHD ? int64_t{kv.num_kv_heads} * kv.head_dim
                                               : int64_t{kv.head_dim}),
        page_stride(int64_t{kv.page_size} * kv.num_kv_heads * kv.head_dim),
        head_stride(kv.layout == KvLayout::kNHD ? int64_t{kv.head_dim}
                                                : int64_t{kv.page_size} * kv.head_dim) {}

  int64_t SlotOffset(int64_t slot) const {
    if (page_size == 1) return slot * page_stride;
    const int64_t page = slot / page_size;
    return page * page_stride + (slot - page * page_size) * row_stride;
  }

  int64_t page_size;
  int64_t row_stride;   // between slots of one page
  int64_t page_stride;  // between pages
  int64_t head_stride;  // between KV heads of one slot
};

// Head dim rounded up to whole vectors; padded lanes of every prepared
// query, key and value row are zero, so they add nothing to any product.
inline int PaddedHeadDim(int head_dim) { return (head_dim + kLanes - 1) / kLanes * kLanes; }

inline float LogitScale(float scale, int head_dim) {
  return scale != 0.0f ? scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
}

inline ThreadPool& PoolOf(const ExecContext& ctx) {
  return ctx.pool != nullptr ? *ctx.pool : DefaultThreadPool();
}

// What one Prefill or Decode call prepares before attending.
struct AttentionSetup {
  int head_dim = 0;
  int padded_dim = 0;  // PaddedHeadDim(head_dim)
  int group = 0;       // g = Hq / Hkv
  float scale = 0.0f;
  RopeStyle style = RopeStyle::kNone;
  bool rotate_keys = false;  // style != kNone and the gather has positions
  RopeTable rope;            // built iff style != kNone
  // Queries rotated to their positions and multiplied by `scale`:
  // [num_tokens][Hq][padded_dim], or [Hkv][num_tokens][g][padded_dim] when
  // prepared kv-head-major (prefill: a KV head's tile rows are contiguous).
  AlignedFloats q;
};

// Fills `setup` for a call over `num_tokens` tokens of Hq query heads.
// Positions of keys are gather.positions[0 .. indptr[num_lists]).
// ResourceExhausted when scratch cannot be allocated.
absl::Status PrepareAttention(ThreadPool& pool, const float* q, const int32_t* q_positions,
                              int64_t num_tokens, int32_t num_q_heads, const KvPool& kv,
                              const KvGather& gather, int64_t num_lists, float scale,
                              const Rope& rope, bool kv_head_major, AttentionSetup* setup);

// Runs body(task, scratch) for every task in [0, num_tasks), handing tasks
// out one at a time (dynamic balance) to the pool's threads; each thread
// prepares one Scratch with init(scratch) -> bool. Returns false when some
// thread's init failed (its share is then done by the others, if any).
template <class Scratch, class Init, class Body>
bool ForEachTask(ThreadPool& pool, int64_t num_tasks, const Init& init, const Body& body) {
  std::atomic<int64_t> next{0};
  std::atomic<bool> ok{true};
  const int64_t workers = std::min<int64_t>(pool.num_threads(), num_tasks);
  pool.ParallelFor(workers, 1, [&](int64_t, int64_t) {
    Scratch scratch;
    if (!init(scratch)) {
      ok = false;
      return;
    }
    for (int64_t t = next.fetch_add(1); t < num_tasks; t = next.fetch_add(1)) body(t, scratch);
  });
  return ok;
}

// Loads `count` (<= 16) keys or values of one KV head as fp32 rows of
// padded_dim into dst [count][padded_dim] (pad lanes zero); keys are rotated
// when `angles` is non-null (angles: [count][2][head_dim/2], cos then sin).
template <class Tag>
inline void LoadRows(const typename Tag::Storage* base, const int64_t* offsets, int count,
                     int head_dim, int padded_dim, RopeStyle style, const float* angles,
                     float* dst) {
  const int half = head_dim / 2;
  for (int k = 0; k < count; ++k) {
    float* row = dst + static_cast<int64_t>(k) * padded_dim;
    ConvertRow<Tag>(base + offsets[k], head_dim, row);
    for (int d = head_dim; d < padded_dim; ++d) row[d] = 0.0f;
    if (angles != nullptr) {
      const float* a = angles + static_cast<int64_t>(k) * 2 * half;
      RotateRow(style, head_dim, a, a + half, row);
    }
  }
}

}  // namespace kvc::kernels::KVC_CPU_NS

#endif  // KVC_KERNELS_CPU_ISA_ATTENTION_COMMON_H_
