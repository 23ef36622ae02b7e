// Placeholder until implemented: every entry returns Unimplemented.
#include "kernels/ref/ref_kernels.h"

namespace kvc::kernels::ref {
absl::Status LessFold(const ExecContext& ctx, const LessFoldArgs& args) { return absl::UnimplementedError("LessFold: not implemented on this path"); }
absl::Status LessCombine(const ExecContext& ctx, const LessCombineArgs& args) { return absl::UnimplementedError("LessCombine: not implemented on this path"); }
}  // namespace kvc::kernels::ref
