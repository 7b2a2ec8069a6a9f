// The entries of device-details btree leaves appended to the columns of
// src/thin/device-table.ts, on the calling thread: one leaf at a time for
// the TypeScript walk (decodeDetailsLeaf), or every leaf of a tree the
// addon walks whole (WalkDetailsColumns, for BlockReader.walkDetails).
// Why native: a CLI run is over before V8 optimises the loop. On 70,000
// devices (1,120 leaves, `ls` of the details' fields in a new process) the
// TypeScript loop spent ~7 ms in V8's first tiers; this takes well under 1
// ms. An entry this refuses (a key or mapped_blocks of 2^53 or more) is
// reported in TypeScript (parseDeviceDetails), and a tree the whole walk
// refuses (btree_walk.cc) is walked again there, so the format's messages
// have one home.
#include "details_columns.h"

#include <sys/mman.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "allocator.h"
#include "typed_view.h"

namespace dmthin {
namespace {

constexpr double kMaxExact = 9007199254740992.0;  // 2^53
constexpr uint32_t kMaxSafeHi = 1u << 21;          // a u64's high word at 2^53
constexpr double kTwo32 = 4294967296.0;
constexpr size_t kValueWords = 6;  // mapped_blocks u64, transaction_id u64, creation_time u32, snapshotted_time u32
constexpr uint32_t kValueBytes = 24;
constexpr size_t kLeafMaxEntries = 126;  // btree.ts maxEntriesFor(24)
// Columns of up to this many rows come from malloc; more, from a huge-page
// mapping (device-table.ts DETAILS_INITIAL_ROWS: only the pages written are touched).
constexpr size_t kHeapRows = 4096;
constexpr size_t kMaxColumnBytes = size_t{1} << 30;  // device-table.ts MAX_HUGE_BYTES

// The finalizer's hint: how the columns' memory is freed.
struct ColumnsMemory {
  size_t bytes;
  bool huge;
};

void FreeColumns(uint8_t* p, size_t bytes, bool huge) {
  if (p == nullptr) return;
  if (huge)
    ::munmap(p, HugeSpan(bytes));
  else
    std::free(p);
}

}  // namespace

int64_t AppendDetailsEntries(const uint32_t* keys, const uint32_t* values, size_t count, double* f, size_t rows, size_t at) {
  uint32_t* u = reinterpret_cast<uint32_t*>(f + 2 * rows);  // byte 16R: four u32 columns of R rows
  double* devId = f + at;
  double* mapped = f + rows + at;
  uint32_t* txLo = u + at;
  uint32_t* txHi = u + rows + at;
  uint32_t* ctime = u + 2 * rows + at;
  uint32_t* stime = u + 3 * rows + at;
  double* mx = f + 4 * rows;
  double maxMapped = mx[0], maxCtime = mx[1], maxStime = mx[2];
  int64_t refused = -1;
  for (size_t i = 0; i < count; i++) {
    // Each word read once, into locals (another thread may change a SharedArrayBuffer meanwhile).
    const uint32_t* k = keys + 2 * i;
    const uint32_t* v = values + kValueWords * i;
    const uint32_t keyLo = k[0], keyHi = k[1], lo = v[0], hi = v[1];
    if (keyHi >= kMaxSafeHi || hi >= kMaxSafeHi) {
      refused = static_cast<int64_t>(i);
      break;
    }
    const double blocks = lo + hi * kTwo32;
    const uint32_t ct = v[4], st = v[5];
    devId[i] = keyLo + keyHi * kTwo32;
    mapped[i] = blocks;
    txLo[i] = v[2];
    txHi[i] = v[3];
    ctime[i] = ct;
    stime[i] = st;
    if (blocks > maxMapped) maxMapped = blocks;
    if (ct > maxCtime) maxCtime = ct;
    if (st > maxStime) maxStime = st;
  }
  mx[0] = maxMapped;
  mx[1] = maxCtime;
  mx[2] = maxStime;
  return refused;
}

WalkStatus WalkDetailsColumns(const WalkSource& src, uint64_t root, size_t max_leaves, DetailsColumnsBlock* out, uint64_t* blocks_read) {
  DetailsColumnsBlock b;
  WalkCallbacks cb;
  cb.on_leaf_level = [&b, max_leaves](size_t leaves) {
    if (leaves > max_leaves) return WalkStatus::kTooLarge;
    // Room for every leaf full: rows never written are address space only.
    const size_t rows = leaves * kLeafMaxEntries;
    const size_t bytes = 32 * rows + 24;
    if (bytes > kMaxColumnBytes) return WalkStatus::kTooLarge;
    b.huge = rows > kHeapRows;
    b.p = b.huge ? MapHuge(bytes) : static_cast<uint8_t*>(std::calloc(1, bytes));  // both zeroed: the maxima start at 0
    if (b.p == nullptr) return WalkStatus::kReadFailed;  // out of memory: the caller's walk
    b.rows = rows;
    b.bytes = bytes;
    return WalkStatus::kOk;
  };
  cb.on_leaf = [&b](const uint8_t* node) {
    const uint32_t* w = reinterpret_cast<const uint32_t*>(node);
    const size_t count = w[4];
    // Keys from byte 32, values after max_entries keys (checked to be 126 by the walk).
    if (AppendDetailsEntries(w + 8, w + 8 + 2 * kLeafMaxEntries, count, reinterpret_cast<double*>(b.p), b.rows, b.count) >= 0) return false;
    b.count += count;
    return true;
  };
  const WalkStatus st = WalkBtree(src, root, kValueBytes, max_leaves, cb, blocks_read);
  if (st != WalkStatus::kOk) {
    FreeColumns(b.p, b.bytes, b.huge);
    return st;
  }
  *out = b;
  return st;
}

void FreeDetailsColumns(DetailsColumnsBlock* b) {
  FreeColumns(b->p, b->bytes, b->huge);
  *b = DetailsColumnsBlock();
}

Napi::ArrayBuffer TakeDetailsColumns(Napi::Env env, DetailsColumnsBlock* b) {
  auto* hint = new ColumnsMemory{b->bytes, b->huge};
  uint8_t* p = b->p;
  *b = DetailsColumnsBlock();
  return Napi::ArrayBuffer::New(
      env, p, hint->bytes,
      [](Napi::Env, void* data, ColumnsMemory* m) {
        FreeColumns(static_cast<uint8_t*>(data), m->bytes, m->huge);
        delete m;
      },
      hint);
}

namespace {

// decodeDetailsLeaf(words, keysAt, valuesAt, count, at, columns) -> number
// Entry i of the leaf: its key (u64, two little-endian words) at
// words[keysAt + 2i], its value (six words) at words[valuesAt + 6i].
// columns: one Float64Array of 4R + 3 elements holding R rows (the layout
// of src/thin/device-table.ts): f64 device ids [0, R), f64 mapped_blocks
// [R, 2R), then from byte 16R u32 transaction id low words, high words,
// creation times, snapshotted times (R each), then at f64 4R the largest
// mapped_blocks, creation_time and snapshotted_time so far. Row at + i gets
// entry i, and the maxima are raised. Returns -1 when every entry was
// appended, else the first entry whose key or mapped_blocks is 2^53 or more
// (it and those after it are not written).
Napi::Value JsDecodeDetailsLeaf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "decodeDetailsLeaf(words: Uint32Array, keysAt, valuesAt, count, at, columns: Float64Array)";
  if (info.Length() < 6 || !info[0].IsTypedArray() || !info[5].IsTypedArray()) throw Napi::TypeError::New(env, usage);
  for (int i : {1, 2, 3, 4})
    if (!info[i].IsNumber()) throw Napi::TypeError::New(env, usage);
  const double keysAtD = info[1].As<Napi::Number>().DoubleValue();
  const double valuesAtD = info[2].As<Napi::Number>().DoubleValue();
  const double countD = info[3].As<Napi::Number>().DoubleValue();
  const double atD = info[4].As<Napi::Number>().DoubleValue();
  // No JS runs from here on (numbers were read above): the views stay true.
  const TypedView words = TypedViewOf(env, info[0]);
  const TypedView cols = TypedViewOf(env, info[5]);
  if (words.type != napi_uint32_array || cols.type != napi_float64_array) throw Napi::TypeError::New(env, usage);
  auto isIndex = [](double d) { return d >= 0 && d <= kMaxExact && std::floor(d) == d; };
  if (!isIndex(keysAtD) || !isIndex(valuesAtD) || !isIndex(countD) || !isIndex(atD))
    throw Napi::RangeError::New(env, "decodeDetailsLeaf: bad keysAt, valuesAt, count or at");
  const size_t nWords = words.data ? words.length : 0;
  const size_t nCols = cols.data ? cols.length : 0;
  if (nCols < 3 || (nCols - 3) % 4 != 0) throw Napi::RangeError::New(env, "decodeDetailsLeaf: columns must have 4R + 3 elements");
  const size_t rows = (nCols - 3) / 4;
  // Doubles: exact far beyond any buffer, so the sums cannot wrap.
  if (keysAtD + 2 * countD > static_cast<double>(nWords) || valuesAtD + kValueWords * countD > static_cast<double>(nWords))
    throw Napi::RangeError::New(env, "decodeDetailsLeaf: entries beyond words");
  if (atD + countD > static_cast<double>(rows)) throw Napi::RangeError::New(env, "decodeDetailsLeaf: rows beyond the columns");
  // Columns written over the words would change what a later entry reads: refused.
  if (Overlap(cols.data, nCols * 8, words.data, nWords * 4))
    throw Napi::RangeError::New(env, "decodeDetailsLeaf: the columns share memory with the words");
  const size_t keysAt = static_cast<size_t>(keysAtD), valuesAt = static_cast<size_t>(valuesAtD);
  const size_t count = static_cast<size_t>(countD), at = static_cast<size_t>(atD);

  const uint32_t* w = static_cast<const uint32_t*>(words.data);
  const int64_t refused = AppendDetailsEntries(w + keysAt, w + valuesAt, count, static_cast<double*>(cols.data), rows, at);
  return Napi::Number::New(env, static_cast<double>(refused));
}

}  // namespace

void InitDetailsColumns(Napi::Env env, Napi::Object exports) {
  exports.Set("decodeDetailsLeaf", Napi::Function::New(env, JsDecodeDetailsLeaf, "decodeDetailsLeaf"));
}

}  // namespace dmthin
