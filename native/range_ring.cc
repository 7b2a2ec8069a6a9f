#include "range_ring.h"

#include <cerrno>
#include <ctime>

namespace dmthin {

RangeRing* RangeRing::Create(Napi::Env env, RangeRing** self) {
  if (!UringBuilt()) return nullptr;
  auto* r = new RangeRing(env, self);
  if (!r->Setup()) {
    delete r;
    return nullptr;
  }
  return r;
}

bool RangeRing::Setup() {
  if (!ring_.Setup(kEntries)) return false;
  // IORING_OP_READ needs 5.6: asked of the kernel now, so that a read's
  // EINVAL later is the read's own (an unaligned O_DIRECT buffer), not an
  // unknown operation.
  if (!ring_.SupportsRead()) {
    ring_.TearDown();
    return false;
  }
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env_, &loop) != napi_ok || loop == nullptr || uv_poll_init(loop, &poll_, ring_.fd) != 0) {
    ring_.TearDown();
    return false;
  }
  poll_.data = this;
  // From here on the ring is freed through uv_close (OnClosed).
  napi_value name;
  napi_create_string_utf8(env_, "dmthin:range-ring", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env_, nullptr, name, &context_);
  napi_add_async_cleanup_hook(env_, OnTeardown, this, &hook_);
  for (unsigned i = kDepth; i-- > 0;) free_.push_back(i);
  return true;
}

RangeRing::~RangeRing() {
  if (!poisoned_) ring_.TearDown();
}

void RangeRing::Read(int fd, uint8_t* base, std::vector<Piece> pieces, const std::string& path, Done done) {
  auto* r = new Read_();
  r->fd = fd;
  r->base = base;
  r->path = path;
  r->done = std::move(done);
  r->queued.assign(pieces.begin(), pieces.end());
  reads_.push_back(r);
  // Newest of the environment's cleanup hooks (they run newest first): the
  // teardown waits for this read before a hook of the buffer's frees it.
  if (hook_ != nullptr && napi_remove_async_cleanup_hook(hook_) == napi_ok) {
    hook_ = nullptr;
    napi_add_async_cleanup_hook(env_, OnTeardown, this, &hook_);
  }
  StartPolling();
  if (!polling_) {
    // No completion could be noticed: read another way (the RangeReader's thread pool).
    Fail(r, ENOSYS, r->queued.empty() ? 0 : r->queued.front().src, true);
  }
  Pump();
  Settle();  // a read of nothing, or one the kernel refused at once
}

void RangeRing::Submit(unsigned slot) {
  const Slot& s = slots_[slot];
  ring_.PushRead(s.read->fd, s.read->base + s.piece.dst + s.done, static_cast<uint32_t>(s.piece.len - s.done), s.piece.src + s.done, slot);
  published_.push_back(slot);
}

// Fills free slots from the reads' queues in order, then hands what was
// published to the kernel (io_uring_enter without waiting).
void RangeRing::Pump() {
  for (Read_* r : reads_) {
    while (!free_.empty() && !r->queued.empty() && !r->failure.failed()) {
      const unsigned slot = free_.back();
      free_.pop_back();
      slots_[slot] = Slot{r, r->queued.front(), 0};
      r->queued.pop_front();
      r->inflight++;
      Submit(slot);
    }
  }
  while (!published_.empty()) {
    const long n = ring_.Enter(static_cast<unsigned>(published_.size()), 0);
    if (n == -EINTR) continue;
    if (n > 0) {
      // The kernel takes entries in the order they were published.
      published_.erase(published_.begin(), published_.begin() + n);
      continue;
    }
    // Nothing taken for now (the kernel short of resources, EAGAIN or
    // EBUSY, or 0): tried again when a read in flight completes; with none
    // in flight no completion would come, so the entries fail instead.
    const bool busy = n == 0 || n == -EAGAIN || n == -EBUSY;
    if (busy && InKernel() > 0) break;
    // Refused: the entries it did not take are taken back, and their reads
    // fail (on a ring that never read anything, a refused operation: read another way).
    TakeBackUnsubmitted(n == 0 ? EAGAIN : static_cast<int>(-n), !any_completed_ && (n == -EINVAL || n == -EOPNOTSUPP || n == -ENOSYS || n == -EPERM));
    break;
  }
}

// Reads the kernel has taken and not yet completed.
unsigned RangeRing::InKernel() const { return kDepth - static_cast<unsigned>(free_.size()) - static_cast<unsigned>(published_.size()); }

// Entries published but not taken by the kernel: off the ring again, their
// slots freed, their reads failed with `err` (0: dropped, at teardown).
void RangeRing::TakeBackUnsubmitted(int err, bool unsupported) {
  ring_.Unpublish(static_cast<unsigned>(published_.size()));
  for (unsigned slot : published_) {
    Slot& s = slots_[slot];
    if (err != 0) Fail(s.read, err, s.piece.src + s.done, unsupported);
    s.read->inflight--;
    s = Slot{};
    free_.push_back(slot);
  }
  published_.clear();
}

// The first failure's error; of several pieces failing with it (reads past
// the end of a file), the lowest offset among those tried (a read's pieces
// are tried in order, and none after its first failure: with ranges in
// ascending order, as a send's are, where the file ended).
void RangeRing::Fail(Read_* r, int err, uint64_t offset, bool unsupported, bool short_read) {
  if (r->failure.failed()) {
    if (err == r->failure.err && static_cast<double>(offset) < r->failure.offset) r->failure.offset = static_cast<double>(offset);
    return;
  }
  // The thread-pool path's words for a read that came back empty; a kernel's own EIO (a media error) has none.
  r->failure.set(err, "pread", r->path, short_read ? "short read: range beyond the end of the file or device" : std::string());
  r->failure.offset = static_cast<double>(offset);
  r->unsupported = unsupported;
  r->queued.clear();
}

// Takes the completions: a piece read whole frees its slot, a short one is
// read on from where it stopped, an error fails its read.
unsigned RangeRing::Reap() {
  unsigned head = ring_.CqHead();
  const unsigned tail = ring_.CqTail();
  unsigned n = 0;
  for (; head != tail; head++, n++) {
    const unsigned slot = static_cast<unsigned>(ring_.CqeData(head));
    if (slot >= kDepth || slots_[slot].read == nullptr) continue;
    Slot& s = slots_[slot];
    Read_* r = s.read;
    const int res = ring_.CqeResult(head);
    if (res == -EINTR || res == -EAGAIN) {
      Submit(slot);
      continue;
    }
    if (res > 0) {
      any_completed_ = true;
      s.done += static_cast<uint64_t>(res);
      // Read on even when another piece has failed: a short piece ends where the file does (Fail keeps the lowest offset).
      if (s.done < s.piece.len) {
        Submit(slot);
        continue;
      }
    } else if (res == 0) {
      Fail(r, EIO, s.piece.src + s.done, false, true);
    } else {
      // The operation is known to the kernel (Setup probed it): an error as pread would give it.
      Fail(r, -res, s.piece.src + s.done);
    }
    r->inflight--;
    s = Slot{};
    free_.push_back(slot);
  }
  ring_.ConsumedTo(head);
  return n;
}

// Runs `done` for each read with nothing left in flight and nothing left to
// read (or a failure), in the order they were asked for.
void RangeRing::Settle() {
  std::vector<Read_*> finished;
  for (auto it = reads_.begin(); it != reads_.end();) {
    Read_* r = *it;
    if (r->inflight == 0 && (r->queued.empty() || r->failure.failed())) {
      finished.push_back(r);
      it = reads_.erase(it);
    } else {
      ++it;
    }
  }
  if (reads_.empty()) StopPolling();
  for (Read_* r : finished) {
    try {
      r->done(r->failure, r->unsupported);
    } catch (...) {
      // A settle refused (the environment is going away): nothing to tell anyone.
    }
    delete r;
  }
  if (close_when_idle_ && reads_.empty()) CloseHandle();
}

void RangeRing::StartPolling() {
  if (polling_ || closing_) return;
  if (uv_poll_start(&poll_, UV_READABLE, OnPoll) == 0) polling_ = true;
}

void RangeRing::StopPolling() {
  if (!polling_) return;
  uv_poll_stop(&poll_);
  polling_ = false;
}

void RangeRing::OnPoll(uv_poll_t* h, int status, int events) {
  auto* self = static_cast<RangeRing*>(h->data);
  // status < 0 (an error on the descriptor; not seen with an io_uring's):
  // the completion ring is memory, read all the same.
  self->Reap();
  self->Pump();
  // Settled in a callback scope (their reactions run when it closes, as
  // after a worker's), with plain Node-API calls: a worker being terminated
  // refuses them, and a C++ exception out of a libuv callback would end
  // the process. Then the reads wait for the teardown (OnTeardown).
  napi_env env = self->env_;
  napi_handle_scope hs = nullptr;
  if (napi_open_handle_scope(env, &hs) != napi_ok) return;
  napi_value resource = nullptr;
  napi_callback_scope cs = nullptr;
  if (napi_create_object(env, &resource) == napi_ok && napi_open_callback_scope(env, resource, self->context_, &cs) == napi_ok) {
    self->Settle();
    napi_close_callback_scope(env, cs);
  }
  napi_close_handle_scope(env, hs);
}

void RangeRing::Close() {
  close_when_idle_ = true;
  if (reads_.empty()) CloseHandle();
}

void RangeRing::Detach() { self_ = nullptr; }

void RangeRing::CloseHandle() {
  if (closing_) return;
  closing_ = true;
  StopPolling();
  uv_close(reinterpret_cast<uv_handle_t*>(&poll_), OnClosed);
}

void RangeRing::OnClosed(uv_handle_t* h) {
  auto* self = static_cast<RangeRing*>(h->data);
  if (!self->tearing_down_ && self->context_ != nullptr) napi_async_destroy(self->env_, self->context_);
  if (self->hook_ != nullptr) napi_remove_async_cleanup_hook(self->hook_);
  if (self->self_ != nullptr) *self->self_ = nullptr;
  delete self;
}

// The environment is going away (a worker ends, or the process): the reads
// in flight are waited for here, since each writes into memory the
// teardown frees; their promises are never settled. Then the handle is
// closed, and the hook removed once it is (OnClosed).
void RangeRing::OnTeardown(napi_async_cleanup_hook_handle handle, void* arg) {
  auto* self = static_cast<RangeRing*>(arg);
  self->tearing_down_ = true;
  if (self->closing_) return;  // OnClosed is on its way, and removes the hook
  self->WaitAllSync();
  for (Read_* r : self->reads_) delete r;
  self->reads_.clear();
  self->CloseHandle();
}

void RangeRing::WaitAllSync() {
  TakeBackUnsubmitted(0, false);
  int stuck = 0;
  while (free_.size() < kDepth) {
    const long n = ring_.Enter(0, 1);
    if (n < 0 && n != -EINTR) {
      // Should not happen. If it does: wait a little and try again (up to
      // ~10 s, the teardown waiting meanwhile); then the ring is left mapped
      // and open for good. The reads' buffers are V8's, freed with the
      // isolate whatever the ring does: only this wait protects them.
      if (stuck++ > 10000) {
        poisoned_ = true;
        return;
      }
      struct timespec ts = {0, 1000000};
      ::nanosleep(&ts, nullptr);
    }
    unsigned head = ring_.CqHead();
    const unsigned tail = ring_.CqTail();
    for (; head != tail; head++) {
      const unsigned slot = static_cast<unsigned>(ring_.CqeData(head));
      if (slot < kDepth && slots_[slot].read != nullptr) {
        slots_[slot].read->inflight--;
        slots_[slot] = Slot{};
        free_.push_back(slot);
      }
    }
    ring_.ConsumedTo(head);
  }
}

}  // namespace dmthin
