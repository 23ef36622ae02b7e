#include "kernels/dense.h"

#include <sys/mman.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/dtype.h"
#include "kernels/internal/backend.h"
#include "kernels/internal/validate.h"

namespace kvc::kernels {
namespace {
constexpr size_t kHugePage = size_t{2} << 20;
}  // namespace

absl::StatusOr<LinearPack> PackLinear(const void* w, DType w_dtype, int32_t n, int32_t k) {
  if (n <= 0 || k <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("PackLinear: n and k must be > 0, got ", n, ", ", k));
  }
  if (w_dtype != DType::kF32 && w_dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("PackLinear: w_dtype must be f32 or bf16, got ", DTypeName(w_dtype)));
  }
  if (w == nullptr) return absl::InvalidArgumentError("PackLinear: w is null");
  constexpr int32_t kCols = LinearPack::kPanelCols;
  LinearPack pack;
  pack.n = n;
  pack.k = k;
  pack.w_dtype = w_dtype;
  // Whole 2 MiB pages (huge pages advised) for packs of a MiB or more: a
  // prefill streams them, and first-touch faults of 4 KiB pages made up
  // most of the packing time on a VM.
  const bool huge = pack.bytes() >= (size_t{1} << 20);
  const size_t align = huge ? kHugePage : 64;
  const size_t bytes = (pack.bytes() + align - 1) / align * align;
  pack.panels.reset(static_cast<float*>(std::aligned_alloc(align, bytes)));
  if (pack.panels == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("PackLinear: cannot allocate ", bytes, " bytes"));
  }
#ifdef MADV_HUGEPAGE
  if (huge) ::madvise(pack.panels.get(), bytes, MADV_HUGEPAGE);  // advisory
#endif
  // Blocks of kCols rows x kBlock columns of W: each row's kBlock values are
  // read in order (a stream the prefetchers follow), the block's writes stay
  // in kBlock * kCols floats.
  constexpr int32_t kBlock = 16;
  auto fill = [&](auto load) {
    for (int64_t p = 0; p < pack.num_panels(); ++p) {
      float* panel = pack.panels.get() + p * k * kCols;
      for (int32_t d0 = 0; d0 < k; d0 += kBlock) {
        const int32_t width = std::min(kBlock, k - d0);
        for (int32_t c = 0; c < kCols; ++c) {
          const int64_t row = p * kCols + c;
          float* dst = panel + static_cast<int64_t>(d0) * kCols + c;
          if (row >= n) {
            for (int32_t dd = 0; dd < width; ++dd) dst[dd * kCols] = 0.0f;
          } else {
            for (int32_t dd = 0; dd < width; ++dd) dst[dd * kCols] = load(row * k + d0 + dd);
          }
        }
      }
    }
  };
  if (w_dtype == DType::kBF16) {
    const auto* src = static_cast<const uint16_t*>(w);
    fill([src](int64_t at) { return BF16ToFloat(src[at]); });
  } else {
    const auto* src = static_cast<const float*>(w);
    fill([src](int64_t at) { return src[at]; });
  }
  return pack;
}

absl::Status Linear(const ExecContext& ctx, const LinearArgs& args) {
  KVC_ASSIGN_OR_RETURN(const internal::KernelTable* table, internal::KernelsFor(ctx));
  KVC_RETURN_IF_ERROR(internal::ValidateLinear(args));
  if (args.m == 0) return absl::OkStatus();
  return table->linear(ctx, args);
}

absl::Status RmsNorm(const ExecContext& ctx, const RmsNormArgs& args) {
  KVC_ASSIGN_OR_RETURN(const internal::KernelTable* table, internal::KernelsFor(ctx));
  KVC_RETURN_IF_ERROR(internal::ValidateRmsNorm(args));
  if (args.rows == 0) return absl::OkStatus();
  return table->rms_norm(ctx, args);
}

absl::Status SwiGlu(const ExecContext& ctx, const SwiGluArgs& args) {
  KVC_ASSIGN_OR_RETURN(const internal::KernelTable* table, internal::KernelsFor(ctx));
  KVC_RETURN_IF_ERROR(internal::ValidateSwiGlu(args));
  if (args.count == 0) return absl::OkStatus();
  return table->swiglu(ctx, args);
}

}  // namespace kvc::kernels
