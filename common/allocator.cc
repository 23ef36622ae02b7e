#include "common/allocator.h"

#include <malloc.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace kvc {

void TuneAllocatorForLargeBuffers() {
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") == nullptr) mallopt(M_MMAP_THRESHOLD, 32 << 20);
  if (std::getenv("MALLOC_TRIM_THRESHOLD_") == nullptr) mallopt(M_TRIM_THRESHOLD, 1 << 30);
  if (std::getenv("MALLOC_TOP_PAD_") == nullptr) mallopt(M_TOP_PAD, 64 << 20);
}

void ReexecWithHugePageMalloc(char** argv, std::string* state) {
  constexpr char kTunable[] = "glibc.malloc.hugetlb";
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  const std::string current = tunables == nullptr ? "" : tunables;
  std::string mode;
  {
    std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
    std::stringstream text;
    text << f.rdbuf();
    const std::string s = text.str();
    const size_t open = s.find('['), close = s.find(']', open);
    if (open != std::string::npos && close != std::string::npos) mode = s.substr(open + 1, close - open - 1);
  }
  if (current.find(kTunable) != std::string::npos) {
    // Also what a re-executed process finds.
    const size_t at = current.find(kTunable);
    const size_t end = current.find(':', at);
    *state = mode == "madvise" && current.compare(at, end - at, "glibc.malloc.hugetlb=1") == 0
                 ? "madvise (glibc.malloc.hugetlb=1)"
                 : "set by GLIBC_TUNABLES (" + current.substr(at, end == std::string::npos ? end : end - at) + ")";
    return;
  }
  if (mode != "madvise") {
    *state = mode.empty() ? "unknown (no /sys/kernel/mm/transparent_hugepage)" : mode;
    return;
  }
  const std::string value = current.empty() ? "glibc.malloc.hugetlb=1" : current + ":glibc.malloc.hugetlb=1";
  if (::setenv("GLIBC_TUNABLES", value.c_str(), 1) == 0) {
    ::execv("/proc/self/exe", argv);
  }
  *state = std::string("exec failed: ") + std::strerror(errno);
  if (tunables == nullptr) {
    ::unsetenv("GLIBC_TUNABLES");
  } else {
    ::setenv("GLIBC_TUNABLES", current.c_str(), 1);
  }
}

}  // namespace kvc
