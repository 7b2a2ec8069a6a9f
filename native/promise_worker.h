// The async-worker base shared by BlockReader and BlockWriter: work runs on a
// libuv worker thread and settles a promise on the JS thread. The owner (the
// JS object whose descriptor the work uses) is kept alive until then; a
// failure captured in fail_ rejects with a Node-shaped error.
#pragma once

#include <napi.h>

#include "errors.h"

namespace dmthin {

template <class Owner>
class PromiseWorker : public Napi::AsyncWorker {
 public:
  PromiseWorker(Napi::Env env, Owner* owner, const char* name)
      : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)), owner_(owner) {
    owner_->Ref();
  }
  // Settles `deferred` instead of a promise of its own (work handed over by another path).
  PromiseWorker(Napi::Env env, Owner* owner, const char* name, Napi::Promise::Deferred deferred)
      : Napi::AsyncWorker(env, name), deferred_(deferred), owner_(owner) {
    owner_->Ref();
  }
  ~PromiseWorker() override { owner_->Unref(); }

  Napi::Promise Promise() { return deferred_.Promise(); }

  void OnOK() override {
    Napi::Env env = Env();
    Settled();
    if (fail_.failed()) {
      deferred_.Reject(MakeErrnoError(env, fail_).Value());
      return;
    }
    deferred_.Resolve(Result(env));
  }

  void OnError(const Napi::Error& e) override {
    Settled();
    deferred_.Reject(e.Value());
  }

 protected:
  // JS thread, before the promise settles either way: the owner's bookkeeping.
  virtual void Settled() {}
  // JS thread, on success only: the value the promise resolves with.
  virtual Napi::Value Result(Napi::Env env) { return env.Undefined(); }

  Napi::Promise::Deferred deferred_;
  Owner* owner_;
  SysFailure fail_;
};

}  // namespace dmthin
