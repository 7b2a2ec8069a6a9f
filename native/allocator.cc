#include "allocator.h"

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

void InitAllocator(Napi::Env env, Napi::Object exports) {
  exports.Set("tuneAllocator", Napi::Function::New(env, TuneAllocator, "tuneAllocator"));
}

}  // namespace dmthin
