// The reference path: plain loops, fp32 values, fp64 accumulation where it
// matters. This is the specification every other path is tested against.
// Single-threaded and synchronous; arguments are already validated.
#ifndef KVC_KERNELS_REF_REF_KERNELS_H_
#define KVC_KERNELS_REF_REF_KERNELS_H_

#include <vector>

#include "absl/status/status.h"
#include "kernels/attention.h"
#include "kernels/cascade.h"
#include "kernels/dense.h"
#include "kernels/less.h"
#include "kernels/quest.h"
#include "kernels/token_select.h"

namespace kvc::kernels::ref {

absl::Status Prefill(const ExecContext& ctx, const PrefillArgs& args);
absl::Status Decode(const ExecContext& ctx, const DecodeArgs& args);
absl::Status MergeStates(const ExecContext& ctx, const MergeStatesArgs& args);
absl::Status QueryFingerprint(const ExecContext& ctx, const FingerprintArgs& args);
absl::Status TokenSelect(const ExecContext& ctx, const TokenSelectArgs& args);
absl::Status TokenSelectLse(const ExecContext& ctx, const TokenSelectArgs& args, float* lse_out);
absl::Status CascadeInsert(const ExecContext& ctx, const CascadeInsertArgs& args);
absl::Status CascadeGather(const ExecContext& ctx, const CascadeGatherArgs& args);
absl::Status LessFold(const ExecContext& ctx, const LessFoldArgs& args);
absl::Status LessCombine(const ExecContext& ctx, const LessCombineArgs& args);
absl::Status Linear(const ExecContext& ctx, const LinearArgs& args);
absl::Status RmsNorm(const ExecContext& ctx, const RmsNormArgs& args);
absl::Status SwiGlu(const ExecContext& ctx, const SwiGluArgs& args);
absl::Status QuestUpdatePages(const ExecContext& ctx, const QuestUpdateArgs& args);
absl::Status QuestSelect(const ExecContext& ctx, const QuestSelectArgs& args);
// less.h EvaluateFeatureMap.
std::vector<double> EvaluateFeatureMapImpl(const FeatureMap& f, const float* x);

}  // namespace kvc::kernels::ref

#endif  // KVC_KERNELS_REF_REF_KERNELS_H_
