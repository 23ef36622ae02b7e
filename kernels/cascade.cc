#include "kernels/cascade.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/internal/backend.h"
#include "kernels/internal/validate.h"

namespace kvc::kernels {

absl::Status CascadeConfig::Validate() const {
  if (num_sinks < 0) {
    return absl::InvalidArgumentError(absl::StrCat("CascadeConfig.num_sinks must be >= 0, got ", num_sinks));
  }
  if (num_subcaches < 1 || num_subcaches > 30) {
    return absl::InvalidArgumentError(
        absl::StrCat("CascadeConfig.num_subcaches must be in [1, 30], got ", num_subcaches));
  }
  if (subcache_slots < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("CascadeConfig.subcache_slots must be >= 1, got ", subcache_slots));
  }
  if (static_cast<int64_t>(num_sinks) + window() > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrCat("CascadeConfig: ", num_sinks, " sinks + ", window(),
                                                   " slots exceeds 2^30 slots"));
  }
  return absl::OkStatus();
}

int64_t CascadeStoredTokens(const CascadeConfig& config, int64_t seen) {
  if (seen <= 0) return 0;
  const int64_t sinks = std::min<int64_t>(seen, config.num_sinks);
  return sinks + std::min<int64_t>(seen - sinks, config.window());
}

absl::Status CascadeInsert(const ExecContext& ctx, const CascadeInsertArgs& args) {
  KVC_ASSIGN_OR_RETURN(const internal::KernelTable* table, internal::KernelsFor(ctx));
  KVC_RETURN_IF_ERROR(internal::ValidateCascadeInsert(args));
  KVC_RETURN_IF_ERROR(table->cascade_insert(ctx, args));
  args.state->tokens_seen += args.num_tokens;
  return absl::OkStatus();
}

absl::Status CascadeGather(const ExecContext& ctx, const CascadeGatherArgs& args) {
  KVC_ASSIGN_OR_RETURN(const internal::KernelTable* table, internal::KernelsFor(ctx));
  KVC_RETURN_IF_ERROR(internal::ValidateCascadeGather(args));
  return table->cascade_gather(ctx, args);
}

}  // namespace kvc::kernels
