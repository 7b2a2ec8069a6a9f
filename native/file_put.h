// putFileDurable: the durable write of one small file as a single task on a
// libuv worker thread, for the local backup repository (src/repo/
// local-backend.ts): create a temporary name, write, fsync, close, link (or
// rename) it to its name, fsync the directory. One hop instead of eleven
// asynchronous fs calls, each a trip through the thread pool. No policy:
// the caller names every path.
#pragma once

#include <napi.h>

namespace dmthin {

void InitFilePut(Napi::Env env, Napi::Object exports);

}  // namespace dmthin
