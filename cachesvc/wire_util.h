// Hand-written protobuf wire format for the messages whose payload must not
// be copied (a block's k and v): the pieces the encoders share.
#ifndef KVC_CACHESVC_WIRE_UTIL_H_
#define KVC_CACHESVC_WIRE_UTIL_H_

#include <cstdint>
#include <string>

namespace kvc {

// Appends `v` as a protobuf base-128 varint.
inline void AppendVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

}  // namespace kvc

#endif  // KVC_CACHESVC_WIRE_UTIL_H_
