// Status propagation helpers. Debian's abseil (20220623) ships no
// RETURN_IF_ERROR / ASSIGN_OR_RETURN, so the project defines its own two.
#ifndef KVC_COMMON_STATUS_MACROS_H_
#define KVC_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define KVC_STATUS_CONCAT_INNER_(a, b) a##b
#define KVC_STATUS_CONCAT_(a, b) KVC_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function when `expr` (an absl::Status) is not OK.
#define KVC_RETURN_IF_ERROR(expr)                 \
  do {                                            \
    ::absl::Status kvc_status_ = (expr);          \
    if (!kvc_status_.ok()) return kvc_status_;    \
  } while (0)

// `lhs` = value of `rexpr` (an absl::StatusOr<T>), or returns its status.
#define KVC_ASSIGN_OR_RETURN(lhs, rexpr) \
  KVC_ASSIGN_OR_RETURN_IMPL_(KVC_STATUS_CONCAT_(kvc_statusor_, __LINE__), lhs, rexpr)

#define KVC_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                               \
  if (!statusor.ok()) return statusor.status();          \
  lhs = std::move(statusor).value()

#endif  // KVC_COMMON_STATUS_MACROS_H_
