// The CUDA path's launchers, one per entry of the dispatch table
// (internal/backend.h). Each takes already-validated arguments whose
// pointers are device pointers (CascadeState::tokens_seen and the scalar
// fields are host values), enqueues its kernels on ctx.cuda_stream and
// returns without synchronising or allocating. A returned error is a launch
// failure (InternalError naming the kernel) or a shape this path does not
// support (Unimplemented / InvalidArgument, saying which).
#ifndef KVC_KERNELS_CUDA_CUDA_KERNELS_H_
#define KVC_KERNELS_CUDA_CUDA_KERNELS_H_

#include "absl/status/status.h"
#include "kernels/attention.h"
#include "kernels/cascade.h"
#include "kernels/dense.h"
#include "kernels/less.h"
#include "kernels/quest.h"
#include "kernels/token_select.h"

namespace kvc::kernels::cuda {

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

}  // namespace kvc::kernels::cuda

#endif  // KVC_KERNELS_CUDA_CUDA_KERNELS_H_
