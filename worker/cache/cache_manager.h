// The worker's cache manager: owns every sequence's cache policy (its
// per-layer state) under one byte budget. A chunk whose worst-case growth
// (tokens x the policy's bytes_per_token) does not fit beside what all
// sequences hold is refused with ResourceExhausted before anything is
// allocated, and the sequence stays as it was; the other sequences are
// unaffected.
#ifndef KVC_WORKER_CACHE_CACHE_MANAGER_H_
#define KVC_WORKER_CACHE_CACHE_MANAGER_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "worker/cache/policy.h"
#include "worker/model/checkpoint.h"

namespace kvc::cache {

class CacheManager {
 public:
  CacheManager(const model::ModelConfig& config, size_t byte_budget);
  ~CacheManager();

  // A new sequence under the policy `spec` (policy_factory.h). The returned
  // cache is what Transformer::Forward takes; it stays valid until Close.
  // One thread at a time may use a given sequence.
  absl::StatusOr<model::AttentionCache*> Open(uint64_t sequence, const std::string& spec);
  // Frees the sequence's state and its share of the budget.
  absl::Status Close(uint64_t sequence);

  // Bytes the open sequences hold (as charged after their last chunk).
  size_t used_bytes() const;
  size_t budget_bytes() const { return budget_; }
  // The policy of an open sequence, or null.
  const CachePolicy* policy(uint64_t sequence) const;

 private:
  class Sequence;
  // Reserves `bytes` more for `seq` (worst case of its next chunk).
  absl::Status Reserve(uint64_t seq, size_t bytes);
  // Sets the sequence's charge to what it actually holds.
  void Settle(uint64_t seq, size_t resident);

  const model::ModelConfig config_;
  const size_t budget_;
  mutable absl::Mutex mu_;
  std::map<uint64_t, std::unique_ptr<Sequence>> sequences_ ABSL_GUARDED_BY(mu_);
  size_t used_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace kvc::cache

#endif  // KVC_WORKER_CACHE_CACHE_MANAGER_H_
