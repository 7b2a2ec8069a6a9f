// RangeReader: reads byte ranges of a file or block device (O_DIRECT where
// possible) into a buffer the caller keeps and reuses, several pieces in
// flight. A send reads its batches with it into a few fixed buffers, so its
// memory does not wait for the garbage collector to free spent batches.
#pragma once

#include <napi.h>

#include <string>

namespace dmthin {

class RangeReader : public Napi::ObjectWrap<RangeReader> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  explicit RangeReader(const Napi::CallbackInfo& info);
  ~RangeReader() override;

  int fd_ = -1;
  std::string path_;
  int inflight_ = 0;
  bool close_pending_ = false;
  void FinishRead();

 private:
  Napi::Value Open(const Napi::CallbackInfo& info);
  Napi::Value ReadInto(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  void CloseNow();
};

}  // namespace dmthin
