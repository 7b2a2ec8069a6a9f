#include "file_map.h"

#include "allocator.h"

#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <string>

namespace dmthin {

// mapAscii(fd, offset, length, checked?) -> string | null
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
// the headers this addon builds against). checked: the caller has found
// these bytes to be ASCII already (start-up does, on the mapping it checks
// the pack's CRC-32C on), so they are not scanned again: the scan was the
// first touch of each page of the string's memory, ~0.5 ms of a tiny send
// for its 440 KB pack source (V8 reads only the parts it compiles).
//
// statFile(path, out: Float64Array) -> boolean
//
// stat(2) of path (following links) into out[0..2]: its size, its change
// time in ms as Node's ctimeMs gives it (sec * 1e3 + nsec / 1e6), and 1 for
// a regular file, else 0; false (out untouched) where stat fails. Start-up
// checks that each packed file is the one packed (size and ctime): with
// fs.statSync that was a Stats object and four Dates a file (Node 20 makes
// them at once), ~40 a run, ~50 KB of young garbage.
//
// readAscii(fd, offset, length, checked?) -> string | null
//
// The same bytes read (pread) into private memory of their own, the same
// external string: what a long run uses (see below), where a mapping of the
// file is not safe. Against reading into a Buffer and decoding it
// (Buffer.toString), one region of fresh pages and no copy in V8's heap:
// the send's 440 KB pack source was two regions, ~220 page faults.
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

// readAscii's length from which its copy goes in huge pages (a 2 MiB page for 128 KiB is still the cheaper).
constexpr size_t kHugeReadBytes = size_t{128} << 10;

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
// ones): false where the range cannot be had (length 0, not a regular
// file, past its end).
bool RangeArgs(const Napi::CallbackInfo& info, const char* usage, int* fd, uint64_t* offset, size_t* length) {
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
  *fd = static_cast<int>(f);
  *offset = static_cast<uint64_t>(o);
  *length = static_cast<size_t>(n);
  if (*length == 0) return false;
  struct stat st;
  if (::fstat(*fd, &st) != 0 || !S_ISREG(st.st_mode)) return false;
  uint64_t size = static_cast<uint64_t>(st.st_size);
  return *offset <= size && *length <= size - *offset;
}

// The mapping of the call's range of its file: nullptr where none can be made (see above).
Mapping* MapArgs(const Napi::CallbackInfo& info, const char* usage, const uint8_t** data, size_t* length) {
  int fd = -1;
  uint64_t offset = 0;
  if (!RangeArgs(info, usage, &fd, &offset, length)) return nullptr;
  uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  uint64_t start = offset - offset % page;
  size_t len = static_cast<size_t>(offset - start) + *length;
  // Writable, privately: a write (nothing here makes one) would copy the page, never reach the file or fault.
  void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, static_cast<off_t>(start));
  if (p == MAP_FAILED) return nullptr;
  *data = static_cast<const uint8_t*>(p) + (offset - start);
  return new Mapping{p, len};
}

// Whether no byte has its top bit set (eight at a time).
bool IsAscii(const uint8_t* data, size_t length) {
  size_t i = 0;
  uint64_t high = 0;
  for (; i + 8 <= length; i += 8) {
    uint64_t w;
    __builtin_memcpy(&w, data + i, 8);
    high |= w;
  }
  for (; i < length; i++) high |= data[i];
  return (high & UINT64_C(0x8080808080808080)) == 0;
}

// An external one-byte string of m's ASCII bytes `data`, which it owns from
// here on (unmapped when V8 collects the string, or now on failure); null
// where a byte is not ASCII (not looked for if the caller `checked`) or Node
// has no external strings.
Napi::Value AsciiString(Napi::Env env, Mapping* m, const uint8_t* data, size_t length, bool checked) {
  CreateExternalLatin1 create = ExternalLatin1();
  if (create == nullptr || (!checked && !IsAscii(data, length))) {
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

// The optional 4th argument of mapAscii and readAscii: true when the caller has found the bytes to be ASCII.
bool Checked(const Napi::CallbackInfo& info) { return info.Length() > 3 && info[3].IsBoolean() && info[3].As<Napi::Boolean>().Value(); }

Napi::Value MapAscii(const Napi::CallbackInfo& info) {
  const uint8_t* data = nullptr;
  size_t length = 0;
  Mapping* m = MapArgs(info, "mapAscii(fd: number, offset: number, length: number)", &data, &length);
  if (m == nullptr) return info.Env().Null();
  return AsciiString(info.Env(), m, data, length, Checked(info));
}

Napi::Value ReadAscii(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  uint64_t offset = 0;
  size_t length = 0;
  if (!RangeArgs(info, "readAscii(fd: number, offset: number, length: number)", &fd, &offset, &length)) return env.Null();
  // Fresh memory, filled at once. From kHugeReadBytes up in transparent huge
  // pages (MapHuge): in the bench VM a fresh 4 KiB page cost ~12 us to fill
  // even when populated by the mmap (send's 470 KB pack source: ~0.85 ms),
  // a 2 MiB one ~0.2 ms. Smaller, in one populated mapping of its own size.
  Mapping* m;
  if (length >= kHugeReadBytes) {
    uint8_t* h = MapHuge(length);
    if (h == nullptr) return env.Null();
    m = new Mapping{h, HugeSpan(length)};
  } else {
    void* p = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) return env.Null();
    m = new Mapping{p, length};
  }
  uint8_t* data = static_cast<uint8_t*>(m->base);
  size_t got = 0;
  while (got < length) {
    ssize_t n = ::pread(fd, data + got, length - got, static_cast<off_t>(offset + got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {  // an error, or the file shrank since fstat: the caller reads it as before
      Unmap(m);
      return env.Null();
    }
    got += static_cast<size_t>(n);
  }
  return AsciiString(env, m, data, length, Checked(info));
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


Napi::Value StatFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
      info[1].As<Napi::TypedArray>().ElementLength() < 3) {
    throw Napi::TypeError::New(env, "statFile(path: string, out: Float64Array of 3 or more)");
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  struct stat st;
  if (path.find('\0') != std::string::npos || ::stat(path.c_str(), &st) != 0) return Napi::Boolean::New(env, false);
  Napi::Float64Array out = info[1].As<Napi::Float64Array>();
  out[0] = static_cast<double>(st.st_size);
  // Node's arithmetic (msFromTimeSpec), so the two compare equal.
  out[1] = static_cast<double>(st.st_ctim.tv_sec) * 1e3 + static_cast<double>(st.st_ctim.tv_nsec) / 1e6;
  out[2] = S_ISREG(st.st_mode) ? 1 : 0;
  return Napi::Boolean::New(env, true);
}

}  // namespace

void InitFileMap(Napi::Env env, Napi::Object exports) {
  exports.Set("statFile", Napi::Function::New(env, StatFile, "statFile"));
  exports.Set("mapAscii", Napi::Function::New(env, MapAscii, "mapAscii"));
  exports.Set("mapBytes", Napi::Function::New(env, MapBytes, "mapBytes"));
  exports.Set("readAscii", Napi::Function::New(env, ReadAscii, "readAscii"));
}

}  // namespace dmthin
