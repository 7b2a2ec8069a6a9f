// A file's bytes mapped read-only into the process, handed to JS without a
// copy: see file_map.cc.
#pragma once

#include <napi.h>

namespace dmthin {

void InitFileMap(Napi::Env env, Napi::Object exports);

}  // namespace dmthin
