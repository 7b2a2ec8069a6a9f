// Integer columns of a fixed-width text table, written on the calling thread.
// Why native: a CLI run is over before V8 optimises its loops, and a table of
// 70,000 devices spent 10-13 ms writing cells digit by digit in JS's first
// tiers (about 4.5 ms once optimised), where this takes ~2.5 ms with the
// page faults of the output's first touch (~0.6 ms a column after).
// Also the human units of a column (diskUnits: each row's number and suffix
// index by thin_ls's rule, the largest number of each suffix). Which fields
// are printed, the suffix names and the column widths stay in TypeScript
// (src/thin/ls.ts); this writes digits, given suffixes and spaces.
#include "decimal_cells.h"

#include "decimal_digits.h"
#include "typed_view.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace dmthin {
namespace {

constexpr double kMaxExact = 9007199254740992.0;  // 2^53

// The smallest value with more than `digits` digits (saturated: 2^64 - 1 beyond 19).
inline uint64_t Limit(size_t digits) {
  uint64_t p = 1;
  for (size_t i = 0; i < digits; i++) {
    if (p > UINT64_MAX / 10) return UINT64_MAX;
    p *= 10;
  }
  return p;
}

// writeDecimalCells(dst, at, stride, values, from, to, width, newline, units?, unitNames?)
// For each row j in [from, to): values[j] (with unitNames[units[j]] after it)
// right-aligned in dst[at + (j - from) * stride, + width), spaces before it,
// then a space, then a newline when `newline`. values: Uint32Array or
// Float64Array of integers in [0, 2^53). Throws (writing nothing) when a
// cell does not fit its width, a value is not such an integer, or a cell
// would fall outside dst.
Napi::Value JsWriteDecimalCells(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage =
      "writeDecimalCells(dst: Uint8Array, at, stride, values: Uint32Array | Float64Array, from, to, width, newline: boolean, "
      "units?: Uint8Array, unitNames?: string[])";
  if (info.Length() < 8 || !info[0].IsTypedArray() || !info[3].IsTypedArray() || !info[7].IsBoolean()) throw Napi::TypeError::New(env, usage);
  for (int i : {1, 2, 4, 5, 6})
    if (!info[i].IsNumber()) throw Napi::TypeError::New(env, usage);
  const bool hasUnits = info.Length() > 8 && !info[8].IsUndefined() && !info[8].IsNull();
  if (hasUnits && (!info[8].IsTypedArray() || info.Length() < 10 || !info[9].IsArray())) throw Napi::TypeError::New(env, usage);

  // The unit names first: reading an array's elements can run JS (a getter),
  // which could shrink or detach the buffers below. After this loop no JS
  // runs until the cells are written: their lengths and pointers stay true.
  std::vector<std::string> names;
  if (hasUnits) {
    Napi::Array a = info[9].As<Napi::Array>();
    const uint32_t n = a.Length();
    if (n > 256) throw Napi::RangeError::New(env, "writeDecimalCells: more than 256 unit names");
    for (uint32_t i = 0; i < n; i++) {
      Napi::Value s = a.Get(i);
      if (!s.IsString()) throw Napi::TypeError::New(env, usage);
      names.push_back(s.As<Napi::String>().Utf8Value());
    }
  }

  const double atD = info[1].As<Napi::Number>().DoubleValue();
  const double strideD = info[2].As<Napi::Number>().DoubleValue();
  const double fromD = info[4].As<Napi::Number>().DoubleValue();
  const double toD = info[5].As<Napi::Number>().DoubleValue();
  const double widthD = info[6].As<Napi::Number>().DoubleValue();
  const bool newline = info[7].As<Napi::Boolean>().Value();
  const TypedView dst = TypedViewOf(env, info[0]);
  const TypedView vals = TypedViewOf(env, info[3]);
  if (dst.type != napi_uint8_array || (vals.type != napi_uint32_array && vals.type != napi_float64_array)) throw Napi::TypeError::New(env, usage);
  TypedView unitsView{};
  if (hasUnits) {
    unitsView = TypedViewOf(env, info[8]);
    if (unitsView.type != napi_uint8_array) throw Napi::TypeError::New(env, usage);
  }
  const size_t n = vals.data ? vals.length : 0;
  const size_t dstLen = dst.data ? dst.length : 0;
  auto isIndex = [](double d) { return d >= 0 && d <= kMaxExact && std::floor(d) == d; };
  if (!isIndex(atD) || !isIndex(strideD) || !isIndex(fromD) || !isIndex(toD) || !isIndex(widthD) || widthD < 1 || fromD > toD ||
      toD > static_cast<double>(n))
    throw Napi::RangeError::New(env, "writeDecimalCells: bad at, stride, from, to or width");
  const size_t at = static_cast<size_t>(atD), stride = static_cast<size_t>(strideD);
  const size_t from = static_cast<size_t>(fromD), to = static_cast<size_t>(toD), width = static_cast<size_t>(widthD);
  const size_t cell = width + 1 + (newline ? 1 : 0);
  if (to > from) {
    if (stride < cell && to - from > 1) throw Napi::RangeError::New(env, "writeDecimalCells: stride shorter than a cell");
    // The last row's cell must end inside dst (doubles: exact far beyond any buffer).
    if (atD + strideD * static_cast<double>(to - from - 1) + static_cast<double>(cell) > static_cast<double>(dstLen))
      throw Napi::RangeError::New(env, "writeDecimalCells: cells beyond the buffer");
  }
  const uint8_t* units = nullptr;
  if (hasUnits) {
    if ((unitsView.data ? unitsView.length : 0) < to) throw Napi::RangeError::New(env, "writeDecimalCells: units shorter than the rows");
    units = static_cast<const uint8_t*>(unitsView.data);
  }

  const uint32_t* u32 = vals.type == napi_uint32_array ? static_cast<const uint32_t*>(vals.data) : nullptr;
  const double* f64 = vals.type == napi_float64_array ? static_cast<const double*>(vals.data) : nullptr;
  auto valueAt = [&](size_t j, uint64_t* v) -> bool {
    if (u32) {
      *v = u32[j];
      return true;
    }
    const double d = f64[j];
    if (!(d >= 0 && d < kMaxExact) || std::floor(d) != d) return false;
    *v = static_cast<uint64_t>(d);
    return true;
  };
  // Cells written over the values or the units would change what a later row
  // reads: refused (an outside test: a value's cell overwrote the next value,
  // which then wrote before dst).
  if (Overlap(dst.data, dstLen, vals.data, n * (u32 ? 4 : 8)) || (units && Overlap(dst.data, dstLen, units, unitsView.length)))
    throw Napi::RangeError::New(env, "writeDecimalCells: dst shares memory with the values or the units");
  // Checked first, so that a bad row leaves dst as it was: a cell fits when
  // its value is below 10^(width - the suffix's length).
  std::vector<uint64_t> limits;
  for (const std::string& s : names) limits.push_back(s.size() >= width ? 0 : Limit(width - s.size()));
  const uint64_t plainLimit = Limit(width);
  for (size_t j = from; j < to; j++) {
    uint64_t v = 0;
    if (!valueAt(j, &v)) throw Napi::RangeError::New(env, "writeDecimalCells: row " + std::to_string(j) + " is not an integer in [0, 2^53)");
    if (units && units[j] >= names.size()) throw Napi::RangeError::New(env, "writeDecimalCells: row " + std::to_string(j) + " has no such unit");
    if (v >= (units ? limits[units[j]] : plainLimit))
      throw Napi::RangeError::New(env, "writeDecimalCells: row " + std::to_string(j) + " is wider than the column");
  }
  // Each row read once more, into locals, and checked again before its cell
  // is written: memory another thread changes meanwhile (a SharedArrayBuffer)
  // must not put digits outside the cell or index past the names (such a
  // change can leave rows written before the throw).
  uint8_t* base = static_cast<uint8_t*>(dst.data) + at;
  for (size_t j = from; j < to; j++, base += stride) {
    const size_t unit = units ? units[j] : 0;
    uint64_t v = 0;
    if (!valueAt(j, &v) || (units && unit >= names.size()) || v >= (units ? limits[unit] : plainLimit))
      throw Napi::RangeError::New(env, "writeDecimalCells: the values or the units changed during the call");
    uint8_t* end = base + width;
    if (units) {
      const std::string& s = names[unit];
      end -= s.size();
      for (size_t k = 0; k < s.size(); k++) end[k] = static_cast<uint8_t>(s[k]);
    }
    uint8_t* start = WriteDigitsBackwards(end, v);
    for (uint8_t* p = base; p < start; p++) *p = ' ';
    base[width] = ' ';
    if (newline) base[width + 1] = '\n';
  }
  return env.Undefined();
}

// diskUnits(blocks: Float64Array, bytesPerBlock, values: Uint32Array, units: Uint8Array, maxPerUnit: Float64Array): boolean
// thin_ls's human units for each row's byte count blocks[j] * bytesPerBlock:
// divided by 1024 (truncating) while above 1 MiB, then, if still above 8
// KiB, divided by 1024 and rounded; values[j] is the number, units[j] how
// many times it was divided (the suffix's index; the names stay in
// src/thin/ls.ts), maxPerUnit[u] the largest number with suffix u (its
// column width). False, values and units partly written, when a byte count
// is not an integer below 2^53 (the caller's exact path takes those rows).
// Why native: the same loop in JS over 70,000 rows took ~3.5 ms of a new
// process, run once before V8 optimises it.
Napi::Value JsDiskUnits(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "diskUnits(blocks: Float64Array, bytesPerBlock: number, values: Uint32Array, units: Uint8Array, maxPerUnit: Float64Array)";
  if (info.Length() < 5 || !info[0].IsTypedArray() || !info[1].IsNumber() || !info[2].IsTypedArray() || !info[3].IsTypedArray() || !info[4].IsTypedArray())
    throw Napi::TypeError::New(env, usage);
  const double bytesPerBlock = info[1].As<Napi::Number>().DoubleValue();
  const TypedView blocks = TypedViewOf(env, info[0]);
  const TypedView values = TypedViewOf(env, info[2]);
  const TypedView units = TypedViewOf(env, info[3]);
  const TypedView maxes = TypedViewOf(env, info[4]);
  if (blocks.type != napi_float64_array || values.type != napi_uint32_array || units.type != napi_uint8_array || maxes.type != napi_float64_array)
    throw Napi::TypeError::New(env, usage);
  if (!(bytesPerBlock >= 1 && bytesPerBlock <= kMaxExact && std::floor(bytesPerBlock) == bytesPerBlock))
    throw Napi::RangeError::New(env, "diskUnits: bytesPerBlock must be a positive integer");
  const size_t n = blocks.data ? blocks.length : 0;
  if ((values.data ? values.length : 0) < n || (units.data ? units.length : 0) < n || (maxes.data ? maxes.length : 0) < 7)
    throw Napi::RangeError::New(env, "diskUnits: values and units need a row for each block count, maxPerUnit 7 entries");
  const double* b = static_cast<const double*>(blocks.data);
  uint32_t* v = static_cast<uint32_t*>(values.data);
  uint8_t* u = static_cast<uint8_t*>(units.data);
  double* mx = static_cast<double*>(maxes.data);
  for (int k = 0; k < 7; k++) mx[k] = 0;
  for (size_t j = 0; j < n; j++) {
    const double blocksJ = b[j];
    if (!(blocksJ >= 0) || std::floor(blocksJ) != blocksJ) return Napi::Boolean::New(env, false);
    double x = blocksJ * bytesPerBlock;  // exact when it is at most 2^53 - 1
    if (!(x < kMaxExact)) return Napi::Boolean::New(env, false);
    uint8_t i = 0;
    while (x > 1048576) {
      x = std::floor(x / 1024);
      i++;
    }
    if (x > 8192) {
      x = std::round(x / 1024);  // positive: half away from zero is JS's Math.round
      i++;
    }
    v[j] = static_cast<uint32_t>(x);
    u[j] = i;
    if (x > mx[i]) mx[i] = x;
  }
  return Napi::Boolean::New(env, true);
}

}  // namespace

void InitDecimalCells(Napi::Env env, Napi::Object exports) {
  exports.Set("writeDecimalCells", Napi::Function::New(env, JsWriteDecimalCells, "writeDecimalCells"));
  exports.Set("diskUnits", Napi::Function::New(env, JsDiskUnits, "diskUnits"));
}

}  // namespace dmthin
