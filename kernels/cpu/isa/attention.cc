// Placeholder until implemented: every entry returns Unimplemented.
#include "kernels/cpu/isa/cpu_kernels.h"

namespace kvc::kernels::KVC_CPU_NS {
absl::Status Prefill(const ExecContext& ctx, const PrefillArgs& args) { return absl::UnimplementedError("Prefill: not implemented on this path"); }
absl::Status Decode(const ExecContext& ctx, const DecodeArgs& args) { return absl::UnimplementedError("Decode: not implemented on this path"); }
absl::Status MergeStates(const ExecContext& ctx, const MergeStatesArgs& args) { return absl::UnimplementedError("MergeStates: not implemented on this path"); }
}  // namespace kvc::kernels::KVC_CPU_NS
