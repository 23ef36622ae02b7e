// Optimised CPU Prefill (kernels/attention.h, kernel 1): queries prepared
// once (rotated, scaled), then the flash-style attention pass
// (prefill_attend.cc) and, when scores are accumulated, the score pass that
// needs the final lse (prefill_scores.cc).
#include "common/status_macros.h"
#include "kernels/cpu/isa/cpu_kernels.h"
#include "kernels/cpu/isa/prefill_attend.h"
#include "kernels/cpu/isa/prefill_scores.h"

namespace kvc::kernels::KVC_CPU_NS {

absl::Status Prefill(const ExecContext& ctx, const PrefillArgs& args) {
  ThreadPool& pool = PoolOf(ctx);
  const bool accumulate = args.accum.mode != ScoreMode::kNone;
  // A scores-only call (out null, accum.lse given) runs the attention pass
  // only when lse is asked for, and then without V.
  const bool attend =
      args.out != nullptr || args.lse != nullptr || (accumulate && args.accum.lse == nullptr);
  AttentionSetup setup;
  const int64_t num_lists = args.gather.per_kv_head ? args.kv.num_kv_heads : 1;
  KVC_RETURN_IF_ERROR(PrepareAttention(pool, args.q, args.q_positions, args.num_q, args.num_q_heads,
                                       args.kv, args.gather, num_lists, args.scale, args.rope,
                                       /*kv_head_major=*/true, &setup));
  // The score pass normalises by accum.lse or this call's own lse.
  AlignedFloats own_lse;
  float* lse = args.lse;
  if (accumulate && args.accum.lse == nullptr && lse == nullptr) {
    own_lse = AllocateFloats(static_cast<size_t>(args.num_q) * args.num_q_heads);
    if (!own_lse) return absl::ResourceExhaustedError("Prefill: cannot allocate lse scratch");
    lse = own_lse.get();
  }
  bool scores_done = false;
  if (attend) KVC_RETURN_IF_ERROR(PrefillAttend(pool, args, setup, lse, &scores_done));
  if (!accumulate || scores_done) return absl::OkStatus();
  return PrefillScores(pool, args, setup, args.accum.lse != nullptr ? args.accum.lse : lse);
}

}  // namespace kvc::kernels::KVC_CPU_NS
