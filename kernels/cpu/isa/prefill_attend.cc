// Prefill attention pass (prefill_attend.h). Work items are (KV head, query
// tile) "tasks" with up to kMaxTileRows rows (queries x the g heads of the
// group). Keys stream in chunks of kChunkKeys: each chunk's keys and values
// are first converted to fp32 rows (keys rotated) for every KV head, in
// parallel, then every task attends to the chunk's kKeyTile-key tiles with
// an online softmax, its state (transposed queries, O, running max m and
// sum l) kept in memory between chunks. Converting once per chunk rather
// than once per task keeps the conversion off the critical path; the
// tiles' arithmetic is in prefill_blocks.h. Causal: a task stops at the
// last key its last query sees; the tile on the diagonal is masked per row.
// Tasks are processed in waves of whole KV heads bounding the memory of
// their states.
//
// Score accumulation is fused into this pass when every list fits one
// chunk and the scores are normalised by the call's own lse (the cascading
// cache's prefill): each task keeps its tiles' probabilities against the
// running max (the P it computes anyway) and that max, and once its lse is
// known folds P_ij = p_ij * exp(m_tile_i - lse_i) into one weighted sum per
// key; the per-task sums are then added per key in task order. This
// replaces the second pass over the keys (prefill_scores.cc: keys loaded
// and rotated again, Q K^T and exp recomputed).
#include "kernels/cpu/isa/prefill_attend.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <vector>

#include "kernels/cpu/isa/prefill_blocks.h"
#include "kernels/cpu/isa/prefill_tiles.h"

namespace kvc::kernels::KVC_CPU_NS {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Keys per chunk (a multiple of kKeyTile): converted K and V of a chunk for
// 8 KV heads of dim 128 take 4 MiB.
constexpr int64_t kChunkKeys = 512;
// Upper bound on the task states of one wave (unless one KV head needs more).
constexpr int64_t kMaxWaveBytes = int64_t{32} << 20;
// Causal calls whose chunk is a large part of their lists (a chunk over a
// short cache: under 8 keys per query) use query tiles of at most this
// many rows: a task attends up to its last query's diagonal, so one tile
// over the whole chunk would compute, then mask, the upper half of the
// chunk's own block (a quarter of the work at 256 queries over 512 keys).
constexpr int64_t kCausalTileRows = 64;

// Per-task buffers of the fused score accumulation (see above).
struct FusedScores {
  int64_t p_floats = 0;  // per task: [kChunkKeys][rows_pad] p
  int64_t m_floats = 0;  // per task: [kChunkKeys / kKeyTile][rows_pad] max used (0 where none)
  AlignedFloats p, m;
  std::vector<double> sums;    // [tasks][kChunkKeys] weighted sums per key
  std::vector<double> weight;  // [num_q] weight of each query's P (0: not contributing)
  double decay = 1.0;          // of every earlier score: beta^q (kEma) or 1 (kSum)
  float* P(int64_t task) const { return p.get() + task * p_floats; }
  float* M(int64_t task) const { return m.get() + task * m_floats; }
  double* Sums(int64_t task) { return sums.data() + task * kChunkKeys; }
};

class Pass {
 public:
  Pass(const PrefillArgs& a, const AttentionSetup& s, float* lse, int num_threads)
      : a_(a), s_(s), lse_(lse) {
    q_tile_ = PrefillQueryTile(a.num_q, s.group, a.kv.num_kv_heads, num_threads);
    if (a.causal && ShortestList() < 8 * a.num_q) {
      q_tile_ = std::min<int64_t>(q_tile_, std::max<int64_t>(1, kCausalTileRows / s.group));
    }
    num_tiles_ = (a.num_q + q_tile_ - 1) / q_tile_;
    rows_pad_ = (std::min(q_tile_, a.num_q) * s.group + kLanes - 1) / kLanes * kLanes;
    task_floats_ = 2 * rows_pad_ * s.padded_dim + 3 * rows_pad_;
  }

  int64_t num_tasks() const { return a_.kv.num_kv_heads * num_tiles_; }
  int64_t task_floats() const { return task_floats_; }
  int32_t Head(int64_t task) const { return static_cast<int32_t>(task / num_tiles_); }
  int64_t ShortestList() const {
    const int32_t lists = a_.gather.per_kv_head ? a_.kv.num_kv_heads : 1;
    int64_t shortest = ListSize(0);
    for (int32_t l = 1; l < lists; ++l) shortest = std::min(shortest, ListSize(l));
    return shortest;
  }
  int64_t ListSize(int32_t head) const {
    const int32_t l = a_.gather.per_kv_head ? head : 0;
    return a_.gather.indptr[l + 1] - a_.gather.indptr[l];
  }
  ListSource Source(int32_t head) const {
    const int32_t l = a_.gather.per_kv_head ? head : 0;
    const int64_t begin = a_.gather.indptr[l];
    const KvRows rows(a_.kv);
    return {a_.kv.k,
            a_.kv.v,
            rows,
            head * rows.head_stride,
            a_.gather.indices + begin,
            s_.rotate_keys ? a_.gather.positions + begin : nullptr};
  }
  // Entries of its list the task's queries see: all, or (causal) up to the
  // last query's diagonal.
  int64_t KeyEnd(int64_t task) const {
    const int64_t n = ListSize(Head(task));
    if (!a_.causal) return n;
    const int64_t last_q = std::min(a_.num_q, (task % num_tiles_ + 1) * q_tile_) - 1;
    return std::clamp<int64_t>(n - a_.num_q + 1 + last_q, 0, n);
  }

  // Task state: qt [padded][rows_pad], o [rows_pad][padded], m, l, alpha.
  void Init(int64_t task, float* state) const;
  template <class Tag>
  void Convert(int32_t head, int64_t j0, float* keys, float* values, float* scratch) const;
  void Attend(int64_t task, float* state, int64_t j_begin, int64_t j_end, const float* keys,
              const float* values, float* st) const;
  void Finish(int64_t task, const float* state) const;

  int64_t rows_pad() const { return rows_pad_; }
  int padded() const { return s_.padded_dim; }

 private:
  int64_t I0(int64_t task) const { return (task % num_tiles_) * q_tile_; }
  int Rows(int64_t task) const {
    return static_cast<int>(std::min(q_tile_, a_.num_q - I0(task)) * s_.group);
  }

  void FoldScores(int64_t task, const float* m, const float* l) const;

  const PrefillArgs& a_;
  const AttentionSetup& s_;
  float* lse_;
  int64_t q_tile_, num_tiles_, rows_pad_, task_floats_;

 public:
  FusedScores* fused = nullptr;  // set when the scores are folded in this pass
  int64_t num_tiles() const { return num_tiles_; }
};

void Pass::Init(int64_t task, float* state) const {
  const int g = s_.group, padded = s_.padded_dim;
  const int rows = Rows(task);
  const float* q = s_.q.get() + (Head(task) * a_.num_q + I0(task)) * g * padded;
  float* qt = state;
  for (int d = 0; d < s_.head_dim; ++d) {
    for (int r = 0; r < rows; ++r) qt[d * rows_pad_ + r] = q[int64_t{r} * padded + d];
    for (int64_t r = rows; r < rows_pad_; ++r) qt[d * rows_pad_ + r] = 0.0f;
  }
  float* o = qt + rows_pad_ * padded;
  float *m = o + rows_pad_ * padded, *l = m + rows_pad_;
  std::fill(o, o + rows_pad_ * padded, 0.0f);
  std::fill(m, m + rows_pad_, kNegInf);
  std::fill(l, l + rows_pad_, 0.0f);
}

template <class Tag>
void Pass::Convert(int32_t head, int64_t j0, float* keys, float* values, float* scratch) const {
  const int64_t n = ListSize(head);
  if (j0 >= n) return;
  const int count = static_cast<int>(std::min<int64_t>(kKeyTile, n - j0));
  const ListSource src = Source(head);
  LoadKeyRows<Tag>(src, j0, count, s_, keys, scratch);
  if (a_.out != nullptr) LoadValueTile<Tag>(src, j0, count, s_, values);
}

// Online softmax over one key tile for 16 rows (one per lane): masks keys
// c >= visible[lane], turns st[c][lanes] into probabilities against the
// updated running max and returns alpha = exp(m_old - m_new), the factor
// for the rows' earlier output. A row that has seen nothing keeps m = -inf
// and gets P = 0.
inline v16f SoftmaxLanes(float* st, int64_t rows_pad, int count, v16i visible, bool masked,
                         float* m, float* l) {
  const v16f neg_inf = Splat(kNegInf);
  const v16f m_old = Load(m);
  v16f mx = m_old;
  for (int c = 0; c < count; ++c) {
    v16f x = Load(st + c * rows_pad);
    if (masked) {
      const v16i seen = (v16i{} + c) < visible;
      x = seen ? x : neg_inf;
      Store(st + c * rows_pad, x);
    }
    mx = Max(mx, x);
  }
  const v16i none = mx == neg_inf;
  const v16f m_safe = none ? Zero() : mx;
  const v16f alpha = Exp(m_old - m_safe);
  v16f sum = Zero();
  for (int c = 0; c < count; ++c) {
    const v16f p = Exp(Load(st + c * rows_pad) - m_safe);
    Store(st + c * rows_pad, p);
    sum += p;
  }
  Store(l, Load(l) * alpha + sum);
  Store(m, mx);
  return alpha;
}

// Attends the task to its list's entries [j_begin, j_end) of the current
// chunk, which starts at entry j_begin: keys and values are the chunk's
// converted rows of the task's KV head.
void Pass::Attend(int64_t task, float* state, int64_t j_begin, int64_t j_end, const float* keys,
                  const float* values, float* scratch) const {
  const int g = s_.group, padded = s_.padded_dim;
  const int rows = Rows(task);
  const float* qt = state;
  float* o = state + rows_pad_ * padded;
  float *m = o + rows_pad_ * padded, *l = m + rows_pad_, *alpha = l + rows_pad_;
  const int64_t n = ListSize(Head(task));
  // Entry j is visible to query i iff j < shift + i (causal).
  const int64_t shift = a_.causal ? n - a_.num_q + 1 : n;
  const int64_t i0 = I0(task);
  for (int64_t j0 = j_begin; j0 < j_end; j0 += kKeyTile) {
    const int count = static_cast<int>(std::min<int64_t>(kKeyTile, j_end - j0));
    const int64_t row0 = (j0 - j_begin) * padded;
    // Fused scores keep every tile's P: computed in place in the task's
    // buffer (one chunk: j0 is the entry's index in the list).
    float* st = fused != nullptr ? fused->P(task) + j0 * rows_pad_ : scratch;
    ScoreTileT(keys + row0, padded, count, qt, rows_pad_, s_.head_dim, st);
    // Row r (query i0 + r / g) sees min(count, first_visible + r / g) keys.
    const int64_t first_visible = shift + i0 - j0;
    const bool masked = a_.causal && first_visible < count;
    for (int64_t rb = 0; rb < rows_pad_; rb += kLanes) {
      v16i visible = v16i{} + count;
      if (masked) {
        const int32_t base = static_cast<int32_t>(std::max<int64_t>(first_visible, -kKeyTile));
        for (int k = 0; k < kLanes; ++k) {
          visible[k] = base + static_cast<int32_t>(std::min<int64_t>(rb + k, rows - 1) / g);
        }
      }
      Store(alpha + rb, SoftmaxLanes(st + rb, rows_pad_, count, visible, masked, m + rb, l + rb));
    }
    if (fused != nullptr) {
      float* mt = fused->M(task) + j0 / kKeyTile * rows_pad_;
      for (int64_t rb = 0; rb < rows_pad_; rb += kLanes) {
        const v16f mx = Load(m + rb);
        Store(mt + rb, mx == Splat(kNegInf) ? Zero() : mx);
      }
    }
    // Without an output (a call for lse only) V is never read.
    if (a_.out != nullptr) AccumulateTile(st, rows_pad_, alpha, values + row0, padded, rows, count, o);
  }
}

void Pass::Finish(int64_t task, const float* state) const {
  const int g = s_.group, padded = s_.padded_dim, d_head = s_.head_dim;
  const float* o = state + rows_pad_ * padded;
  const float *m = o + rows_pad_ * padded, *l = m + rows_pad_;
  const int rows = Rows(task);
  for (int r = 0; r < rows; ++r) {
    const int64_t i = I0(task) + r / g;
    const int64_t row = i * a_.num_q_heads + int64_t{Head(task)} * g + r % g;
    const bool empty = l[r] == 0.0f;
    if (a_.out != nullptr) {
      float* out = a_.out + row * d_head;
      const float inv = empty ? 0.0f : 1.0f / l[r];
      const float* orow = o + int64_t{r} * padded;
      for (int d = 0; d < d_head; ++d) out[d] = orow[d] * inv;
    }
    if (lse_ != nullptr) lse_[row] = empty ? kNegInf : m[r] + std::log(l[r]);
  }
  if (fused != nullptr) FoldScores(task, m, l);
}

// sums[j] = sum over the task's queries i of weight_i * reduce over the
// group's rows of P_ij, for the entries [0, KeyEnd(task)) the task saw.
void Pass::FoldScores(int64_t task, const float* m, const float* l) const {
  const int g = s_.group, rows = Rows(task);
  const int64_t i0 = I0(task), key_end = KeyEnd(task);
  const bool max_reduce = a_.accum.group_reduce == GroupReduce::kMax && g > 1;
  double* sums = fused->Sums(task);
  std::fill(sums, sums + kChunkKeys, 0.0);
  alignas(64) float coef[kMaxTileRows + kLanes];
  for (int64_t j0 = 0; j0 < key_end; j0 += kKeyTile) {
    const int count = static_cast<int>(std::min<int64_t>(kKeyTile, key_end - j0));
    const float* mt = fused->M(task) + j0 / kKeyTile * rows_pad_;
    // P_ij = p_ij * exp(m_tile_i - lse_i), lse_i = m_i + log(l_i); a row
    // that saw nothing has P = 0. coef folds in the query's weight unless
    // the group's rows are max-reduced first.
    for (int64_t r = 0; r < rows_pad_; ++r) {
      float c = 0.0f;
      if (r < rows && l[r] != 0.0f) {
        c = std::exp(mt[r] - (m[r] + std::log(l[r])));
        if (!max_reduce) c *= static_cast<float>(fused->weight[i0 + r / g]);
      }
      coef[r] = c;
    }
    const float* p = fused->P(task) + j0 * rows_pad_;
    for (int c = 0; c < count; ++c) {
      const float* pc = p + int64_t{c} * rows_pad_;
      if (!max_reduce) {
        v16f acc = Zero();
        for (int64_t rb = 0; rb < rows_pad_; rb += kLanes) acc += Load(coef + rb) * Load(pc + rb);
        sums[j0 + c] += ReduceAdd(acc);
      } else {
        double acc = 0.0;
        for (int q = 0; q < rows / g; ++q) {
          float mx = 0.0f;
          for (int k = 0; k < g; ++k) mx = std::max(mx, coef[q * g + k] * pc[q * g + k]);
          acc += fused->weight[i0 + q] * mx;
        }
        sums[j0 + c] += acc;
      }
    }
  }
}

struct ConvertScratch {
  bool Allocate(int padded) {
    key = AllocateFloats(static_cast<size_t>(KeyTileScratch(padded, padded)));
    return static_cast<bool>(key);
  }
  AlignedFloats key;
};
struct AttendScratch {
  bool Allocate(int64_t rows_pad) {
    st = AllocateFloats(static_cast<size_t>(kKeyTile * rows_pad));
    return static_cast<bool>(st);
  }
  AlignedFloats st;
};

// Tasks [t_begin, t_end) (KV heads h_lo..h_hi) through every chunk.
template <class Tag>
bool RunWave(ThreadPool& pool, const Pass& pass, int64_t t_begin, int64_t t_end, float* states,
             float* keys, float* values) {
  const int64_t padded = pass.padded();
  const int32_t h_lo = pass.Head(t_begin), h_hi = pass.Head(t_end - 1);
  const int64_t heads = h_hi - h_lo + 1;
  int64_t key_end = 0;
  for (int64_t t = t_begin; t < t_end; ++t) key_end = std::max(key_end, pass.KeyEnd(t));
  const int64_t tiles = kChunkKeys / kKeyTile;
  bool ok = true;
  pool.ParallelFor(t_end - t_begin, 0, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) pass.Init(t_begin + t, states + t * pass.task_floats());
  });
  for (int64_t c0 = 0; c0 < key_end && ok; c0 += kChunkKeys) {
    ok = ForEachTask<ConvertScratch>(
        pool, heads * tiles, [&](ConvertScratch& sc) { return sc.Allocate(padded); },
        [&](int64_t w, ConvertScratch& sc) {
          const int32_t h = h_lo + static_cast<int32_t>(w / tiles);
          const int64_t off = ((h - h_lo) * kChunkKeys + (w % tiles) * kKeyTile) * padded;
          pass.Convert<Tag>(h, c0 + (w % tiles) * kKeyTile, keys + off, values + off, sc.key.get());
        });
    if (!ok) break;
    ok = ForEachTask<AttendScratch>(
        pool, t_end - t_begin, [&](AttendScratch& sc) { return sc.Allocate(pass.rows_pad()); },
        [&](int64_t w, AttendScratch& sc) {
          const int64_t t = t_begin + w;
          const int64_t end = std::min(pass.KeyEnd(t), c0 + kChunkKeys);
          if (end <= c0) return;
          const int64_t off = (pass.Head(t) - h_lo) * kChunkKeys * padded;
          pass.Attend(t, states + w * pass.task_floats(), c0, end, keys + off, values + off,
                      sc.st.get());
        });
  }
  pool.ParallelFor(t_end - t_begin, 0, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) pass.Finish(t_begin + t, states + t * pass.task_floats());
  });
  return ok;
}

}  // namespace

namespace {

// Whether the score accumulation can be fused into the attention pass, and
// its buffers when so.
bool PrepareFusedScores(const PrefillArgs& a, const Pass& pass, FusedScores* f) {
  const ScoreAccum& accum = a.accum;
  if (accum.mode == ScoreMode::kNone || accum.lse != nullptr || accum.first_query >= a.num_q) return false;
  const int64_t lists = a.gather.per_kv_head ? a.kv.num_kv_heads : 1;
  for (int64_t l = 0; l < lists; ++l) {
    if (a.gather.indptr[l + 1] - a.gather.indptr[l] > kChunkKeys) return false;
  }
  const int64_t tasks = pass.num_tasks();
  f->p_floats = kChunkKeys * pass.rows_pad();
  f->m_floats = kChunkKeys / kKeyTile * pass.rows_pad();
  if (tasks * (f->p_floats + f->m_floats) * static_cast<int64_t>(sizeof(float)) > kMaxWaveBytes) return false;
  f->p = AllocateFloats(static_cast<size_t>(tasks * f->p_floats));
  f->m = AllocateFloats(static_cast<size_t>(tasks * f->m_floats));
  if (!f->p || !f->m) return false;  // the two-pass path needs less memory
  f->sums.assign(static_cast<size_t>(tasks * kChunkKeys), 0.0);
  f->weight.assign(static_cast<size_t>(a.num_q), 0.0);
  const bool ema = accum.mode == ScoreMode::kEma;
  const double beta = accum.beta;
  double w = 1.0 - beta;  // (1 - beta) beta^(num_q - 1 - i), from the last query back
  for (int64_t i = a.num_q - 1; i >= accum.first_query; --i) {
    f->weight[i] = ema ? w : 1.0;
    w *= beta;
  }
  f->decay = ema ? std::pow(beta, static_cast<double>(a.num_q - accum.first_query)) : 1.0;
  return true;
}

// scores = decay * scores + the tasks' sums, per KV head and entry, the
// sums added in task (query) order.
void MergeFusedScores(ThreadPool& pool, const PrefillArgs& a, const Pass& pass, FusedScores& f) {
  pool.ParallelFor(a.kv.num_kv_heads, 1, [&](int64_t h_begin, int64_t h_end) {
    for (int64_t h = h_begin; h < h_end; ++h) {
      const int64_t list = a.gather.per_kv_head ? h : 0;
      const int64_t begin = a.gather.indptr[list], n = a.gather.indptr[list + 1] - begin;
      float* scores = a.accum.scores + h * a.kv.num_slots();
      for (int64_t j = 0; j < n; ++j) {
        double s = f.decay * static_cast<double>(scores[a.gather.indices[begin + j]]);
        for (int64_t t = h * pass.num_tiles(); t < (h + 1) * pass.num_tiles(); ++t) {
          if (j < pass.KeyEnd(t)) s += f.Sums(t)[j];
        }
        scores[a.gather.indices[begin + j]] = static_cast<float>(s);
      }
    }
  });
}

}  // namespace

absl::Status PrefillAttend(ThreadPool& pool, const PrefillArgs& args, const AttentionSetup& setup,
                           float* lse, bool* scores_done) {
  Pass pass(args, setup, lse, pool.num_threads());
  FusedScores fused;
  *scores_done = PrepareFusedScores(args, pass, &fused);
  if (*scores_done) pass.fused = &fused;
  const int64_t tasks = pass.num_tasks();
  // Waves of whole KV heads, so no head's keys are converted twice.
  const int64_t per_head = tasks / args.kv.num_kv_heads;
  const int64_t head_bytes = per_head * pass.task_floats() * static_cast<int64_t>(sizeof(float));
  const int64_t heads = std::clamp<int64_t>(kMaxWaveBytes / head_bytes, 1, args.kv.num_kv_heads);
  const int64_t wave = heads * per_head;
  AlignedFloats states = AllocateFloats(static_cast<size_t>(wave * pass.task_floats()));
  const size_t chunk_floats = static_cast<size_t>(heads * kChunkKeys * pass.padded());
  AlignedFloats keys = AllocateFloats(chunk_floats), values = AllocateFloats(chunk_floats);
  if (!states || !keys || !values) {
    return absl::ResourceExhaustedError("Prefill: cannot allocate attention scratch");
  }
  for (int64_t t0 = 0; t0 < tasks; t0 += wave) {
    const int64_t t1 = std::min(tasks, t0 + wave);
    const bool ok = VisitKvType(args.kv.dtype, [&](auto tag) {
      return RunWave<decltype(tag)>(pool, pass, t0, t1, states.get(), keys.get(), values.get());
    });
    if (!ok) return absl::ResourceExhaustedError("Prefill: cannot allocate tile scratch");
  }
  if (*scores_done) MergeFusedScores(pool, args, pass, fused);
  return absl::OkStatus();
}

}  // namespace kvc::kernels::KVC_CPU_NS
