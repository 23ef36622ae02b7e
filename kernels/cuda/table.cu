// The CUDA dispatch table, offered only where a device is present.
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/device.h"
#include "kernels/internal/backend.h"

namespace kvc::kernels::internal {

absl::StatusOr<const KernelTable*> CudaKernels() {
  // Devices do not come and go while a process runs: ask the driver once.
  static const absl::Status available = CudaAvailable();
  if (!available.ok()) return available;
  static const KernelTable table = {
      "cuda",
      cuda::Prefill,
      cuda::Decode,
      cuda::MergeStates,
      cuda::QueryFingerprint,
      cuda::TokenSelect,
      cuda::TokenSelectLse,
      cuda::CascadeInsert,
      cuda::CascadeGather,
      cuda::LessFold,
      cuda::LessCombine,
      cuda::Linear,
      cuda::RmsNorm,
      cuda::SwiGlu,
      cuda::QuestUpdatePages,
      cuda::QuestSelect,
  };
  return &table;
}

}  // namespace kvc::kernels::internal
