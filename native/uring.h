// io_uring without liburing: UringMap (a ring mapped into this process) and
// BatchReads, batches of 4 KiB reads in one system call (see uring.cc).
#pragma once

#include <cstddef>
#include <cstdint>

struct io_uring_sqe;
struct io_uring_cqe;

namespace dmthin {

// An io_uring and its two rings mapped into this process (the system calls
// themselves: liburing would be a build dependency for these few lines).
// Setup is false where the kernel has no io_uring, forbids it (seccomp,
// kernel.io_uring_disabled, RLIMIT_MEMLOCK before 5.12) or lacks one mapping
// for both rings (before 5.4). IORING_OP_READ needs 5.6: its first use says.
struct UringMap {
  bool Setup(unsigned entries);
  void TearDown();
  // The next free submission entry, zeroed, at sq_tail + `ahead`.
  io_uring_sqe* Entry(unsigned ahead);
  // Makes `n` entries from Entry() visible to the kernel; Unpublish takes
  // back the last `n` of them, which the kernel has not taken.
  void Publish(unsigned n);
  void Unpublish(unsigned n);
  // Completions: [head, CqTail()) are ready; ConsumedTo(head) gives them back.
  unsigned CqHead() const { return *cq_head; }
  unsigned CqTail() const;
  void ConsumedTo(unsigned head);
  const io_uring_cqe& Cqe(unsigned at) const;
  // io_uring_enter: submit `submit`, wait for `wait` completions (0: none). The call's result, or -errno.
  long Enter(unsigned submit, unsigned wait);
  // Whether the kernel says it supports IORING_OP_READ (IORING_REGISTER_PROBE, 5.6+; false where it cannot say).
  bool SupportsRead() const;
  // Publishes one read of `len` bytes at `off` of `fd` into `addr`, tagged `data`.
  void PushRead(int fd, void* addr, uint32_t len, uint64_t off, uint64_t data);
  // A completion's result (bytes, or -errno) and tag.
  int CqeResult(unsigned at) const;
  uint64_t CqeData(unsigned at) const;

  int fd = -1;
  void* sq_ring = nullptr;
  size_t sq_ring_bytes = 0;
  io_uring_sqe* sqes = nullptr;
  size_t sqes_bytes = 0;
  unsigned* sq_tail = nullptr;
  unsigned* sq_mask = nullptr;
  unsigned* sq_array = nullptr;
  unsigned* cq_head = nullptr;
  unsigned* cq_tail = nullptr;
  unsigned* cq_mask = nullptr;
  io_uring_cqe* cqes = nullptr;
};

// Whether this build has IORING_OP_READ (kernel headers of 5.6 or later).
bool UringBuilt();

class BatchReads {
 public:
  // Reads at most this many blocks per call (the ring's size).
  static constexpr unsigned kMaxBatch = 32;

  // ring: false reads one preadv2 a block (tests of that path).
  explicit BatchReads(bool ring = true) : state_(ring ? State::kUntried : State::kNone) {}
  BatchReads(const BatchReads&) = delete;
  BatchReads& operator=(const BatchReads&) = delete;
  ~BatchReads();

  // Blocks blocks[0..n) of fd (4 KiB each, n <= kMaxBatch) into out (n *
  // 4096 bytes, in order): 0, or an errno. Without `wait`, only from the
  // page cache (for the JS thread): EAGAIN when one is not cached. With it
  // (a worker thread), reads that wait for the disk, in flight together.
  // Through io_uring where the kernel offers it, else one preadv2 each.
  // One thread at a time.
  int Read(int fd, const uint64_t* blocks, size_t n, uint8_t* out, bool wait);

  // A failed Read may have left reads in flight (the kernel refused to wait
  // for them): whatever `out` it was given must never be freed or reused.
  // No such failure is known to happen; this makes it harmless if it does.
  bool Poisoned() const { return poisoned_; }

 private:
  bool Setup();
  void TearDown();
  int ReadRing(int fd, const uint64_t* blocks, size_t n, uint8_t* out, bool wait, bool* unsupported);

  enum class State { kUntried, kRing, kNone } state_;
  bool poisoned_ = false;
  UringMap ring_;
};

}  // namespace dmthin
