// rmap's output lines ("data B..E -> thin(DEV) VB..VE"), written from its run
// records on the calling thread. Why native: a CLI run prints its lines once,
// before V8 optimises the loop; the 373,625 lines of a 4M-mapping rmap took
// ~60 ms digit by digit in JS and take ~8 ms here. Which runs are printed, in
// what order and the record layout stay in TypeScript (src/thin/rmap-runs.ts,
// src/thin/rmap.ts); this only writes digits and the fixed text between them.
#include "rmap_lines.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "decimal_digits.h"
#include "typed_view.h"

namespace dmthin {
namespace {

constexpr double kMaxExact = 9007199254740992.0;  // 2^53
// The longest line: "data " B ".." E " -> thin(" DEV ") " VB ".." VE "\n",
// numbers of at most 16, 16, 10, 20 and 20 digits.
constexpr size_t kMaxLine = 5 + 16 + 2 + 16 + 9 + 10 + 2 + 20 + 2 + 20 + 1;
constexpr size_t kRecordWords = 8;  // a run record: 32 bytes (rmap-runs.ts)

inline uint8_t* Put(uint8_t* p, const char* s, size_t n) {
  std::memcpy(p, s, n);
  return p + n;
}

inline uint8_t* PutNumber(uint8_t* p, uint64_t v) {
  uint8_t tmp[20];
  uint8_t* start = WriteDigitsBackwards(tmp + 20, v);
  const size_t n = static_cast<size_t>(tmp + 20 - start);
  std::memcpy(p, start, n);
  return p + n;
}

inline double F64At(const uint32_t* rec, size_t word) {
  double d;
  std::memcpy(&d, rec + word, sizeof d);
  return d;
}

inline bool IsCount(double d) { return d >= 0 && d < kMaxExact && std::floor(d) == d; }

// writeRmapLines(dst: Uint8Array, at, records: Uint32Array, order: Uint32Array, from, to): number
// Writes the line of run order[i] for each i in [from, to) at dst[at...] and
// returns the end. Record k: data begin and length as float64 words 0-1 and
// 2-3, device word 4, virtual begin words 5 (low) and 6 (high); the virtual
// end is printed modulo 2^64, as thin_rmap's u64 arithmetic prints it.
// Needs kMaxLine bytes a line at `at`. Throws (writing nothing) on a record
// index beyond the records, a data begin or length that is not an integer
// below 2^53, too little room, or dst sharing memory with records or order.
Napi::Value JsWriteRmapLines(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "writeRmapLines(dst: Uint8Array, at, records: Uint32Array, order: Uint32Array, from, to)";
  if (info.Length() < 6 || !info[0].IsTypedArray() || !info[1].IsNumber() || !info[2].IsTypedArray() || !info[3].IsTypedArray() ||
      !info[4].IsNumber() || !info[5].IsNumber())
    throw Napi::TypeError::New(env, usage);
  const double atD = info[1].As<Napi::Number>().DoubleValue();
  const double fromD = info[4].As<Napi::Number>().DoubleValue();
  const double toD = info[5].As<Napi::Number>().DoubleValue();
  const TypedView dst = TypedViewOf(env, info[0]);
  const TypedView recs = TypedViewOf(env, info[2]);
  const TypedView ord = TypedViewOf(env, info[3]);
  if (dst.type != napi_uint8_array || recs.type != napi_uint32_array || ord.type != napi_uint32_array) throw Napi::TypeError::New(env, usage);
  const size_t dstLen = dst.data ? dst.length : 0;
  const size_t nRecords = recs.data ? recs.length / kRecordWords : 0;
  const size_t nOrder = ord.data ? ord.length : 0;
  auto isIndex = [](double d) { return d >= 0 && d <= kMaxExact && std::floor(d) == d; };
  if (!isIndex(atD) || !isIndex(fromD) || !isIndex(toD) || fromD > toD || toD > static_cast<double>(nOrder))
    throw Napi::RangeError::New(env, "writeRmapLines: bad at, from or to");
  const size_t at = static_cast<size_t>(atD), from = static_cast<size_t>(fromD), to = static_cast<size_t>(toD);
  if (atD + static_cast<double>(to - from) * kMaxLine > static_cast<double>(dstLen))
    throw Napi::RangeError::New(env, "writeRmapLines: not enough room in dst (" + std::to_string(kMaxLine) + " bytes a line)");
  const uint32_t* records = static_cast<const uint32_t*>(recs.data);
  const uint32_t* order = static_cast<const uint32_t*>(ord.data);
  // Lines written over the records or the order would change what the next
  // line reads: refused (a review: dst sharing order's memory made a later
  // record index ~1.6e9, SIGSEGV).
  if (Overlap(dst.data, dstLen, records, recs.data ? recs.length * 4 : 0) || Overlap(dst.data, dstLen, order, nOrder * 4))
    throw Napi::RangeError::New(env, "writeRmapLines: dst shares memory with the records or the order");
  // One line's fields, read once and checked: false when they are not a line.
  struct Line {
    uint64_t data, len, dev, virt;
  };
  auto lineOf = [&](size_t i, Line* out, uint32_t* k) {
    *k = order[i];
    if (*k >= nRecords) return false;
    const uint32_t* rec = records + static_cast<size_t>(*k) * kRecordWords;
    const double data = F64At(rec, 0), len = F64At(rec, 2);
    if (!IsCount(data) || !IsCount(len) || data + len >= kMaxExact) return false;
    *out = {static_cast<uint64_t>(data), static_cast<uint64_t>(len), rec[4], (static_cast<uint64_t>(rec[6]) << 32) | rec[5]};
    return true;
  };
  Line l{};
  uint32_t k = 0;
  for (size_t i = from; i < to; i++) {
    if (lineOf(i, &l, &k)) continue;
    if (k >= nRecords) throw Napi::RangeError::New(env, "writeRmapLines: order[" + std::to_string(i) + "] is beyond the records");
    throw Napi::RangeError::New(env, "writeRmapLines: record " + std::to_string(k) + " has a data range that is not integers below 2^53");
  }
  // Read again as each line is written (memory another thread changes meanwhile
  // must not send a read or a write out of bounds; such a change can leave
  // lines written before the throw).
  uint8_t* p = static_cast<uint8_t*>(dst.data) + at;
  for (size_t i = from; i < to; i++) {
    if (!lineOf(i, &l, &k)) throw Napi::RangeError::New(env, "writeRmapLines: the records or the order changed during the call");
    p = Put(p, "data ", 5);
    p = PutNumber(p, l.data);
    p = Put(p, "..", 2);
    p = PutNumber(p, l.data + l.len);
    p = Put(p, " -> thin(", 9);
    p = PutNumber(p, l.dev);
    p = Put(p, ") ", 2);
    p = PutNumber(p, l.virt);
    p = Put(p, "..", 2);
    p = PutNumber(p, l.virt + l.len);  // wraps modulo 2^64
    *p++ = '\n';
  }
  return Napi::Number::New(env, static_cast<double>(p - static_cast<uint8_t*>(dst.data)));
}

}  // namespace

void InitRmapLines(Napi::Env env, Napi::Object exports) {
  exports.Set("writeRmapLines", Napi::Function::New(env, JsWriteRmapLines, "writeRmapLines"));
  exports.Set("rmapLineMaxBytes", Napi::Number::New(env, static_cast<double>(kMaxLine)));
}

}  // namespace dmthin
