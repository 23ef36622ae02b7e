// Training LESS kernels (ALGORITHMS.md §3) with the model frozen: per layer,
// the query map phi and key map psi are fitted by full-batch gradient
// descent (Adam, hand-written backprop, fp64) so that LESS's combined output
//   a = [phi(q) H + e^lse o] / [phi(q) z + e^lse],
//   H = sum psi(k_s)^T v_s, z = sum psi(k_s) over the tokens folded before
//   the query's chunk,
// reproduces the reference attention y (LessSamples::target), i.e. the loss
// is the mean over (token, query head) rows whose KV head has folded
// something of |a - y|^2. This is the paper's objective (match the
// attention output given the sparse policy's cache), layer by layer,
// exactly as worker/cache/less.h computes a, including the fold order: H
// and z are prefix sums over the chunks, so their gradients are suffix sums
// and one step costs O(N (Hq + Hkv) * cost of a map).
//
// Maps: f(x) = act(w2 g(x) + b2 - c |x|^2), g = gelu(w1 x + b1) with
// `hidden` units or the identity (kernels::FeatureMap); w1, b1, w2, b2 are
// trained, c is fixed. With act = exp and no hidden layer, phi(q) . psi(k)
// = sum_r exp(a_r . q + a'_r . k + ...) is a mixture of R exponential
// kernels, the form of the softmax weight e^{q.k/sqrt(D)} it stands in for;
// both maps start as the same positive random features
// (kernels::PositiveRandomFeatureMap, an unbiased softmax estimate), with
// psi's bias shifted so the state starts at `initial_share` of the
// normaliser, a geometric mean over rows (the unshifted estimate hurts this
// model, see docs/EVALUATION.md).
#ifndef KVC_WORKER_EVAL_LESS_TRAIN_H_
#define KVC_WORKER_EVAL_LESS_TRAIN_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/less.h"
#include "worker/cache/less_kernels.h"
#include "worker/eval/less_samples.h"

namespace kvc::eval {

struct LessTrainOptions {
  int32_t rank = 8;    // R, in [1, 256]
  int32_t hidden = 0;  // hidden GELU units of each map, in [0, 4096]; 0 = linear + activation
  kernels::FeatureActivation activation = kernels::FeatureActivation::kExp;
  int32_t steps = 200;          // full-batch Adam steps per layer, >= 0
  double learning_rate = 0.02;  // Adam's, > 0
  // exp maps: the geometric mean over rows of phi(q) z / e^lse (the
  // state's weight against the sparse part's) the initial psi is scaled to,
  // in (0, 1). Ignored for elu + 1.
  double initial_share = 0.01;
  uint64_t seed = 1;  // of the initial maps
  // Start from these maps instead (continued training, or steps = 0 to
  // measure them); hidden, activation and initial_share are then unused.
  // REQUIRES: the samples' model shape and rank == init->rank.
  std::shared_ptr<const cache::LessKernels> init;
  int32_t threads = 1;           // layers fitted in parallel, >= 1
  int32_t validation_every = 5;  // steps between validation losses, >= 1
  // Called with the steps done, summed over layers, of n_layers * steps;
  // under a lock, from the fitting threads.
  std::function<void(int64_t)> progress;
  absl::Status Validate() const;
};

// Per layer: mean squared errors against the reference over the rows whose
// KV head has folded something (the rows LESS changes), on the training
// samples and on the validation samples (0 without).
struct LessLayerFit {
  int64_t rows = 0;
  double sparse_loss = 0;   // the eviction policy alone (a = o)
  double initial_loss = 0;  // LESS with the initial maps
  double final_loss = 0;    // LESS with the returned maps (the best step's)
  int64_t validation_rows = 0;
  double validation_sparse_loss = 0, validation_initial_loss = 0, validation_final_loss = 0;
  int32_t best_step = 0;  // the step whose maps are returned
};

struct LessTrainResult {
  cache::LessKernels kernels;
  std::vector<LessLayerFit> layers;
};

// Fits on the `train` streams (the loss is the mean over all their rows);
// the returned maps are the step with the lowest loss on the `validation`
// streams (early stopping; held-out text), or on `train` when there are
// none. REQUIRES: samples as CollectLessSamples returns them, of one model.
absl::StatusOr<LessTrainResult> FitLessKernels(absl::Span<const LessSamples* const> train,
                                               absl::Span<const LessSamples* const> validation,
                                               const LessTrainOptions& options);

// The loss FitLessKernels minimises, of layer `layer` with the given maps
// (fp64): for checking a kernels file against samples.
double LessLayerLoss(const LessSamples& samples, int32_t layer, const kernels::FeatureMap& phi,
                     const kernels::FeatureMap& psi);
// The same loss and, into *grad, its gradient with respect to
// [phi's w1 | b1 | w2 | b2 | psi's w1 | b1 | w2 | b2] (fp64; for checking
// the backprop against finite differences).
double LessLayerLossAndGradient(const LessSamples& samples, int32_t layer,
                                const kernels::FeatureMap& phi, const kernels::FeatureMap& psi,
                                std::vector<double>* grad);

}  // namespace kvc::eval

#endif  // KVC_WORKER_EVAL_LESS_TRAIN_H_
