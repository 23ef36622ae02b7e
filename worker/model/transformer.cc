#include "worker/model/transformer.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/dense.h"
#include "kernels/dtype.h"

namespace kvc::model {

namespace k = ::kvc::kernels;

namespace {
constexpr int kMatricesPerLayer = 7;  // wq, wk, wv, wo, w1, w2, w3
}  // namespace

Transformer::Transformer(const Checkpoint* checkpoint, const TransformerOptions& options)
    : checkpoint_(checkpoint), options_(options) {}

absl::StatusOr<std::unique_ptr<Transformer>> Transformer::Create(const Checkpoint* checkpoint,
                                                                 const TransformerOptions& options) {
  if (checkpoint == nullptr) return absl::InvalidArgumentError("Transformer: checkpoint is null");
  if (options.ctx.backend == k::Backend::kCuda) {
    return absl::UnimplementedError("Transformer: the CUDA backend is not wired into the model runtime yet");
  }
  if (options.weights != k::DType::kF32 && options.weights != k::DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("Transformer: weights must be f32 or bf16, got ", k::DTypeName(options.weights)));
  }
  if (options.max_chunk < 1) {
    return absl::InvalidArgumentError(absl::StrCat("Transformer: max_chunk must be >= 1, got ", options.max_chunk));
  }
  auto t = std::unique_ptr<Transformer>(new Transformer(checkpoint, options));
  const ModelConfig& c = checkpoint->config();
  const size_t d = c.dim, kv = c.kv_dim(), h = c.hidden_dim;
  struct Matrix {
    const float* w;
    size_t floats;
  };
  std::vector<Matrix> mats;
  for (int32_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& w = checkpoint->layer(l);
    mats.insert(mats.end(), {{w.wq, d * d}, {w.wk, kv * d}, {w.wv, kv * d}, {w.wo, d * d},
                             {w.w1, h * d}, {w.w2, d * h}, {w.w3, h * d}});
  }
  mats.push_back({checkpoint->classifier(), static_cast<size_t>(c.vocab_size) * d});
  if (options.weights == k::DType::kF32) {
    for (const Matrix& m : mats) t->matrices_.push_back(m.w);
  } else {
    size_t total = 0;
    for (const Matrix& m : mats) total += m.floats;
    t->bf16_.resize(total);
    size_t at = 0;
    for (const Matrix& m : mats) {
      for (size_t i = 0; i < m.floats; ++i) t->bf16_[at + i] = k::FloatToBF16(m.w[i]);
      t->matrices_.push_back(t->bf16_.data() + at);
      at += m.floats;
    }
  }
  return t;
}

absl::Status Transformer::CheckTokens(absl::Span<const int32_t> tokens) const {
  const int32_t vocab = config().vocab_size;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("token ", i, " is ", tokens[i], ", outside the vocabulary [0, ", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

void Transformer::EnsureScratch(int64_t rows) {
  if (rows <= rows_) return;
  const ModelConfig& c = config();
  const size_t r = rows;
  x_.resize(r * c.dim);
  xb_.resize(r * c.dim);
  q_.resize(r * c.dim);
  k_.resize(r * c.kv_dim());
  v_.resize(r * c.kv_dim());
  att_.resize(r * c.dim);
  hb_.resize(r * c.hidden_dim);
  hb2_.resize(r * c.hidden_dim);
  hg_.resize(r * c.hidden_dim);
  rows_ = rows;
}

absl::Status Transformer::Linear(const float* x, int64_t m, const void* w, int32_t in, int32_t out, float* y,
                                 bool accumulate) {
  k::LinearArgs a;
  a.x = x;
  a.m = m;
  a.k = in;
  a.n = out;
  a.w = w;
  a.w_dtype = options_.weights;
  a.y = y;
  a.accumulate = accumulate;
  return k::Linear(options_.ctx, a);
}

template <class AttendFn>
absl::Status Transformer::Layers(int64_t rows, AttendFn&& attend) {
  const ModelConfig& c = config();
  const k::ExecContext& ctx = options_.ctx;
  for (int32_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& w = checkpoint_->layer(l);
    const void* const* m = matrices_.data() + static_cast<size_t>(l) * kMatricesPerLayer;
    // Attention block: x += wo(attention(norm(x))).
    KVC_RETURN_IF_ERROR(k::RmsNorm(ctx, {x_.data(), w.rms_att, rows, c.dim, c.norm_eps, xb_.data()}));
    KVC_RETURN_IF_ERROR(Linear(xb_.data(), rows, m[0], c.dim, c.dim, q_.data(), false));
    KVC_RETURN_IF_ERROR(Linear(xb_.data(), rows, m[1], c.dim, c.kv_dim(), k_.data(), false));
    KVC_RETURN_IF_ERROR(Linear(xb_.data(), rows, m[2], c.dim, c.kv_dim(), v_.data(), false));
    KVC_RETURN_IF_ERROR(attend(l));
    KVC_RETURN_IF_ERROR(Linear(att_.data(), rows, m[3], c.dim, c.dim, x_.data(), true));
    // Feed-forward block: x += w2(silu(w1 norm(x)) * w3 norm(x)).
    KVC_RETURN_IF_ERROR(k::RmsNorm(ctx, {x_.data(), w.rms_ffn, rows, c.dim, c.norm_eps, xb_.data()}));
    KVC_RETURN_IF_ERROR(Linear(xb_.data(), rows, m[4], c.dim, c.hidden_dim, hb_.data(), false));
    KVC_RETURN_IF_ERROR(Linear(xb_.data(), rows, m[6], c.dim, c.hidden_dim, hb2_.data(), false));
    const int64_t hidden = rows * c.hidden_dim;
    KVC_RETURN_IF_ERROR(k::SwiGlu(ctx, {hb_.data(), hb2_.data(), hidden, hg_.data()}));
    KVC_RETURN_IF_ERROR(Linear(hg_.data(), rows, m[5], c.hidden_dim, c.dim, x_.data(), true));
  }
  return absl::OkStatus();
}

absl::Status Transformer::Logits(int64_t first, int64_t count, float* logits) {
  const ModelConfig& c = config();
  const float* x = x_.data() + first * c.dim;
  KVC_RETURN_IF_ERROR(k::RmsNorm(options_.ctx, {x, checkpoint_->rms_final(), count, c.dim, c.norm_eps, xb_.data()}));
  return Linear(xb_.data(), count, matrices_.back(), c.dim, c.vocab_size, logits, false);
}

absl::Status Transformer::Forward(absl::Span<const int32_t> tokens, int64_t first_position,
                                  AttentionCache& cache, float* logits, bool all_logits) {
  if (tokens.empty()) return absl::InvalidArgumentError("Forward: no tokens");
  if (first_position < 0) {
    return absl::InvalidArgumentError(absl::StrCat("Forward: first_position ", first_position, " is negative"));
  }
  if (logits == nullptr) return absl::InvalidArgumentError("Forward: logits is null");
  KVC_RETURN_IF_ERROR(CheckTokens(tokens));
  const ModelConfig& c = config();
  const int64_t n = static_cast<int64_t>(tokens.size());
  for (int64_t begin = 0; begin < n; begin += options_.max_chunk) {
    const int64_t rows = std::min<int64_t>(options_.max_chunk, n - begin);
    EnsureScratch(rows);
    for (int64_t i = 0; i < rows; ++i) {
      std::memcpy(x_.data() + i * c.dim, checkpoint_->tok_emb() + static_cast<size_t>(tokens[begin + i]) * c.dim,
                  c.dim * sizeof(float));
    }
    KVC_RETURN_IF_ERROR(Layers(rows, [&](int32_t layer) {
      AttendArgs a;
      a.layer = layer;
      a.num_tokens = rows;
      a.first_position = first_position + begin;
      a.q = q_.data();
      a.k = k_.data();
      a.v = v_.data();
      a.out = att_.data();
      return cache.Attend(options_.ctx, a);
    }));
    if (all_logits) {
      KVC_RETURN_IF_ERROR(Logits(0, rows, logits + static_cast<size_t>(begin) * c.vocab_size));
    } else if (begin + rows == n) {
      KVC_RETURN_IF_ERROR(Logits(rows - 1, 1, logits));
    }
  }
  return absl::OkStatus();
}

absl::Status Transformer::DecodeBatch(absl::Span<const int32_t> tokens, absl::Span<const int64_t> positions,
                                      absl::Span<AttentionCache* const> caches, float* logits) {
  const int64_t batch = static_cast<int64_t>(tokens.size());
  if (batch == 0) return absl::InvalidArgumentError("DecodeBatch: empty batch");
  if (positions.size() != tokens.size() || caches.size() != tokens.size()) {
    return absl::InvalidArgumentError(absl::StrCat("DecodeBatch: ", tokens.size(), " tokens but ", positions.size(),
                                                   " positions and ", caches.size(), " caches"));
  }
  if (logits == nullptr) return absl::InvalidArgumentError("DecodeBatch: logits is null");
  KVC_RETURN_IF_ERROR(CheckTokens(tokens));
  for (int64_t b = 0; b < batch; ++b) {
    if (caches[b] == nullptr) return absl::InvalidArgumentError(absl::StrCat("DecodeBatch: cache ", b, " is null"));
    if (positions[b] < 0) {
      return absl::InvalidArgumentError(absl::StrCat("DecodeBatch: position ", b, " is ", positions[b]));
    }
    for (int64_t o = 0; o < b; ++o) {
      if (caches[o] == caches[b]) {
        return absl::InvalidArgumentError(absl::StrCat("DecodeBatch: sequences ", o, " and ", b, " share a cache"));
      }
    }
  }
  const ModelConfig& c = config();
  EnsureScratch(batch);
  for (int64_t b = 0; b < batch; ++b) {
    std::memcpy(x_.data() + b * c.dim, checkpoint_->tok_emb() + static_cast<size_t>(tokens[b]) * c.dim,
                c.dim * sizeof(float));
  }
  const int32_t hd = c.head_dim();
  KVC_RETURN_IF_ERROR(Layers(batch, [&](int32_t layer) -> absl::Status {
    for (int64_t b = 0; b < batch; ++b) {
      AttendArgs a;
      a.layer = layer;
      a.num_tokens = 1;
      a.first_position = positions[b];
      a.q = q_.data() + b * c.n_heads * hd;
      a.k = k_.data() + b * c.n_kv_heads * hd;
      a.v = v_.data() + b * c.n_kv_heads * hd;
      a.out = att_.data() + b * c.n_heads * hd;
      KVC_RETURN_IF_ERROR(caches[b]->Attend(options_.ctx, a));
    }
    return absl::OkStatus();
  }));
  return Logits(0, batch, logits);
}

}  // namespace kvc::model
