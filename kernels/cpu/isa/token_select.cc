// Optimised TokenSelect (kernel 4). The scanned candidates are cut into
// chunks of kChunk positions, taken in turn by one task per thread; a
// chunk's logits [Hq][kChunk] are still in L2 when its lse partials, or its
// scores when the lse is given, are taken right after its scan. Per
// candidate the arithmetic is fixed (ScanLogits, ScoreChunk), so scores do
// not depend on chunking, threads or shards; only the rounding of the lse
// depends on the chunking (not on the thread count).
//
// Per candidate, relative to the reference: logits are an fp32 FMA chain
// instead of an fp64 dot, exp is simd.h's Exp in fp32 and the sum over heads
// is fp32 (the lse itself is accumulated in fp64).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <new>

#include "common/status_macros.h"
#include "kernels/cpu/isa/cpu_kernels.h"
#include "kernels/cpu/isa/simd.h"
#include "kernels/cpu/isa/token_select_scan.h"
#include "kernels/cpu/isa/token_select_topk.h"
#include "kernels/thread_pool.h"

namespace kvc::kernels::KVC_CPU_NS {
namespace {

typedef double v8d __attribute__((vector_size(64)));

constexpr int64_t kChunk = 512;  // [Hq = 32][512] fp32 logits = 64 KiB
constexpr float kNegInfF = -std::numeric_limits<float>::infinity();

int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

ThreadPool& PoolOf(const ExecContext& ctx) {
  return ctx.pool != nullptr ? *ctx.pool : DefaultThreadPool();
}

absl::Status OutOfMemory() {
  return absl::ResourceExhaustedError("TokenSelect: cannot allocate CPU scratch memory");
}

// Lane j of a vector covering positions [base, base + 16) is in [begin, end).
inline v16i LaneIn(int64_t base, int64_t begin, int64_t end) {
  const v16i lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const v16i pos = lane + static_cast<int32_t>(base - begin);
  return (pos >= 0) & (pos < static_cast<int32_t>(end - begin));
}

// One chunk's lse partials for every head over its eligible lanes [begin,
// end) (chunk-relative): max_out[h] = the largest logit (-inf when none),
// sum_out[h] = sum exp(logit - max) in fp64 (lanes in a fixed order).
void ChunkLsePartials(const float* logits, int32_t num_heads, int64_t begin, int64_t end,
                      float* max_out, double* sum_out) {
  // Whole vectors [first, last) need no lane mask; the partial ones at
  // either end (`masked`) do.
  int64_t first = RoundUp(begin, kLanes), last = end / kLanes * kLanes;
  int64_t masked[2];
  int num_masked = 0;
  if (begin < end && begin / kLanes == (end - 1) / kLanes) {
    masked[num_masked++] = begin / kLanes * kLanes;
    first = last = 0;
  } else {
    if (begin % kLanes != 0) masked[num_masked++] = begin / kLanes * kLanes;
    if (end % kLanes != 0) masked[num_masked++] = last;
  }
  for (int32_t h = 0; h < num_heads; ++h) {
    const float* row = logits + h * kChunk;
    if (begin >= end) {
      max_out[h] = kNegInfF;
      sum_out[h] = 0;
      continue;
    }
    v16f vmax = Splat(kNegInfF);
    for (int64_t v = first; v < last; v += kLanes) vmax = Max(vmax, Load(row + v));
    for (int i = 0; i < num_masked; ++i) {
      vmax = LaneIn(masked[i], begin, end) ? Max(vmax, Load(row + masked[i])) : vmax;
    }
    const float m = ReduceMax(vmax);
    v8d lo = {}, hi = {};
    const auto add = [&](v16f e) {
      lo += __builtin_convertvector(__builtin_shufflevector(e, e, 0, 1, 2, 3, 4, 5, 6, 7), v8d);
      hi +=
          __builtin_convertvector(__builtin_shufflevector(e, e, 8, 9, 10, 11, 12, 13, 14, 15), v8d);
    };
    for (int64_t v = first; v < last; v += kLanes) add(Exp(Load(row + v) - m));
    for (int i = 0; i < num_masked; ++i) {
      add(LaneIn(masked[i], begin, end) ? Exp(Load(row + masked[i]) - m) : Zero());
    }
    const v8d s = lo + hi;
    max_out[h] = m;
    sum_out[h] = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  }
}

// score[j] = sum over heads in order of Exp(logit_h[j] - lse_h), fp32, for
// the chunk's lanes [0, num_vectors * 16).
void ScoreChunk(const float* logits, int32_t num_heads, const float* lse, int64_t num_vectors,
                float* score) {
  for (int64_t v = 0; v < num_vectors * kLanes; v += kLanes) {
    v16f acc = Zero();
    for (int32_t h = 0; h < num_heads; ++h) {
      acc += Exp(Load(logits + h * kChunk + v) - Splat(lse[h]));
    }
    Store(score + v, acc);
  }
}

// Logits of every scanned chunk are kept when they fit (in the caller's
// workspace, or in this scratch of the calling thread, kept between calls up
// to kMaxCachedLogitsBytes: 16 MiB at 128K candidates and 32 heads;
// allocating it afresh would cost a page fault per 4 KiB, about a tenth of
// the call). Otherwise the keys are scanned twice, once for the lse and once
// for the scores, with one chunk of logits per thread.
constexpr size_t kMaxCachedLogitsBytes = size_t{64} << 20;

// The logits scratch of the calling thread, at least `floats` long (null
// when it cannot be allocated).
float* CachedLogitsScratch(size_t floats) {
  thread_local AlignedFloats buffer;
  thread_local size_t capacity = 0;
  if (capacity < floats) {
    buffer.reset();
    buffer = AllocateFloats(floats);
    capacity = buffer ? floats : 0;
  }
  return buffer.get();
}

// The work of one TokenSelect or TokenSelectLse call.
class Selector {
 public:
  Selector(const ExecContext& ctx, const TokenSelectArgs& args, bool lse_only)
      : args_(args), pool_(PoolOf(ctx)), lse_only_(lse_only) {
    const int64_t n = args.num_candidates;
    select_begin_ = args.select_begin;
    select_end_ = args.select_end < 0 ? n : args.select_end;
    radius_ = args.pool_kernel > 1 ? args.pool_kernel / 2 : 0;
    // Candidates whose scores can matter: the eligible ones, the pooling
    // windows around them, and all of them when every score is returned.
    if (lse_only) {
      lo_ = select_begin_, hi_ = select_end_;
    } else if (args.scores != nullptr) {
      lo_ = 0, hi_ = n;
    } else {
      lo_ = std::max<int64_t>(0, select_begin_ - radius_);
      hi_ = std::min<int64_t>(n, select_end_ + radius_);
    }
    chunks_ = (hi_ - lo_ + kChunk - 1) / kChunk;
  }

  absl::Status Run(float* lse_out);

 private:
  absl::Status Prepare();
  void ScanChunks(bool lse_known);
  void CombineLse();
  void ScoreChunks();
  void Pool();

  const TokenSelectArgs& args_;
  ThreadPool& pool_;
  const bool lse_only_;
  int64_t select_begin_, select_end_, lo_, hi_, chunks_;
  int32_t radius_;

  AlignedFloats query_;                  // PrepareScanQuery()
  // [chunks][Hq][kChunk] (workspace or CachedLogitsScratch()); null when
  // the keys are scanned twice.
  float* logits_ = nullptr;
  AlignedFloats chunk_max_;              // [chunks][Hq]
  std::unique_ptr<double[]> chunk_sum_;  // [chunks][Hq]
  AlignedFloats lse_;                    // [Hq]
  AlignedFloats score_;                  // radius -inf, [chunks * kChunk], radius -inf
  AlignedFloats pooled_;                 // [hi - lo] when pooling
  LogitScan scan_;
  std::atomic<bool> scan_ok_{true};
};

absl::Status Selector::Prepare() {
  const int32_t hq = args_.num_q_heads, dim = args_.pool.head_dim;
  const float scale = args_.scale != 0.0f ? args_.scale : 1.0f / std::sqrt(static_cast<float>(dim));
  query_ = AllocateFloats(static_cast<size_t>(hq) * ScanPaddedDim(dim));
  const size_t logit_floats = static_cast<size_t>(chunks_) * hq * kChunk;
  const bool keeps_logits = !lse_only_ && args_.global_lse == nullptr;
  if (keeps_logits && args_.workspace != nullptr) {
    // Validation checked workspace_bytes >= TokenSelectWorkspaceBytes(),
    // which covers the logits rounded up to whole chunks, aligned.
    void* p = args_.workspace;
    size_t space = args_.workspace_bytes;
    logits_ = static_cast<float*>(std::align(64, logit_floats * sizeof(float), p, space));
    if (logits_ == nullptr) return absl::InternalError("TokenSelect: workspace smaller than its logits");
  } else if (keeps_logits && logit_floats * sizeof(float) <= kMaxCachedLogitsBytes) {
    logits_ = CachedLogitsScratch(logit_floats);
    if (logits_ == nullptr) return OutOfMemory();
  }
  chunk_max_ = AllocateFloats(static_cast<size_t>(chunks_) * hq);
  chunk_sum_.reset(new (std::nothrow) double[std::max<int64_t>(1, chunks_ * hq)]);
  lse_ = AllocateFloats(hq);
  if (!query_ || !chunk_max_ || !chunk_sum_ || !lse_) return OutOfMemory();
  if (!lse_only_) {
    score_ = AllocateFloats(chunks_ * kChunk + 2 * radius_);
    if (!score_) return OutOfMemory();
    if (radius_ > 0) {
      pooled_ = AllocateFloats(hi_ - lo_);
      if (!pooled_) return OutOfMemory();
    }
  }
  PrepareScanQuery(args_.pool, args_.qbar, hq, scale, query_.get());
  scan_.pool = &args_.pool;
  scan_.candidates = args_.candidates;
  scan_.query = query_.get();
  scan_.num_q_heads = hq;
  return absl::OkStatus();
}

// Logits of every chunk, then, while they are hot: lse partials, or scores
// when the lse is already known.
void Selector::ScanChunks(bool lse_known) {
  const int32_t hq = args_.num_q_heads;
  // One task per thread, each with its own scan scratch, taking chunks in
  // order from a shared counter.
  std::atomic<int64_t> next_chunk{0};
  const int64_t tasks = std::min<int64_t>(pool_.num_threads(), chunks_);
  pool_.ParallelFor(tasks, 1, [&](int64_t, int64_t) {
    AlignedFloats scratch = AllocateFloats(ScanScratchFloats(args_.pool));
    AlignedFloats own_logits;
    if (logits_ == nullptr) own_logits = AllocateFloats(static_cast<size_t>(hq) * kChunk);
    if (!scratch || (logits_ == nullptr && !own_logits)) {
      scan_ok_.store(false, std::memory_order_relaxed);
      return;
    }
    for (int64_t c; (c = next_chunk.fetch_add(1, std::memory_order_relaxed)) < chunks_;) {
      const int64_t begin = lo_ + c * kChunk, end = std::min(hi_, begin + kChunk);
      const int64_t len = end - begin, padded = RoundUp(len, kLanes);
      float* logits = logits_ != nullptr ? logits_ + c * hq * kChunk : own_logits.get();
      ScanLogits(scan_, begin, end, logits, kChunk, scratch.get());
      for (int32_t h = 0; h < hq; ++h) {
        std::fill(logits + h * kChunk + len, logits + h * kChunk + padded, 0.0f);
      }
      if (lse_known) {
        ScoreChunk(logits, hq, lse_.get(), padded / kLanes, score_.get() + radius_ + c * kChunk);
      } else {
        ChunkLsePartials(logits, hq, std::max(select_begin_, begin) - begin,
                         std::min(select_end_, end) - begin, chunk_max_.get() + c * hq,
                         chunk_sum_.get() + c * hq);
      }
    }
  });
}

// lse_h = max + log(sum over chunks in order of sum_c * exp(max_c - max)).
void Selector::CombineLse() {
  const int32_t hq = args_.num_q_heads;
  for (int32_t h = 0; h < hq; ++h) {
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t c = 0; c < chunks_; ++c) m = std::max<double>(m, chunk_max_[c * hq + h]);
    if (std::isinf(m) && m < 0) {
      lse_[h] = kNegInfF;
      continue;
    }
    double sum = 0;
    for (int64_t c = 0; c < chunks_; ++c) {
      const float mc = chunk_max_[c * hq + h];
      if (mc != kNegInfF) sum += chunk_sum_[c * hq + h] * std::exp(static_cast<double>(mc) - m);
    }
    lse_[h] = static_cast<float>(m + std::log(sum));
  }
}

void Selector::ScoreChunks() {
  const int32_t hq = args_.num_q_heads;
  pool_.ParallelFor(chunks_, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t len = std::min(hi_ - lo_ - c * kChunk, kChunk);
      ScoreChunk(logits_ + c * hq * kChunk, hq, lse_.get(), RoundUp(len, kLanes) / kLanes,
                 score_.get() + radius_ + c * kChunk);
    }
  });
}

// pooled[i] = max of score over [i - radius, i + radius] within [lo, hi);
// the -inf margins stand for positions outside it, which are outside the
// candidate list for every position whose pooled score is used.
void Selector::Pool() {
  const int64_t n = hi_ - lo_;
  float* score = score_.get();
  std::fill(score, score + radius_, kNegInfF);
  std::fill(score + radius_ + n, score + 2 * radius_ + n, kNegInfF);
  if (radius_ == 0) return;
  pool_.ParallelFor((n + kChunk - 1) / kChunk, 1, [&](int64_t c0, int64_t c1) {
    const int64_t begin = c0 * kChunk, end = std::min(n, c1 * kChunk);
    float* out = pooled_.get();
    // score index i + radius is position lo + i.
    for (int64_t i = begin; i < end; ++i) out[i] = score[i];
    for (int32_t off = 1; off <= 2 * radius_; ++off) {
      for (int64_t i = begin; i < end; ++i) out[i] = std::max(out[i], score[i + off]);
    }
  });
}

absl::Status Selector::Run(float* lse_out) {
  const int32_t hq = args_.num_q_heads;
  if (!lse_only_ && (args_.k < 1 || args_.k > select_end_ - select_begin_)) {
    return absl::InvalidArgumentError("TokenSelect: k must be in [1, eligible candidates]");
  }
  KVC_RETURN_IF_ERROR(Prepare());
  const bool lse_known = !lse_only_ && args_.global_lse != nullptr;
  if (lse_known) std::copy(args_.global_lse, args_.global_lse + hq, lse_.get());
  ScanChunks(lse_known);
  if (!scan_ok_.load()) return OutOfMemory();
  if (!lse_known) CombineLse();
  if (lse_only_) {
    std::copy(lse_.get(), lse_.get() + hq, lse_out);
    return absl::OkStatus();
  }
  if (!lse_known && logits_ != nullptr) {
    ScoreChunks();
  } else if (!lse_known) {
    ScanChunks(/*lse_known=*/true);  // the logits were not kept: scan again
    if (!scan_ok_.load()) return OutOfMemory();
  }
  Pool();
  const float* pooled = radius_ > 0 ? pooled_.get() : score_.get() + radius_;
  SelectTopK(pooled + (select_begin_ - lo_), select_end_ - select_begin_, args_.k, select_begin_,
             args_.selected, args_.selected_scores);
  if (args_.scores != nullptr) std::copy(pooled, pooled + (hi_ - lo_), args_.scores);
  return absl::OkStatus();
}

}  // namespace

absl::Status TokenSelect(const ExecContext& ctx, const TokenSelectArgs& args) {
  Selector selector(ctx, args, /*lse_only=*/false);
  return selector.Run(nullptr);
}

absl::Status TokenSelectLse(const ExecContext& ctx, const TokenSelectArgs& args, float* lse_out) {
  Selector selector(ctx, args, /*lse_only=*/true);
  return selector.Run(lse_out);
}

}  // namespace kvc::kernels::KVC_CPU_NS
