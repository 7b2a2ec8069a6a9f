// BlockWriter: the write side of a received stream. A block device or a
// regular file opened write-only (O_DIRECT when possible); every blocking call
// runs off the JS thread. It only moves bytes and refuses to touch anything
// outside [0, size): no stream parsing, no policy.
#pragma once

#include <napi.h>
#include <atomic>
#include <mutex>
#include <string>

#include "errors.h"

namespace dmthin {

class BlockWriter : public Napi::ObjectWrap<BlockWriter> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  explicit BlockWriter(const Napi::CallbackInfo& info);
  ~BlockWriter() override;

  // State shared with workers. fd_ stays valid while inflight_ > 0.
  int fd_ = -1;
  std::string path_;
  uint64_t size_ = 0;
  bool block_device_ = false;
  bool direct_ = false;
  uint32_t logical_block_size_ = 512;
  std::atomic<int> inflight_{0};
  bool close_pending_ = false;

  // O_DIRECT cannot do writes that are not aligned to the logical block size
  // (a device size that is not a multiple of 4 KiB on a 4Kn disk): those go
  // through a second, buffered descriptor, opened on first use. fsync covers both.
  int BufferedFd(SysFailure& fail);
  int buffered_fd_ = -1;
  std::mutex buffered_mu_;

  void Begin();   // JS thread: a worker starts
  void Finish();  // JS thread: a worker is done

 private:
  Napi::Value Open(const Napi::CallbackInfo& info);
  Napi::Value Write(const Napi::CallbackInfo& info);
  Napi::Value Discard(const Napi::CallbackInfo& info);
  Napi::Value DiscardMany(const Napi::CallbackInfo& info);
  Napi::Value ZeroOut(const Napi::CallbackInfo& info);
  Napi::Value Extend(const Napi::CallbackInfo& info);
  Napi::Value Fsync(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Size(const Napi::CallbackInfo& info);
  void CloseNow();
  bool opening_ = false;
};

}  // namespace dmthin
