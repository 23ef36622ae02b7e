// Argument checks shared by every backend: shapes, enums, null and
// overlapping buffers, and (for host-resident arguments, i.e. not kCuda) the
// contents of index lists. Each failure is InvalidArgument naming the
// argument and the offending value.
#ifndef KVC_KERNELS_INTERNAL_VALIDATE_H_
#define KVC_KERNELS_INTERNAL_VALIDATE_H_

#include "absl/status/status.h"
#include "kernels/attention.h"
#include "kernels/cascade.h"
#include "kernels/dense.h"
#include "kernels/less.h"
#include "kernels/quest.h"
#include "kernels/token_select.h"

namespace kvc::kernels::internal {

absl::Status ValidatePrefill(const PrefillArgs& args, Backend backend);
absl::Status ValidateDecode(const DecodeArgs& args, Backend backend);
absl::Status ValidateMergeStates(const MergeStatesArgs& args);
absl::Status ValidateFingerprint(const FingerprintArgs& args);
// `for_lse`: phase one (k and outputs not used).
absl::Status ValidateTokenSelect(const TokenSelectArgs& args, Backend backend, bool for_lse);
absl::Status ValidateCascadeInsert(const CascadeInsertArgs& args);
absl::Status ValidateCascadeGather(const CascadeGatherArgs& args);
absl::Status ValidateLessFold(const LessFoldArgs& args, Backend backend);
absl::Status ValidateLessCombine(const LessCombineArgs& args);
absl::Status ValidateQuestUpdate(const QuestUpdateArgs& args);
absl::Status ValidateQuestSelect(const QuestSelectArgs& args, Backend backend);
absl::Status ValidateLinear(const LinearArgs& args);
absl::Status ValidateRmsNorm(const RmsNormArgs& args);
absl::Status ValidateSwiGlu(const SwiGluArgs& args);

}  // namespace kvc::kernels::internal

#endif  // KVC_KERNELS_INTERNAL_VALIDATE_H_
