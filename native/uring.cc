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

bool UringBuilt() { return DMTHIN_IO_URING != 0; }

void UringMap::TearDown() {
  if (sqes != nullptr) ::munmap(sqes, sqes_bytes);
  if (sq_ring != nullptr) ::munmap(sq_ring, sq_ring_bytes);
  if (fd >= 0) ::close(fd);
  sqes = nullptr;
  sq_ring = nullptr;
  fd = -1;
}

bool UringMap::Setup(unsigned entries) {
#if !DMTHIN_IO_URING
  (void)entries;
  return false;
#else
  struct io_uring_params p;
  std::memset(&p, 0, sizeof p);
  const long r = ::syscall(__NR_io_uring_setup, entries, &p);
  if (r < 0) return false;
  fd = static_cast<int>(r);
  // One mapping for both rings needs 5.4; the operation needs 5.6, checked by its first use.
  if (!(p.features & IORING_FEAT_SINGLE_MMAP) || p.sq_entries < entries || p.cq_entries < entries) {
    TearDown();
    return false;
  }
  sq_ring_bytes = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  const size_t cq_bytes = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
  if (cq_bytes > sq_ring_bytes) sq_ring_bytes = cq_bytes;
  void* rings = ::mmap(nullptr, sq_ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
  if (rings == MAP_FAILED) {
    TearDown();
    return false;
  }
  sq_ring = rings;
  sqes_bytes = p.sq_entries * sizeof(struct io_uring_sqe);
  void* e = ::mmap(nullptr, sqes_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
  if (e == MAP_FAILED) {
    TearDown();
    return false;
  }
  sqes = static_cast<io_uring_sqe*>(e);
  sq_tail = At<unsigned>(sq_ring, p.sq_off.tail);
  sq_mask = At<unsigned>(sq_ring, p.sq_off.ring_mask);
  sq_array = At<unsigned>(sq_ring, p.sq_off.array);
  cq_head = At<unsigned>(sq_ring, p.cq_off.head);
  cq_tail = At<unsigned>(sq_ring, p.cq_off.tail);
  cq_mask = At<unsigned>(sq_ring, p.cq_off.ring_mask);
  cqes = At<io_uring_cqe>(sq_ring, p.cq_off.cqes);
  return true;
#endif
}

io_uring_sqe* UringMap::Entry(unsigned ahead) {
#if !DMTHIN_IO_URING
  (void)ahead;
  return nullptr;
#else
  const unsigned idx = (*sq_tail + ahead) & *sq_mask;
  io_uring_sqe* e = &sqes[idx];
  std::memset(e, 0, sizeof *e);
  sq_array[idx] = idx;
  return e;
#endif
}

void UringMap::Publish(unsigned n) {
#if DMTHIN_IO_URING
  StoreRelease(sq_tail, *sq_tail + n);
#else
  (void)n;
#endif
}

void UringMap::Unpublish(unsigned n) {
#if DMTHIN_IO_URING
  StoreRelease(sq_tail, *sq_tail - n);
#else
  (void)n;
#endif
}

unsigned UringMap::CqTail() const {
#if DMTHIN_IO_URING
  return LoadAcquire(cq_tail);
#else
  return 0;
#endif
}

void UringMap::ConsumedTo(unsigned head) {
#if DMTHIN_IO_URING
  StoreRelease(cq_head, head);
#else
  (void)head;
#endif
}

const io_uring_cqe& UringMap::Cqe(unsigned at) const {
#if DMTHIN_IO_URING
  return cqes[at & *cq_mask];
#else
  (void)at;
  return *cqes;  // never reached: Setup() is false in such a build
#endif
}

long UringMap::Enter(unsigned submit, unsigned wait) {
#if DMTHIN_IO_URING
  const long r = ::syscall(__NR_io_uring_enter, fd, submit, wait, wait > 0 ? IORING_ENTER_GETEVENTS : 0, nullptr, 0);
  return r < 0 ? -errno : r;
#else
  (void)submit;
  (void)wait;
  return -ENOSYS;
#endif
}

bool UringMap::SupportsRead() const {
#if DMTHIN_IO_URING
  // The probe and its 256 operation entries, in one zeroed buffer.
  alignas(io_uring_probe) unsigned char buf[sizeof(io_uring_probe) + 256 * sizeof(io_uring_probe_op)] = {};
  auto* probe = reinterpret_cast<io_uring_probe*>(buf);
  if (::syscall(__NR_io_uring_register, fd, IORING_REGISTER_PROBE, probe, 256) < 0) return false;
  return IORING_OP_READ <= probe->last_op && (probe->ops[IORING_OP_READ].flags & IO_URING_OP_SUPPORTED) != 0;
#else
  return false;
#endif
}

void UringMap::PushRead(int file, void* addr, uint32_t len, uint64_t off, uint64_t data) {
#if DMTHIN_IO_URING
  io_uring_sqe* e = Entry(0);
  e->opcode = IORING_OP_READ;
  e->fd = file;
  e->addr = reinterpret_cast<uint64_t>(addr);
  e->len = len;
  e->off = off;
  e->user_data = data;
  Publish(1);
#else
  (void)file;
  (void)addr;
  (void)len;
  (void)off;
  (void)data;
#endif
}

int UringMap::CqeResult(unsigned at) const { return Cqe(at).res; }
uint64_t UringMap::CqeData(unsigned at) const { return Cqe(at).user_data; }

BatchReads::~BatchReads() { TearDown(); }

void BatchReads::TearDown() {
  // Poisoned: the ring's memory and reads stay as they are (see Poisoned).
  if (poisoned_) return;
  ring_.TearDown();
}

bool BatchReads::Setup() { return ring_.Setup(kMaxBatch); }

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
  for (size_t i = 0; i < n; i++) {
    io_uring_sqe* s = ring_.Entry(static_cast<unsigned>(i));
    s->opcode = IORING_OP_READ;
    s->fd = fd;
    s->addr = reinterpret_cast<uint64_t>(out + i * kBlockBytes);
    s->len = kBlockBytes;
    s->off = blocks[i] * kBlockBytes;
    s->rw_flags = wait ? 0 : RWF_NOWAIT;
    s->user_data = i;
  }
  ring_.Publish(static_cast<unsigned>(n));
  // Submitted and waited for together; every completion is reaped before
  // this returns, so no read can land in `out` afterwards.
  size_t submitted = 0;
  size_t reaped = 0;
  int result = 0;
  int busy = 0;
  while (reaped < n) {
    const long r = ::syscall(__NR_io_uring_enter, ring_.fd, static_cast<unsigned>(n - submitted), static_cast<unsigned>(n - reaped), IORING_ENTER_GETEVENTS, nullptr, 0);
    if (r < 0) {
      const int e = errno;
      if (e == EINTR) continue;
      if (submitted == 0 && reaped == 0) {
        // Nothing went in: take the entries back, and let preadv2 do it.
        ring_.Unpublish(static_cast<unsigned>(n));
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
    unsigned head = *ring_.cq_head;
    const unsigned ctail = LoadAcquire(ring_.cq_tail);
    for (; head != ctail; head++) {
      const io_uring_cqe& c = ring_.cqes[head & *ring_.cq_mask];
      reaped++;
      if (c.res == static_cast<int>(kBlockBytes) || result != 0) continue;
      if (c.res == -EINVAL || c.res == -EOPNOTSUPP) *unsupported = true;
      // A short read: the file ends inside the block (EIO), or only part was cached (EAGAIN); a
      // waiting read is short only at the end of the file.
      result = c.res < 0 ? -c.res : c.res == 0 || wait ? EIO : EAGAIN;
    }
    StoreRelease(ring_.cq_head, head);
  }
  if (*unsupported) result = 0;
  return result;
#endif
}

}  // namespace dmthin
