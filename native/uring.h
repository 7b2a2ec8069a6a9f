// Batches of 4 KiB reads through one io_uring system call (see uring.cc).
#pragma once

#include <cstddef>
#include <cstdint>

struct io_uring_sqe;
struct io_uring_cqe;

namespace dmthin {

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
  int ring_fd_ = -1;
  void* sq_ring_ = nullptr;
  size_t sq_ring_bytes_ = 0;
  void* cq_ring_ = nullptr;
  size_t cq_ring_bytes_ = 0;
  io_uring_sqe* sqes_ = nullptr;
  size_t sqes_bytes_ = 0;
  unsigned* sq_tail_ = nullptr;
  unsigned* sq_mask_ = nullptr;
  unsigned* sq_array_ = nullptr;
  unsigned* cq_head_ = nullptr;
  unsigned* cq_tail_ = nullptr;
  unsigned* cq_mask_ = nullptr;
  io_uring_cqe* cqes_ = nullptr;
};

}  // namespace dmthin
