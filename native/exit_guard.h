// A last resort for the CLI's exit: see exit_guard.cc.
#pragma once

#include <napi.h>

namespace dmthin {

void InitExitGuard(Napi::Env env, Napi::Object exports);

}  // namespace dmthin
