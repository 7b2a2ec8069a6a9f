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

uint32_t TableByte(uint32_t crc, uint8_t b) { return (crc >> 8) ^ tables().t[0][(crc ^ b) & 0xFF]; }

// The CRC instruction takes three cycles and the next step needs its
// result, so one chain runs at a third of the instruction's throughput.
// Three chains over three adjacent lanes of a block run at full speed; the
// lanes' CRCs are then joined: the raw CRC is linear, so
//   crc(c, A B C) = shift(shift(crc(c, A)) ^ crc(0, B)) ^ crc(0, C)
// where shift(x) = crc(x, len zero bytes), itself a linear map on 32 bits:
// four tables of 256 entries per lane length, built from the 32 unit
// vectors by the one-chain code. Lanes of 8 KiB for long buffers (stream
// records), 256 bytes for short ones (a metadata block's 4092 bytes).
// The functions that run the instruction carry its target so the step inlines.
#if defined(__x86_64__)
#define CRC_TARGET __attribute__((target("sse4.2")))
#elif defined(__aarch64__)
#define CRC_TARGET __attribute__((target("+crc")))
#else
#define CRC_TARGET
#endif

constexpr size_t kLongLane = 8192;
constexpr size_t kShortLane = 256;

struct Shift {
  uint32_t t[4][256];
  uint32_t operator()(uint32_t x) const { return t[0][x & 0xFF] ^ t[1][(x >> 8) & 0xFF] ^ t[2][(x >> 16) & 0xFF] ^ t[3][x >> 24]; }
};

template <typename Step>
CRC_TARGET uint32_t OneChain(uint32_t crc, const uint8_t* p, size_t len, Step step) {
  uint64_t c = crc;
  while (len >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = step(c, v);
    p += 8;
    len -= 8;
  }
  // The tail a byte at a time: a zero-extended byte is not the same input as a byte.
  uint32_t c32 = static_cast<uint32_t>(c);
  while (len--) c32 = TableByte(c32, *p++);
  return c32;
}

template <typename Step>
CRC_TARGET void MakeShift(Shift* s, size_t lane, Step step) {
  static const uint8_t zeros[kLongLane] = {};
  uint32_t unit[32];
  for (int i = 0; i < 32; i++) unit[i] = OneChain(1u << i, zeros, lane, step);
  for (int k = 0; k < 4; k++) {
    for (uint32_t b = 0; b < 256; b++) {
      uint32_t v = 0;
      for (int j = 0; j < 8; j++)
        if (b & (1u << j)) v ^= unit[8 * k + j];
      s->t[k][b] = v;
    }
  }
}

template <typename Step>
CRC_TARGET uint32_t ThreeChains(uint32_t crc, const uint8_t* p, size_t len, Step step, const Shift& longShift, const Shift& shortShift) {
  for (auto [lane, shift] : {std::pair<size_t, const Shift*>{kLongLane, &longShift}, {kShortLane, &shortShift}}) {
    while (len >= 3 * lane) {
      uint64_t c0 = crc, c1 = 0, c2 = 0;
      for (size_t i = 0; i < lane; i += 8) {
        uint64_t v0, v1, v2;
        std::memcpy(&v0, p + i, 8);
        std::memcpy(&v1, p + lane + i, 8);
        std::memcpy(&v2, p + 2 * lane + i, 8);
        c0 = step(c0, v0);
        c1 = step(c1, v1);
        c2 = step(c2, v2);
      }
      crc = (*shift)((*shift)(static_cast<uint32_t>(c0)) ^ static_cast<uint32_t>(c1)) ^ static_cast<uint32_t>(c2);
      p += 3 * lane;
      len -= 3 * lane;
    }
  }
  return OneChain(crc, p, len, step);
}

#if defined(__x86_64__)
struct HwStep {
  CRC_TARGET uint64_t operator()(uint64_t c, uint64_t v) const { return __builtin_ia32_crc32di(c, v); }
};
bool DetectHw() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  return (c & bit_SSE4_2) != 0;
}
#elif defined(__aarch64__)
struct HwStep {
  CRC_TARGET uint64_t operator()(uint64_t c, uint64_t v) const { return __builtin_aarch64_crc32cx(static_cast<uint32_t>(c), v); }
};
bool DetectHw() { return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0; }
#else
struct HwStep {
  uint64_t operator()(uint64_t c, uint64_t v) const { return UpdateTable(static_cast<uint32_t>(c), reinterpret_cast<const uint8_t*>(&v), 8); }
};
bool DetectHw() { return false; }
#endif

// Built on first use (a few microseconds), only where the instruction exists.
const Shift* ShiftTables() {
  static const Shift* tables = [] {
    auto* t = new Shift[2];
    MakeShift(&t[0], kLongLane, HwStep());
    MakeShift(&t[1], kShortLane, HwStep());
    return t;
  }();
  return tables;
}

CRC_TARGET uint32_t UpdateHw(uint32_t crc, const uint8_t* p, size_t len) {
  if (len < 3 * kShortLane) return OneChain(crc, p, len, HwStep());
  const Shift* t = ShiftTables();
  return ThreeChains(crc, p, len, HwStep(), t[0], t[1]);
}

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
