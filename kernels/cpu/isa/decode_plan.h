// How the optimised CPU Decode splits its work: gathered lists cut into
// chunks (tasks), each with an unnormalised partial state, and the merge
// and score accumulation that finish the call (decode_finish.cc).
#ifndef KVC_KERNELS_CPU_ISA_DECODE_PLAN_H_
#define KVC_KERNELS_CPU_ISA_DECODE_PLAN_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/attention.h"
#include "kernels/cpu/isa/attention_common.h"
#include "kernels/cpu/isa/isa.h"

namespace kvc::kernels::KVC_CPU_NS {

// One gathered list: entries [begin, begin + size) of the gather, read by
// KV heads [first_head, first_head + num_heads) of sequence `batch`.
struct ListInfo {
  int64_t begin;
  int64_t size;
  int32_t batch;
  int32_t first_head;
  int32_t num_heads;
};

// Not thread-safe to build; read-only (apart from each task's own state and
// logits) while the chunks run.
struct DecodePlan {
  // ResourceExhausted when the scratch cannot be allocated.
  absl::Status Build(const DecodeArgs& args, const AttentionSetup& setup, int64_t num_lists,
                     int num_threads);

  ListInfo List(int64_t list) const;
  int64_t num_tasks() const { return static_cast<int64_t>(task_list.size()); }
  // Partial state of a task: O [rows_per_list][padded_dim] (unnormalised),
  // then m [rows_per_list] (running max), then l [rows_per_list] (sum of
  // exp(logit - m)).
  float* State(int64_t task) const { return states.get() + task * state_floats; }

  const DecodeArgs* args = nullptr;
  const AttentionSetup* setup = nullptr;
  int64_t num_lists = 0;
  int rows_per_list = 0;  // query rows reading one list: heads per list * g
  int64_t state_floats = 0;
  int64_t chunk = 0;  // keys per task
  // Keys and values read straight from the pool (RoPE, if any, applied in
  // registers) rather than converted into scratch rows first.
  bool direct = false;
  std::vector<int64_t> task_list;       // [tasks] list of each task
  std::vector<int64_t> task_first_key;  // [tasks] first list entry of each task
  std::vector<int64_t>
      first_task;  // [num_lists + 1] tasks of list l: [first_task[l], first_task[l+1])
  AlignedFloats states;
  // Score accumulation only: logits (scaled) of every gathered entry for
  // every row reading it; list l's block starts at begin * rows_per_list,
  // laid out [row][size]. Null otherwise.
  AlignedFloats logits_buffer;
  float* logits = nullptr;
  // [batch][Hq] lse the scores are normalised by: accum.lse, else args.lse,
  // else own_lse.
  AlignedFloats own_lse;
  float* lse_out = nullptr;  // where this call's lse goes (args.lse or own_lse); may be null
};

// Merges every list's partial states into args.out / args.lse (zeros and
// -inf for an empty list), then updates accum.scores if asked.
absl::Status FinishDecode(ThreadPool& pool, const DecodePlan& plan);

}  // namespace kvc::kernels::KVC_CPU_NS

#endif  // KVC_KERNELS_CPU_ISA_DECODE_PLAN_H_
