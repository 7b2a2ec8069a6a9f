// flock(2) for JS: an advisory lock tied to an open file description, so the
// kernel drops it when the last descriptor closes, including when the process
// is killed (SIGKILL). Node's fs has no flock.
#pragma once

#include <napi.h>

namespace dmthin {

void InitFileLock(Napi::Env env, Napi::Object exports);

}  // namespace dmthin
