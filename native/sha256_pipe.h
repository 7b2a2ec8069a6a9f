// Sha256Pipe: a SHA-256 computed on a thread of its own. update() copies the
// bytes into a ring and returns; updateHeld() keeps a reference to the buffer
// instead (no copy: the caller must not change it until hashed). The thread
// hashes everything in order. A
// stream's digest covers every byte of it (about 1 s of CPU per GiB), so
// taking it off the JS thread lets reading, CRC-32C and writing run beside it
// on the other core.
#pragma once

#include <napi.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>

typedef struct evp_md_ctx_st EVP_MD_CTX;

namespace dmthin {

class Sha256Pipe : public Napi::ObjectWrap<Sha256Pipe> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  explicit Sha256Pipe(const Napi::CallbackInfo& info);
  ~Sha256Pipe() override;

  // Blocks (worker thread) until at most `bytes` are waiting to be hashed.
  void WaitQueuedAtMost(uint64_t bytes);
  // Stops the thread without hashing the rest and joins it: after this no
  // thread reads a held buffer or the ring. JS thread (or exit), idempotent.
  void Abandon();

 private:
  Napi::Value Update(const Napi::CallbackInfo& info);
  Napi::Value UpdateHeld(const Napi::CallbackInfo& info);
  void ReleaseHashed();
  Napi::Value Queued(const Napi::CallbackInfo& info);
  Napi::Value Ready(const Napi::CallbackInfo& info);
  Napi::Value Digest(const Napi::CallbackInfo& info);
  Napi::Value Capacity(const Napi::CallbackInfo& info);
  Napi::Value Abort(const Napi::CallbackInfo& info);
  static void EnvCleanup(void* arg);
  void Rehook(napi_env env);

  void Run();
  void Stop(bool abandon);

  std::mutex mu_;
  std::condition_variable data_cv_;   // the thread waits for bytes
  std::condition_variable space_cv_;  // producers and Ready() wait for room
  struct Segment {
    const uint8_t* p;
    size_t n;
    bool held;  // a referenced JS buffer, not ring space
  };
  uint8_t* ring_ = nullptr;
  size_t cap_ = 0;
  std::deque<Segment> segs_;  // in order; the thread hashes the front
  uint64_t queued_ = 0;       // bytes in segs_
  uint64_t ring_head_ = 0;    // ring bytes taken, ever
  uint64_t ring_tail_ = 0;    // ring bytes given back, ever
  uint64_t held_done_ = 0;    // held segments hashed, ever
  // JS thread only: references to held buffers, oldest first, and how many were released.
  std::deque<Napi::Reference<Napi::Value>> refs_;
  uint64_t held_released_ = 0;
  bool stop_ = false;
  bool abandon_ = false;
  bool failed_ = false;
  bool finished_ = false;
  bool hooked_ = false;  // EnvCleanup registered for this pipe
  EVP_MD_CTX* ctx_ = nullptr;
  napi_env env_ = nullptr;
  std::thread thread_;
};

}  // namespace dmthin
