// Placeholder until implemented: every entry returns Unimplemented.
#include "kernels/ref/ref_kernels.h"

namespace kvc::kernels::ref {
absl::Status CascadeInsert(const ExecContext& ctx, const CascadeInsertArgs& args) { return absl::UnimplementedError("CascadeInsert: not implemented on this path"); }
absl::Status CascadeGather(const ExecContext& ctx, const CascadeGatherArgs& args) { return absl::UnimplementedError("CascadeGather: not implemented on this path"); }
}  // namespace kvc::kernels::ref
