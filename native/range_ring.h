// RangeRing: a RangeReader's reads through an io_uring, submitted from the JS
// thread and completed on the event loop (the ring's descriptor polled by
// libuv), with no thread of this process involved. Why: libuv starts its
// four worker threads at the first queued task, and a short command whose
// one thread-pool task was its first data read (a tiny send) paid ~2.5 ms
// of start-up for them in the bench VM. Where the kernel offers no ring, or
// refuses the operation, the RangeReader reads through the thread pool.
#pragma once

#include <napi.h>
#include <uv.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <vector>

#include "errors.h"
#include "uring.h"

namespace dmthin {

class RangeRing {
 public:
  struct Piece {
    uint64_t dst, src, len;
  };
  // JS thread, inside a callback scope: the read's outcome. `unsupported`:
  // the kernel refused the ring's submissions before any byte was read, or
  // the ring cannot poll: read it another way (the RangeReader then closes
  // the ring and uses the thread pool).
  using Done = std::function<void(const SysFailure& failure, bool unsupported)>;

  // A ring for `env`'s loop, or nullptr where there is none to be had (no
  // io_uring, forbidden, or without IORING_OP_READ).
  // `*self` is cleared when the ring goes away on its own (the
  // environment's teardown).
  static RangeRing* Create(Napi::Env env, RangeRing** self);

  // Reads `pieces` of `fd` into `base` (its memory must stay put until
  // `done` has run). Several reads may be in flight.
  void Read(int fd, uint8_t* base, std::vector<Piece> pieces, const std::string& path, Done done);
  bool Idle() const { return reads_.empty(); }
  // Closes the ring once no read is in flight (freed when libuv has closed its handle).
  void Close();
  // `self` (Create's) is not to be cleared any more: its holder is gone.
  void Detach();

 private:
  struct Read_ {
    int fd = -1;
    uint8_t* base = nullptr;
    std::string path;
    Done done;
    std::deque<Piece> queued;
    int inflight = 0;
    bool submitted_any = false;
    SysFailure failure;
    bool unsupported = false;
  };
  struct Slot {
    Read_* read = nullptr;
    Piece piece{};
    uint64_t done = 0;
  };

  RangeRing(Napi::Env env, RangeRing** self) : env_(env), self_(self) {}
  ~RangeRing();
  bool Setup();
  void Pump();
  void Submit(unsigned slot);
  void TakeBackUnsubmitted(int err, bool unsupported);
  unsigned InKernel() const;
  unsigned Reap();
  void Settle();
  void Fail(Read_* r, int err, uint64_t offset, bool unsupported = false, bool short_read = false);
  void StartPolling();
  void StopPolling();
  void WaitAllSync();
  void CloseHandle();
  static void OnPoll(uv_poll_t* h, int status, int events);
  static void OnClosed(uv_handle_t* h);
  static void OnTeardown(napi_async_cleanup_hook_handle handle, void* arg);

  static constexpr unsigned kEntries = 16;
  static constexpr unsigned kDepth = 8;  // reads in flight: 8 MiB of 1 MiB pieces

  Napi::Env env_;
  RangeRing** self_;
  UringMap ring_;
  uv_poll_t poll_{};
  bool polling_ = false;
  bool closing_ = false;
  bool tearing_down_ = false;
  bool close_when_idle_ = false;
  bool any_completed_ = false;  // a read has returned bytes (a refusal after that is an error, not "unsupported")
  bool poisoned_ = false;
  napi_async_cleanup_hook_handle hook_ = nullptr;
  napi_async_context context_ = nullptr;
  std::vector<Slot> slots_ = std::vector<Slot>(kDepth);
  std::vector<unsigned> free_;
  std::deque<unsigned> published_;  // slots whose entries the kernel has not taken yet, in order
  std::vector<Read_*> reads_;
};

}  // namespace dmthin
