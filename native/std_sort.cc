// The permutation libstdc++'s std::sort leaves a sequence in, sorted by a key,
// with the introsort depth given (a segment of a larger sort passes what its
// parent left). The same steps as src/thin/std-sort.ts, which explains why
// the steps must be these (rmap prints ties in the reference tool's order)
// and which the tests compare with the system's own std::sort.
// Why native: an rmap's sort runs once per process, over before V8 optimises
// it; 373,625 keys (a 4M-mapping rmap) took 46-51 ms in JS and take ~15 ms here.
#include "std_sort.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "errors.h"
#include "typed_view.h"

namespace dmthin {
namespace {

constexpr int64_t kThreshold = 16;  // segments this short are left to the insertion sort
constexpr double kMaxDepth = 128;   // above any std::sort depth (2 * 63)

class Introsort {
 public:
  Introsort(const double* k, uint32_t* p) : K(k), P(p) {}

  void Sort(int64_t n, int64_t depth) {
    for (int64_t i = 0; i < n; i++) P[i] = static_cast<uint32_t>(i);
    if (n < 2) return;
    Loop(0, n, depth);
    if (n > kThreshold) {
      InsertionSort(0, kThreshold);
      for (int64_t i = kThreshold; i < n; i++) LinearInsert(i);
    } else {
      InsertionSort(0, n);
    }
  }

 private:
  const double* K;
  uint32_t* P;

  bool Less(int64_t a, int64_t b) const { return K[P[a]] < K[P[b]]; }
  void Swap(int64_t a, int64_t b) {
    const uint32_t t = P[a];
    P[a] = P[b];
    P[b] = t;
  }

  void MedianToFirst(int64_t to, int64_t a, int64_t b, int64_t c) {
    if (Less(a, b)) {
      if (Less(b, c)) Swap(to, b);
      else if (Less(a, c)) Swap(to, c);
      else Swap(to, a);
    } else if (Less(a, c)) {
      Swap(to, a);
    } else if (Less(b, c)) {
      Swap(to, c);
    } else {
      Swap(to, b);
    }
  }

  // Hoare partition of [first, last) around the key at pivot (= first - 1).
  // With a strict weak order (keys without NaN) the median of three stops
  // both scans inside the segment; the bounds only keep a key array changed
  // under us (shared memory) from sending them out of it.
  int64_t Partition(int64_t first, int64_t last, int64_t pivot) {
    const double kp = K[P[pivot]];
    const int64_t hi = last - 1;
    for (;;) {
      while (first < hi && K[P[first]] < kp) first++;
      last--;
      while (last > pivot && kp < K[P[last]]) last--;
      if (!(first < last)) return first;
      Swap(first, last);
      first++;
    }
  }

  void AdjustHeap(int64_t first, int64_t hole, int64_t len, uint32_t v) {
    const int64_t top = hole;
    int64_t child = hole;
    const double kv = K[v];
    while (child < (len - 1) / 2) {
      child = 2 * (child + 1);
      if (K[P[first + child]] < K[P[first + child - 1]]) child--;
      P[first + hole] = P[first + child];
      hole = child;
    }
    if ((len & 1) == 0 && child == (len - 2) / 2) {
      child = 2 * (child + 1);
      P[first + hole] = P[first + child - 1];
      hole = child - 1;
    }
    int64_t parent = (hole - 1) / 2;
    while (hole > top && K[P[first + parent]] < kv) {
      P[first + hole] = P[first + parent];
      hole = parent;
      parent = (hole - 1) / 2;
    }
    P[first + hole] = v;
  }

  void HeapSort(int64_t first, int64_t last) {
    const int64_t len = last - first;
    if (len >= 2) {
      for (int64_t parent = (len - 2) / 2;; parent--) {
        AdjustHeap(first, parent, len, P[first + parent]);
        if (parent == 0) break;
      }
    }
    for (int64_t end = last; end - first > 1;) {
      end--;
      const uint32_t v = P[end];
      P[end] = P[first];
      AdjustHeap(first, 0, end - first, v);
    }
  }

  void Loop(int64_t first, int64_t last, int64_t depth) {
    while (last - first > kThreshold) {
      if (depth == 0) {
        HeapSort(first, last);
        return;
      }
      depth--;
      const int64_t mid = first + (last - first) / 2;
      MedianToFirst(first, first + 1, mid, last - 1);
      const int64_t cut = Partition(first + 1, last, first);
      Loop(cut, last, depth);
      last = cut;
    }
  }

  // The first kThreshold elements hold the smallest key, which stops every
  // scan; j > 0 only guards against keys changed under us.
  void LinearInsert(int64_t i) {
    const uint32_t v = P[i];
    const double kv = K[v];
    int64_t j = i;
    while (j > 0 && kv < K[P[j - 1]]) {
      P[j] = P[j - 1];
      j--;
    }
    P[j] = v;
  }

  void InsertionSort(int64_t first, int64_t last) {
    for (int64_t i = first + 1; i < last; i++) {
      if (K[P[i]] < K[P[first]]) {
        const uint32_t v = P[i];
        for (int64_t j = i; j > first; j--) P[j] = P[j - 1];
        P[first] = v;
      } else {
        LinearInsert(i);
      }
    }
  }
};

// stdSortOrder(keys: Float64Array, n, depth, out: Uint32Array): out[i] is the
// index of the key std::sort puts at position i of keys[0, n). Throws (out
// untouched) on a NaN key (no strict weak order, so no std::sort order), n
// beyond either array or past 2^32 - 1, or a depth that is not a
// integer from 0 to 128. The permutation is built in memory of its own (4
// bytes a key) and copied to out: out may share memory with keys or with
// another thread without any index leaving the arrays.
Napi::Value JsStdSortOrder(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "stdSortOrder(keys: Float64Array, n: number, depth: number, out: Uint32Array)";
  if (info.Length() < 4 || !info[0].IsTypedArray() || !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsTypedArray())
    throw Napi::TypeError::New(env, usage);
  const double nD = info[1].As<Napi::Number>().DoubleValue();
  const double depthD = info[2].As<Napi::Number>().DoubleValue();
  const TypedView keys = TypedViewOf(env, info[0]);
  const TypedView out = TypedViewOf(env, info[3]);
  if (keys.type != napi_float64_array || out.type != napi_uint32_array) throw Napi::TypeError::New(env, usage);
  const double keyCount = keys.data ? static_cast<double>(keys.length) : 0;
  const double outCount = out.data ? static_cast<double>(out.length) : 0;
  if (!(nD >= 0 && nD <= 4294967295.0 && nD == static_cast<double>(static_cast<int64_t>(nD)) && nD <= keyCount && nD <= outCount))
    throw Napi::RangeError::New(env, "stdSortOrder: n must be an integer from 0 to the length of keys and of out");
  // std::sort's depth is 2 * floor(log2 n) <= 64 for 32-bit n; a larger one
  // only lets adversarial keys recurse ~n/2 deep (a review: a stack overflow).
  if (!(depthD >= 0 && depthD <= kMaxDepth && depthD == static_cast<double>(static_cast<int64_t>(depthD))))
    throw Napi::RangeError::New(env, "stdSortOrder: depth must be an integer from 0 to " + std::to_string(static_cast<int>(kMaxDepth)));
  const int64_t n = static_cast<int64_t>(nD);
  const double* k = static_cast<const double*>(keys.data);
  for (int64_t i = 0; i < n; i++)
    if (k[i] != k[i]) throw Napi::RangeError::New(env, "stdSortOrder: key " + std::to_string(i) + " is NaN");
  std::vector<uint32_t> order;
  try {
    order.resize(static_cast<size_t>(n));
  } catch (const std::bad_alloc&) {
    throw Napi::RangeError::New(env, "stdSortOrder: out of memory for " + std::to_string(n) + " keys");
  }
  Introsort(k, order.data()).Sort(n, static_cast<int64_t>(depthD));
  if (n > 0) std::memcpy(out.data, order.data(), static_cast<size_t>(n) * sizeof(uint32_t));
  return env.Undefined();
}

// std::sort's partition step over rmap's spilled runs (src/thin/rmap-runs.ts):
// 32-byte records in a file, the key a double at each record's start. Two
// cursors walk towards each other through blocks of kFileBlockRecords
// records read with pread and written back with pwrite when changed; when
// both are in one block they share its buffer. The JS steps over the file
// took ~55 ms of a 4M-mapping rmap's ~95 ms sort (373,625 runs, three levels
// of partitions), run once per process before V8 optimises them.
constexpr int64_t kRecordBytes = 32;
constexpr int64_t kFileBlockRecords = 8192;  // 256 KiB

class FilePartition {
 public:
  FilePartition(int fd, int64_t n) : fd_(fd), n_(n) {}

  // Hoare partition of records [first, last) around key kp, the pivot
  // record at index `pivot` (< first, never moved). The scans are bounded by
  // the segment and the pivot as std_sort.cc's Partition is; returns the cut.
  bool Run(int64_t first, int64_t last, int64_t pivot, double kp, int64_t* cut) {
    const int64_t hi = last - 1;
    Block* l = nullptr;
    Block* r = nullptr;
    for (;;) {
      for (;;) {
        if (!(l = Cursor(first, l, r))) return false;
        if (!(first < hi && Key(l, first) < kp)) break;
        first++;
      }
      last--;
      for (;;) {
        if (!(r = Cursor(last, r, l))) return false;
        if (!(last > pivot && kp < Key(r, last))) break;
        last--;
      }
      if (!(first < last)) {
        *cut = first;
        return Flush(&a_) && Flush(&b_);
      }
      uint8_t tmp[kRecordBytes];
      uint8_t* x = At(l, first);
      uint8_t* y = At(r, last);
      std::memcpy(tmp, x, kRecordBytes);
      std::memcpy(x, y, kRecordBytes);
      std::memcpy(y, tmp, kRecordBytes);
      l->dirty = r->dirty = true;
      first++;
    }
  }

  SysFailure fail;

 private:
  struct Block {
    int64_t index = -1;
    int64_t records = 0;
    bool dirty = false;
    std::vector<uint8_t> buf;
  };
  int fd_;
  int64_t n_;
  Block a_, b_;

  static uint8_t* At(Block* b, int64_t i) { return b->buf.data() + (i - b->index * kFileBlockRecords) * kRecordBytes; }
  static double Key(Block* b, int64_t i) {
    double d;
    std::memcpy(&d, At(b, i), sizeof d);
    return d;
  }

  // The block holding record i for a cursor now in `mine`: never the one the other cursor reads, unless i is in it.
  Block* Cursor(int64_t i, Block* mine, Block* other) {
    const int64_t index = i / kFileBlockRecords;
    if (mine && mine->index == index) return mine;
    if (other && other->index == index) return other;
    Block* s = mine && mine != other ? mine : (other == &a_ ? &b_ : &a_);
    if (!Flush(s)) return nullptr;
    const int64_t from = index * kFileBlockRecords;
    s->records = std::min<int64_t>(kFileBlockRecords, n_ - from);
    if (s->buf.empty()) {
      try {
        s->buf.resize(static_cast<size_t>(kFileBlockRecords * kRecordBytes));
      } catch (const std::bad_alloc&) {
        fail.set(ENOMEM, "malloc");
        return nullptr;
      }
    }
    if (!Transfer(false, s->buf.data(), s->records * kRecordBytes, from * kRecordBytes)) return nullptr;
    s->index = index;
    return s;
  }

  bool Flush(Block* b) {
    if (!b->dirty) return true;
    b->dirty = false;
    return Transfer(true, b->buf.data(), b->records * kRecordBytes, b->index * kFileBlockRecords * kRecordBytes);
  }

  bool Transfer(bool write, uint8_t* p, int64_t bytes, int64_t pos) {
    for (int64_t done = 0; done < bytes;) {
      const ssize_t k = write ? pwrite(fd_, p + done, static_cast<size_t>(bytes - done), pos + done)
                              : pread(fd_, p + done, static_cast<size_t>(bytes - done), pos + done);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) {
        fail.set(k < 0 ? errno : EIO, write ? "pwrite" : "pread");
        return false;
      }
      done += k;
    }
    return true;
  }
};

// partitionRunFile(fd, n, first, last, pivot, pivotKey): the cut. Records
// [first, last) of a file of n 32-byte records; pivot < first <= last <= n.
// The file is the caller's: nothing else may write it meanwhile. An IO
// failure is a Node-shaped error (code, errno, syscall); the records may be
// partly swapped then, as a failed sort leaves them.
Napi::Value JsPartitionRunFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "partitionRunFile(fd, n, first, last, pivot, pivotKey)";
  if (info.Length() < 6) throw Napi::TypeError::New(env, usage);
  double v[6];
  for (int i = 0; i < 6; i++) {
    if (!info[i].IsNumber()) throw Napi::TypeError::New(env, usage);
    v[i] = info[i].As<Napi::Number>().DoubleValue();
  }
  auto isIndex = [](double d) { return d >= 0 && d <= 9007199254740991.0 && d == static_cast<double>(static_cast<int64_t>(d)); };
  for (int i = 0; i < 5; i++)
    if (!isIndex(v[i])) throw Napi::RangeError::New(env, "partitionRunFile: fd, n, first, last and pivot must be non-negative integers");
  const int64_t n = static_cast<int64_t>(v[1]), first = static_cast<int64_t>(v[2]), last = static_cast<int64_t>(v[3]), pivot = static_cast<int64_t>(v[4]);
  if (!(pivot < first && first <= last && last <= n) || v[0] > 2147483647.0)
    throw Napi::RangeError::New(env, "partitionRunFile: needs pivot < first <= last <= n");
  if (v[5] != v[5]) throw Napi::RangeError::New(env, "partitionRunFile: the pivot key is NaN");
  FilePartition part(static_cast<int>(v[0]), n);
  int64_t cut = 0;
  if (!part.Run(first, last, pivot, v[5], &cut)) throw MakeErrnoError(env, part.fail);
  return Napi::Number::New(env, static_cast<double>(cut));
}

}  // namespace

void InitStdSort(Napi::Env env, Napi::Object exports) {
  exports.Set("stdSortOrder", Napi::Function::New(env, JsStdSortOrder, "stdSortOrder"));
  exports.Set("partitionRunFile", Napi::Function::New(env, JsPartitionRunFile, "partitionRunFile"));
}

}  // namespace dmthin
