// TokenSelect's memory-bound part: one pass over the candidates' keys that
// computes the logits of every query head. Each loaded key row serves the g
// query heads of its KV group.
#ifndef KVC_KERNELS_CPU_ISA_TOKEN_SELECT_SCAN_H_
#define KVC_KERNELS_CPU_ISA_TOKEN_SELECT_SCAN_H_

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/isa/isa.h"
#include "kernels/types.h"

namespace kvc::kernels::KVC_CPU_NS {

// head_dim rounded up to a multiple of 16: the row length of the scan's
// query and key buffers.
int32_t ScanPaddedDim(int32_t head_dim);

// The scan's form of the fingerprint: out[h * ScanPaddedDim(D) + i] =
// qbar[h][.] * scale, zero-padded, in the element order the scan uses for
// keys of `pool` (bf16 keys of head dim 64, 128 or 256 are split into even
// and odd elements, see token_select_tile.h).
void PrepareScanQuery(const KvPool& pool, const float* qbar, int32_t num_q_heads, float scale,
                      float* out);

// What the scan reads. Not owned.
struct LogitScan {
  const KvPool* pool = nullptr;  // keys only
  // Candidate position -> pool slot; nullptr = the slot is the position.
  const int32_t* candidates = nullptr;
  const float* query = nullptr;  // PrepareScanQuery's output
  int32_t num_q_heads = 0;
};

// Floats of scratch ScanLogits needs per calling thread.
size_t ScanScratchFloats(const KvPool& pool);

// logits[h * stride + (t - begin)] = scaled qbar_h . key(t, h / g) for the
// candidate positions t in [begin, end): an fp32 FMA chain over the head dim
// at the ISA's vector width, then a fixed reduction tree over the lanes. Every candidate
// goes through the same arithmetic wherever it lies, so a logit is bitwise
// independent of how candidates are split into calls, threads or shards.
// REQUIRES: stride >= end - begin; scratch holds ScanScratchFloats() floats
// and is 64-byte aligned.
void ScanLogits(const LogitScan& scan, int64_t begin, int64_t end, float* logits, int64_t stride,
                float* scratch);

}  // namespace kvc::kernels::KVC_CPU_NS

#endif  // KVC_KERNELS_CPU_ISA_TOKEN_SELECT_SCAN_H_
