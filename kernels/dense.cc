#include "kernels/dense.h"

#include "common/status_macros.h"
#include "kernels/internal/backend.h"
#include "kernels/internal/validate.h"

namespace kvc::kernels {

absl::Status Linear(const ExecContext& ctx, const LinearArgs& args) {
  KVC_ASSIGN_OR_RETURN(const internal::KernelTable* table, internal::KernelsFor(ctx));
  KVC_RETURN_IF_ERROR(internal::ValidateLinear(args));
  if (args.m == 0) return absl::OkStatus();
  return table->linear(ctx, args);
}

absl::Status RmsNorm(const ExecContext& ctx, const RmsNormArgs& args) {
  KVC_ASSIGN_OR_RETURN(const internal::KernelTable* table, internal::KernelsFor(ctx));
  KVC_RETURN_IF_ERROR(internal::ValidateRmsNorm(args));
  if (args.rows == 0) return absl::OkStatus();
  return table->rms_norm(ctx, args);
}

absl::Status SwiGlu(const ExecContext& ctx, const SwiGluArgs& args) {
  KVC_ASSIGN_OR_RETURN(const internal::KernelTable* table, internal::KernelsFor(ctx));
  KVC_RETURN_IF_ERROR(internal::ValidateSwiGlu(args));
  if (args.count == 0) return absl::OkStatus();
  return table->swiglu(ctx, args);
}

}  // namespace kvc::kernels
