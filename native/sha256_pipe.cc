#include "sha256_pipe.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <set>

#include "promise_worker.h"

namespace dmthin {
namespace {

constexpr size_t kDefaultRing = 16 << 20;
constexpr size_t kMinRing = 64 << 10;
constexpr size_t kMaxRing = 256 << 20;
// Hashed per turn of the thread: small enough that a waiting producer gets
// room back often, large enough that the lock costs nothing.
constexpr size_t kSlice = 256 << 10;

class ReadyWorker : public PromiseWorker<Sha256Pipe> {
 public:
  ReadyWorker(Napi::Env env, Sha256Pipe* owner, uint64_t bytes) : PromiseWorker(env, owner, "dmthin:sha256-ready"), bytes_(bytes) {}
  void Execute() override { owner_->WaitQueuedAtMost(bytes_); }

 private:
  uint64_t bytes_;
};

// Live pipes, for the exit handler. Never freed: a static destructor could
// run before the handler that walks it.
std::mutex& LiveMu() {
  static auto* m = new std::mutex;
  return *m;
}
std::set<Sha256Pipe*>& Live() {
  static auto* s = new std::set<Sha256Pipe*>;
  return *s;
}

// process.exit() ends the process without tearing the environment down (no
// cleanup hooks, no finalizers), and then OpenSSL's own exit handler frees
// its state: a thread still inside EVP_DigestUpdate would crash. Registered
// after OpenSSL's (the addon loads later), so it runs first.
void AbandonAllAtExit() {
  std::lock_guard<std::mutex> l(LiveMu());
  for (Sha256Pipe* p : Live()) p->Abandon();
}

}  // namespace

void Sha256Pipe::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DefineClass(env, "Sha256Pipe",
                                    {InstanceMethod("update", &Sha256Pipe::Update),
                                     InstanceMethod("updateHeld", &Sha256Pipe::UpdateHeld),
                                     InstanceMethod("queued", &Sha256Pipe::Queued),
                                     InstanceMethod("ready", &Sha256Pipe::Ready),
                                     InstanceMethod("digest", &Sha256Pipe::Digest),
                                     InstanceMethod("capacity", &Sha256Pipe::Capacity),
                                     InstanceMethod("abort", &Sha256Pipe::Abort)});
  exports.Set("Sha256Pipe", ctor);
  static std::once_flag once;
  std::call_once(once, [] { std::atexit(AbandonAllAtExit); });
}

// Runs when the environment is torn down (the process ends normally, or a
// worker thread's environment goes), before Node-API finalizes what remains:
// the buffers held for hashing are freed there in any order, so the thread
// must have stopped reading them first. Hooks run last-registered first and
// Node-API's own teardown hook was registered when the addon loaded.
void Sha256Pipe::EnvCleanup(void* arg) {
  auto* self = static_cast<Sha256Pipe*>(arg);
  self->hooked_ = false;
  self->Abandon();
  for (auto& r : self->refs_) r.Reset();
  self->refs_.clear();
}

Sha256Pipe::Sha256Pipe(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Sha256Pipe>(info) {
  Napi::Env env = info.Env();
  size_t cap = kDefaultRing;
  if (info.Length() > 0 && info[0].IsNumber()) {
    double c = info[0].As<Napi::Number>().DoubleValue();
    if (!(c >= kMinRing && c <= kMaxRing)) throw Napi::RangeError::New(env, "ring size must be 64 KiB .. 256 MiB");
    cap = static_cast<size_t>(c);
  }
  ctx_ = EVP_MD_CTX_new();
  if (!ctx_ || EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1) {
    if (ctx_) EVP_MD_CTX_free(ctx_);
    ctx_ = nullptr;
    throw Napi::Error::New(env, "SHA-256 is not available from Node's OpenSSL");
  }
  ring_ = static_cast<uint8_t*>(std::malloc(cap));
  if (!ring_) {
    EVP_MD_CTX_free(ctx_);
    ctx_ = nullptr;
    throw Napi::Error::New(env, "out of memory for the SHA-256 ring");
  }
  cap_ = cap;
  // V8 does not see this memory otherwise.
  Napi::MemoryManagement::AdjustExternalMemory(env, static_cast<int64_t>(cap_));
  thread_ = std::thread([this] { Run(); });
  env_ = env;
  if (napi_add_env_cleanup_hook(env, EnvCleanup, this) == napi_ok) hooked_ = true;
  std::lock_guard<std::mutex> l(LiveMu());
  Live().insert(this);
}

Sha256Pipe::~Sha256Pipe() {
  {
    std::lock_guard<std::mutex> l(LiveMu());
    Live().erase(this);
  }
  if (hooked_) napi_remove_env_cleanup_hook(env_, EnvCleanup, this);
  Stop(true);
  for (auto& r : refs_) r.Reset();
  if (ctx_) EVP_MD_CTX_free(ctx_);
  if (ring_) {
    std::free(ring_);
    Napi::MemoryManagement::AdjustExternalMemory(Env(), -static_cast<int64_t>(cap_));
  }
}

void Sha256Pipe::Stop(bool abandon) {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
    if (abandon) abandon_ = true;
  }
  data_cv_.notify_all();
  space_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Sha256Pipe::Abandon() { Stop(true); }

// An external buffer (the addon's aligned send buffers) frees its memory in
// a cleanup hook of its own, and hooks run newest first: ours is registered
// again after the newest buffer held, so it stops the thread before any
// held buffer is freed.
void Sha256Pipe::Rehook(napi_env env) {
  if (hooked_) napi_remove_env_cleanup_hook(env, EnvCleanup, this);
  hooked_ = napi_add_env_cleanup_hook(env, EnvCleanup, this) == napi_ok;
}

void Sha256Pipe::Run() {
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    data_cv_.wait(l, [this] { return stop_ || !segs_.empty(); });
    if (abandon_ || (stop_ && segs_.empty())) break;
    Segment s = segs_.front();
    size_t n = std::min(s.n, kSlice);
    // The front segment is the thread's alone until popped: producers only append.
    l.unlock();
    bool ok = EVP_DigestUpdate(ctx_, s.p, n) == 1;
    l.lock();
    if (!ok) failed_ = true;
    queued_ -= n;
    Segment& f = segs_.front();
    f.p += n;
    f.n -= n;
    if (!f.held) ring_tail_ += n;
    if (f.n == 0) {
      if (f.held) held_done_++;
      segs_.pop_front();
    }
    space_cv_.notify_all();
  }
  space_cv_.notify_all();
}

void Sha256Pipe::WaitQueuedAtMost(uint64_t bytes) {
  std::unique_lock<std::mutex> l(mu_);
  space_cv_.wait(l, [&] { return stop_ || queued_ <= bytes; });
}

// JS thread: drops the references of held buffers the thread is done with.
void Sha256Pipe::ReleaseHashed() {
  uint64_t done;
  {
    std::lock_guard<std::mutex> l(mu_);
    done = held_done_;
  }
  while (held_released_ < done && !refs_.empty()) {
    refs_.front().Reset();
    refs_.pop_front();
    held_released_++;
  }
}

static const uint8_t* BytesOf(const Napi::CallbackInfo& info, const char* usage, size_t* len) {
  if (info.Length() < 1 || !info[0].IsTypedArray()) throw Napi::TypeError::New(info.Env(), usage);
  Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
  *len = ta.ByteLength();
  return static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
}

Napi::Value Sha256Pipe::Update(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t len;
  const uint8_t* src = BytesOf(info, "update(data: Uint8Array)", &len);
  if (finished_) throw Napi::Error::New(env, "the hash is finished (digest taken or aborted)");
  ReleaseHashed();
  std::unique_lock<std::mutex> l(mu_);
  while (len > 0) {
    // Blocks only when the ring is full: callers that await ready() first never wait here.
    space_cv_.wait(l, [this] { return ring_head_ - ring_tail_ < cap_; });
    size_t off = static_cast<size_t>(ring_head_ % cap_);
    size_t n = std::min<size_t>({len, cap_ - static_cast<size_t>(ring_head_ - ring_tail_), cap_ - off});
    ring_head_ += n;  // taken: the thread will not reach it before it is queued below
    l.unlock();
    std::memcpy(ring_ + off, src, n);
    l.lock();
    segs_.push_back({ring_ + off, n, false});
    queued_ += n;
    src += n;
    len -= n;
    data_cv_.notify_one();
  }
  return env.Undefined();
}

Napi::Value Sha256Pipe::UpdateHeld(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t len;
  const uint8_t* src = BytesOf(info, "updateHeld(data: Uint8Array)", &len);
  if (finished_) throw Napi::Error::New(env, "the hash is finished (digest taken or aborted)");
  ReleaseHashed();
  if (len == 0) return env.Undefined();
  // The reference keeps the buffer's memory alive until the thread has hashed it.
  refs_.push_back(Napi::Reference<Napi::Value>::New(info[0], 1));
  Rehook(env);
  {
    std::lock_guard<std::mutex> l(mu_);
    segs_.push_back({src, len, true});
    queued_ += len;
  }
  data_cv_.notify_one();
  return env.Undefined();
}

Napi::Value Sha256Pipe::Queued(const Napi::CallbackInfo& info) {
  ReleaseHashed();
  std::lock_guard<std::mutex> l(mu_);
  return Napi::Number::New(info.Env(), static_cast<double>(queued_));
}

Napi::Value Sha256Pipe::Capacity(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), static_cast<double>(cap_)); }

Napi::Value Sha256Pipe::Ready(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double b = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 0;
  uint64_t bytes = b > 0 ? static_cast<uint64_t>(b) : 0;
  ReleaseHashed();
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stop_ || queued_ <= bytes) {
      auto d = Napi::Promise::Deferred::New(env);
      d.Resolve(env.Undefined());
      return d.Promise();
    }
  }
  auto* w = new ReadyWorker(env, this, bytes);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// abort(): the stream will not be finished (an error ends it): stop hashing
// now and let go of the held buffers and the ring, without waiting for the
// garbage collector to find this object.
Napi::Value Sha256Pipe::Abort(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  finished_ = true;
  Abandon();
  for (auto& r : refs_) r.Reset();
  refs_.clear();
  if (ring_) {
    std::free(ring_);
    ring_ = nullptr;
    Napi::MemoryManagement::AdjustExternalMemory(env, -static_cast<int64_t>(cap_));
  }
  return env.Undefined();
}

Napi::Value Sha256Pipe::Digest(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (finished_) throw Napi::Error::New(env, "the hash is finished (digest taken or aborted)");
  finished_ = true;
  Stop(false);  // the thread hashes what is queued, then ends
  ReleaseHashed();
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (failed_ || EVP_DigestFinal_ex(ctx_, md, &n) != 1 || n != 32) throw Napi::Error::New(env, "SHA-256 failed in Node's OpenSSL");
  std::free(ring_);
  ring_ = nullptr;
  Napi::MemoryManagement::AdjustExternalMemory(env, -static_cast<int64_t>(cap_));
  return Napi::Buffer<uint8_t>::Copy(env, md, 32);
}

}  // namespace dmthin
