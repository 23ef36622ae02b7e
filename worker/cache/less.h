// LESS (Dong et al., "Get More with LESS"; ALGORITHMS.md §3) as a policy on
// top of an eviction policy: per layer and KV head a constant-size state
// H [R][D], z [R] absorbs every token the inner policy evicts, so evicted
// tokens still contribute to attention:
//   a = [phi(q) H + sum_{s in cache} e^{l_s} v_s] / [phi(q) z + sum_{s in cache} e^{l_s}]
// (kernels::LessCombine, in log space from the inner policy's (out, lse)).
//
// Each Attend: the inner policy attends the chunk (out and lse into
// scratch); the sparse state is combined with the low-rank state as it was
// BEFORE this call's evictions (this chunk still attended those tokens in
// the cache); then the inner policy's last_evictions() for the layer are
// folded (kernels::LessFold). While a KV head has folded nothing, its
// output is the inner policy's bit for bit.
//
// Feature maps, on the pre-RoPE q and k: with trained kernels
// (LessOptions::kernels, worker/cache/less_kernels.h) layer l combines with
// its phi and folds with its psi, shared by the layer's KV heads. Without,
// phi = psi = kernels::RandomFeatureMap(head_dim, rank, seed) (elu(W x) + 1
// with W ~ N(0, 1/D), no hidden layer), or with positive_features
// kernels::PositiveRandomFeatureMap; one map shared by every layer and head.
//
// args.lse, when requested, is the combined normaliser:
//   log(exp(sparse_lse) + max(phi(q) z, 1e-6)), sparse_lse where the head's
// state is empty; phi evaluated here in fp64 (LessCombine evaluates it in
// its own precision, so the two agree to fp32 rounding).
//
// Memory: stats().resident_bytes is the inner policy's plus the state
// (n_layers * Hkv * R * (D + 1) fp32), allocated at Create; the cache
// manager charges it after the first chunk (bytes_per_token() is the
// inner's).
//
// Not thread-safe; one object per sequence.
#ifndef KVC_WORKER_CACHE_LESS_H_
#define KVC_WORKER_CACHE_LESS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/less.h"
#include "worker/cache/less_kernels.h"
#include "worker/cache/policy.h"
#include "worker/model/checkpoint.h"

namespace kvc::cache {

struct LessOptions {
  int32_t rank = 8;   // R: features per KV head, in [1, 256]
  uint64_t seed = 1;  // of the fixed random feature map
  // false: elu(W x) + 1 (kernels::RandomFeatureMap); true: positive random
  // features exp(W x - |x|^2 / (2 sqrt(D)) - ln(R)/2), an unbiased estimate of
  // the softmax kernel (kernels::PositiveRandomFeatureMap).
  bool positive_features = false;
  // Trained per-layer maps (replace the fixed map; seed and
  // positive_features are then unused). nullptr = the fixed map.
  // REQUIRES: kernels->rank == rank and the model's shape (Less::Create
  // checks both). worker/cache/combined.h does not use them yet.
  std::shared_ptr<const LessKernels> kernels;
  absl::Status Validate() const;
};

// The combined normaliser of sparse attention and a LESS state, per row
// (token, query head): log(exp(sparse_lse) + max(phi(q) z, 1e-6)), or
// sparse_lse where the head's z is all zero; phi in fp64
// (kernels::EvaluateFeatureMap). z: [Hkv][rank]; q: [num_tokens][Hq][D].
void LessCombinedLse(const kernels::FeatureMap& phi, const float* z, int32_t rank,
                     const model::ModelConfig& config, const float* q, const float* sparse_lse,
                     int64_t num_tokens, float* lse);

class Less : public CachePolicy {
 public:
  // `inner` decides what stays resident; it should report its evictions
  // (last_evictions()), else nothing is ever folded and Less equals it.
  static absl::StatusOr<std::unique_ptr<Less>> Create(const model::ModelConfig& config,
                                                      const LessOptions& options,
                                                      std::unique_ptr<CachePolicy> inner);

  absl::Status Attend(const kernels::ExecContext& ctx, const model::AttendArgs& args) override;
  std::string name() const override { return "less(" + inner_->name() + ")"; }
  PolicyStats stats() const override;
  size_t bytes_per_token() const override { return inner_->bytes_per_token(); }
  int64_t max_resident_tokens() const override { return inner_->max_resident_tokens(); }

  const CachePolicy& inner() const { return *inner_; }
  // The fixed map (used by every layer when no trained kernels are given).
  const kernels::FeatureMapWeights& feature_map() const { return map_; }
  // The maps layer `layer` combines (phi) and folds (psi) with.
  kernels::FeatureMap phi(int32_t layer) const;
  kernels::FeatureMap psi(int32_t layer) const;
  // The state of `layer`: H [Hkv][R][D] and z [Hkv][R].
  const std::vector<float>& state_h(int32_t layer) const { return layers_[layer].h; }
  const std::vector<float>& state_z(int32_t layer) const { return layers_[layer].z; }
  // Tokens folded so far, summed over layers and KV heads.
  int64_t folded_tokens() const { return folded_; }

 private:
  struct Layer {
    std::vector<float> h, z;
  };
  Less(const model::ModelConfig& config, const LessOptions& options,
       std::unique_ptr<CachePolicy> inner);
  kernels::LessState State(int32_t layer);

  model::ModelConfig config_;
  LessOptions options_;
  std::unique_ptr<CachePolicy> inner_;
  kernels::FeatureMapWeights map_;  // phi and psi without trained kernels
  std::vector<Layer> layers_;
  int64_t folded_ = 0;
  // Scratch: the inner policy's output and lse.
  std::vector<float> sparse_out_, sparse_lse_;
};

}  // namespace kvc::cache

#endif  // KVC_WORKER_CACHE_LESS_H_
