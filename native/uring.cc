// Batches of 4 KiB reads in one system call: an io_uring's submission and
// completion rings, used through the system calls themselves (liburing
// would be a build dependency for these few lines).
//
// Why: a metadata walk reads scattered blocks, one preadv2 each, and on the
// bench VM a system call costs ~2.4 us where the copy of a cached 4 KiB block
// costs ~0.4: the 1,111 leaves of a 70,000-device details tree took ~3 ms as
// preadv2 calls, ~0.6-1.1 ms as io_uring batches of 64 or 16 (measured in
// C on that image). Reads that must wait for the disk (a worker thread's)
// go out together too: the kernel's io-wq threads serve them at once, where
// preadv2 waited for each in turn.
//
// Where the kernel has no io_uring (before 5.6 for IORING_OP_READ), forbids
// it (seccomp, kernel.io_uring_disabled) or refuses the operation, each
// block is one preadv2 as before.
#include "uring.h"

#include <linux/version.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>

// Kernel headers before 5.6 have no IORING_OP_READ (RHEL 8's, Ubuntu 20.04's
// 5.4): the addon is then built with the preadv2 path alone.
#if __has_include(<linux/io_uring.h>) && LINUX_VERSION_CODE >= KERNEL_VERSION(5, 6, 0)
#include <linux/io_uring.h>
#define DMTHIN_IO_URING 1
#else
#define DMTHIN_IO_URING 0
#endif

namespace dmthin {
namespace {

constexpr size_t kBlockBytes = 4096;

int PreadBlocks(int fd, const uint64_t* blocks, size_t n, uint8_t* out, bool wait) {
  for (size_t i = 0; i < n; i++) {
    size_t done = 0;
    while (done < kBlockBytes) {
      struct iovec io = {out + i * kBlockBytes + done, kBlockBytes - done};
      const ssize_t got = ::preadv2(fd, &io, 1, static_cast<off_t>(blocks[i] * kBlockBytes + done), wait ? 0 : RWF_NOWAIT);
      if (got < 0 && errno == EINTR) continue;
      // Without wait: not cached, or RWF_NOWAIT unknown here; either way not a read this can do.
      if (got < 0) return !wait && (errno == EAGAIN || errno == EOPNOTSUPP || errno == EINVAL) ? EAGAIN : errno;
      if (got == 0) return EIO;  // the file ends inside the block
      if (!wait && static_cast<size_t>(got) != kBlockBytes) return EAGAIN;
      done += static_cast<size_t>(got);
    }
  }
  return 0;
}

#if DMTHIN_IO_URING
template <typename T>
T* At(void* base, uint32_t offset) {
  return reinterpret_cast<T*>(static_cast<uint8_t*>(base) + offset);
}

unsigned LoadAcquire(const unsigned* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
void StoreRelease(unsigned* p, unsigned v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

void SleepBriefly() {
  struct timespec ts = {0, 1000000};  // 1 ms
  ::nanosleep(&ts, nullptr);
}
#endif

}  // namespace

BatchReads::~BatchReads() { TearDown(); }

void BatchReads::TearDown() {
  // Poisoned: the ring's memory and reads stay as they are (see Poisoned).
  if (poisoned_) return;
  if (sqes_ != nullptr) ::munmap(sqes_, sqes_bytes_);
  if (cq_ring_ != nullptr && cq_ring_ != sq_ring_) ::munmap(cq_ring_, cq_ring_bytes_);
  if (sq_ring_ != nullptr) ::munmap(sq_ring_, sq_ring_bytes_);
  if (ring_fd_ >= 0) ::close(ring_fd_);
  sqes_ = nullptr;
  cq_ring_ = sq_ring_ = nullptr;
  ring_fd_ = -1;
}

bool BatchReads::Setup() {
#if !DMTHIN_IO_URING
  return false;
#else
  struct io_uring_params p;
  std::memset(&p, 0, sizeof p);
  const long fd = ::syscall(__NR_io_uring_setup, kMaxBatch, &p);
  if (fd < 0) return false;
  ring_fd_ = static_cast<int>(fd);
  // One mapping for both rings needs 5.4; the operation below needs 5.6, checked by its first use.
  if (!(p.features & IORING_FEAT_SINGLE_MMAP) || p.sq_entries < kMaxBatch || p.cq_entries < kMaxBatch) {
    TearDown();
    return false;
  }
  sq_ring_bytes_ = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  cq_ring_bytes_ = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
  if (cq_ring_bytes_ > sq_ring_bytes_) sq_ring_bytes_ = cq_ring_bytes_;
  void* rings = ::mmap(nullptr, sq_ring_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd_, IORING_OFF_SQ_RING);
  if (rings == MAP_FAILED) {
    TearDown();
    return false;
  }
  sq_ring_ = cq_ring_ = rings;
  cq_ring_bytes_ = sq_ring_bytes_;
  sqes_bytes_ = p.sq_entries * sizeof(struct io_uring_sqe);
  void* sqes = ::mmap(nullptr, sqes_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd_, IORING_OFF_SQES);
  if (sqes == MAP_FAILED) {
    TearDown();
    return false;
  }
  sqes_ = static_cast<io_uring_sqe*>(sqes);
  sq_tail_ = At<unsigned>(sq_ring_, p.sq_off.tail);
  sq_mask_ = At<unsigned>(sq_ring_, p.sq_off.ring_mask);
  sq_array_ = At<unsigned>(sq_ring_, p.sq_off.array);
  cq_head_ = At<unsigned>(cq_ring_, p.cq_off.head);
  cq_tail_ = At<unsigned>(cq_ring_, p.cq_off.tail);
  cq_mask_ = At<unsigned>(cq_ring_, p.cq_off.ring_mask);
  cqes_ = At<io_uring_cqe>(cq_ring_, p.cq_off.cqes);
  return true;
#endif
}

int BatchReads::Read(int fd, const uint64_t* blocks, size_t n, uint8_t* out, bool wait) {
  if (n > kMaxBatch) return EINVAL;
  if (poisoned_) return EIO;
  if (state_ == State::kUntried) state_ = Setup() ? State::kRing : State::kNone;
  if (state_ == State::kRing) {
    bool unsupported = false;
    const int r = ReadRing(fd, blocks, n, out, wait, &unsupported);
    if (!unsupported) return r;
    // The kernel has the ring but not the operation (or refuses the call): preadv2 from now on.
    TearDown();
    state_ = State::kNone;
  }
  return PreadBlocks(fd, blocks, n, out, wait);
}

int BatchReads::ReadRing(int fd, const uint64_t* blocks, size_t n, uint8_t* out, bool wait, bool* unsupported) {
#if !DMTHIN_IO_URING
  *unsupported = true;
  return 0;
#else
  if (n == 0) return 0;
  const unsigned tail = *sq_tail_;  // only this thread writes it
  const unsigned mask = *sq_mask_;
  for (size_t i = 0; i < n; i++) {
    const unsigned idx = (tail + static_cast<unsigned>(i)) & mask;
    io_uring_sqe* s = &sqes_[idx];
    std::memset(s, 0, sizeof *s);
    s->opcode = IORING_OP_READ;
    s->fd = fd;
    s->addr = reinterpret_cast<uint64_t>(out + i * kBlockBytes);
    s->len = kBlockBytes;
    s->off = blocks[i] * kBlockBytes;
    s->rw_flags = wait ? 0 : RWF_NOWAIT;
    s->user_data = i;
    sq_array_[idx] = idx;
  }
  StoreRelease(sq_tail_, tail + static_cast<unsigned>(n));
  // Submitted and waited for together; every completion is reaped before
  // this returns, so no read can land in `out` afterwards.
  size_t submitted = 0;
  size_t reaped = 0;
  int result = 0;
  int busy = 0;
  while (reaped < n) {
    const long r = ::syscall(__NR_io_uring_enter, ring_fd_, static_cast<unsigned>(n - submitted), static_cast<unsigned>(n - reaped), IORING_ENTER_GETEVENTS, nullptr, 0);
    if (r < 0) {
      const int e = errno;
      if (e == EINTR) continue;
      if (submitted == 0 && reaped == 0) {
        // Nothing went in: take the entries back, and let preadv2 do it.
        StoreRelease(sq_tail_, tail);
        *unsupported = true;
        return 0;
      }
      // Reads in flight write into `out` until reaped: wait on through a
      // shortage (up to ~10 s). Anything else, or longer: the buffer and the
      // ring are given up for good rather than freed under a read.
      if ((e == EAGAIN || e == EBUSY) && busy++ < 10000) {
        SleepBriefly();
        continue;
      }
      poisoned_ = true;
      return e;
    }
    submitted += static_cast<size_t>(r);
    unsigned head = *cq_head_;
    const unsigned ctail = LoadAcquire(cq_tail_);
    for (; head != ctail; head++) {
      const io_uring_cqe& c = cqes_[head & *cq_mask_];
      reaped++;
      if (c.res == static_cast<int>(kBlockBytes) || result != 0) continue;
      if (c.res == -EINVAL || c.res == -EOPNOTSUPP) *unsupported = true;
      // A short read: the file ends inside the block (EIO), or only part was cached (EAGAIN); a
      // waiting read is short only at the end of the file.
      result = c.res < 0 ? -c.res : c.res == 0 || wait ? EIO : EAGAIN;
    }
    StoreRelease(cq_head_, head);
  }
  if (*unsupported) result = 0;
  return result;
#endif
}

}  // namespace dmthin
