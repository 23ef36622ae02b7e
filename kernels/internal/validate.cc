#include "kernels/internal/validate.h"

namespace kvc::kernels::internal {
absl::Status ValidatePrefill(const PrefillArgs&, Backend) { return absl::OkStatus(); }
absl::Status ValidateDecode(const DecodeArgs&, Backend) { return absl::OkStatus(); }
absl::Status ValidateMergeStates(const MergeStatesArgs&) { return absl::OkStatus(); }
absl::Status ValidateFingerprint(const FingerprintArgs&) { return absl::OkStatus(); }
absl::Status ValidateTokenSelect(const TokenSelectArgs&, Backend, bool) { return absl::OkStatus(); }
absl::Status ValidateCascadeInsert(const CascadeInsertArgs&) { return absl::OkStatus(); }
absl::Status ValidateCascadeGather(const CascadeGatherArgs&) { return absl::OkStatus(); }
absl::Status ValidateLessFold(const LessFoldArgs&, Backend) { return absl::OkStatus(); }
absl::Status ValidateLessCombine(const LessCombineArgs&) { return absl::OkStatus(); }
}  // namespace kvc::kernels::internal
