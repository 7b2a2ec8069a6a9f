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
struct BufferPool {
  // Batches of a quarter of this (256 KiB) up to it use pooled buffers of exactly this size.
  static constexpr size_t kPooledBytes = 1 << 20;
  // Free pooled buffers kept; more are freed.
  static constexpr size_t kMaxFree = 8;
  std::mutex mu;                       // guards free_ (taken and given on the JS thread since reads allocate there; kept for safety)
  std::vector<uint8_t*> free_;
  std::unordered_map<uint8_t*, ReadBuffer*> live;  // JS thread only: buffers JS holds
  ~BufferPool();
  // Worker thread: an aligned buffer for `bytes`; sets *cap to its real size. nullptr when out of memory.
  uint8_t* Take(size_t bytes, size_t* cap);
  // Any thread: a buffer of `cap` bytes is no longer used.
  void Give(uint8_t* p, size_t cap);
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
  void FinishRead();  // JS thread: a read worker is done
  std::shared_ptr<BufferPool> pool_ = std::make_shared<BufferPool>();

 private:
  Napi::Value Open(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Release(const Napi::CallbackInfo& info);
  void CloseNow();
  bool opening_ = false;
};

}  // namespace dmthin
