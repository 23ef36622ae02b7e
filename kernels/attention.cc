#include "kernels/attention.h"

#include "common/status_macros.h"
#include "kernels/internal/backend.h"
#include "kernels/internal/validate.h"

namespace kvc::kernels {

absl::Status Prefill(const ExecContext& ctx, const PrefillArgs& args) {
  KVC_ASSIGN_OR_RETURN(const internal::KernelTable* table, internal::KernelsFor(ctx));
  KVC_RETURN_IF_ERROR(internal::ValidatePrefill(args, ctx.backend));
  if (args.num_q == 0) return absl::OkStatus();
  return table->prefill(ctx, args);
}

absl::Status Decode(const ExecContext& ctx, const DecodeArgs& args) {
  KVC_ASSIGN_OR_RETURN(const internal::KernelTable* table, internal::KernelsFor(ctx));
  KVC_RETURN_IF_ERROR(internal::ValidateDecode(args, ctx.backend));
  if (args.batch == 0) return absl::OkStatus();
  return table->decode(ctx, args);
}

absl::Status MergeStates(const ExecContext& ctx, const MergeStatesArgs& args) {
  KVC_ASSIGN_OR_RETURN(const internal::KernelTable* table, internal::KernelsFor(ctx));
  KVC_RETURN_IF_ERROR(internal::ValidateMergeStates(args));
  if (args.num_rows == 0) return absl::OkStatus();
  return table->merge_states(ctx, args);
}

}  // namespace kvc::kernels
