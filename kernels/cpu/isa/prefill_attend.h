// The attention pass of the optimised CPU Prefill: flash-style attention of
// every (KV head, query tile) over its gathered keys, with each chunk of
// keys converted (and rotated) once for all query tiles.
#ifndef KVC_KERNELS_CPU_ISA_PREFILL_ATTEND_H_
#define KVC_KERNELS_CPU_ISA_PREFILL_ATTEND_H_

#include "absl/status/status.h"
#include "kernels/attention.h"
#include "kernels/cpu/isa/attention_common.h"
#include "kernels/cpu/isa/isa.h"

namespace kvc::kernels::KVC_CPU_NS {

// Writes args.out (when non-null) and lse [num_q][Hq] (when non-null).
// REQUIRES: setup prepared kv-head-major. ResourceExhausted when scratch
// cannot be allocated.
// *scores_done: whether args.accum was applied too (fused; see
// prefill_attend.cc), so that no score pass is needed.
absl::Status PrefillAttend(ThreadPool& pool, const PrefillArgs& args, const AttentionSetup& setup,
                           float* lse, bool* scores_done);

}  // namespace kvc::kernels::KVC_CPU_NS

#endif  // KVC_KERNELS_CPU_ISA_PREFILL_ATTEND_H_
