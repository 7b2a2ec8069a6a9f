// A typed array's element type, length and first element (its byte offset
// applied), for any backing store (a SharedArrayBuffer too); data is null when
// the buffer is detached. Runs no JS: read it after every argument whose
// reading could run JS (a getter), and the length and pointer stay true.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>

namespace dmthin {

struct TypedView {
  napi_typedarray_type type;
  size_t length;
  void* data;
};

inline TypedView TypedViewOf(Napi::Env env, Napi::Value v) {
  TypedView out{};
  napi_value ab;
  size_t offset;
  NAPI_THROW_IF_FAILED(env, napi_get_typedarray_info(env, v, &out.type, &out.length, &out.data, &ab, &offset), out);
  return out;
}

// Whether the byte ranges [a, a + aBytes) and [b, b + bBytes) share a byte
// (empty ranges share none): an output written over an input the same call
// reads later would change what it reads.
inline bool Overlap(const void* a, size_t aBytes, const void* b, size_t bBytes) {
  const uint8_t* x = static_cast<const uint8_t*>(a);
  const uint8_t* y = static_cast<const uint8_t*>(b);
  return aBytes > 0 && bBytes > 0 && x < y + bBytes && y < x + aBytes;
}

}  // namespace dmthin
