#include "kernels/internal/backend.h"
#include "kernels/ref/ref_kernels.h"

namespace kvc::kernels::internal {

const KernelTable& ReferenceKernels() {
  static const KernelTable table = {
      "reference",       ref::Prefill,       ref::Decode,        ref::MergeStates,
      ref::QueryFingerprint, ref::TokenSelect, ref::TokenSelectLse, ref::CascadeInsert,
      ref::CascadeGather, ref::LessFold,      ref::LessCombine,  ref::Linear,
      ref::RmsNorm,       ref::SwiGlu,      ref::QuestUpdatePages, ref::QuestSelect,
  };
  return table;
}

}  // namespace kvc::kernels::internal
