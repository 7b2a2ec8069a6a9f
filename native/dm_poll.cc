#include "dm_poll.h"

#include <fcntl.h>
#include <linux/dm-ioctl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "errors.h"

#ifndef DM_DEV_ARM_POLL
#define DM_DEV_ARM_POLL _IOWR(DM_IOCTL, 16, struct dm_ioctl)
#endif

namespace dmthin {

struct DmPoll::Handle {
  uv_poll_t poll;
  DmPoll* owner;  // null once the owner has let go (close pending in libuv)
};

void DmPoll::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DefineClass(env, "DmPoll",
                                    {InstanceMethod("open", &DmPoll::Open),
                                     InstanceMethod("arm", &DmPoll::Arm),
                                     InstanceMethod("readable", &DmPoll::Readable),
                                     InstanceMethod("close", &DmPoll::Close)});
  exports.Set("DmPoll", ctor);
}

DmPoll::DmPoll(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DmPoll>(info), env_(info.Env()) {}

DmPoll::~DmPoll() { Shutdown(false); }

// open(controlPath): synchronous, one open(2) of a character device.
Napi::Value DmPoll::Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "open(controlPath: string)");
  if (fd_ >= 0 || handle_) throw Napi::Error::New(env, "DmPoll is already open");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  int fd;
  do fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK); while (fd < 0 && errno == EINTR);
  if (fd < 0) throw MakeErrnoError(env, errno, "open", path);
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    ::close(fd);
    throw Napi::Error::New(env, "no libuv loop for this environment");
  }
  auto* h = new Handle();
  h->owner = this;
  h->poll.data = h;
  int r = uv_poll_init(loop, &h->poll, fd);
  if (r < 0) {
    delete h;  // never registered with the loop: no uv_close needed
    ::close(fd);
    throw MakeErrnoError(env, -r, "uv_poll_init", path);
  }
  fd_ = fd;
  handle_ = h;
  // A worker thread's teardown must close the handle while its loop still runs.
  if (napi_add_env_cleanup_hook(env, OnEnvCleanup, this) == napi_ok) hook_ = true;
  return env.Undefined();
}

// arm(): DM_DEV_ARM_POLL on this descriptor. Synchronous on purpose: the
// kernel only records the global event counter (no waiting, no I/O).
Napi::Value DmPoll::Arm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (fd_ < 0) throw MakeErrnoError(env, EBADF, "ioctl");
  struct dm_ioctl io;
  std::memset(&io, 0, sizeof(io));
  io.version[0] = 4;
  io.version[1] = 37;  // the interface version that added DM_DEV_ARM_POLL
  io.version[2] = 0;
  io.data_size = sizeof(io);
  io.data_start = sizeof(io);
  int r;
  do r = ::ioctl(fd_, DM_DEV_ARM_POLL, &io); while (r < 0 && errno == EINTR);
  if (r < 0) {
    Napi::Error e = MakeErrnoError(env, errno, "ioctl");
    e.Value().Set("ioctl", Napi::String::New(env, "DM_DEV_ARM_POLL"));
    throw e;
  }
  return env.Undefined();
}

// readable() -> Promise<boolean>: true once the descriptor polls readable,
// false if close() came first. One wait at a time.
Napi::Value DmPoll::Readable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (pending_) throw Napi::Error::New(env, "DmPoll: a wait is already pending");
  Napi::Promise::Deferred d = Napi::Promise::Deferred::New(env);
  if (fd_ < 0) {
    d.Resolve(Napi::Boolean::New(env, false));
    return d.Promise();
  }
  int r = uv_poll_start(&handle_->poll, UV_READABLE, OnPoll);
  if (r < 0) throw MakeErrnoError(env, -r, "uv_poll_start");
  pending_.reset(new Pending{d, Napi::AsyncContext(env, "dmthin:dm-poll")});
  Ref();  // not collected while the loop may call back into it
  return d.Promise();
}

Napi::Value DmPoll::Close(const Napi::CallbackInfo& info) {
  Shutdown(true);
  return info.Env().Undefined();
}

void DmPoll::OnPoll(uv_poll_t* p, int status, int /*events*/) {
  auto* h = static_cast<Handle*>(p->data);
  if (h->owner) h->owner->Fire(status);
}

void DmPoll::OnEnvCleanup(void* self) {
  auto* me = static_cast<DmPoll*>(self);
  me->hook_ = false;  // the hook is being run: do not remove it
  me->Shutdown(false, true);
}

// libuv callback on the JS thread: settle the pending promise.
void DmPoll::Fire(int status) {
  uv_poll_stop(&handle_->poll);
  std::unique_ptr<Pending> p = std::move(pending_);
  if (!p) return;
  Napi::Env env(env_);
  {
    Napi::HandleScope scope(env);
    Napi::CallbackScope cb(env, p->context);
    if (status < 0)
      p->deferred.Reject(MakeErrnoError(env, -status, "poll").Value());
    else
      p->deferred.Resolve(Napi::Boolean::New(env, true));
  }
  Unref();
}

void DmPoll::Shutdown(bool js, bool teardown) {
  if (hook_) {
    napi_remove_env_cleanup_hook(env_, OnEnvCleanup, this);
    hook_ = false;
  }
  if (handle_) {
    uv_poll_stop(&handle_->poll);
    handle_->owner = nullptr;
    // At environment teardown (a worker thread ending) this library may be
    // unloaded before the loop runs close callbacks: leave none that points
    // into it, and leave the small Handle to the loop (never freed).
    if (teardown)
      uv_close(reinterpret_cast<uv_handle_t*>(&handle_->poll), nullptr);
    else
      uv_close(reinterpret_cast<uv_handle_t*>(&handle_->poll), [](uv_handle_t* h) { delete static_cast<Handle*>(h->data); });
    handle_ = nullptr;
  }
  // After uv_close the loop no longer watches the descriptor: safe to close.
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  std::unique_ptr<Pending> p = std::move(pending_);
  if (!p) return;
  if (!js) {
    (void)p.release();  // no JS may run here (finalizer or teardown): abandon the promise
    return;
  }
  p->deferred.Resolve(Napi::Boolean::New(Napi::Env(env_), false));
  Unref();
}

}  // namespace dmthin
