// The CLI's malloc settings: see allocator.cc.
#pragma once

#include <napi.h>

namespace dmthin {

void InitAllocator(Napi::Env env, Napi::Object exports);

}  // namespace dmthin
