// DmPoll: a descriptor on /dev/mapper/control that becomes readable when any
// dm device raises an event after the last arm (DM_DEV_ARM_POLL, Linux 4.13+,
// dm interface 4.37). Readability is awaited with libuv's uv_poll on the JS
// thread's own loop: a pending wait holds no worker thread, and close() ends
// it at once. Which device, which event number, and the re-check after a
// wakeup are policy and live in src/dm/event-wait.ts.
#pragma once

#include <napi.h>
#include <uv.h>

#include <memory>

namespace dmthin {

class DmPoll : public Napi::ObjectWrap<DmPoll> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  explicit DmPoll(const Napi::CallbackInfo& info);
  ~DmPoll() override;

 private:
  struct Handle;  // the uv_poll_t, heap-held: it outlives this object until libuv's close callback
  struct Pending {
    Napi::Promise::Deferred deferred;
    Napi::AsyncContext context;  // so the JS continuation runs as a proper callback (microtasks drained)
  };

  Napi::Value Open(const Napi::CallbackInfo& info);
  Napi::Value Arm(const Napi::CallbackInfo& info);
  Napi::Value Readable(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  static void OnPoll(uv_poll_t* h, int status, int events);
  static void OnEnvCleanup(void* self);
  void Fire(int status);
  // Stops polling and closes the descriptor. With js=false (finalizer, env
  // teardown) no JS is touched: a pending promise is abandoned.
  void Shutdown(bool js, bool teardown = false);

  int fd_ = -1;
  Handle* handle_ = nullptr;
  std::unique_ptr<Pending> pending_;
  bool hook_ = false;
  napi_env env_ = nullptr;
};

}  // namespace dmthin
