// The score-accumulation pass of the optimised CPU Prefill (attention.h,
// ScoreAccum): needs the final normaliser of every query row, so it runs
// after the attention pass and recomputes the logits.
#ifndef KVC_KERNELS_CPU_ISA_PREFILL_SCORES_H_
#define KVC_KERNELS_CPU_ISA_PREFILL_SCORES_H_

#include "absl/status/status.h"
#include "kernels/attention.h"
#include "kernels/cpu/isa/attention_common.h"
#include "kernels/cpu/isa/isa.h"

namespace kvc::kernels::KVC_CPU_NS {

// Updates args.accum.scores for every gathered (entry, KV head) of the
// call: P_i(j) = exp(logit_ij - norm_lse[i][h]), reduced over the group and
// folded query by query in order (in double, as the reference does).
// REQUIRES: args.accum.mode != kNone; setup prepared kv-head-major;
// norm_lse: [num_q][Hq].
absl::Status PrefillScores(ThreadPool& pool, const PrefillArgs& args, const AttentionSetup& setup,
                           const float* norm_lse);

}  // namespace kvc::kernels::KVC_CPU_NS

#endif  // KVC_KERNELS_CPU_ISA_PREFILL_SCORES_H_
