// Prefill and Decode on the GPU: both map onto the tiled attention kernel
// (attention_launch.h). Prefill is one sequence of num_q queries; Decode is
// `batch` sequences of one query each. This file picks the tile shape and
// the compiled head dim, and runs the kEma decay of the old scores before
// the kernel adds this call's probabilities.
#include <cmath>
#include <cstdint>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/attention_launch.h"
#include "kernels/cuda/cuda_kernels.h"

namespace kvc::kernels::cuda {
namespace {

constexpr size_t kLargeTileSmemLimit = 112 * 1024;  // leaves headroom below sm_80's 163 KiB

// scores[h][slot] *= decay for every (entry, KV head) the call's lists
// gather. One block per list; lists are disjoint in (slot, head) (attention.h).
__global__ void DecayScoresKernel(const int32_t* indptr, const int32_t* indices, bool per_kv_head,
                                  int32_t num_kv_heads, float* scores, int64_t num_slots,
                                  float decay) {
  const int64_t list = blockIdx.x;
  const int64_t begin = indptr[list], end = indptr[list + 1];
  const int32_t h0 = per_kv_head ? static_cast<int32_t>(list % num_kv_heads) : 0;
  const int32_t h1 = per_kv_head ? h0 + 1 : num_kv_heads;
  for (int32_t h = h0; h < h1; ++h) {
    for (int64_t e = begin + threadIdx.x; e < end; e += blockDim.x)
      scores[h * num_slots + indices[e]] *= decay;
  }
}

// Enqueues one Prefill/Decode call: `p` filled except the blocking fields.
// `batch` sequences, each with p.num_q queries.
absl::Status RunAttention(AttentionParams p, int64_t batch, const ScoreAccum& accum,
                          const char* caller, cudaStream_t stream) {
  const int32_t head_dim = p.kv.head_dim, num_kv_heads = p.kv.num_kv_heads;
  const bool accumulate = accum.mode != ScoreMode::kNone && accum.first_query < p.num_q;
  p.main_pass = p.out != nullptr || p.lse != nullptr || (accumulate && accum.lse == nullptr);
  if (!p.main_pass && !accumulate) return absl::OkStatus();
  if (accumulate) {
    p.accum_mode = accum.mode;
    p.group_reduce = accum.group_reduce;
    p.beta = accum.beta;
    p.first_query = accum.first_query;
    p.scores = accum.scores;
    p.norm_lse = accum.lse;
  }

  // Tile rows: 64 when there are enough rows and the query tile fits,
  // else 16 (decode with a small group, or a very large head dim).
  const int64_t rows_per_seq = p.num_q * p.group;
  const bool large_fits = AttentionSmem(head_dim, 64).bytes <= kLargeTileSmemLimit;
  int rows_per_thread = rows_per_seq > 16 && large_fits ? 4 : 1;
  if (accumulate && accum.group_reduce == GroupReduce::kMax && p.group > 16 * rows_per_thread) {
    // The max over a group must be taken inside one block.
    if (p.group > 64 || !large_fits) {
      return absl::UnimplementedError(absl::StrCat(caller,
                                                   " (CUDA): GroupReduce::kMax score accumulation "
                                                   "supports groups of up to 64 query heads with "
                                                   "head_dim <= 256; got group ",
                                                   p.group, ", head_dim ", head_dim));
    }
    rows_per_thread = 4;
  }
  const int tile_rows = 16 * rows_per_thread;
  p.rows_per_block = p.group <= tile_rows ? (tile_rows / p.group) * p.group : tile_rows;
  const int64_t row_tiles = CeilDiv(rows_per_seq, p.rows_per_block);
  p.row_tiles = static_cast<int32_t>(row_tiles);
  const int64_t blocks_x = batch * row_tiles;
  if (blocks_x > std::numeric_limits<int32_t>::max() || num_kv_heads > 65535) {
    return absl::UnimplementedError(absl::StrCat(caller, " (CUDA): grid of ", blocks_x, " x ",
                                                 num_kv_heads,
                                                 " blocks exceeds the launch limits"));
  }
  const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(num_kv_heads),
                  p.out != nullptr ? static_cast<unsigned>(CeilDiv(head_dim, kAttnDimChunk)) : 1u);
  const size_t smem = AttentionSmem(head_dim, tile_rows).bytes;

  if (accumulate && accum.mode == ScoreMode::kEma) {
    const int64_t num_lists = batch * (p.per_kv_head ? num_kv_heads : 1);
    const float decay = static_cast<float>(std::pow(
        static_cast<double>(accum.beta), static_cast<double>(p.num_q - accum.first_query)));
    DecayScoresKernel<<<static_cast<unsigned>(num_lists), 256, 0, stream>>>(
        p.indptr, p.indices, p.per_kv_head, num_kv_heads, accum.scores, p.num_slots, decay);
    if (absl::Status s = LaunchStatus("DecayScoresKernel"); !s.ok()) return s;
  }
  switch (head_dim) {
    case 48:
      return LaunchAttentionKernel<48>(p, rows_per_thread, grid, smem, stream);
    case 64:
      return LaunchAttentionKernel<64>(p, rows_per_thread, grid, smem, stream);
    case 128:
      return LaunchAttentionKernel<128>(p, rows_per_thread, grid, smem, stream);
    default:
      return LaunchAttentionKernel<0>(p, rows_per_thread, grid, smem, stream);
  }
}

AttentionParams CommonParams(const KvPool& kv, const KvGather& gather, int32_t num_q_heads,
                             float scale, const Rope& rope) {
  AttentionParams p;
  p.num_q_heads = num_q_heads;
  p.group = num_q_heads / kv.num_kv_heads;
  p.kv = PoolView::Of(kv);
  p.indptr = gather.indptr;
  p.indices = gather.indices;
  p.positions = rope.style != RopeStyle::kNone ? gather.positions : nullptr;
  p.per_kv_head = gather.per_kv_head;
  p.scale = scale != 0.0f ? static_cast<double>(scale)
                          : 1.0 / std::sqrt(static_cast<double>(kv.head_dim));
  p.rope_style = rope.style;
  p.rope_theta = rope.theta;
  p.num_slots = kv.num_slots();
  return p;
}

}  // namespace

absl::Status Prefill(const ExecContext& ctx, const PrefillArgs& a) {
  AttentionParams p = CommonParams(a.kv, a.gather, a.num_q_heads, a.scale, a.rope);
  p.q = a.q;
  p.q_positions = a.rope.style != RopeStyle::kNone ? a.q_positions : nullptr;
  p.num_q = a.num_q;
  p.causal = a.causal;
  p.out = a.out;
  p.lse = a.lse;
  return RunAttention(p, /*batch=*/1, a.accum, "Prefill", StreamOf(ctx));
}

absl::Status Decode(const ExecContext& ctx, const DecodeArgs& a) {
  AttentionParams p = CommonParams(a.kv, a.gather, a.num_q_heads, a.scale, a.rope);
  p.q = a.q;
  p.q_positions = a.rope.style != RopeStyle::kNone ? a.q_positions : nullptr;
  p.num_q = 1;
  p.causal = false;
  p.out = a.out;
  p.lse = a.lse;
  return RunAttention(p, a.batch, a.accum, "Decode", StreamOf(ctx));
}

}  // namespace kvc::kernels::cuda
