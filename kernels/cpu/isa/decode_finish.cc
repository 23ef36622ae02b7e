// Planning and finishing of the optimised CPU Decode (decode_plan.h): the
// chunking of the gathered lists, the exact merge of each list's partial
// states (as MergeStates), and the score accumulation from the kept logits.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/isa/decode_plan.h"

namespace kvc::kernels::KVC_CPU_NS {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Keys per task: long enough to amortise a task's start and its share of
// the merge, short enough to give every thread several tasks.
constexpr int64_t kMinChunk = 256;
constexpr int64_t kMaxChunk = 8192;

void MergeList(const DecodePlan& plan, int64_t list) {
  const DecodeArgs& a = *plan.args;
  const int64_t padded = plan.setup->padded_dim;
  const int d_head = plan.setup->head_dim, g = plan.setup->group;
  const ListInfo info = plan.List(list);
  const int64_t t0 = plan.first_task[list], t1 = plan.first_task[list + 1];
  const int rows = plan.rows_per_list;
  for (int r = 0; r < rows; ++r) {
    const int64_t q_row = int64_t{info.batch} * a.num_q_heads + int64_t{info.first_head} * g + r;
    float max_m = kNegInf;
    for (int64_t t = t0; t < t1; ++t) max_m = std::max(max_m, plan.State(t)[rows * padded + r]);
    float* out = a.out != nullptr ? a.out + q_row * d_head : nullptr;
    if (max_m == kNegInf) {
      if (out != nullptr) std::fill(out, out + d_head, 0.0f);
      if (plan.lse_out != nullptr) plan.lse_out[q_row] = kNegInf;
      continue;
    }
    float sum = 0.0f;
    for (int64_t t = t0; t < t1; ++t) {
      const float* state = plan.State(t);
      sum += state[rows * padded + rows + r] * std::exp(state[rows * padded + r] - max_m);
    }
    if (plan.lse_out != nullptr) plan.lse_out[q_row] = max_m + std::log(sum);
    if (out == nullptr) continue;
    const float inv = 1.0f / sum;
    for (int c = 0; c < d_head; c += kLanes) {
      v16f acc = Zero();
      for (int64_t t = t0; t < t1; ++t) {
        const float* state = plan.State(t);
        const float w = std::exp(state[rows * padded + r] - max_m) * inv;
        acc = Fma(Splat(w), Load(state + r * padded + c), acc);
      }
      StorePartial(out + c, acc, std::min(kLanes, d_head - c));
    }
  }
}

// Folds this call's probabilities into accum.scores for KV head
// info.first_head + hh of `list` (decode: one query, so one fold).
void AccumulateScores(const DecodePlan& plan, int64_t list, int hh) {
  const DecodeArgs& a = *plan.args;
  const ScoreAccum& accum = a.accum;
  const int g = plan.setup->group;
  const ListInfo info = plan.List(list);
  const int32_t h = info.first_head + hh;
  const float* logits = plan.logits + info.begin * plan.rows_per_list + int64_t{hh} * g * info.size;
  const float* norm_lse = accum.lse != nullptr ? accum.lse : plan.lse_out;
  const int64_t q_row0 = int64_t{info.batch} * a.num_q_heads + int64_t{h} * g;
  float* scores = accum.scores + int64_t{h} * a.kv.num_slots();
  const int32_t* indices = a.gather.indices + info.begin;
  const bool ema = accum.mode == ScoreMode::kEma;
  const bool max_reduce = accum.group_reduce == GroupReduce::kMax;
  const double beta = accum.beta, one_minus_beta = 1.0 - beta;
  for (int64_t j = 0; j < info.size; j += kLanes) {
    const int count = static_cast<int>(std::min<int64_t>(kLanes, info.size - j));
    v16f reduced = Zero();
    for (int r = 0; r < g; ++r) {
      const float norm = norm_lse[q_row0 + r];
      if (norm == kNegInf) continue;  // no key seen anywhere: P = 0
      const v16f p = Exp(LoadPartial(logits + r * info.size + j, count) - Splat(norm));
      reduced = max_reduce ? Max(reduced, p) : reduced + p;
    }
    float red[kLanes];
    Store(red, reduced);
    for (int k = 0; k < count; ++k) {
      float& s = scores[indices[j + k]];
      const double folded = ema ? beta * s + one_minus_beta * red[k] : double{s} + red[k];
      s = static_cast<float>(folded);
    }
  }
}

}  // namespace

ListInfo DecodePlan::List(int64_t list) const {
  const DecodeArgs& a = *args;
  ListInfo info;
  info.begin = a.gather.indptr[list];
  info.size = a.gather.indptr[list + 1] - info.begin;
  if (a.gather.per_kv_head) {
    info.batch = static_cast<int32_t>(list / a.kv.num_kv_heads);
    info.first_head = static_cast<int32_t>(list % a.kv.num_kv_heads);
    info.num_heads = 1;
  } else {
    info.batch = static_cast<int32_t>(list);
    info.first_head = 0;
    info.num_heads = a.kv.num_kv_heads;
  }
  return info;
}

absl::Status DecodePlan::Build(const DecodeArgs& a, const AttentionSetup& s, int64_t lists,
                               int num_threads) {
  args = &a;
  setup = &s;
  num_lists = lists;
  rows_per_list = (a.gather.per_kv_head ? 1 : a.kv.num_kv_heads) * s.group;
  state_floats = int64_t{rows_per_list} * (s.padded_dim + 2);
  // Rows are used in place (keys rotated in registers) for head dims 64 and
  // 128; other dims go through fp32 scratch rows (decode.cc instantiates
  // the in-place loops for those two only, to bound code size).
  direct = s.head_dim == 64 || s.head_dim == 128;
  const int64_t total = a.gather.indptr[num_lists];
  const int64_t target = (total + 4 * num_threads - 1) / (4 * num_threads);
  chunk = (std::clamp(target, kMinChunk, kMaxChunk) + kLanes - 1) / kLanes * kLanes;
  first_task.assign(num_lists + 1, 0);
  for (int64_t l = 0; l < num_lists; ++l) {
    const int64_t size = a.gather.indptr[l + 1] - a.gather.indptr[l];
    first_task[l] = num_tasks();
    for (int64_t j = 0; j < size; j += chunk) {
      task_list.push_back(l);
      task_first_key.push_back(j);
    }
  }
  first_task[num_lists] = num_tasks();
  states = AllocateFloats(static_cast<size_t>(num_tasks()) * state_floats);
  if (!states) return absl::ResourceExhaustedError("Decode: cannot allocate partial states");
  lse_out = a.lse;
  if (a.accum.mode != ScoreMode::kNone && a.accum.first_query == 0) {
    logits_buffer = AllocateFloats(static_cast<size_t>(total) * rows_per_list);
    if (!logits_buffer) return absl::ResourceExhaustedError("Decode: cannot allocate logits");
    logits = logits_buffer.get();
    if (a.accum.lse == nullptr && lse_out == nullptr) {
      own_lse = AllocateFloats(static_cast<size_t>(a.batch) * a.num_q_heads);
      if (!own_lse) return absl::ResourceExhaustedError("Decode: cannot allocate lse");
      lse_out = own_lse.get();
    }
  }
  return absl::OkStatus();
}

absl::Status FinishDecode(ThreadPool& pool, const DecodePlan& plan) {
  pool.ParallelFor(plan.num_lists, 0, [&](int64_t begin, int64_t end) {
    for (int64_t l = begin; l < end; ++l) MergeList(plan, l);
  });
  if (plan.logits == nullptr) return absl::OkStatus();
  const int heads = plan.rows_per_list / plan.setup->group;
  pool.ParallelFor(plan.num_lists * heads, 0, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      AccumulateScores(plan, t / heads, static_cast<int>(t % heads));
  });
  return absl::OkStatus();
}

}  // namespace kvc::kernels::KVC_CPU_NS
