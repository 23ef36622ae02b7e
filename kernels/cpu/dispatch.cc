// Picks the optimised CPU build for this processor, once.
#include "absl/strings/str_cat.h"
#include "kernels/internal/backend.h"

namespace kvc::kernels {
namespace cpu_v4 {
const internal::KernelTable& Kernels();
}
namespace cpu_v3 {
const internal::KernelTable& Kernels();
}

namespace internal {

const KernelTable& CpuKernels() {
  static const KernelTable* table = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return &cpu_v4::Kernels();
    if (__builtin_cpu_supports("x86-64-v3")) return &cpu_v3::Kernels();
    return &ReferenceKernels();
  }();
  return *table;
}

absl::StatusOr<const KernelTable*> CpuKernelsForIsa(absl::string_view isa) {
  __builtin_cpu_init();
  if (isa == "v4" && __builtin_cpu_supports("x86-64-v4")) return &cpu_v4::Kernels();
  if (isa == "v3" && __builtin_cpu_supports("x86-64-v3")) return &cpu_v3::Kernels();
  return absl::UnavailableError(
      absl::StrCat("CPU kernels for x86-64-", isa, " do not run on this processor"));
}

}  // namespace internal
}  // namespace kvc::kernels
