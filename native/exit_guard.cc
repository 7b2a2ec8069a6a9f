#include "exit_guard.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace dmthin {

// armExitGuard(status, graceMs): once the CLI has finished (its output
// written, its status known) and handed the process back to Node to end, a
// detached thread waits graceMs and then ends the process with `status`
// through _exit(2), should it still be there.
//
// Why: Node 20 can deadlock at that point (nodejs/node#54918). The main
// thread waits in NodePlatform::DrainTasks for the V8 worker tasks to finish,
// while one of them (a concurrent compile job) waits for the main thread to
// collect garbage for an allocation it needs. Nothing moves again: the process
// sleeps forever with its work done. A normal exit takes milliseconds and
// never meets the guard, which dies with the process.
//
// Only the first call arms the guard; later calls return false.
static std::atomic<bool> armed{false};

static Napi::Value ArmExitGuard(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
    throw Napi::TypeError::New(env, "armExitGuard(status: number, graceMs: number)");
  }
  int status = info[0].As<Napi::Number>().Int32Value() & 0xff;
  double grace = info[1].As<Napi::Number>().DoubleValue();
  if (!(grace >= 0 && grace <= 3600e3)) throw Napi::RangeError::New(env, "graceMs must be 0..3600000");
  if (armed.exchange(true)) return Napi::Boolean::New(env, false);
  auto ms = std::chrono::milliseconds(static_cast<long long>(grace));
  std::thread([status, ms] {
    std::this_thread::sleep_for(ms);
    _exit(status);
  }).detach();
  return Napi::Boolean::New(env, true);
}

// exitNow(status): ends the process at once with _exit(2). The CLI calls it
// once its command is over (output written, cleanups and 'exit' listeners
// run): Node's own teardown after that frees the heap piece by piece (about
// 15 ms after a 4M-mapping walk, a few ms after a tiny one) and is where the
// deadlock above happens. It does not return.
static Napi::Value ExitNow(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "exitNow(status: number)");
  _exit(info[0].As<Napi::Number>().Int32Value() & 0xff);
}

void InitExitGuard(Napi::Env env, Napi::Object exports) {
  exports.Set("armExitGuard", Napi::Function::New(env, ArmExitGuard, "armExitGuard"));
  exports.Set("exitNow", Napi::Function::New(env, ExitNow, "exitNow"));
}

}  // namespace dmthin
