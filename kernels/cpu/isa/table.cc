#include "kernels/cpu/isa/cpu_kernels.h"
#include "kernels/internal/backend.h"

namespace kvc::kernels::KVC_CPU_NS {

#define KVC_STR_(x) #x
#define KVC_STR(x) KVC_STR_(x)

const internal::KernelTable& Kernels() {
  static const internal::KernelTable table = {
      "cpu-x86-64-" KVC_STR(KVC_CPU_ISA), Prefill,       Decode,        MergeStates,
      QueryFingerprint,                   TokenSelect,   TokenSelectLse, CascadeInsert,
      CascadeGather,                      LessFold,      LessCombine,    Linear,
      RmsNorm,                            SwiGlu,        QuestUpdatePages, QuestSelect,
  };
  return table;
}

}  // namespace kvc::kernels::KVC_CPU_NS
