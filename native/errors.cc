#include "errors.h"

#include <uv.h>
#include <cstring>

namespace dmthin {

const char* ErrnoName(int err) {
  // libuv knows the symbolic names of every errno Node itself reports.
  const char* name = uv_err_name(-err);
  if (name == nullptr || std::strncmp(name, "Unknown", 7) == 0) return "EUNKNOWN";
  return name;
}

Napi::Error MakeErrnoError(Napi::Env env, const SysFailure& f) {
  std::string msg = std::string(ErrnoName(f.err)) + ": " + std::strerror(f.err) + ", " + f.syscall;
  if (!f.path.empty()) msg += " '" + f.path + "'";
  if (!f.detail.empty()) msg += " (" + f.detail + ")";
  Napi::Error e = Napi::Error::New(env, msg);
  Napi::Object o = e.Value();
  o.Set("code", Napi::String::New(env, ErrnoName(f.err)));
  o.Set("errno", Napi::Number::New(env, -f.err));
  o.Set("syscall", Napi::String::New(env, f.syscall));
  if (!f.path.empty()) o.Set("path", Napi::String::New(env, f.path));
  if (f.offset >= 0) o.Set("offset", Napi::Number::New(env, f.offset));
  return e;
}

Napi::Error MakeErrnoError(Napi::Env env, int err, const char* syscall, const std::string& path) {
  SysFailure f;
  f.set(err, syscall, path);
  return MakeErrnoError(env, f);
}

}  // namespace dmthin
