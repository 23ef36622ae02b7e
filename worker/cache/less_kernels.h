// Trained LESS kernels (ALGORITHMS.md §3): per layer a query map phi and a
// key map psi (kernels::FeatureMap, with or without the hidden GELU layer),
// loaded from a file that is part of the model format, written by
// `kvc-worker less-train` (worker/eval/less_train.h).
//
// File format, version 1, little-endian, no padding:
//   magic      8 bytes  "KVCLESSK"
//   version    uint32   1
//   dim, n_layers, n_kv_heads, head_dim, rank     int32 each: the model shape
//              the kernels were trained for (model::ModelConfig) and R
//   then per layer l = 0 .. n_layers-1: phi, then psi, each
//     hidden         int32  0 = no hidden layer, else in [1, 4096]
//     activation     int32  kernels::FeatureActivation (0 elu+1, 1 exp)
//     sq_norm_coeff  fp32   >= 0, finite
//     w1 [hidden][head_dim], b1 [hidden]          fp32 (absent when hidden = 0)
//     w2 [rank][hidden > 0 ? hidden : head_dim], b2 [rank]   fp32
//   and nothing after the last map.
// Every map has in_dim = head_dim and out_dim = rank; every weight must be
// finite. The maps of a layer are shared by its KV heads.
//
// Thread-safety: a LessKernels is a value; a const one may be shared.
#ifndef KVC_WORKER_CACHE_LESS_KERNELS_H_
#define KVC_WORKER_CACHE_LESS_KERNELS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/less.h"
#include "worker/model/checkpoint.h"

namespace kvc::cache {

inline constexpr char kLessKernelsMagic[8] = {'K', 'V', 'C', 'L', 'E', 'S', 'S', 'K'};
inline constexpr uint32_t kLessKernelsVersion = 1;
inline constexpr int32_t kLessKernelsMaxHidden = 4096;

struct LessKernels {
  // The model shape the kernels belong to, and R.
  int32_t dim = 0, n_layers = 0, n_kv_heads = 0, head_dim = 0, rank = 0;
  struct Layer {
    kernels::FeatureMapWeights phi;  // of the queries (LessCombine)
    kernels::FeatureMapWeights psi;  // of the evicted keys (LessFold)
  };
  std::vector<Layer> layers;  // [n_layers]

  // InvalidArgument naming the layer and map when a map's shape, weight
  // sizes, activation or coefficients disagree with the header fields.
  absl::Status Validate() const;
  // FailedPrecondition naming both shapes when these kernels were trained
  // for another model shape than `config`.
  absl::Status CheckMatches(const model::ModelConfig& config) const;
};

// The file's bytes. REQUIRES: kernels.Validate() is OK.
std::string SerializeLessKernels(const LessKernels& kernels);
// Parses a file's bytes; `source` names them in errors. DataLoss for a
// wrong magic, a truncated file or trailing bytes; FailedPrecondition for an
// unsupported version; InvalidArgument for values out of range.
absl::StatusOr<LessKernels> ParseLessKernels(absl::string_view bytes, const std::string& source);
absl::StatusOr<LessKernels> ReadLessKernels(const std::string& path);
absl::Status WriteLessKernels(const LessKernels& kernels, const std::string& path);

}  // namespace kvc::cache

#endif  // KVC_WORKER_CACHE_LESS_KERNELS_H_
