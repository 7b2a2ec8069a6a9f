#include "crc32c.h"

#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#elif defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#endif

namespace dmthin {
namespace {

// Slicing-by-8 tables for CPUs without a CRC instruction.
struct Tables {
  uint32_t t[8][256];
  Tables() {
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
      for (int s = 1; s < 8; s++) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
  }
};

const Tables& tables() {
  static const Tables tb;
  return tb;
}

uint32_t UpdateTable(uint32_t crc, const uint8_t* p, size_t len) {
  const Tables& tb = tables();
  while (len >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);  // little-endian hosts only (Linux x86-64/arm64)
    v ^= crc;
    crc = tb.t[7][v & 0xFF] ^ tb.t[6][(v >> 8) & 0xFF] ^ tb.t[5][(v >> 16) & 0xFF] ^
          tb.t[4][(v >> 24) & 0xFF] ^ tb.t[3][(v >> 32) & 0xFF] ^ tb.t[2][(v >> 40) & 0xFF] ^
          tb.t[1][(v >> 48) & 0xFF] ^ tb.t[0][v >> 56];
    p += 8;
    len -= 8;
  }
  while (len--) crc = (crc >> 8) ^ tb.t[0][(crc ^ *p++) & 0xFF];
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t UpdateHw(uint32_t crc, const uint8_t* p, size_t len) {
  uint64_t c = crc;
  while (len >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
    p += 8;
    len -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (len--) c32 = __builtin_ia32_crc32qi(c32, *p++);
  return c32;
}
bool DetectHw() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  return (c & bit_SSE4_2) != 0;
}
#elif defined(__aarch64__)
__attribute__((target("+crc"))) uint32_t UpdateHw(uint32_t crc, const uint8_t* p, size_t len) {
  while (len >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    crc = __builtin_aarch64_crc32cx(crc, v);
    p += 8;
    len -= 8;
  }
  while (len--) crc = __builtin_aarch64_crc32cb(crc, *p++);
  return crc;
}
bool DetectHw() { return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0; }
#else
uint32_t UpdateHw(uint32_t crc, const uint8_t* p, size_t len) { return UpdateTable(crc, p, len); }
bool DetectHw() { return false; }
#endif

const bool kHw = DetectHw();

Napi::Value JsCrc32c(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray())
    throw Napi::TypeError::New(env, "crc32c(data: Uint8Array, seed?: number, raw?: boolean)");
  Napi::Uint8Array a = info[0].As<Napi::Uint8Array>();
  // Default: the standard CRC-32C. With raw=true: seed in, value out, no inversions.
  bool raw = info.Length() > 2 && info[2].ToBoolean().Value();
  uint32_t seed = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Uint32Value() : 0xFFFFFFFFu;
  uint32_t v = Crc32cUpdate(seed, a.Data(), a.ByteLength());
  return Napi::Number::New(env, raw ? v : static_cast<uint32_t>(~v));
}

Napi::Value JsCrc32cHardware(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), kHw); }

Napi::Value JsCrc32cTable(const Napi::CallbackInfo& info) {
  // The table path, exposed so tests can check both paths agree on this CPU.
  Napi::Uint8Array a = info[0].As<Napi::Uint8Array>();
  return Napi::Number::New(info.Env(), static_cast<uint32_t>(~UpdateTable(0xFFFFFFFFu, a.Data(), a.ByteLength())));
}

}  // namespace

uint32_t Crc32cUpdate(uint32_t crc, const uint8_t* data, size_t len) {
  return kHw ? UpdateHw(crc, data, len) : UpdateTable(crc, data, len);
}

bool Crc32cHardware() { return kHw; }

void InitCrc32c(Napi::Env env, Napi::Object exports) {
  exports.Set("crc32c", Napi::Function::New(env, JsCrc32c, "crc32c"));
  exports.Set("crc32cTable", Napi::Function::New(env, JsCrc32cTable, "crc32cTable"));
  exports.Set("crc32cHardware", Napi::Function::New(env, JsCrc32cHardware, "crc32cHardware"));
}

}  // namespace dmthin
