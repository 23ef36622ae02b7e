#include "kernels/internal/backend.h"

#include "absl/strings/str_cat.h"

namespace kvc::kernels::internal {

absl::StatusOr<const KernelTable*> KernelsFor(const ExecContext& ctx) {
  switch (ctx.backend) {
    case Backend::kReference:
      return &ReferenceKernels();
    case Backend::kCpu:
      return &CpuKernels();
    case Backend::kCuda:
      return CudaKernels();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("ExecContext.backend: unknown backend ", static_cast<int>(ctx.backend)));
}

}  // namespace kvc::kernels::internal
