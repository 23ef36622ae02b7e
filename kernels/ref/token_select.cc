// Placeholder until implemented: every entry returns Unimplemented.
#include "kernels/ref/ref_kernels.h"

namespace kvc::kernels::ref {
absl::Status QueryFingerprint(const ExecContext& ctx, const FingerprintArgs& args) { return absl::UnimplementedError("QueryFingerprint: not implemented on this path"); }
absl::Status TokenSelect(const ExecContext& ctx, const TokenSelectArgs& args) { return absl::UnimplementedError("TokenSelect: not implemented on this path"); }
absl::Status TokenSelectLse(const ExecContext& ctx, const TokenSelectArgs& args, float* lse_out) { return absl::UnimplementedError("TokenSelectLse: not implemented on this path"); }
}  // namespace kvc::kernels::ref
