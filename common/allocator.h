// Allocator settings for processes that move megabyte KV blocks.
#ifndef KVC_COMMON_ALLOCATOR_H_
#define KVC_COMMON_ALLOCATOR_H_

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

}  // namespace kvc

#endif  // KVC_COMMON_ALLOCATOR_H_
