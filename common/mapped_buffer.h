// A growable byte buffer on anonymous memory mappings, for arrays of tens of
// megabytes that grow while in use (a sequence's KV) or are copied once and
// streamed (model weights).
//
// Growing moves the page tables with mremap(MREMAP_MAYMOVE) instead of
// copying the bytes, and the new pages are the kernel's zero pages until
// first written, so growing costs neither a copy nor a memset of the old
// contents: a std::vector of 37 MB copies 37 MB and zeroes the extension on
// every growth. Mappings are advised to use transparent huge pages (fewer TLB
// misses when a decode step streams the whole array); that advice is
// optional and a kernel without THP serves 4 KiB pages.
#ifndef KVC_COMMON_MAPPED_BUFFER_H_
#define KVC_COMMON_MAPPED_BUFFER_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace kvc {

// Advises transparent huge pages (MADV_HUGEPAGE) on [at, at + bytes) when it
// spans 2 MiB or more; advisory: a kernel without THP serves 4 KiB pages.
// Besides fewer TLB misses, a block another process copies out of (UCX's cma
// rendezvous, process_vm_readv) is pinned a 2 MiB folio at a time instead of
// a 4 KiB page at a time (docs/BENCHMARKS.md, "huge pages").
void AdviseHugePages(void* at, size_t bytes);

// mmap of `bytes` of private anonymous memory (MAP_FAILED, errno set, on
// failure). huge_pages: AdviseHugePages before the first fault; populate:
// then fault every page in (MADV_POPULATE_WRITE; MAP_POPULATE would fault
// 4 KiB pages before the advice could apply).
void* MapAnonymous(size_t bytes, bool huge_pages, bool populate);

class MappedBuffer {
 public:
  // huge_pages: advise transparent huge pages (MADV_HUGEPAGE) on every
  // mapping of 2 MiB or more. populate: fault every page in when mapped
  // (MAP_POPULATE), for a buffer about to be written whole: one kernel call
  // instead of a fault per 4 KiB page, which costs microseconds each in a VM
  // (measured: a 16K-token prefix fetched in 181 ms instead of 394 ms).
  explicit MappedBuffer(bool huge_pages = false, bool populate = false)
      : huge_pages_(huge_pages), populate_(populate) {}
  ~MappedBuffer();
  MappedBuffer(MappedBuffer&& other) noexcept;
  MappedBuffer& operator=(MappedBuffer&& other) noexcept;
  MappedBuffer(const MappedBuffer&) = delete;
  MappedBuffer& operator=(const MappedBuffer&) = delete;

  // Makes the buffer `bytes` long, keeping the first min(size(), bytes)
  // bytes; bytes past the old size read as zero. Resize(0) unmaps. The
  // address may change. ResourceExhausted (and the buffer unchanged) when
  // the kernel refuses the mapping.
  absl::Status Resize(size_t bytes);

  uint8_t* data() { return static_cast<uint8_t*>(data_); }
  const uint8_t* data() const { return static_cast<const uint8_t*>(data_); }
  size_t size() const { return size_; }
  // Bytes mapped: size() rounded up to the page size.
  size_t mapped_bytes() const { return mapped_; }
  // Gives the whole pages inside [offset, offset + bytes) back to the
  // kernel (MADV_DONTNEED): they stop counting as resident and read as
  // zero until written again. Bytes of the range on pages shared with the
  // rest of the buffer stay as they are. Returns the bytes given back.
  // REQUIRES: offset + bytes <= size().
  size_t Discard(size_t offset, size_t bytes);

 private:
  bool huge_pages_ = false;
  bool populate_ = false;
  void* data_ = nullptr;
  size_t size_ = 0;
  size_t mapped_ = 0;
};

}  // namespace kvc

#endif  // KVC_COMMON_MAPPED_BUFFER_H_
