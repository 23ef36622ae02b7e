#include "worker/cache/cache_manager.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/cache/policy_factory.h"

namespace kvc::cache {

// Admission in front of the policy: at layer 0 of every chunk, the
// worst-case growth is reserved; after the last layer, the charge is set
// to what the policy holds.
class CacheManager::Sequence : public model::AttentionCache {
 public:
  Sequence(CacheManager* manager, uint64_t id, std::unique_ptr<CachePolicy> policy, int32_t layers)
      : manager_(manager), id_(id), policy_(std::move(policy)), layers_(layers) {}

  absl::Status Attend(const kernels::ExecContext& ctx, const model::AttendArgs& a) override {
    if (a.layer == 0) {
      // Worst case: every new token stays, up to the policy's budget.
      const int64_t room = policy_->max_resident_tokens() - policy_->stats().resident_tokens;
      const int64_t grow = std::max<int64_t>(0, std::min(a.num_tokens, room));
      KVC_RETURN_IF_ERROR(manager_->Reserve(id_, static_cast<size_t>(grow) * policy_->bytes_per_token()));
    }
    const absl::Status s = policy_->Attend(ctx, a);
    if (a.layer == layers_ - 1 || !s.ok()) manager_->Settle(id_, policy_->stats().resident_bytes);
    return s;
  }

  const CachePolicy& policy() const { return *policy_; }
  size_t charged = 0;  // guarded by the manager's mu_

 private:
  CacheManager* manager_;
  uint64_t id_;
  std::unique_ptr<CachePolicy> policy_;
  int32_t layers_;
};

CacheManager::CacheManager(const model::ModelConfig& config, size_t byte_budget)
    : config_(config), budget_(byte_budget) {}

CacheManager::~CacheManager() = default;

absl::StatusOr<model::AttentionCache*> CacheManager::Open(uint64_t sequence, const std::string& spec) {
  KVC_ASSIGN_OR_RETURN(std::unique_ptr<CachePolicy> policy, MakePolicy(config_, spec));
  absl::MutexLock lock(&mu_);
  if (sequences_.count(sequence)) {
    return absl::AlreadyExistsError(absl::StrCat("sequence ", sequence, " is already open"));
  }
  auto seq = std::make_unique<Sequence>(this, sequence, std::move(policy), config_.n_layers);
  Sequence* raw = seq.get();
  sequences_.emplace(sequence, std::move(seq));
  return raw;
}

absl::Status CacheManager::Close(uint64_t sequence) {
  absl::MutexLock lock(&mu_);
  auto it = sequences_.find(sequence);
  if (it == sequences_.end()) return absl::NotFoundError(absl::StrCat("sequence ", sequence, " is not open"));
  used_ -= it->second->charged;
  sequences_.erase(it);
  return absl::OkStatus();
}

size_t CacheManager::used_bytes() const {
  absl::MutexLock lock(&mu_);
  return used_;
}

const CachePolicy* CacheManager::policy(uint64_t sequence) const {
  absl::MutexLock lock(&mu_);
  auto it = sequences_.find(sequence);
  return it == sequences_.end() ? nullptr : &it->second->policy();
}

absl::Status CacheManager::Reserve(uint64_t seq, size_t bytes) {
  absl::MutexLock lock(&mu_);
  Sequence& s = *sequences_.at(seq);
  if (used_ + bytes > budget_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV budget: sequence ", seq, " (", s.policy().name(), ", ", s.charged, " bytes held) needs up to ", bytes,
        " more bytes for this chunk, but ", used_, " of the ", budget_, "-byte budget are in use"));
  }
  used_ += bytes;
  s.charged += bytes;
  return absl::OkStatus();
}

void CacheManager::Settle(uint64_t seq, size_t resident) {
  absl::MutexLock lock(&mu_);
  Sequence& s = *sequences_.at(seq);
  used_ = used_ - s.charged + resident;
  s.charged = resident;
}

}  // namespace kvc::cache
