// AttentionKernel for head dim 128.
#include "kernels/cuda/attention_kernel.cuh"

namespace kvc::kernels::cuda {
template absl::Status LaunchAttentionKernel<128>(const AttentionParams&, int, dim3, size_t,
                                                 cudaStream_t);
}  // namespace kvc::kernels::cuda
