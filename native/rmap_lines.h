// rmap's output lines written into a text buffer: see rmap_lines.cc.
#pragma once

#include <napi.h>

namespace dmthin {

void InitRmapLines(Napi::Env env, Napi::Object exports);

}  // namespace dmthin
