// Allocator settings for processes that move megabyte KV blocks.
#ifndef KVC_COMMON_ALLOCATOR_H_
#define KVC_COMMON_ALLOCATOR_H_

#include <string>

namespace kvc {

// glibc's defaults serve every multi-megabyte buffer with a fresh mmap() and
// return freed ones to the kernel, so each received or serialized block pays
// page faults (measured: 2-4x on Put throughput, both in the service and in
// a client sending 64 MiB requests). This keeps buffers up to 32 MiB (the
// largest threshold glibc accepts) on the heap, trims only above 1 GiB of
// free memory and grows the heap 64 MiB at a time. A MALLOC_*_ environment
// variable, when set, wins over the matching setting.
// Call once at the start of main, before threads exist. kvcached does; a
// worker process using CacheClient should too.
void TuneAllocatorForLargeBuffers();

// glibc's malloc backs its heap with 4 KiB pages unless the
// glibc.malloc.hugetlb tunable, read only at process start, says otherwise.
// kvcached's stored blocks live on that heap and a same-host Get copies each
// one out with process_vm_readv (UCX's cma rendezvous), which pins the
// source a page at a time: on 4 KiB pages that pinning, not the copy, bounds
// the transfer (measured: 256 KiB sm Gets 4.3 -> 6.5-7.2 GiB/s, 2 MiB 7.2 ->
// 9.7-10.7 GiB/s with huge pages; docs/BENCHMARKS.md).
//
// When transparent huge pages are in "madvise" mode and GLIBC_TUNABLES does
// not set glibc.malloc.hugetlb already, this re-executes the process
// (/proc/self/exe, the same argv) with glibc.malloc.hugetlb=1 appended to
// GLIBC_TUNABLES, and does not return. Otherwise (THP "always" or "never",
// the tunable already set, or exec failing) it returns, and says in `*state`
// which: "madvise (glibc.malloc.hugetlb=1)", "always", "never", "set by
// GLIBC_TUNABLES", "exec failed: ...". Call once in main, before any thread.
void ReexecWithHugePageMalloc(char** argv, std::string* state);

}  // namespace kvc

#endif  // KVC_COMMON_ALLOCATOR_H_
