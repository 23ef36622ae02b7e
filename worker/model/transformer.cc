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
// Where each layer matrix sits in the arena: wq, wk, wv, wo, w1, w3, w2.
constexpr int kArenaOrder[kMatricesPerLayer] = {0, 1, 2, 3, 4, 6, 5};
constexpr size_t kHugePage = size_t{2} << 20;

}  // namespace

Transformer::Transformer(const Checkpoint* checkpoint, const TransformerOptions& options)
    : checkpoint_(checkpoint), options_(options) {}

absl::StatusOr<std::unique_ptr<Transformer>> Transformer::Create(const Checkpoint* checkpoint,
                                                                 const TransformerOptions& options) {
  if (checkpoint == nullptr) return absl::InvalidArgumentError("Transformer: checkpoint is null");
  if (options.ctx.backend == k::Backend::kCuda) {
    if (absl::Status s = k::CudaAvailable(); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("Transformer: CUDA backend: ", s.message()));
    }
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
  const int32_t d = c.dim, kv = c.kv_dim(), h = c.hidden_dim;
  struct Matrix {
    const float* w;
    int32_t rows, cols;
    size_t size() const { return static_cast<size_t>(rows) * cols; }
  };
  std::vector<Matrix> mats;  // in matrices_ order
  for (int32_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& w = checkpoint->layer(l);
    mats.insert(mats.end(), {{w.wq, d, d}, {w.wk, kv, d}, {w.wv, kv, d}, {w.wo, d, d},
                             {w.w1, h, d}, {w.w2, d, h}, {w.w3, h, d}});
  }
  mats.push_back({checkpoint->classifier(), c.vocab_size, d});

  // One copy of every matrix, in the order a forward pass reads them: a
  // decode step streams it front to back, on 2 MiB pages (fewer TLB misses
  // than the checkpoint's 4 KiB file pages).
  const size_t elem = k::DTypeSize(options.weights);
  size_t total = 0;
  for (const Matrix& m : mats) total += m.size() * elem;
  const absl::Status mapped = t->arena_.Resize((total + kHugePage - 1) / kHugePage * kHugePage);
  if (!mapped.ok()) return absl::ResourceExhaustedError(absl::StrCat("Transformer: weights: ", mapped.message()));
  t->matrices_.resize(mats.size());
  uint8_t* at = t->arena_.data();
  auto place = [&](size_t index) {
    const Matrix& m = mats[index];
    if (options.weights == k::DType::kF32) {
      std::memcpy(at, m.w, m.size() * sizeof(float));
    } else {
      auto* dst = reinterpret_cast<uint16_t*>(at);
      for (size_t i = 0; i < m.size(); ++i) dst[i] = k::FloatToBF16(m.w[i]);
    }
    t->matrices_[index] = at;
    at += m.size() * elem;
  };
  for (int32_t l = 0; l < c.n_layers; ++l) {
    for (int i : kArenaOrder) place(static_cast<size_t>(l) * kMatricesPerLayer + i);
  }
  place(mats.size() - 1);
  for (const Matrix& m : mats) t->matrix_rows_.push_back(m.rows);
  for (int32_t l = 0; l < c.n_layers; ++l) {
    t->rms_att_.push_back(checkpoint->layer(l).rms_att);
    t->rms_ffn_.push_back(checkpoint->layer(l).rms_ffn);
  }
  t->rms_final_ = checkpoint->rms_final();
  if (t->cuda()) {
    KVC_RETURN_IF_ERROR(t->UploadToDevice());
    return t;
  }
  if (options.pack_weights) {
    for (size_t i = 0; i < mats.size(); ++i) {
      KVC_ASSIGN_OR_RETURN(k::LinearPack pack,
                           k::PackLinear(t->matrices_[i], options.weights, mats[i].rows, mats[i].cols));
      t->packs_.push_back(std::move(pack));
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

absl::Status Transformer::UploadToDevice() {
  const ModelConfig& c = config();
  // The arena as it is (the same offsets), then the host copy goes.
  KVC_ASSIGN_OR_RETURN(device_weights_, k::DeviceBuffer::Allocate(arena_.size()));
  KVC_RETURN_IF_ERROR(device_weights_.CopyFromHost(arena_.data(), arena_.size()));
  for (const void*& m : matrices_) {
    m = device_weights_.as<uint8_t>() + (static_cast<const uint8_t*>(m) - arena_.data());
  }
  arena_ = MappedBuffer();
  // Norm weights: [layers] attention, [layers] feed-forward, final.
  const size_t d = c.dim;
  std::vector<float> norms;
  for (const float* w : rms_att_) norms.insert(norms.end(), w, w + d);
  for (const float* w : rms_ffn_) norms.insert(norms.end(), w, w + d);
  norms.insert(norms.end(), rms_final_, rms_final_ + d);
  KVC_ASSIGN_OR_RETURN(device_norms_, k::DeviceBuffer::Allocate(norms.size() * sizeof(float)));
  KVC_RETURN_IF_ERROR(device_norms_.CopyFromHost(norms.data(), norms.size() * sizeof(float)));
  const float* base = device_norms_.as<float>();
  for (int32_t l = 0; l < c.n_layers; ++l) {
    rms_att_[l] = base + l * d;
    rms_ffn_[l] = base + (c.n_layers + l) * d;
  }
  rms_final_ = base + 2 * c.n_layers * d;
  return absl::OkStatus();
}

absl::Status Transformer::EnsureScratch(int64_t rows) {
  const ModelConfig& c = config();
  const size_t d = c.dim, kv = c.kv_dim(), h = c.hidden_dim;
  // One buffer: x, xb, qkv, att, h13, hg, each sized for rows_ rows.
  const size_t per_row = d + d + (d + 2 * kv) + d + 2 * h + h;
  if (rows > rows_) {
    if (cuda()) {
      KVC_ASSIGN_OR_RETURN(device_act_, k::DeviceBuffer::Allocate(static_cast<size_t>(rows) * per_row * sizeof(float)));
    } else {
      host_act_.resize(static_cast<size_t>(rows) * per_row);
    }
    rows_ = rows;
  }
  const size_t cap = rows_;
  x_ = cuda() ? device_act_.as<float>() : host_act_.data();
  xb_ = x_ + cap * d;
  q_ = xb_ + cap * d;
  k_ = q_ + rows * d;
  v_ = k_ + rows * kv;
  att_ = q_ + cap * (d + 2 * kv);
  hb_ = att_ + cap * d;
  hb2_ = hb_ + rows * h;
  hg_ = hb_ + cap * 2 * h;
  return absl::OkStatus();
}

absl::Status Transformer::Embed(absl::Span<const int32_t> tokens) {
  const size_t d = config().dim;
  float* dst = x_;
  if (cuda()) {
    staging_.resize(tokens.size() * d);
    dst = staging_.data();
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::memcpy(dst + i * d, checkpoint_->tok_emb() + static_cast<size_t>(tokens[i]) * d, d * sizeof(float));
  }
  if (cuda()) return k::CopyHostToDevice(x_, staging_.data(), staging_.size() * sizeof(float));
  return absl::OkStatus();
}

absl::Status Transformer::Attend(AttentionCache& cache, const AttendArgs& a) {
  if (!cuda() || cache.device_resident()) return cache.Attend(options_.ctx, a);
  // A host cache on the CUDA backend: q, k, v to host, attention on the
  // CPU, the output (and lse) back.
  const ModelConfig& c = config();
  const size_t q = static_cast<size_t>(a.num_tokens) * c.dim, kv = static_cast<size_t>(a.num_tokens) * c.kv_dim(),
               lse = a.lse != nullptr ? static_cast<size_t>(a.num_tokens) * c.n_heads : 0;
  staging_.resize(2 * q + 2 * kv + lse);
  AttendArgs h = a;
  float* at = staging_.data();
  h.q = at;
  h.k = at + q;
  h.v = at + q + kv;
  h.out = at + q + 2 * kv;
  h.lse = lse > 0 ? at + 2 * q + 2 * kv : nullptr;
  KVC_RETURN_IF_ERROR(k::CudaSynchronize(options_.ctx.cuda_stream));
  KVC_RETURN_IF_ERROR(k::CopyDeviceToHost(at, a.q, q * sizeof(float)));
  KVC_RETURN_IF_ERROR(k::CopyDeviceToHost(at + q, a.k, kv * sizeof(float)));
  KVC_RETURN_IF_ERROR(k::CopyDeviceToHost(at + q + kv, a.v, kv * sizeof(float)));
  KVC_RETURN_IF_ERROR(cache.Attend(k::ExecContext{k::Backend::kCpu}, h));
  KVC_RETURN_IF_ERROR(k::CopyHostToDevice(a.out, h.out, q * sizeof(float)));
  if (lse > 0) KVC_RETURN_IF_ERROR(k::CopyHostToDevice(a.lse, h.lse, lse * sizeof(float)));
  return absl::OkStatus();
}

absl::Status Transformer::Linear(const float* x, int64_t m, size_t index, int32_t in, int32_t out, float* y,
                                 bool accumulate) {
  k::LinearArgs a;
  a.x = x;
  a.m = m;
  a.k = in;
  a.n = out;
  a.w = matrices_[index];
  a.w_dtype = options_.weights;
  a.y = y;
  a.accumulate = accumulate;
  if (!packs_.empty() && out == matrix_rows_[index]) a.pack = &packs_[index];
  return k::Linear(options_.ctx, a);
}

template <class AttendFn>
absl::Status Transformer::Layers(int64_t rows, AttendFn&& attend) {
  const ModelConfig& c = config();
  const k::ExecContext& ctx = options_.ctx;
  const int32_t d = c.dim, kv = c.kv_dim(), h = c.hidden_dim;
  for (int32_t l = 0; l < c.n_layers; ++l) {
    const size_t m = static_cast<size_t>(l) * kMatricesPerLayer;  // wq, wk, wv, wo, w1, w2, w3
    // Attention block: x += wo(attention(norm(x))).
    KVC_RETURN_IF_ERROR(k::RmsNorm(ctx, {x_, rms_att_[l], rows, d, c.norm_eps, xb_}));
    if (rows == 1) {
      // One GEMV over wq|wk|wv (adjacent in the arena) into q_|k_|v_
      // (adjacent for one row): one pass over the pool instead of three.
      KVC_RETURN_IF_ERROR(Linear(xb_, 1, m + 0, d, d + 2 * kv, q_, false));
    } else {
      KVC_RETURN_IF_ERROR(Linear(xb_, rows, m + 0, d, d, q_, false));
      KVC_RETURN_IF_ERROR(Linear(xb_, rows, m + 1, d, kv, k_, false));
      KVC_RETURN_IF_ERROR(Linear(xb_, rows, m + 2, d, kv, v_, false));
    }
    KVC_RETURN_IF_ERROR(attend(l));
    KVC_RETURN_IF_ERROR(Linear(att_, rows, m + 3, d, d, x_, true));
    // Feed-forward block: x += w2(silu(w1 norm(x)) * w3 norm(x)).
    KVC_RETURN_IF_ERROR(k::RmsNorm(ctx, {x_, rms_ffn_[l], rows, d, c.norm_eps, xb_}));
    if (rows == 1) {
      KVC_RETURN_IF_ERROR(Linear(xb_, 1, m + 4, d, 2 * h, hb_, false));  // w1|w3 -> hb_|hb2_
    } else {
      KVC_RETURN_IF_ERROR(Linear(xb_, rows, m + 4, d, h, hb_, false));
      KVC_RETURN_IF_ERROR(Linear(xb_, rows, m + 6, d, h, hb2_, false));
    }
    KVC_RETURN_IF_ERROR(k::SwiGlu(ctx, {hb_, hb2_, rows * h, hg_}));
    KVC_RETURN_IF_ERROR(Linear(hg_, rows, m + 5, h, d, x_, true));
  }
  return absl::OkStatus();
}

absl::Status Transformer::Logits(int64_t first, int64_t count, float* logits) {
  const ModelConfig& c = config();
  const float* x = x_ + first * c.dim;
  KVC_RETURN_IF_ERROR(k::RmsNorm(options_.ctx, {x, rms_final_, count, c.dim, c.norm_eps, xb_}));
  if (!cuda()) return Linear(xb_, count, matrices_.size() - 1, c.dim, c.vocab_size, logits, false);
  const size_t bytes = static_cast<size_t>(count) * c.vocab_size * sizeof(float);
  if (count > logit_rows_) {
    KVC_ASSIGN_OR_RETURN(device_logits_, k::DeviceBuffer::Allocate(bytes));
    logit_rows_ = count;
  }
  KVC_RETURN_IF_ERROR(Linear(xb_, count, matrices_.size() - 1, c.dim, c.vocab_size, device_logits_.as<float>(), false));
  KVC_RETURN_IF_ERROR(k::CudaSynchronize(options_.ctx.cuda_stream));
  return device_logits_.CopyToHost(logits, bytes);
}

absl::Status Transformer::Forward(absl::Span<const int32_t> tokens, int64_t first_position,
                                  AttentionCache& cache, float* logits, bool all_logits) {
  if (tokens.empty()) return absl::InvalidArgumentError("Forward: no tokens");
  if (first_position < 0) {
    return absl::InvalidArgumentError(absl::StrCat("Forward: first_position ", first_position, " is negative"));
  }
  if (logits == nullptr && all_logits) return absl::InvalidArgumentError("Forward: all_logits without logits");
  KVC_RETURN_IF_ERROR(CheckTokens(tokens));
  const ModelConfig& c = config();
  const int64_t n = static_cast<int64_t>(tokens.size());
  for (int64_t begin = 0; begin < n; begin += options_.max_chunk) {
    const int64_t rows = std::min<int64_t>(options_.max_chunk, n - begin);
    KVC_RETURN_IF_ERROR(EnsureScratch(rows));
    KVC_RETURN_IF_ERROR(Embed(tokens.subspan(begin, rows)));
    KVC_RETURN_IF_ERROR(Layers(rows, [&](int32_t layer) {
      AttendArgs a;
      a.layer = layer;
      a.num_tokens = rows;
      a.first_position = first_position + begin;
      a.q = q_;
      a.k = k_;
      a.v = v_;
      a.out = att_;
      return Attend(cache, a);
    }));
    if (all_logits) {
      KVC_RETURN_IF_ERROR(Logits(0, rows, logits + static_cast<size_t>(begin) * c.vocab_size));
    } else if (begin + rows == n && logits != nullptr) {
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
  KVC_RETURN_IF_ERROR(EnsureScratch(batch));
  KVC_RETURN_IF_ERROR(Embed(tokens));
  const int32_t hd = c.head_dim();
  KVC_RETURN_IF_ERROR(Layers(batch, [&](int32_t layer) -> absl::Status {
    for (int64_t b = 0; b < batch; ++b) {
      AttendArgs a;
      a.layer = layer;
      a.num_tokens = 1;
      a.first_position = positions[b];
      a.q = q_ + b * c.n_heads * hd;
      a.k = k_ + b * c.n_kv_heads * hd;
      a.v = v_ + b * c.n_kv_heads * hd;
      a.out = att_ + b * c.n_heads * hd;
      KVC_RETURN_IF_ERROR(Attend(*caches[b], a));
    }
    return absl::OkStatus();
  }));
  return Logits(0, batch, logits);
}

}  // namespace kvc::model
