// std::sort's permutation of a key array, for rmap's order of ties: see std_sort.cc.
#pragma once

#include <napi.h>

namespace dmthin {

void InitStdSort(Napi::Env env, Napi::Object exports);

}  // namespace dmthin
