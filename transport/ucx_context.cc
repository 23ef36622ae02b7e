#include "transport/ucx_context.h"

#include <sys/mman.h>

#include "absl/strings/str_cat.h"
#include "common/mapped_buffer.h"

namespace kvc::ucx {

absl::Status UcxOptions::Validate() const {
  for (const auto& [name, value] : {std::pair{"tls", &tls}, std::pair{"net_devices", &net_devices},
                                    std::pair{"rndv_scheme", &rndv_scheme}}) {
    for (char c : *value) {
      if (!(isalnum(static_cast<unsigned char>(c)) || c == ',' || c == '_' || c == ':' || c == '-' || c == '^' ||
            c == '.')) {
        return absl::InvalidArgumentError(
            absl::StrCat("UCX option ", name, " '", *value, "' has a character UCX does not accept"));
      }
    }
  }
  if (progress_spin < absl::ZeroDuration() || progress_spin > absl::Seconds(1)) {
    return absl::InvalidArgumentError(absl::StrCat("UCX option progress_spin ", absl::FormatDuration(progress_spin),
                                                   " is outside [0, 1s]"));
  }
  return absl::OkStatus();
}

absl::Status FromUcs(ucs_status_t s, absl::string_view what) {
  if (s == UCS_OK) return absl::OkStatus();
  const std::string msg = absl::StrCat(what, ": ", ucs_status_string(s));
  switch (s) {
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_REJECTED:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_IO_ERROR:
    case UCS_ERR_TIMED_OUT:
    case UCS_ERR_BUSY:
    case UCS_ERR_NO_DEVICE:
    case UCS_ERR_NO_RESOURCE:
      return absl::UnavailableError(msg);
    case UCS_ERR_CANCELED:
      return absl::CancelledError(msg);
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_INVALID_ADDR:
    case UCS_ERR_UNSUPPORTED:
      return absl::InvalidArgumentError(msg);
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_EXCEEDS_LIMIT:
    case UCS_ERR_OUT_OF_RANGE:
      return absl::ResourceExhaustedError(msg);
    default:
      return absl::InternalError(msg);
  }
}

absl::StatusOr<std::unique_ptr<UcxContext>> UcxContext::Create(const UcxOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  ucp_config_t* config = nullptr;
  if (ucs_status_t s = ucp_config_read(nullptr, nullptr, &config); s != UCS_OK) {
    return FromUcs(s, "ucp_config_read");
  }
  const auto modify = [config](const char* name, const std::string& value) -> absl::Status {
    if (value.empty()) return absl::OkStatus();
    ucs_status_t s = ucp_config_modify(config, name, value.c_str());
    if (s != UCS_OK) return FromUcs(s, absl::StrCat("UCX_", name, "=", value));
    return absl::OkStatus();
  };
  absl::Status st = modify("TLS", options.tls);
  if (st.ok()) st = modify("NET_DEVICES", options.net_devices);
  if (st.ok()) st = modify("RNDV_SCHEME", options.rndv_scheme);
  if (st.ok() && options.reuse_address) st = modify("CM_REUSEADDR", "y");
  if (!st.ok()) {
    ucp_config_release(config);
    return st;
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  params.mt_workers_shared = 1;
  params.name = "kvcache";
  ucp_context_h context = nullptr;
  ucs_status_t s = ucp_init(&params, config, &context);
  ucp_config_release(config);
  if (s != UCS_OK) {
    return FromUcs(s, absl::StrCat("ucp_init (tls='", options.tls, "', net_devices='", options.net_devices, "')"));
  }
  return std::unique_ptr<UcxContext>(new UcxContext(context, options));
}

UcxContext::~UcxContext() { ucp_cleanup(context_); }

absl::StatusOr<std::unique_ptr<RegisteredMemory>> RegisteredMemory::Allocate(UcxContext* context, size_t bytes,
                                                                             bool populate) {
  if (bytes == 0) return absl::InvalidArgumentError("registered memory of 0 bytes");
  // Plain anonymous memory, registered: UCP_MEM_MAP_ALLOCATE may hand out a
  // shared-memory segment from the sysv/posix allocators, which made
  // rendezvous sends from it several times slower over sm (measured).
  // Huge pages: the peer's cma rendezvous pins this memory a 2 MiB folio at
  // a time instead of a 4 KiB page at a time.
  void* data = MapAnonymous(bytes, /*huge_pages=*/true, populate);
  if (data == MAP_FAILED) return absl::ResourceExhaustedError(absl::StrCat("mmap of ", bytes, " bytes failed"));
  ucp_mem_map_params_t p{};
  p.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  p.address = data;
  p.length = bytes;
  ucp_mem_h memh = nullptr;
  if (ucs_status_t s = ucp_mem_map(context->handle(), &p, &memh); s != UCS_OK) {
    munmap(data, bytes);
    return FromUcs(s, absl::StrCat("ucp_mem_map of ", bytes, " bytes"));
  }
  return std::unique_ptr<RegisteredMemory>(new RegisteredMemory(context, memh, static_cast<char*>(data), bytes));
}

RegisteredMemory::~RegisteredMemory() {
  ucp_mem_unmap(context_->handle(), memh_);
  munmap(data_, size_);
}

}  // namespace kvc::ucx
