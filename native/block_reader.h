// BlockReader: a read-only file or block device opened with O_DIRECT, read in
// batches of block numbers off the JS thread. It only moves bytes: no parsing.
#pragma once

#include <napi.h>
#include <atomic>
#include <string>

namespace dmthin {

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

 private:
  Napi::Value Open(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  void CloseNow();
  bool opening_ = false;
};

}  // namespace dmthin
