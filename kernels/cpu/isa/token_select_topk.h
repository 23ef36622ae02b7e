// TokenSelect's top-k: an exact O(n) selection by radix select on the score
// bits, with the fixed tie rule, returning the winners in position order.
#ifndef KVC_KERNELS_CPU_ISA_TOKEN_SELECT_TOPK_H_
#define KVC_KERNELS_CPU_ISA_TOKEN_SELECT_TOPK_H_

#include <cstdint>

#include "kernels/cpu/isa/isa.h"

namespace kvc::kernels::KVC_CPU_NS {

// Writes to selected[0, k) the indices i in [0, n) of the k best
// scores[i] -- higher score first, equal scores: lower index first (NaN
// below everything, -0 equal to +0) -- in ascending order, each plus
// `index_offset`, and their scores to selected_scores[0, k) when it is not
// null. REQUIRES: 1 <= k <= n.
void SelectTopK(const float* scores, int64_t n, int64_t k, int64_t index_offset, int32_t* selected,
                float* selected_scores);

}  // namespace kvc::kernels::KVC_CPU_NS

#endif  // KVC_KERNELS_CPU_ISA_TOKEN_SELECT_TOPK_H_
