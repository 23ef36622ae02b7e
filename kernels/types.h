// Shared vocabulary of the kernels: element types, backends, the paged KV
// pool, gather lists and RoPE. Every kernel entry point takes an ExecContext
// (which path runs) and an arguments struct made of the views below; views
// never own memory. For the CUDA backend every pointer in a view is a device
// pointer; for the CPU backends it is a host pointer.
#ifndef KVC_KERNELS_TYPES_H_
#define KVC_KERNELS_TYPES_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace kvc::kernels {

class ThreadPool;

// Element type of stored keys and values. Queries, outputs, scores and all
// accumulators are fp32 whatever the KV type.
enum class DType : uint8_t {
  kF32 = 0,
  kBF16 = 1,  // bfloat16: the high half of an fp32
  kF16 = 2,   // IEEE binary16
};
// Bytes per element; 0 for a value outside the enum.
size_t DTypeSize(DType dtype);
absl::string_view DTypeName(DType dtype);
bool IsValidDType(DType dtype);

// Which implementation runs a kernel.
enum class Backend : uint8_t {
  kReference = 0,  // plain loops: the specification, single-threaded
  kCpu = 1,        // threads + SIMD, picks the widest ISA this CPU has
  kCuda = 2,       // CUDA launchers on `cuda_stream`; Unavailable when not built
};
absl::string_view BackendName(Backend backend);

// Where and how a kernel runs. Not owned: `pool` and `cuda_stream` outlive
// the call. CUDA launchers are asynchronous on `cuda_stream` (a
// cudaStream_t; nullptr = the legacy default stream); they never allocate
// and never synchronise. CPU kernels are synchronous.
struct ExecContext {
  Backend backend = Backend::kCpu;
  // kCpu: threads to use; nullptr = the process-wide DefaultThreadPool().
  ThreadPool* pool = nullptr;
  // kCuda: a cudaStream_t.
  void* cuda_stream = nullptr;
};

// Memory layout of a paged KV pool (FlashInfer's names).
enum class KvLayout : uint8_t {
  kNHD = 0,  // [num_pages][page_size][num_kv_heads][head_dim]
  kHND = 1,  // [num_pages][num_kv_heads][page_size][head_dim]
};

// A pool of key and value slots. Slot `s` lives in page `s / page_size` at
// offset `s % page_size`; keys are stored before RoPE. `k` and `v` each hold
// num_pages * page_size * num_kv_heads * head_dim elements of `dtype`.
// With page_size 1 both layouts are the plain [slots][num_kv_heads][head_dim].
struct KvPool {
  const void* k = nullptr;
  const void* v = nullptr;  // may be null for kernels that only read keys
  DType dtype = DType::kF32;
  KvLayout layout = KvLayout::kNHD;
  int64_t num_pages = 0;
  int32_t page_size = 1;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;

  int64_t num_slots() const { return num_pages * page_size; }
  // Element offset of (slot, kv head, dim 0) in `k` / `v`.
  int64_t Offset(int64_t slot, int32_t kv_head) const {
    const int64_t page = slot / page_size, in_page = slot % page_size;
    if (layout == KvLayout::kNHD) {
      return ((page * page_size + in_page) * num_kv_heads + kv_head) * head_dim;
    }
    return ((page * num_kv_heads + kv_head) * page_size + in_page) * head_dim;
  }
  size_t bytes() const {
    return static_cast<size_t>(num_slots()) * num_kv_heads * head_dim * DTypeSize(dtype);
  }

  // A contiguous [num_tokens][num_kv_heads][head_dim] pool.
  static KvPool Contiguous(const void* k, const void* v, DType dtype, int64_t num_tokens,
                           int32_t num_kv_heads, int32_t head_dim) {
    return KvPool{k, v, dtype, KvLayout::kNHD, num_tokens, 1, num_kv_heads, head_dim};
  }
};

// Which pool slots are gathered, as CSR lists (FlashInfer's indptr/indices).
// There are `num_lists` lists: one per sequence, shared by every KV head
// (per_kv_head = false), or one per (sequence, KV head), sequence-major
// (per_kv_head = true: list b * num_kv_heads + h), as a cascading cache or
// H2O keeps different tokens per head. List `l` is
// indices[indptr[l] .. indptr[l+1]); a list may be empty.
struct KvGather {
  const int32_t* indptr = nullptr;   // [num_lists + 1], indptr[0] == 0, non-decreasing
  const int32_t* indices = nullptr;  // [indptr[num_lists]] slot ids in [0, pool.num_slots())
  // [indptr[num_lists]] RoPE position of each gathered key (cache-relative,
  // original or compact: the caller decides). nullptr = keys are not rotated.
  const int32_t* positions = nullptr;
  bool per_kv_head = false;
};

// Rotary position embedding, applied by the kernels to pre-RoPE keys at
// gather time and to queries at their given positions. Frequency of pair i
// is theta^(-2i/head_dim); a vector at position p has pair i rotated by
// p * freq_i.
enum class RopeStyle : uint8_t {
  kNone = 0,
  kInterleaved = 1,  // pairs (2i, 2i+1): llama2.c and Meta's reference code
  kHalf = 2,         // pairs (i, i + head_dim/2): Hugging Face Llama
};
struct Rope {
  RopeStyle style = RopeStyle::kNone;
  float theta = 10000.0f;
};

}  // namespace kvc::kernels

#endif  // KVC_KERNELS_TYPES_H_
