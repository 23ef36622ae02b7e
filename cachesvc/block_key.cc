#include "cachesvc/block_key.h"

#include "absl/strings/str_cat.h"
#include "kvcache/v1/cache.pb.h"

namespace kvc {
namespace {

void PutBE(uint64_t v, int bytes, std::string* out) {
  for (int i = bytes - 1; i >= 0; --i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

bool GetBE(absl::string_view* in, int bytes, uint64_t* v) {
  if (in->size() < static_cast<size_t>(bytes)) return false;
  uint64_t r = 0;
  for (int i = 0; i < bytes; ++i) r = (r << 8) | static_cast<unsigned char>((*in)[i]);
  in->remove_prefix(bytes);
  *v = r;
  return true;
}

bool GetString(absl::string_view* in, std::string* s) {
  uint64_t len;
  if (!GetBE(in, 2, &len) || in->size() < len) return false;
  s->assign(in->data(), len);
  in->remove_prefix(len);
  return true;
}

}  // namespace

std::string BlockKey::Encode() const {
  std::string out;
  out.reserve(4 + tenant.size() + model.size() + 20);
  PutBE(tenant.size(), 2, &out);
  out.append(tenant);
  PutBE(model.size(), 2, &out);
  out.append(model);
  PutBE(layer, 4, &out);
  PutBE(hash.hi, 8, &out);
  PutBE(hash.lo, 8, &out);
  return out;
}

absl::StatusOr<BlockKey> BlockKey::Decode(absl::string_view bytes) {
  BlockKey k;
  uint64_t layer = 0;
  if (!GetString(&bytes, &k.tenant) || !GetString(&bytes, &k.model) ||
      !GetBE(&bytes, 4, &layer) || !GetBE(&bytes, 8, &k.hash.hi) ||
      !GetBE(&bytes, 8, &k.hash.lo) || !bytes.empty()) {
    return absl::InvalidArgumentError("malformed encoded block key");
  }
  k.layer = static_cast<uint32_t>(layer);
  return k;
}

uint64_t BlockKey::ShardHash() const {
  // Mix the already-uniform prefix hash with the short identifiers.
  uint64_t h = Hash64(tenant, hash.lo) ^ Hash64(model, hash.hi);
  return h ^ (uint64_t{layer} * 0x9e3779b97f4a7c15ULL);
}

std::string BlockKey::DebugString() const {
  return absl::StrCat(tenant, "/", model, "/L", layer, "/", hash.ToHex());
}

BlockKey BlockKey::FromProto(const kvcache::v1::BlockKey& p) {
  BlockKey k;
  k.tenant = p.tenant();
  k.model = p.model();
  k.layer = p.layer();
  k.hash = Hash128{p.hash().hi(), p.hash().lo()};
  return k;
}

void BlockKey::ToProto(kvcache::v1::BlockKey* p) const {
  p->set_tenant(tenant);
  p->set_model(model);
  p->set_layer(layer);
  p->mutable_hash()->set_hi(hash.hi);
  p->mutable_hash()->set_lo(hash.lo);
}

}  // namespace kvc
