#include "kernels/quest.h"

#include <algorithm>

#include "common/status_macros.h"
#include "kernels/internal/backend.h"
#include "kernels/internal/validate.h"

namespace kvc::kernels {

size_t QuestWorkspaceBytes(int64_t num_pages, int32_t num_q_heads, int32_t head_dim) {
  // The CUDA layout (cuda/quest.cu): 256 bytes to align the start, the
  // rotated query [Hq][D] fp32 rounded up to 256 bytes, 2 KiB for the
  // top-k's radix-select state, and 16 bytes per scan tile of 1024 pages.
  const size_t pages = static_cast<size_t>(std::max<int64_t>(num_pages, 0));
  const size_t q_bytes = static_cast<size_t>(std::max(num_q_heads, 0)) * std::max(head_dim, 0) * 4;
  return 256 + (q_bytes + 255) / 256 * 256 + 2048 + 16 * ((pages + 1023) / 1024);
}

absl::Status QuestUpdatePages(const ExecContext& ctx, const QuestUpdateArgs& args) {
  KVC_ASSIGN_OR_RETURN(const internal::KernelTable* table, internal::KernelsFor(ctx));
  KVC_RETURN_IF_ERROR(internal::ValidateQuestUpdate(args));
  if (args.first_new == args.num_tokens) return absl::OkStatus();
  return table->quest_update(ctx, args);
}

absl::Status QuestSelect(const ExecContext& ctx, const QuestSelectArgs& args) {
  KVC_ASSIGN_OR_RETURN(const internal::KernelTable* table, internal::KernelsFor(ctx));
  KVC_RETURN_IF_ERROR(internal::ValidateQuestSelect(args, ctx.backend));
  return table->quest_select(ctx, args);
}

}  // namespace kvc::kernels
