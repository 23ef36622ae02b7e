#include "worker/eval/less_samples.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/ref/ref_util.h"
#include "worker/cache/attend.h"
#include "worker/cache/policy_factory.h"

namespace kvc::eval {
namespace {

// Drives the model with `driver` (or `sparse` when null) and records every
// Attend call into `samples`; the others attend the same q, k, v on the side.
// Without a reference policy the target is the sparse attention joined with
// the evicted tokens within `horizon` (LessSampleOptions::reference).
class RecordingCache : public model::AttentionCache {
 public:
  RecordingCache(LessSamples* samples, std::unique_ptr<cache::CachePolicy> sparse,
                 std::unique_ptr<cache::CachePolicy> reference,
                 std::unique_ptr<cache::CachePolicy> driver, int32_t horizon)
      : s_(samples),
        sparse_(std::move(sparse)),
        reference_(std::move(reference)),
        driver_(std::move(driver)),
        horizon_(horizon),
        rope_(cache::ModelRope(samples->config)),
        calls_(samples->config.n_layers, 0) {
    const model::ModelConfig& c = samples->config;
    if (reference_ == nullptr) {
      rotated_k_.assign(c.n_layers,
                        std::vector<double>(static_cast<size_t>(samples->num_tokens) * c.kv_dim()));
      evicted_.assign(c.n_layers, std::vector<std::vector<int32_t>>(c.n_kv_heads));
    }
  }

  absl::Status Attend(const kernels::ExecContext& ctx, const model::AttendArgs& a) override {
    const model::ModelConfig& c = s_->config;
    const int32_t hq = c.n_heads, hkv = c.n_kv_heads, d = c.head_dim();
    if (a.layer < 0 || a.layer >= c.n_layers || a.first_position < 0 ||
        a.first_position + a.num_tokens > s_->num_tokens) {
      return absl::InternalError(absl::StrCat("less samples: Attend of layer ", a.layer,
                                              " positions ", a.first_position, "+", a.num_tokens,
                                              " out of range"));
    }
    LessLayerSamples& l = s_->layers[a.layer];
    const int32_t chunk = calls_[a.layer]++;
    const size_t p0 = static_cast<size_t>(a.first_position), n = static_cast<size_t>(a.num_tokens);
    model::AttendArgs sparse = a;
    sparse.lse = &l.sparse_lse[p0 * hq];
    if (driver_ != nullptr) {
      KVC_RETURN_IF_ERROR(driver_->Attend(ctx, a));
      sparse.out = &l.sparse_out[p0 * hq * d];
      KVC_RETURN_IF_ERROR(sparse_->Attend(ctx, sparse));
    } else {
      KVC_RETURN_IF_ERROR(sparse_->Attend(ctx, sparse));
      std::copy(a.out, a.out + n * hq * d, &l.sparse_out[p0 * hq * d]);
      if (a.lse != nullptr) std::copy(sparse.lse, sparse.lse + n * hq, a.lse);
    }
    if (reference_ != nullptr) {
      model::AttendArgs ref = a;
      ref.out = &l.target[p0 * hq * d];
      ref.lse = nullptr;
      KVC_RETURN_IF_ERROR(reference_->Attend(ctx, ref));
    } else {
      JoinEvicted(a);
    }
    std::copy(a.q, a.q + n * hq * d, &l.q[p0 * hq * d]);
    std::copy(a.k, a.k + n * hkv * d, &l.k[p0 * hkv * d]);
    std::copy(a.v, a.v + n * hkv * d, &l.v[p0 * hkv * d]);
    if (a.layer == 0) {
      for (size_t i = 0; i < n; ++i) s_->chunk_of[p0 + i] = chunk;
      s_->num_chunks = chunk + 1;
    }
    const cache::Evictions* ev = sparse_->last_evictions();
    if (ev == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("less samples: policy ", sparse_->name(),
                       " reports no evictions; LESS would fold nothing"));
    }
    if (ev->layer != a.layer || static_cast<int32_t>(ev->count.size()) != hkv) {
      return absl::InternalError(absl::StrCat("less samples: ", sparse_->name(),
                                              " reported evictions of layer ", ev->layer,
                                              " after attending layer ", a.layer));
    }
    for (int32_t h = 0; h < hkv; ++h) {
      for (int32_t i = 0; i < ev->count[h]; ++i) {
        const int32_t pos = ev->positions[static_cast<size_t>(h) * ev->stride + i];
        if (pos < 0 || pos >= s_->num_tokens) {
          return absl::InternalError(
              absl::StrCat("less samples: evicted position ", pos, " out of range"));
        }
        l.fold_chunk[static_cast<size_t>(h) * s_->num_tokens + pos] = chunk;
        if (reference_ == nullptr) evicted_[a.layer][h].push_back(pos);
      }
    }
    return absl::OkStatus();
  }

 private:
  // target = the softmax over the sparse part (out, lse) and the logits
  // q_t . k_s / sqrt(D) (RoPE at the original positions) of the tokens s
  // evicted before this call with t - s < horizon.
  void JoinEvicted(const model::AttendArgs& a) {
    const model::ModelConfig& c = s_->config;
    const int32_t hq = c.n_heads, hkv = c.n_kv_heads, d = c.head_dim(), group = hq / hkv;
    LessLayerSamples& l = s_->layers[a.layer];
    std::vector<double>& rk = rotated_k_[a.layer];
    for (int64_t i = 0; i < a.num_tokens; ++i) {
      for (int32_t h = 0; h < hkv; ++h) {
        const int64_t pos = a.first_position + i;
        kernels::ref::ApplyRope(rope_, static_cast<int32_t>(pos), d, a.k + (i * hkv + h) * d,
                                &rk[(pos * hkv + h) * d]);
      }
    }
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    std::vector<double> q(d), logits, acc(d);
    for (int32_t h = 0; h < hkv; ++h) {
      std::vector<int32_t>& ev = evicted_[a.layer][h];
      // Queries only move forward: a token out of the horizon stays out.
      ev.erase(std::remove_if(ev.begin(), ev.end(),
                              [&](int32_t p) { return a.first_position - p >= horizon_; }),
               ev.end());
      for (int64_t i = 0; i < a.num_tokens; ++i) {
        const int64_t t = a.first_position + i;
        for (int32_t qh = h * group; qh < (h + 1) * group; ++qh) {
          const size_t row = static_cast<size_t>(t) * hq + qh;
          kernels::ref::ApplyRope(rope_, static_cast<int32_t>(t), d, a.q + (i * hq + qh) * d,
                                  q.data());
          const double lse = l.sparse_lse[row];
          double top = lse;
          logits.clear();
          for (int32_t p : ev) {
            if (t - p >= horizon_) {
              logits.push_back(-INFINITY);
              continue;
            }
            const double* k = &rk[(static_cast<size_t>(p) * hkv + h) * d];
            double dot = 0;
            for (int32_t e = 0; e < d; ++e) dot += q[e] * k[e];
            logits.push_back(dot * scale);
            top = std::max(top, dot * scale);
          }
          const double w_sparse = std::exp(lse - top);
          double den = w_sparse;
          const float* o = &l.sparse_out[row * d];
          for (int32_t e = 0; e < d; ++e) acc[e] = w_sparse * o[e];
          for (size_t j = 0; j < ev.size(); ++j) {
            if (logits[j] == -INFINITY) continue;
            const double w = std::exp(logits[j] - top);
            den += w;
            const float* v = &l.v[(static_cast<size_t>(ev[j]) * hkv + h) * d];
            for (int32_t e = 0; e < d; ++e) acc[e] += w * v[e];
          }
          for (int32_t e = 0; e < d; ++e) l.target[row * d + e] = static_cast<float>(acc[e] / den);
        }
      }
    }
  }

  LessSamples* s_;
  std::unique_ptr<cache::CachePolicy> sparse_, reference_,
      driver_;  // reference_, driver_ may be null
  int32_t horizon_;
  kernels::Rope rope_;
  std::vector<std::vector<double>> rotated_k_;  // [L][N][Hkv][D]: k with RoPE at its position
  std::vector<std::vector<std::vector<int32_t>>>
      evicted_;                 // [L][Hkv]: folded positions within the horizon
  std::vector<int32_t> calls_;  // per layer
};

}  // namespace

absl::StatusOr<LessSamples> CollectLessSamples(model::Transformer& model,
                                               absl::Span<const int32_t> tokens,
                                               const LessSampleOptions& options) {
  if (tokens.empty()) return absl::InvalidArgumentError("less samples: no tokens");
  if (options.stride < 1)
    return absl::InvalidArgumentError(
        absl::StrCat("less samples: stride ", options.stride, " < 1"));
  if (options.horizon < 0)
    return absl::InvalidArgumentError(
        absl::StrCat("less samples: horizon ", options.horizon, " < 0"));
  LessSamples s;
  s.config = model.config();
  const model::ModelConfig& c = s.config;
  s.num_tokens = static_cast<int64_t>(tokens.size());
  s.chunk_of.assign(s.num_tokens, -1);
  const size_t n = s.num_tokens, hq = c.n_heads, hkv = c.n_kv_heads, d = c.head_dim();
  s.layers.resize(c.n_layers);
  for (LessLayerSamples& l : s.layers) {
    l.q.assign(n * hq * d, 0.0f);
    l.k.assign(n * hkv * d, 0.0f);
    l.v.assign(n * hkv * d, 0.0f);
    l.sparse_out.assign(n * hq * d, 0.0f);
    l.sparse_lse.assign(n * hq, 0.0f);
    l.target.assign(n * hq * d, 0.0f);
    l.fold_chunk.assign(n * hkv, -1);
  }
  KVC_ASSIGN_OR_RETURN(auto sparse, cache::MakePolicy(c, options.policy));
  std::unique_ptr<cache::CachePolicy> reference;
  if (!options.reference.empty()) {
    KVC_ASSIGN_OR_RETURN(reference, cache::MakePolicy(c, options.reference));
  }
  const int32_t horizon = options.horizon > 0 ? options.horizon : c.seq_len;
  std::unique_ptr<cache::CachePolicy> driver;
  if (!options.driver.empty()) {
    KVC_ASSIGN_OR_RETURN(driver, cache::MakePolicy(c, options.driver));
  }
  RecordingCache recorder(&s, std::move(sparse), std::move(reference), std::move(driver), horizon);
  std::vector<float> logits(c.vocab_size);
  for (int64_t begin = 0; begin < s.num_tokens; begin += options.stride) {
    const int64_t len = std::min<int64_t>(options.stride, s.num_tokens - begin);
    KVC_RETURN_IF_ERROR(model.Forward(tokens.subspan(begin, len), begin, recorder, logits.data()));
    if (options.progress) options.progress(begin + len);
  }
  return s;
}

}  // namespace kvc::eval
