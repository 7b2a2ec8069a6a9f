// RangeReader: reads byte ranges of a file or block device (O_DIRECT where
// possible) into a buffer the caller keeps and reuses, several pieces in
// flight. A send reads its batches with it into a few fixed buffers, so its
// memory does not wait for the garbage collector to free spent batches.
#pragma once

#include <napi.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "range_ring.h"

namespace dmthin {

class RangeReader : public Napi::ObjectWrap<RangeReader> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  explicit RangeReader(const Napi::CallbackInfo& info);
  ~RangeReader() override;

  int fd_ = -1;
  std::string path_;
  int inflight_ = 0;
  bool close_pending_ = false;
  void FinishRead();

  // Reads running on worker threads. The environment's teardown waits for
  // them (a read writes into a buffer that the teardown frees) and tells
  // them to stop between pieces.
  std::mutex exec_mu_;
  std::condition_variable exec_cv_;
  int executing_ = 0;
  std::atomic<bool> stopping_{false};
  bool BeginExecute();  // false once stopping
  void EndExecute();

 private:
  Napi::Value Open(const Napi::CallbackInfo& info);
  Napi::Value ReadInto(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  void CloseNow();
  void DropRing();
  Napi::Value ReadThroughPool(Napi::Env env, Napi::Object buf, uint8_t* base, std::vector<RangeRing::Piece> pieces, Napi::Promise::Deferred* adopt);
  static void EnvCleanup(void* arg);
  napi_env env_ = nullptr;
  bool hooked_ = false;
  // The io_uring its reads go through (range_ring.h), made at the first
  // read; none where the kernel offers none or refused its first read, or
  // when made with `ioUring: false` (tests of the thread-pool path).
  RangeRing* ring_ = nullptr;
  bool ring_tried_ = false;  // for this opening (a reopened reader tries again)
  bool ring_off_ = false;    // ioUring: false, or the kernel refused the ring's submissions
};

}  // namespace dmthin
