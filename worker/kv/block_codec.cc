#include "worker/kv/block_codec.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "cachesvc/cached_block.h"
#include "cachesvc/wire_util.h"
#include "kernels/dtype.h"
#include "kvcache/v1/cache.pb.h"

namespace kvc {
namespace {

namespace v1 = ::kvcache::v1;

// Converts n fp32 values into `dtype` at `dst`.
void StoreAs(int dtype, const float* src, int64_t n, char* dst) {
  switch (dtype) {
    case v1::DTYPE_FP32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      break;
    case v1::DTYPE_BF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = kernels::FloatToBF16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      break;
    case v1::DTYPE_FP16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = kernels::FloatToF16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      break;
  }
}

void LoadFrom(int dtype, const char* src, int64_t n, float* dst) {
  switch (dtype) {
    case v1::DTYPE_FP32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      break;
    case v1::DTYPE_BF16:
    case v1::DTYPE_FP16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = dtype == v1::DTYPE_BF16 ? kernels::BF16ToFloat(h) : kernels::F16ToFloat(h);
      }
      break;
  }
}

// Appends field `field` (length-delimited) holding n values of `dtype`
// converted from src; returns the payload's offset in `out`.
size_t AppendPayload(int field, int dtype, const float* src, int64_t n, int64_t bytes, std::string* out) {
  out->push_back(static_cast<char>((field << 3) | 2));
  AppendVarint(static_cast<uint64_t>(bytes), out);
  const size_t at = out->size();
  out->resize(at + static_cast<size_t>(bytes));
  StoreAs(dtype, src, n, out->data() + at);
  return at;
}

}  // namespace

int64_t KvBlockShape::bytes() const { return elements() * static_cast<int64_t>(DTypeBytes(dtype)); }

absl::Status KvBlockShape::Validate() const {
  if (block_tokens <= 0) return absl::InvalidArgumentError(absl::StrCat("block_tokens must be > 0, got ", block_tokens));
  if (num_kv_heads <= 0) return absl::InvalidArgumentError(absl::StrCat("num_kv_heads must be > 0, got ", num_kv_heads));
  if (head_dim <= 0) return absl::InvalidArgumentError(absl::StrCat("head_dim must be > 0, got ", head_dim));
  if (DTypeBytes(dtype) == 0) return absl::InvalidArgumentError(absl::StrCat("unknown block dtype ", dtype));
  return absl::OkStatus();
}

Hash128 ChainRoot(std::string_view kv_origin) {
  if (kv_origin == "dense") return Hash128{};
  std::vector<int32_t> bytes(kv_origin.begin(), kv_origin.end());
  return ChainHash(Hash128{}, bytes);
}

std::vector<Hash128> PrefixHashes(std::span<const int32_t> tokens, int32_t block_tokens, const Hash128& root) {
  std::vector<Hash128> hashes;
  if (block_tokens <= 0) return hashes;
  Hash128 parent = root;
  for (size_t b = 0; (b + 1) * static_cast<size_t>(block_tokens) <= tokens.size(); ++b) {
    parent = ChainHash(parent, tokens.subspan(b * block_tokens, block_tokens));
    hashes.push_back(parent);
  }
  return hashes;
}

std::string EncodeKvBlock(const BlockKey& key, const KvBlockShape& shape, int64_t first_position, const float* k,
                          const float* v) {
  // Fields 1-6 through protobuf (small), then k, v and the checksum by hand
  // so the payload is written once, straight from the rows.
  v1::Block head;
  key.ToProto(head.mutable_key());
  head.set_dtype(static_cast<v1::DType>(shape.dtype));
  head.set_block_tokens(static_cast<uint32_t>(shape.block_tokens));
  head.set_num_kv_heads(static_cast<uint32_t>(shape.num_kv_heads));
  head.set_head_dim(static_cast<uint32_t>(shape.head_dim));
  for (int32_t i = 0; i < shape.block_tokens; ++i) head.add_positions(static_cast<int32_t>(first_position + i));
  std::string out;
  const int64_t bytes = shape.bytes();
  out.reserve(head.ByteSizeLong() + 2 * static_cast<size_t>(bytes) + 32);
  head.AppendToString(&out);
  const size_t k_at = AppendPayload(7, shape.dtype, k, shape.elements(), bytes, &out);
  const size_t v_at = AppendPayload(8, shape.dtype, v, shape.elements(), bytes, &out);
  const uint64_t checksum = BlockChecksum(absl::string_view(out.data() + k_at, static_cast<size_t>(bytes)),
                                          absl::string_view(out.data() + v_at, static_cast<size_t>(bytes)));
  out.push_back(static_cast<char>((9 << 3) | 1));
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((checksum >> (8 * i)) & 0xff));
  return out;
}

absl::Status DecodeKvBlock(const BlockView& block, const KvBlockShape& shape, float* k_out, float* v_out) {
  auto mismatch = [&](absl::string_view field, uint64_t got, uint64_t want) {
    return absl::InvalidArgumentError(absl::StrCat("block ", block.key.DebugString(), ": ", field, " is ", got,
                                                   ", expected ", want));
  };
  if (block.dtype != shape.dtype) return mismatch("dtype", block.dtype, shape.dtype);
  if (block.block_tokens != static_cast<uint32_t>(shape.block_tokens)) {
    return mismatch("block_tokens", block.block_tokens, shape.block_tokens);
  }
  if (block.num_kv_heads != static_cast<uint32_t>(shape.num_kv_heads)) {
    return mismatch("num_kv_heads", block.num_kv_heads, shape.num_kv_heads);
  }
  if (block.head_dim != static_cast<uint32_t>(shape.head_dim)) return mismatch("head_dim", block.head_dim, shape.head_dim);
  const uint64_t bytes = static_cast<uint64_t>(shape.bytes());
  if (block.k.size() != bytes) return mismatch("k size", block.k.size(), bytes);
  if (block.v.size() != bytes) return mismatch("v size", block.v.size(), bytes);
  if (BlockChecksum(block.k, block.v) != block.checksum) {
    return absl::DataLossError(absl::StrCat("block ", block.key.DebugString(), ": checksum does not match its bytes"));
  }
  LoadFrom(shape.dtype, block.k.data(), shape.elements(), k_out);
  LoadFrom(shape.dtype, block.v.data(), shape.elements(), v_out);
  return absl::OkStatus();
}

}  // namespace kvc
