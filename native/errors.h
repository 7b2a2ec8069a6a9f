// Node-shaped errors for the native layer: every failure that reaches JS is an
// Error with `code` (e.g. "EBUSY"), negative `errno`, `syscall` and, where one
// exists, `path`. The TypeScript error module re-types them; this file only
// makes sure errno context is never lost on the way.
#pragma once

#include <napi.h>
#include <string>

namespace dmthin {

// A failure captured on a worker thread, turned into a JS error later.
struct SysFailure {
  int err = 0;               // positive errno, 0 = no failure
  std::string syscall;       // "open", "pread", "ioctl"...
  std::string path;          // file or device, may be empty
  std::string detail;        // extra human text, may be empty
  double offset = -1;        // byte offset for IO failures, -1 = none

  bool failed() const { return err != 0; }
  void set(int e, const char* sc, const std::string& p = std::string(), const std::string& d = std::string()) {
    err = e;
    syscall = sc;
    path = p;
    detail = d;
  }
};

Napi::Error MakeErrnoError(Napi::Env env, const SysFailure& f);
Napi::Error MakeErrnoError(Napi::Env env, int err, const char* syscall, const std::string& path = std::string());
const char* ErrnoName(int err);

}  // namespace dmthin
