#include "allocator.h"

#include <sys/mman.h>
#include <v8.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <string>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace dmthin {

// tuneAllocator(mmapThreshold, trimThreshold): glibc's M_MMAP_THRESHOLD and
// M_TRIM_THRESHOLD for this process; false where malloc is not glibc's.
//
// Why: with glibc's defaults a chunk above a moving threshold (128 KiB at
// first) gets an mmap of its own and is unmapped when freed, and the heap's
// top is given back once 2x that threshold is free. A walk's churn of
// mid-sized blocks (V8's compiler zones, read batches, typed arrays) then
// touches fresh pages over and over, a page fault per 4 KiB; in a VM a fault
// can cost ~10 us (a 4 MiB buffer: 10.6 ms to touch here). Fixed thresholds
// keep those chunks in the heap, reused. Only the CLI asks for this (through
// native/binding.ts): a library must not change its host's allocator.
static Napi::Value TuneAllocator(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
    throw Napi::TypeError::New(env, "tuneAllocator(mmapThreshold: number, trimThreshold: number)");
  }
  double mmap_at = info[0].As<Napi::Number>().DoubleValue();
  double trim_at = info[1].As<Napi::Number>().DoubleValue();
  // glibc caps M_MMAP_THRESHOLD at 32 MiB on 64-bit hosts (HEAP_MAX_SIZE / 2).
  if (!(mmap_at >= 0 && mmap_at <= 32 * 1024 * 1024) || !(trim_at >= 0 && trim_at <= 1024.0 * 1024 * 1024)) {
    throw Napi::RangeError::New(env, "tuneAllocator: mmapThreshold must be 0..32 MiB, trimThreshold 0..1 GiB");
  }
#if defined(__GLIBC__)
  bool ok = mallopt(M_MMAP_THRESHOLD, static_cast<int>(mmap_at)) == 1;
  ok = mallopt(M_TRIM_THRESHOLD, static_cast<int>(trim_at)) == 1 && ok;
  return Napi::Boolean::New(env, ok);
#else
  return Napi::Boolean::New(env, false);
#endif
}

size_t HugeSpan(size_t bytes) { return (bytes + kHugePageBytes - 1) & ~(kHugePageBytes - 1); }

void AdviseHuge(void* p, size_t bytes) {
  uintptr_t at = reinterpret_cast<uintptr_t>(p);
  uintptr_t from = (at + kHugePageBytes - 1) & ~(uintptr_t{kHugePageBytes} - 1);
  uintptr_t to = (at + bytes) & ~(uintptr_t{kHugePageBytes} - 1);
  if (to > from) ::madvise(reinterpret_cast<void*>(from), to - from, MADV_HUGEPAGE);
}

// Best effort: without THP (or with it off) the mapping is plain 4 KiB pages.
uint8_t* MapHuge(size_t bytes) {
  size_t span = HugeSpan(bytes);
  size_t len = span + kHugePageBytes;  // room to align: then the head and tail go back
  void* raw = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  uintptr_t at = reinterpret_cast<uintptr_t>(raw);
  uintptr_t aligned = (at + kHugePageBytes - 1) & ~(uintptr_t{kHugePageBytes} - 1);
  if (aligned > at) ::munmap(raw, aligned - at);
  uintptr_t end = aligned + span;
  if (at + len > end) ::munmap(reinterpret_cast<void*>(end), at + len - end);
  auto* p = reinterpret_cast<uint8_t*>(aligned);
  AdviseHuge(p, span);  // aligned and whole pages: all of it
  return p;
}

// hugeArrayBuffer(bytes) -> ArrayBuffer: `bytes` bytes of a MapHuge mapping
// (not zeroed by a pass: the kernel gives zero pages as they are touched),
// unmapped when the buffer is collected. Why: in a VM a 4 KiB page fault
// can cost ~11 us (the bench VM); a large typed array touched while it is
// filled (ls's details columns, 2.2 MB for 70,000 devices: ~550 faults)
// takes one fault per 2 MiB instead.
static Napi::Value HugeArrayBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "hugeArrayBuffer(bytes: number)");
  double d = info[0].As<Napi::Number>().DoubleValue();
  // Up to 1 GiB: a typed array's columns, not a general allocator.
  if (!(d >= 1 && d <= 1073741824.0) || std::floor(d) != d) throw Napi::RangeError::New(env, "hugeArrayBuffer: bytes must be an integer in 1..2^30");
  size_t bytes = static_cast<size_t>(d);
  uint8_t* p = MapHuge(bytes);
  if (!p) throw Napi::Error::New(env, "hugeArrayBuffer: out of memory (mmap failed)");
  return Napi::ArrayBuffer::New(env, p, bytes, [](Napi::Env, void* data, size_t* len) {
    ::munmap(data, HugeSpan(*len));
    delete len;
  }, new size_t(bytes));
}

// minorGcTask(on: boolean): V8's "minor GC task" on or off for this process
// (its --minor-gc-task flag). With it, V8 posts a young-generation
// collection once new space is 80% full, and it runs at the next turn of the
// event loop; without it, a collection runs only when new space is full.
// Why off for the CLI: a short command that turns the loop once (a tiny
// send's first data read) paid ~2-3 ms for a collection posted at 80%
// (in this VM mostly the fresh pages its survivors are copied to); without
// the task the commands that stay under a full new space never collect
// (a tiny send still fills it once: README). A long run collects as often
// either way.
// V8 checks the flag's value when it would post the task, so setting it at
// run time takes effect; the flag is part of the hash V8 signs code caches
// with, so the CLI sets it before it compiles anything with one, every run
// (src/cli/startup.ts). Only the CLI calls this: a library leaves its
// host's collector alone.
static Napi::Value MinorGcTask(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsBoolean()) throw Napi::TypeError::New(env, "minorGcTask(on: boolean)");
  const char* flag = info[0].As<Napi::Boolean>().Value() ? "--minor-gc-task" : "--no-minor-gc-task";
  v8::V8::SetFlagsFromString(flag, std::strlen(flag));
  return env.Undefined();
}

// semiSpaceGrowth(factor: integer 1..16): V8's --semi-space-growth-factor
// for this process. V8 reads it whenever it would grow the young generation
// after a collection (to factor x its capacity, up to the maximum), so set
// at run time it takes effect: 1 keeps the young generation at the size it
// starts with, 1 MiB a semi-space, which is what the CLI's #! line's
// --max-semi-space-size=1 did (a long walk grew it to 16 MiB a semi-space:
// README, Memory bound). Why at run time: any V8 flag given at start makes
// V8 refuse Node's built-in code caches, so every built-in module loaded
// after it compiles from source (src/cli/startup.ts, tuneCollector); a flag
// set at run time changes the caches' signature only from then on. Only the
// CLI calls this: a library leaves its host's heap alone.
static Napi::Value SemiSpaceGrowth(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double f = info.Length() < 1 || !info[0].IsNumber() ? 0 : info[0].As<Napi::Number>().DoubleValue();
  if (!(f >= 1 && f <= 16) || std::floor(f) != f) throw Napi::TypeError::New(env, "semiSpaceGrowth(factor: integer 1..16)");
  std::string flag = "--semi-space-growth-factor=" + std::to_string(static_cast<int>(f));
  v8::V8::SetFlagsFromString(flag.c_str(), flag.size());
  return env.Undefined();
}

// majorGcCount() -> number: full (mark-compact) collections of this
// isolate since the first call, which starts counting and returns 0.
// Why: V8 drops the bytecode of a function that has not run for five full
// collections (--bytecode-old-age), so the code cache a long run writes at
// its exit lacks what only its start-up ran (a 40M-mapping `ls` wrote 149
// KB where a tiny one wrote 243 KB), and every later run compiled that
// from source. Start-up writes a cache only from a run with fewer full
// collections than that (src/cli/startup.ts).
static std::atomic<uint32_t> major_gcs{0};
static v8::Isolate* counted = nullptr;

static void OnMajorGc(v8::Isolate*, v8::GCType, v8::GCCallbackFlags, void*) { major_gcs.fetch_add(1, std::memory_order_relaxed); }

static Napi::Value MajorGcCount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  if (counted == nullptr) {
    counted = isolate;
    isolate->AddGCEpilogueCallback(OnMajorGc, nullptr, v8::kGCTypeMarkSweepCompact);
  } else if (counted != isolate) {
    throw Napi::Error::New(env, "majorGcCount: counting in another isolate (call it from one thread only)");
  }
  return Napi::Number::New(env, major_gcs.load(std::memory_order_relaxed));
}

void InitAllocator(Napi::Env env, Napi::Object exports) {
  exports.Set("tuneAllocator", Napi::Function::New(env, TuneAllocator, "tuneAllocator"));
  exports.Set("minorGcTask", Napi::Function::New(env, MinorGcTask, "minorGcTask"));
  exports.Set("semiSpaceGrowth", Napi::Function::New(env, SemiSpaceGrowth, "semiSpaceGrowth"));
  exports.Set("majorGcCount", Napi::Function::New(env, MajorGcCount, "majorGcCount"));
  exports.Set("hugeArrayBuffer", Napi::Function::New(env, HugeArrayBuffer, "hugeArrayBuffer"));
}

}  // namespace dmthin
