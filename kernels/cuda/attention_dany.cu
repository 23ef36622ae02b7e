// AttentionKernel for head dim any (runtime, in 128-dim chunks).
#include "kernels/cuda/attention_kernel.cuh"

namespace kvc::kernels::cuda {
template absl::Status LaunchAttentionKernel<0>(const AttentionParams&, int, dim3, size_t,
                                               cudaStream_t);
}  // namespace kvc::kernels::cuda
