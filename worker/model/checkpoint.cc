#include "worker/model/checkpoint.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"

namespace kvc::model {
namespace {

constexpr size_t kHeaderBytes = 7 * sizeof(int32_t);

// Floats of the weights after the header, in file order.
size_t WeightFloats(const ModelConfig& c) {
  const size_t d = c.dim, h = c.hidden_dim, l = c.n_layers, v = c.vocab_size;
  const size_t kv = c.kv_dim(), hd = c.head_dim();
  size_t n = v * d;                            // tok_emb
  n += l * d;                                  // rms_att
  n += l * d * d + 2 * l * kv * d + l * d * d;  // wq, wk, wv, wo
  n += l * d;                                  // rms_ffn
  n += 3 * l * h * d;                          // w1, w2, w3
  n += d;                                      // rms_final
  n += static_cast<size_t>(c.seq_len) * hd;    // freq_cis_real + imag
  if (!c.shared_classifier) n += v * d;
  return n;
}

std::string ErrnoText() { return std::strerror(errno); }

}  // namespace

absl::Status ModelConfig::Validate() const {
  auto bad = [](const char* field, int64_t value, const char* want) {
    return absl::InvalidArgumentError(absl::StrCat("model config: ", field, " = ", value, " ", want));
  };
  constexpr int32_t kMax = 1 << 20;
  if (dim <= 0 || dim > kMax) return bad("dim", dim, "must be in [1, 2^20]");
  if (hidden_dim <= 0 || hidden_dim > kMax) return bad("hidden_dim", hidden_dim, "must be in [1, 2^20]");
  if (n_layers <= 0 || n_layers > 4096) return bad("n_layers", n_layers, "must be in [1, 4096]");
  if (n_heads <= 0 || dim % n_heads != 0) return bad("n_heads", n_heads, "must be > 0 and divide dim");
  if (head_dim() % 2 != 0) return bad("head_dim", head_dim(), "must be even (RoPE rotates pairs)");
  if (n_kv_heads <= 0 || n_heads % n_kv_heads != 0) {
    return bad("n_kv_heads", n_kv_heads, "must be > 0 and divide n_heads");
  }
  if (vocab_size <= 0 || vocab_size > (1 << 24)) return bad("vocab_size", vocab_size, "must be in [1, 2^24]");
  if (seq_len <= 0 || seq_len > kMax) return bad("seq_len", seq_len, "must be in [1, 2^20]");
  if (!(rope_theta > 0)) return absl::InvalidArgumentError("model config: rope_theta must be > 0");
  if (!(norm_eps > 0)) return absl::InvalidArgumentError("model config: norm_eps must be > 0");
  return absl::OkStatus();
}

size_t ModelConfig::FileBytes() const { return kHeaderBytes + WeightFloats(*this) * sizeof(float); }

std::string ModelConfig::ToString() const {
  return absl::StrCat("dim=", dim, " hidden=", hidden_dim, " layers=", n_layers, " heads=", n_heads,
                      " kv_heads=", n_kv_heads, " vocab=", vocab_size, " seq_len=", seq_len,
                      shared_classifier ? " shared-classifier" : "");
}

void Checkpoint::Bind(const float* p) {
  const ModelConfig& c = config_;
  const size_t d = c.dim, h = c.hidden_dim, l = c.n_layers, kv = c.kv_dim();
  floats_ = WeightFloats(c);
  tok_emb_ = p;
  p += c.vocab_size * d;
  const float* rms_att = p;
  p += l * d;
  const float* wq = p;
  p += l * d * d;
  const float* wk = p;
  p += l * kv * d;
  const float* wv = p;
  p += l * kv * d;
  const float* wo = p;
  p += l * d * d;
  const float* rms_ffn = p;
  p += l * d;
  const float* w1 = p;
  p += l * h * d;
  const float* w2 = p;
  p += l * d * h;
  const float* w3 = p;
  p += l * h * d;
  rms_final_ = p;
  p += d;
  p += static_cast<size_t>(c.seq_len) * c.head_dim();  // freq_cis_real, freq_cis_imag
  wcls_ = c.shared_classifier ? tok_emb_ : p;
  layers_.resize(l);
  for (size_t i = 0; i < l; ++i) {
    layers_[i] = {rms_att + i * d, wq + i * d * d,  wk + i * kv * d, wv + i * kv * d, wo + i * d * d,
                  rms_ffn + i * d, w1 + i * h * d, w2 + i * d * h,  w3 + i * h * d};
  }
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Load(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("checkpoint ", path, ": cannot open: ", ErrnoText(),
                                            " (scripts/setup.sh fetches stories15M)"));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const std::string err = ErrnoText();
    ::close(fd);
    return absl::InternalError(absl::StrCat("checkpoint ", path, ": fstat: ", err));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  int32_t header[7];
  if (size < kHeaderBytes || ::pread(fd, header, kHeaderBytes, 0) != static_cast<ssize_t>(kHeaderBytes)) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint ", path, ": ", size, " bytes is shorter than the 28-byte header"));
  }
  auto ckpt = std::unique_ptr<Checkpoint>(new Checkpoint());
  ModelConfig& c = ckpt->config_;
  c.dim = header[0];
  c.hidden_dim = header[1];
  c.n_layers = header[2];
  c.n_heads = header[3];
  c.n_kv_heads = header[4];
  c.shared_classifier = header[5] > 0;
  c.vocab_size = header[5] == INT32_MIN ? 0 : (header[5] > 0 ? header[5] : -header[5]);
  c.seq_len = header[6];
  if (absl::Status s = c.Validate(); !s.ok()) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat("checkpoint ", path, ": bad header: ", s.message()));
  }
  if (size != c.FileBytes()) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint ", path, ": ", size, " bytes, but its header (", c.ToString(), ") implies ",
        c.FileBytes(), size < c.FileBytes() ? " (truncated)" : " (trailing bytes)"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) {
    return absl::InternalError(absl::StrCat("checkpoint ", path, ": mmap: ", ErrnoText()));
  }
  ckpt->mapping_ = map;
  ckpt->mapping_bytes_ = size;
  ckpt->Bind(reinterpret_cast<const float*>(static_cast<const char*>(map) + kHeaderBytes));
  return ckpt;
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Random(const ModelConfig& config, uint64_t seed,
                                                               float scale) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  auto ckpt = std::unique_ptr<Checkpoint>(new Checkpoint());
  ckpt->config_ = config;
  ckpt->owned_.resize(WeightFloats(config));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  for (float& w : ckpt->owned_) w = u(rng);
  ckpt->Bind(ckpt->owned_.data());
  // RMSNorm gains near 1, as trained models have.
  auto gains = [&](const float* p, size_t n) {
    float* w = const_cast<float*>(p);
    for (size_t i = 0; i < n; ++i) w[i] += 1.0f;
  };
  for (int32_t l = 0; l < config.n_layers; ++l) {
    gains(ckpt->layers_[l].rms_att, config.dim);
    gains(ckpt->layers_[l].rms_ffn, config.dim);
  }
  gains(ckpt->rms_final_, config.dim);
  return ckpt;
}

absl::Status Checkpoint::Save(const std::string& path) const {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::InternalError(absl::StrCat("checkpoint ", path, ": cannot create"));
  const ModelConfig& c = config_;
  const int32_t header[7] = {c.dim,        c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
                             c.shared_classifier ? c.vocab_size : -c.vocab_size, c.seq_len};
  out.write(reinterpret_cast<const char*>(header), sizeof(header));
  out.write(reinterpret_cast<const char*>(tok_emb_), static_cast<std::streamsize>(floats_ * sizeof(float)));
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("checkpoint ", path, ": write failed"));
  return absl::OkStatus();
}

Checkpoint::~Checkpoint() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_bytes_);
}

}  // namespace kvc::model
