// DigestPipe: a stream's digest computed on threads of its own. update()
// copies the bytes into a ring and returns; updateHeld() keeps a reference to
// the buffer instead (no copy: the caller must not change it until hashed).
// A stream's digest covers every byte of it (about 0.7 s of CPU per GiB
// here), so taking it off the JS thread lets reading, CRC-32C and writing run
// beside it. A stream's first 1 MiB is hashed on the calling thread as it
// comes: the ring and the threads are made only for a longer one.
//
// The digests of docs/stream-format.md §6: with segmentBytes 0, one SHA-256
// of all bytes, on one thread (format version 1: sequential by nature); with
// segmentBytes S, the hash of each S-byte segment, segment k hashed on lane
// k mod L (up to four threads), folded in order into an outer hash of the
// same function (as many cores as there are lanes): SHA-256 for format
// version 2, BLAKE3 for versions 3 and 4 (~5x less CPU per byte than SHA-256
// with the CPU's SHA extensions, by its SIMD code: vendored in
// third_party/blake3).
#pragma once

#include <napi.h>

#include <array>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <map>
#include <thread>
#include <vector>

#include "third_party/blake3/blake3.h"

typedef struct evp_md_ctx_st EVP_MD_CTX;

namespace dmthin {

// One running hash of a pipe's function, 32 bytes out.
class RunningHash {
 public:
  enum class Algo { kSha256, kBlake3 };
  RunningHash() = default;
  RunningHash(const RunningHash&) = delete;
  RunningHash& operator=(const RunningHash&) = delete;
  ~RunningHash();
  bool Init(Algo algo);  // starts (again); false: OpenSSL has no SHA-256 or no memory
  bool Update(const void* p, size_t n);
  bool Final(uint8_t out[32]);

 private:
  Algo algo_ = Algo::kSha256;
  EVP_MD_CTX* evp_ = nullptr;
  blake3_hasher b3_;
};

class DigestPipe : public Napi::ObjectWrap<DigestPipe> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  // new DigestPipe(ringBytes?, segmentBytes?, algorithm?): segmentBytes 0 or
  // absent is version 1's digest; algorithm 'sha256' (default) or 'blake3'
  // (segmented only).
  explicit DigestPipe(const Napi::CallbackInfo& info);
  ~DigestPipe() override;

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
  Napi::Value SegmentBytes(const Napi::CallbackInfo& info);
  Napi::Value Algorithm(const Napi::CallbackInfo& info);
  Napi::Value Abort(const Napi::CallbackInfo& info);
  static void EnvCleanup(void* arg);
  void Rehook(napi_env env);

  // One hashing thread and the pieces it owns (ids into pieces_, in order).
  struct Lane {
    std::thread thread;
    std::deque<uint64_t> q;
    std::condition_variable cv;  // the lane waits for pieces
    RunningHash h;
    int64_t seg = -1;  // the segment h is hashing, -1 between segments
  };
  // A run of stream bytes within one segment, at most kSlice long.
  struct Piece {
    const uint8_t* p;
    size_t n;
    uint64_t seg;
    bool held;       // a referenced JS buffer, not ring space
    bool held_last;  // the last piece of its held buffer
    bool seg_end;    // the segment ends with it (version 2)
    bool done;
  };

  void Run(Lane* lane);
  void Stop(bool abandon);
  void Start(Napi::Env env);                            // the ring and the threads
  void HashInline(const uint8_t* p, size_t n);          // before Start()
  bool HashedBeforeStart(Napi::Env env, const uint8_t* p, size_t n);
  void FreeRing(Napi::Env env);
  void Enqueue(const uint8_t* p, size_t n, bool held);  // mu_ held
  void FoldLocked();                                      // mu_ held
  bool FinishLanes(uint8_t out[32]);                      // threads joined

  std::mutex mu_;
  std::condition_variable space_cv_;  // producers and Ready() wait for room
  uint8_t* ring_ = nullptr;
  size_t cap_ = 0;
  uint64_t seg_bytes_ = 0;   // 0: one plain SHA-256 (version 1)
  std::deque<Piece> pieces_;  // in stream order; popped from the front once hashed
  uint64_t popped_ = 0;       // pieces popped, ever: the id of pieces_.front()
  std::vector<Lane> lanes_;
  uint64_t fed_ = 0;          // bytes queued, ever
  uint64_t queued_ = 0;       // bytes after the longest hashed prefix
  uint64_t ring_head_ = 0;    // ring bytes taken, ever
  uint64_t ring_tail_ = 0;    // ring bytes given back, ever
  uint64_t held_done_ = 0;    // held buffers hashed, ever
  // Version 2: segment digests finished out of order, until their turn in the outer hash.
  std::map<uint64_t, std::array<uint8_t, 32>> seg_done_;
  uint64_t next_fold_ = 0;
  RunningHash::Algo algo_ = RunningHash::Algo::kSha256;
  RunningHash outer_;
  // JS thread only: references to held buffers, oldest first, and how many were released.
  std::deque<Napi::Reference<Napi::Value>> refs_;
  uint64_t held_released_ = 0;
  bool stop_ = false;
  bool abandon_ = false;
  bool failed_ = false;
  bool finished_ = false;
  bool started_ = false;  // Start() ran: the ring and the lanes' threads exist
  bool hooked_ = false;  // EnvCleanup registered for this pipe
  napi_env env_ = nullptr;
};

}  // namespace dmthin
