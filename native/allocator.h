// The process's memory: the CLI's malloc settings and the huge-page
// mappings of large buffers (see allocator.cc).
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>

namespace dmthin {

// A transparent huge page: the unit MapHuge aligns and rounds to.
constexpr size_t kHugePageBytes = size_t{2} << 20;

// bytes rounded up to whole huge pages: the length MapHuge maps (and munmap takes).
size_t HugeSpan(size_t bytes);

// An anonymous read-write mapping of HugeSpan(bytes), huge-page aligned,
// MADV_HUGEPAGE asked for; nullptr when out of memory. Freed with
// munmap(p, HugeSpan(bytes)).
uint8_t* MapHuge(size_t bytes);

// Asks for transparent huge pages (MADV_HUGEPAGE) on the whole 2 MiB pages
// inside [p, p + bytes) of memory someone else allocated and owns (V8's
// ArrayBuffers): faulted in a huge page at a time, not 512 pages. Best
// effort; nothing is mapped, moved or freed.
void AdviseHuge(void* p, size_t bytes);

void InitAllocator(Napi::Env env, Napi::Object exports);

}  // namespace dmthin
