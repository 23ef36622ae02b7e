#include "worker/cache/less_kernels.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvc::cache {
namespace {

static_assert(sizeof(float) == 4, "fp32 weights");
// The file is little-endian and read and written by memcpy.
static_assert(std::endian::native == std::endian::little,
              "LESS kernels I/O assumes a little-endian host");

bool AllFinite(const std::vector<float>& v) {
  for (float x : v) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

absl::Status ValidateMap(const kernels::FeatureMapWeights& m, int32_t head_dim, int32_t rank,
                         const std::string& what) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", why));
  };
  if (m.in_dim != head_dim)
    return bad(absl::StrCat("in_dim ", m.in_dim, " != head_dim ", head_dim));
  if (m.out_dim != rank) return bad(absl::StrCat("out_dim ", m.out_dim, " != rank ", rank));
  if (m.hidden < 0 || m.hidden > kLessKernelsMaxHidden)
    return bad(absl::StrCat("hidden ", m.hidden, " not in [0, ", kLessKernelsMaxHidden, "]"));
  if (m.activation != kernels::FeatureActivation::kEluPlusOne &&
      m.activation != kernels::FeatureActivation::kExp)
    return bad(absl::StrCat("activation ", static_cast<int>(m.activation), " unknown"));
  if (!std::isfinite(m.sq_norm_coeff) || m.sq_norm_coeff < 0)
    return bad(absl::StrCat("sq_norm_coeff ", m.sq_norm_coeff, " not finite and >= 0"));
  const size_t h = m.hidden, d = head_dim, r = rank, inner = h > 0 ? h : d;
  if (m.w1.size() != h * d || m.b1.size() != h)
    return bad(absl::StrCat("w1/b1 hold ", m.w1.size(), "/", m.b1.size(), " weights, want ", h * d,
                            "/", h));
  if (m.w2.size() != r * inner || m.b2.size() != r)
    return bad(absl::StrCat("w2/b2 hold ", m.w2.size(), "/", m.b2.size(), " weights, want ",
                            r * inner, "/", r));
  if (!AllFinite(m.w1) || !AllFinite(m.b1) || !AllFinite(m.w2) || !AllFinite(m.b2))
    return bad("a weight is not finite");
  return absl::OkStatus();
}

class Writer {
 public:
  void Bytes(const void* p, size_t n) { out_.append(static_cast<const char*>(p), n); }
  void I32(int32_t v) { Bytes(&v, 4); }
  void U32(uint32_t v) { Bytes(&v, 4); }
  void F32(float v) { Bytes(&v, 4); }
  void Floats(const std::vector<float>& v) { Bytes(v.data(), v.size() * sizeof(float)); }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

class Reader {
 public:
  Reader(absl::string_view in, const std::string& source) : in_(in), source_(source) {}
  absl::Status Bytes(void* p, size_t n, const std::string& what) {
    if (in_.size() - pos_ < n) {
      return absl::DataLossError(absl::StrCat(source_, ": truncated at byte ", pos_, " reading ",
                                              what, " (", n, " bytes wanted, ", in_.size() - pos_,
                                              " left)"));
    }
    std::memcpy(p, in_.data() + pos_, n);
    pos_ += n;
    return absl::OkStatus();
  }
  absl::Status I32(int32_t* v, const std::string& what) { return Bytes(v, 4, what); }
  absl::Status F32(float* v, const std::string& what) { return Bytes(v, 4, what); }
  absl::Status Floats(std::vector<float>* v, size_t n, const std::string& what) {
    // Checked before allocating, so a corrupt count cannot ask for gigabytes.
    if ((in_.size() - pos_) / sizeof(float) < n) {
      return absl::DataLossError(absl::StrCat(source_, ": truncated at byte ", pos_, " reading ",
                                              what, " (", n * sizeof(float), " bytes wanted, ",
                                              in_.size() - pos_, " left)"));
    }
    v->resize(n);
    return Bytes(v->data(), n * sizeof(float), what);
  }
  size_t left() const { return in_.size() - pos_; }

 private:
  absl::string_view in_;
  std::string source_;
  size_t pos_ = 0;
};

absl::StatusOr<kernels::FeatureMapWeights> ReadMap(Reader& r, int32_t head_dim, int32_t rank,
                                                   const std::string& source,
                                                   const std::string& what) {
  kernels::FeatureMapWeights m;
  m.in_dim = head_dim;
  m.out_dim = rank;
  int32_t activation = 0;
  KVC_RETURN_IF_ERROR(r.I32(&m.hidden, what + " hidden"));
  KVC_RETURN_IF_ERROR(r.I32(&activation, what + " activation"));
  KVC_RETURN_IF_ERROR(r.F32(&m.sq_norm_coeff, what + " sq_norm_coeff"));
  if (m.hidden < 0 || m.hidden > kLessKernelsMaxHidden) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", what, " hidden ", m.hidden,
                                                   " not in [0, ", kLessKernelsMaxHidden, "]"));
  }
  if (activation != 0 && activation != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", what, " activation ", activation, " unknown (0 elu+1, 1 exp)"));
  }
  m.activation = static_cast<kernels::FeatureActivation>(activation);
  const size_t h = m.hidden, d = head_dim, inner = h > 0 ? h : d;
  KVC_RETURN_IF_ERROR(r.Floats(&m.w1, h * d, what + " w1"));
  KVC_RETURN_IF_ERROR(r.Floats(&m.b1, h, what + " b1"));
  KVC_RETURN_IF_ERROR(r.Floats(&m.w2, static_cast<size_t>(rank) * inner, what + " w2"));
  KVC_RETURN_IF_ERROR(r.Floats(&m.b2, rank, what + " b2"));
  return m;
}

}  // namespace

absl::Status LessKernels::Validate() const {
  if (dim < 1 || n_layers < 1 || n_kv_heads < 1 || head_dim < 1 || rank < 1 || rank > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "less kernels: shape dim=", dim, " n_layers=", n_layers, " n_kv_heads=", n_kv_heads,
        " head_dim=", head_dim, " rank=", rank, " out of range (rank in [1, 256])"));
  }
  if (static_cast<int32_t>(layers.size()) != n_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("less kernels: ", layers.size(), " layers of maps for n_layers=", n_layers));
  }
  for (int32_t l = 0; l < n_layers; ++l) {
    KVC_RETURN_IF_ERROR(ValidateMap(layers[l].phi, head_dim, rank,
                                    absl::StrCat("less kernels: layer ", l, " phi")));
    KVC_RETURN_IF_ERROR(ValidateMap(layers[l].psi, head_dim, rank,
                                    absl::StrCat("less kernels: layer ", l, " psi")));
  }
  return absl::OkStatus();
}

absl::Status LessKernels::CheckMatches(const model::ModelConfig& c) const {
  if (dim != c.dim || n_layers != c.n_layers || n_kv_heads != c.n_kv_heads ||
      head_dim != c.head_dim()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "less kernels trained for dim=", dim, " n_layers=", n_layers, " n_kv_heads=", n_kv_heads,
        " head_dim=", head_dim, ", but the model has dim=", c.dim, " n_layers=", c.n_layers,
        " n_kv_heads=", c.n_kv_heads, " head_dim=", c.head_dim()));
  }
  return absl::OkStatus();
}

std::string SerializeLessKernels(const LessKernels& k) {
  Writer w;
  w.Bytes(kLessKernelsMagic, sizeof(kLessKernelsMagic));
  w.U32(kLessKernelsVersion);
  for (int32_t v : {k.dim, k.n_layers, k.n_kv_heads, k.head_dim, k.rank}) w.I32(v);
  for (const LessKernels::Layer& l : k.layers) {
    for (const kernels::FeatureMapWeights* m : {&l.phi, &l.psi}) {
      w.I32(m->hidden);
      w.I32(static_cast<int32_t>(m->activation));
      w.F32(m->sq_norm_coeff);
      w.Floats(m->w1);
      w.Floats(m->b1);
      w.Floats(m->w2);
      w.Floats(m->b2);
    }
  }
  return w.Take();
}

absl::StatusOr<LessKernels> ParseLessKernels(absl::string_view bytes, const std::string& source) {
  Reader r(bytes, source);
  char magic[sizeof(kLessKernelsMagic)];
  KVC_RETURN_IF_ERROR(r.Bytes(magic, sizeof(magic), "the magic"));
  if (std::memcmp(magic, kLessKernelsMagic, sizeof(magic)) != 0) {
    return absl::DataLossError(
        absl::StrCat(source, ": not a LESS kernels file (magic is not \"KVCLESSK\")"));
  }
  uint32_t version = 0;
  KVC_RETURN_IF_ERROR(r.Bytes(&version, 4, "the version"));
  if (version != kLessKernelsVersion) {
    return absl::FailedPreconditionError(absl::StrCat(source, ": LESS kernels format version ",
                                                      version, ", this build reads ",
                                                      kLessKernelsVersion));
  }
  LessKernels k;
  KVC_RETURN_IF_ERROR(r.I32(&k.dim, "dim"));
  KVC_RETURN_IF_ERROR(r.I32(&k.n_layers, "n_layers"));
  KVC_RETURN_IF_ERROR(r.I32(&k.n_kv_heads, "n_kv_heads"));
  KVC_RETURN_IF_ERROR(r.I32(&k.head_dim, "head_dim"));
  KVC_RETURN_IF_ERROR(r.I32(&k.rank, "rank"));
  if (k.dim < 1 || k.n_layers < 1 || k.n_layers > 4096 || k.n_kv_heads < 1 || k.head_dim < 1 ||
      k.head_dim > 4096 || k.rank < 1 || k.rank > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": header dim=", k.dim, " n_layers=", k.n_layers, " n_kv_heads=", k.n_kv_heads,
        " head_dim=", k.head_dim, " rank=", k.rank, " out of range"));
  }
  k.layers.resize(k.n_layers);
  for (int32_t l = 0; l < k.n_layers; ++l) {
    KVC_ASSIGN_OR_RETURN(k.layers[l].phi,
                         ReadMap(r, k.head_dim, k.rank, source, absl::StrCat("layer ", l, " phi")));
    KVC_ASSIGN_OR_RETURN(k.layers[l].psi,
                         ReadMap(r, k.head_dim, k.rank, source, absl::StrCat("layer ", l, " psi")));
  }
  if (r.left() != 0) {
    return absl::DataLossError(
        absl::StrCat(source, ": ", r.left(), " bytes after the last layer's maps"));
  }
  const absl::Status valid = k.Validate();
  if (!valid.ok()) return absl::Status(valid.code(), absl::StrCat(source, ": ", valid.message()));
  return k;
}

absl::StatusOr<LessKernels> ReadLessKernels(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open LESS kernels file ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading LESS kernels file ", path));
  return ParseLessKernels(ss.str(), path);
}

absl::Status WriteLessKernels(const LessKernels& k, const std::string& path) {
  KVC_RETURN_IF_ERROR(k.Validate());
  const std::string bytes = SerializeLessKernels(k);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out)
    return absl::PermissionDeniedError(absl::StrCat("cannot create LESS kernels file ", path));
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("error writing LESS kernels file ", path));
  return absl::OkStatus();
}

}  // namespace kvc::cache
