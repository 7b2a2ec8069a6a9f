// BlockReader: a read-only file or block device opened with O_DIRECT, read in
// batches of block numbers off the JS thread. It only moves bytes: no parsing.
#pragma once

#include <napi.h>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace dmthin {

struct ReadBuffer;

// The batch buffers a reader hands to JS. A buffer JS releases (release())
// is detached from its ArrayBuffer, so no view can read it any more, and goes
// back to a small free list for the next read of its size class; one JS never
// releases is freed when V8 collects it, as before. Shared by the reader and
// every buffer's finalizer (either may go first).
//
// Batches of 64 KiB to 1 MiB get buffers of the next power of two, reused:
// allocated afresh, each was an mmap and its free a munmap, and those wait
// for the address-space lock that the worker threads' page faults hold (a 4M
// delta's JS thread spent ~1 ms in each of ~250 reads). The first ones are
// cut from up to two 2 MiB slabs the kernel may back with one transparent
// huge page each (MADV_HUGEPAGE): on the bench VM a 4 KiB page's first touch
// costs ~12 us, and a walk's read buffers were a sixth of a 4M delta's page
// faults. Slab pieces go back to their free list, never to malloc, for the
// pool's life; more buffers than the slabs hold come from malloc, as before,
// with at most kMaxFreeBytes of them kept free. Two slabs, not more: a huge
// page is resident whole, and check at 40M mappings peaks near the 80 MiB
// goal. Smaller batches come from malloc's heap, larger ones are freed.
struct BufferPool {
  static constexpr int kMinClass = 16;  // 64 KiB
  static constexpr int kMaxClass = 20;  // 1 MiB
  static constexpr size_t kPooledBytes = size_t{1} << kMaxClass;
  static constexpr size_t kSlabBytes = size_t{2} << 20;
  static constexpr size_t kMaxSlabs = 2;
  // Free malloc'd buffers kept, all classes together; more are freed.
  static constexpr size_t kMaxFreeBytes = size_t{8} << 20;
  std::mutex mu;  // guards the lists and slabs_ (taken and given on the JS thread since reads allocate there; kept for safety)
  std::vector<uint8_t*> slab_free_[kMaxClass - kMinClass + 1];
  std::vector<uint8_t*> heap_free_[kMaxClass - kMinClass + 1];
  size_t heap_free_bytes_ = 0;
  std::vector<uint8_t*> slabs_;
  std::unordered_map<uint8_t*, ReadBuffer*> live;  // JS thread only: buffers JS holds
  ~BufferPool();
  // An aligned buffer for `bytes`; sets *cap to its real size. nullptr when out of memory.
  uint8_t* Take(size_t bytes, size_t* cap);
  // Any thread: a buffer of `cap` bytes is no longer used.
  void Give(uint8_t* p, size_t cap);
  // The size class of a pooled capacity, or -1.
  static int ClassOf(size_t cap);

 private:
  // A free slab piece of class k (mu held), splitting larger ones; nullptr when the slabs are used up.
  uint8_t* TakeSlabPiece(int k);
  // A new 2 MiB-aligned slab, huge pages asked for; nullptr when out of memory.
  uint8_t* NewSlab();
  bool InSlab(const uint8_t* p) const;
};

// One buffer handed to JS (the finalizer's hint).
struct ReadBuffer {
  uint8_t* p;
  size_t cap;
  std::shared_ptr<BufferPool> pool;
  bool released = false;
};

class BlockReader : public Napi::ObjectWrap<BlockReader> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  explicit BlockReader(const Napi::CallbackInfo& info);
  ~BlockReader() override;

  // State shared with workers. fd stays valid while readers_ > 0.
  int fd_ = -1;
  std::string path_;
  std::atomic<int> inflight_{0};
  bool close_pending_ = false;
  // Buffered (not O_DIRECT) and preadv2(RWF_NOWAIT) not refused yet: a read
  // first tries the page cache from the JS thread (see BlockReader::Read).
  bool try_cached_ = false;
  // Opened with O_DIRECT.
  bool direct_ = false;
  // Set by close(): a details walk on a worker thread stops at its next batch.
  std::atomic<bool> cancel_walks_{false};
  void FinishRead();  // JS thread: a read worker is done
  std::shared_ptr<BufferPool> pool_ = std::make_shared<BufferPool>();

 private:
  Napi::Value Open(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Release(const Napi::CallbackInfo& info);
  Napi::Value WalkDetails(const Napi::CallbackInfo& info);
  void CloseNow();
  bool opening_ = false;
};

}  // namespace dmthin
