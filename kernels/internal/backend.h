// The dispatch seam: one table of kernel implementations per backend. The
// public entry points (attention.cc, token_select.cc, cascade.cc, less.cc,
// dense.cc, quest.cc)
// validate arguments once (internal/validate.h) and call the table of the
// backend named in the ExecContext; implementations may assume valid
// arguments.
#ifndef KVC_KERNELS_INTERNAL_BACKEND_H_
#define KVC_KERNELS_INTERNAL_BACKEND_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/attention.h"
#include "kernels/cascade.h"
#include "kernels/dense.h"
#include "kernels/less.h"
#include "kernels/quest.h"
#include "kernels/token_select.h"

namespace kvc::kernels::internal {

struct KernelTable {
  const char* name;
  absl::Status (*prefill)(const ExecContext&, const PrefillArgs&);
  absl::Status (*decode)(const ExecContext&, const DecodeArgs&);
  absl::Status (*merge_states)(const ExecContext&, const MergeStatesArgs&);
  absl::Status (*fingerprint)(const ExecContext&, const FingerprintArgs&);
  absl::Status (*token_select)(const ExecContext&, const TokenSelectArgs&);
  absl::Status (*token_select_lse)(const ExecContext&, const TokenSelectArgs&, float*);
  absl::Status (*cascade_insert)(const ExecContext&, const CascadeInsertArgs&);
  absl::Status (*cascade_gather)(const ExecContext&, const CascadeGatherArgs&);
  absl::Status (*less_fold)(const ExecContext&, const LessFoldArgs&);
  absl::Status (*less_combine)(const ExecContext&, const LessCombineArgs&);
  absl::Status (*linear)(const ExecContext&, const LinearArgs&);
  absl::Status (*rms_norm)(const ExecContext&, const RmsNormArgs&);
  absl::Status (*swiglu)(const ExecContext&, const SwiGluArgs&);
  absl::Status (*quest_update)(const ExecContext&, const QuestUpdateArgs&);
  absl::Status (*quest_select)(const ExecContext&, const QuestSelectArgs&);
};

// kernels/ref: the specification.
const KernelTable& ReferenceKernels();
// kernels/cpu: the widest ISA build this CPU runs (AVX-512 or AVX2); the
// reference on a CPU without AVX2.
const KernelTable& CpuKernels();
// One ISA build of kernels/cpu ("v4", "v3"), for tests that cover
// every build this processor can run; Unavailable for the others.
absl::StatusOr<const KernelTable*> CpuKernelsForIsa(absl::string_view isa);
// kernels/cuda: Unavailable when built without CUDA or when no device is present.
absl::StatusOr<const KernelTable*> CudaKernels();

// The table for ctx.backend, or the reason it cannot run.
absl::StatusOr<const KernelTable*> KernelsFor(const ExecContext& ctx);

}  // namespace kvc::kernels::internal

#endif  // KVC_KERNELS_INTERNAL_BACKEND_H_
