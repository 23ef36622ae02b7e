// Quest (kernel 8; Tang et al., "Quest: Query-Aware Sparsity for Efficient
// Long-Context LLM Inference"; ALGORITHMS.md, baselines): per page of
// `page_size` consecutive tokens and per KV head, the channel-wise minimum
// m and maximum M of the keys; a query scores a page by the upper bound
//
//   bound(q, page) = sum_d max(q_d m_d, q_d M_d)  >=  q . k  for every key k of the page
//
// and attention is restricted to the pages with the highest bounds.
//
// Keys are scored as attention sees them: rotated by RoPE to their original
// positions (the key in pool slot s is at position s), the query rotated to
// its own position, as Quest keeps min/max of post-RoPE keys. The bound is
// then a true upper bound of every logit of the page (before the 1/sqrt(D)
// scale, which does not change the order). With rope.style = kNone keys and
// query are taken as stored.
//
// GQA: each of the g query heads of a KV group bounds a page separately; the
// group's score is the largest of the g bounds (a page is kept when any head
// of the group could attend it strongly, and the bound stays an upper bound
// of every logit the group computes). Selection is per KV head, as Quest
// selects per attention head.
//
// Tie rule: equal scores go to the lower page index (NaN below every
// number, -0 equal to +0); the selection is returned in ascending order.
#ifndef KVC_KERNELS_QUEST_H_
#define KVC_KERNELS_QUEST_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/types.h"

namespace kvc::kernels {

// Page metadata of one sequence and layer, fp32. Page p of KV head h holds
// min[(p * Hkv + h) * D + d] and max[...] (page-major, so the arrays grow by
// appending pages).
struct QuestMeta {
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t page_size = 16;  // tokens per Quest page (independent of KvPool::page_size)
  int64_t max_pages = 0;   // capacity of min / max, in pages
  float* min = nullptr;    // [max_pages][Hkv][D]
  float* max = nullptr;    // [max_pages][Hkv][D]
};

// Brings the metadata up to date after tokens [first_new, num_tokens) were
// written to the pool: every page holding one of them is recomputed from its
// keys (pages [first_new / page_size, ceil(num_tokens / page_size))); the
// last page may be partial and covers only its tokens so far. first_new = 0
// rebuilds everything. Pages before first_new / page_size are not touched,
// so incremental and full rebuilds give the same metadata bit for bit.
struct QuestUpdateArgs {
  KvPool pool;  // keys only; slot s holds token s (position s)
  Rope rope;    // applied to keys before min / max (kNone: as stored)
  QuestMeta meta;
  int64_t num_tokens = 0;  // tokens in the pool, <= pool.num_slots()
  int64_t first_new = 0;   // in [0, num_tokens]
};
absl::Status QuestUpdatePages(const ExecContext& ctx, const QuestUpdateArgs& args);

// Scores pages [0, num_pages) for one query and selects, per KV head, the k
// with the highest group score.
struct QuestSelectArgs {
  const float* q = nullptr;  // [Hq][D], before RoPE
  int32_t num_q_heads = 0;   // a multiple of meta.num_kv_heads
  int32_t q_position = 0;    // RoPE position of the query
  Rope rope;                 // the rope the metadata was built with
  QuestMeta meta;            // read only
  int64_t num_pages = 0;     // candidate pages, in [1, meta.max_pages]
  int64_t k = 0;             // pages selected per KV head, in [1, num_pages]

  float* scores = nullptr;      // [Hkv][num_pages]: every group score
  int32_t* selected = nullptr;  // [Hkv][k]: page indices, ascending per head
  // Device scratch of at least QuestWorkspaceBytes(num_pages, num_q_heads,
  // meta.head_dim), required on CUDA; the CPU paths need none (a given one
  // is size-checked and left unused).
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};
size_t QuestWorkspaceBytes(int64_t num_pages, int32_t num_q_heads, int32_t head_dim);
absl::Status QuestSelect(const ExecContext& ctx, const QuestSelectArgs& args);

}  // namespace kvc::kernels

#endif  // KVC_KERNELS_QUEST_H_
