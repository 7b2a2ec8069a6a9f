#include "file_map.h"

#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>

namespace dmthin {

// mapAscii(fd, offset, length) -> string | null
// mapBytes(fd, offset, length) -> Uint8Array | null
//
// Bytes [offset, offset + length) of the regular file open at fd, mapped
// (MAP_PRIVATE) and given to V8 as they lie in the page cache: an external
// one-byte string, or a Uint8Array over an external ArrayBuffer; unmapped
// when V8 collects it (the descriptor may be closed at once). Why: the CLI's
// module pack (src/cli/startup.ts, ls: ~390 KB of source and ~220 KB of V8
// code cache) was read into a 610 KB buffer of fresh memory and its source
// copied into a string (~170 more page faults a run, ~11 us each in the
// bench VM); a mapping of a cached file is read in place, a fault per 16
// pages (fault-around), also for mapAscii's one pass over every byte.
//
// null (the caller reads the bytes instead): length 0, a range past the
// file's end (a mapping there would SIGBUS), not a regular file, mmap
// failed; for mapAscii also a byte of 0x80 or more (Latin-1 is not UTF-8
// there) or a Node without external strings (node_api_create_external_
// string_latin1, looked up at run time: experimental in Node 20, so not in
// the headers this addon builds against).
//
// The mapping shows the file as it is for as long as V8 keeps the string:
// whoever rewrites it in place (not renames a new one over it) changes what
// V8 reads, and truncating it under a mapping (or an I/O error on its
// blocks) makes a later access SIGBUS. Use it only for files replaced by
// rename, and for runs short enough (startup.ts maps the packs of the
// commands on a metadata file only).

namespace {

struct Mapping {
  void* base;
  size_t len;
};

void Unmap(Mapping* m) {
  ::munmap(m->base, m->len);
  delete m;
}

using CreateExternalLatin1 = napi_status (*)(napi_env, char*, size_t, napi_finalize, void*, napi_value*, bool*);

CreateExternalLatin1 ExternalLatin1() {
  static CreateExternalLatin1 fn = reinterpret_cast<CreateExternalLatin1>(::dlsym(RTLD_DEFAULT, "node_api_create_external_string_latin1"));
  return fn;
}

// The call's (fd, offset, length) checked (a TypeError or RangeError for bad
// ones), and the mapping of [offset, offset + length) of fd: nullptr where
// none can be made (see above).
Mapping* MapArgs(const Napi::CallbackInfo& info, const char* usage, const uint8_t** data, size_t* length) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber()) {
    throw Napi::TypeError::New(env, usage);
  }
  double f = info[0].As<Napi::Number>().DoubleValue();
  double o = info[1].As<Napi::Number>().DoubleValue();
  double n = info[2].As<Napi::Number>().DoubleValue();
  const double max = 9007199254740991.0;  // 2^53 - 1
  if (!(f >= 0 && f <= 2147483647.0) || std::floor(f) != f || !(o >= 0 && o <= max) || std::floor(o) != o || !(n >= 0 && n <= max) ||
      std::floor(n) != n) {
    throw Napi::RangeError::New(env, std::string(usage) + ": fd, offset and length must be non-negative integers");
  }
  int fd = static_cast<int>(f);
  uint64_t offset = static_cast<uint64_t>(o);
  *length = static_cast<size_t>(n);
  if (*length == 0) return nullptr;
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return nullptr;
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (offset > size || *length > size - offset) return nullptr;
  uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  uint64_t start = offset - offset % page;
  size_t len = static_cast<size_t>(offset - start) + *length;
  // Writable, privately: a write (nothing here makes one) would copy the page, never reach the file or fault.
  void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, static_cast<off_t>(start));
  if (p == MAP_FAILED) return nullptr;
  *data = static_cast<const uint8_t*>(p) + (offset - start);
  return new Mapping{p, len};
}

Napi::Value MapAscii(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint8_t* data = nullptr;
  size_t length = 0;
  Mapping* m = MapArgs(info, "mapAscii(fd: number, offset: number, length: number)", &data, &length);
  if (m == nullptr) return env.Null();
  CreateExternalLatin1 create = ExternalLatin1();
  if (create == nullptr) {
    Unmap(m);
    return env.Null();
  }
  // Eight bytes at a time: no byte may have its top bit set.
  size_t i = 0;
  uint64_t high = 0;
  for (; i + 8 <= length; i += 8) {
    uint64_t w;
    __builtin_memcpy(&w, data + i, 8);
    high |= w;
  }
  for (; i < length; i++) high |= data[i];
  if (high & UINT64_C(0x8080808080808080)) {
    Unmap(m);
    return env.Null();
  }
  napi_value out;
  bool copied = false;
  napi_status s = create(
      env, reinterpret_cast<char*>(const_cast<uint8_t*>(data)), length, [](napi_env, void*, void* hint) { Unmap(static_cast<Mapping*>(hint)); },
      m, &out, &copied);
  if (s != napi_ok) {
    Unmap(m);
    return env.Null();
  }
  // copied: V8 made a string of its own and the finalizer has already run (the mapping is gone).
  return Napi::Value(env, out);
}

Napi::Value MapBytes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint8_t* data = nullptr;
  size_t length = 0;
  Mapping* m = MapArgs(info, "mapBytes(fd: number, offset: number, length: number)", &data, &length);
  if (m == nullptr) return env.Null();
  // The C call, not Napi::ArrayBuffer::New, whose throw (a Node that refuses external buffers) would leave the mapping behind.
  napi_value ab;
  if (napi_create_external_arraybuffer(
          env, const_cast<uint8_t*>(data), length, [](napi_env, void*, void* hint) { Unmap(static_cast<Mapping*>(hint)); }, m, &ab) != napi_ok) {
    Unmap(m);
    return env.Null();
  }
  return Napi::Uint8Array::New(env, length, Napi::ArrayBuffer(env, ab), 0);
}

}  // namespace

void InitFileMap(Napi::Env env, Napi::Object exports) {
  exports.Set("mapAscii", Napi::Function::New(env, MapAscii, "mapAscii"));
  exports.Set("mapBytes", Napi::Function::New(env, MapBytes, "mapBytes"));
}

}  // namespace dmthin
