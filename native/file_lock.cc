#include "file_lock.h"

#include <sys/file.h>

#include <cerrno>

#include "errors.h"

namespace dmthin {

// flockNonBlocking(fd, exclusive) -> boolean: true when the lock was taken,
// false when another open file description holds a conflicting one
// (EWOULDBLOCK). Never waits, so it can run on the JS thread.
static Napi::Value FlockNonBlocking(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsBoolean()) {
    throw Napi::TypeError::New(env, "flockNonBlocking(fd: number, exclusive: boolean)");
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  int op = (info[1].As<Napi::Boolean>().Value() ? LOCK_EX : LOCK_SH) | LOCK_NB;
  int r;
  do {
    r = flock(fd, op);
  } while (r != 0 && errno == EINTR);
  if (r == 0) return Napi::Boolean::New(env, true);
  if (errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
  throw MakeErrnoError(env, errno, "flock");
}

void InitFileLock(Napi::Env env, Napi::Object exports) {
  exports.Set("flockNonBlocking", Napi::Function::New(env, FlockNonBlocking, "flockNonBlocking"));
}

}  // namespace dmthin
