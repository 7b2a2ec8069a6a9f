// A typed array's element type, length and first element (its byte offset
// applied), for any backing store (a SharedArrayBuffer too); data is null when
// the buffer is detached. Runs no JS: read it after every argument whose
// reading could run JS (a getter), and the length and pointer stay true.
#pragma once

#include <napi.h>

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

}  // namespace dmthin
