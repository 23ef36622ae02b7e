#include "common/mapped_buffer.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace kvc {
namespace {

size_t PageSize() {
  static const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  return page;
}

}  // namespace

void AdviseHugePages(void* at, size_t bytes) {
#ifdef MADV_HUGEPAGE
  if (bytes >= (size_t{2} << 20)) ::madvise(at, bytes, MADV_HUGEPAGE);
#else
  (void)at;
  (void)bytes;
#endif
}

void* MapAnonymous(size_t bytes, bool huge_pages, bool populate) {
  void* at = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (at == MAP_FAILED) return at;
  if (huge_pages) AdviseHugePages(at, bytes);
  if (populate) {
#ifdef MADV_POPULATE_WRITE
    if (::madvise(at, bytes, MADV_POPULATE_WRITE) == 0) return at;
#endif
    const size_t page = PageSize();
    for (size_t i = 0; i < bytes; i += page) static_cast<volatile uint8_t*>(at)[i] = 0;
  }
  return at;
}

MappedBuffer::~MappedBuffer() {
  if (data_ != nullptr) ::munmap(data_, mapped_);
}

MappedBuffer::MappedBuffer(MappedBuffer&& other) noexcept
    : huge_pages_(other.huge_pages_),
      populate_(other.populate_),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_(std::exchange(other.mapped_, 0)) {}

MappedBuffer& MappedBuffer::operator=(MappedBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(data_, mapped_);
    huge_pages_ = other.huge_pages_;
    populate_ = other.populate_;
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    mapped_ = std::exchange(other.mapped_, 0);
  }
  return *this;
}

size_t MappedBuffer::Discard(size_t offset, size_t bytes) {
  const size_t page = PageSize();
  const size_t first = (offset + page - 1) / page * page, last = (offset + bytes) / page * page;
  if (data_ == nullptr || last <= first) return 0;
  // Advisory: on failure the pages simply stay resident.
  if (::madvise(static_cast<uint8_t*>(data_) + first, last - first, MADV_DONTNEED) != 0) return 0;
  return last - first;
}

absl::Status MappedBuffer::Resize(size_t bytes) {
  const size_t page = PageSize();
  if (bytes > SIZE_MAX - page) {
    return absl::ResourceExhaustedError(absl::StrCat("MappedBuffer: ", bytes, " bytes cannot be mapped"));
  }
  const size_t mapped = (bytes + page - 1) / page * page;
  if (mapped == 0) {
    if (data_ != nullptr) ::munmap(data_, mapped_);
    data_ = nullptr;
    size_ = mapped_ = 0;
    return absl::OkStatus();
  }
  if (mapped == mapped_) {
    // Bytes between the new size and the old within the last page must read
    // as zero if the buffer grows again.
    if (bytes < size_) std::memset(data() + bytes, 0, size_ - bytes);
    size_ = bytes;
    return absl::OkStatus();
  }
  void* at;
  if (data_ == nullptr) {
    at = MapAnonymous(mapped, huge_pages_, populate_);
  } else {
    at = ::mremap(data_, mapped_, mapped, MREMAP_MAYMOVE);
  }
  if (at == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("MappedBuffer: cannot map ", mapped, " bytes: ", std::strerror(errno)));
  }
  if (bytes < size_) {
    // Shrinking within the kept pages: clear the tail of the last one.
    std::memset(static_cast<uint8_t*>(at) + bytes, 0, mapped - bytes);
  }
  if (mapped_ != 0 && mapped > mapped_ && huge_pages_) AdviseHugePages(at, mapped);
  data_ = at;
  size_ = bytes;
  mapped_ = mapped;
  return absl::OkStatus();
}

}  // namespace kvc
