#include "file_put.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "errors.h"

namespace dmthin {
namespace {


class PutFileWorker : public Napi::AsyncWorker {
 public:
  PutFileWorker(Napi::Env env, Napi::Object data, std::string tmp, std::string path, std::string dir, bool if_absent)
      : Napi::AsyncWorker(env, "dmthin:put-file"),
        deferred_(Napi::Promise::Deferred::New(env)),
        tmp_(std::move(tmp)),
        path_(std::move(path)),
        dir_(std::move(dir)),
        if_absent_(if_absent) {
    Napi::Uint8Array u = data.As<Napi::Uint8Array>();
    bytes_ = u.Data();
    len_ = u.ByteLength();
    data_ = Napi::Persistent(data);  // the memory stays put until the write is done
  }

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    int fd;
    do fd = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) return fail_.set(errno, "open", tmp_);
    bool ok = WriteAll(fd) && Sync(fd, tmp_);
    if (::close(fd) != 0 && ok && errno != EINTR) {
      fail_.set(errno, "close", tmp_);
      ok = false;
    }
    if (!ok) {
      ::unlink(tmp_.c_str());
      return;
    }
    if (if_absent_) {
      if (::link(tmp_.c_str(), path_.c_str()) != 0) {
        if (errno != EEXIST) {
          fail_.set(errno, "link", path_);
          ::unlink(tmp_.c_str());
          return;
        }
        written_ = false;
      }
      if (::unlink(tmp_.c_str()) != 0) return fail_.set(errno, "unlink", tmp_);
    } else if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
      fail_.set(errno, "rename", path_);
      ::unlink(tmp_.c_str());
      return;
    }
    if (!written_) return;
    int dfd;
    do dfd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    while (dfd < 0 && errno == EINTR);
    if (dfd < 0) return fail_.set(errno, "open", dir_);
    Sync(dfd, dir_);
    ::close(dfd);
  }

  void OnOK() override {
    data_.Reset();
    if (fail_.failed()) return deferred_.Reject(MakeErrnoError(Env(), fail_).Value());
    deferred_.Resolve(Napi::Boolean::New(Env(), written_));
  }

  void OnError(const Napi::Error& e) override {
    data_.Reset();
    deferred_.Reject(e.Value());
  }

 private:
  bool WriteAll(int fd) {
    size_t done = 0;
    while (done < len_) {
      ssize_t n = ::write(fd, bytes_ + done, len_ - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        fail_.set(errno, "write", tmp_);
        return false;
      }
      done += static_cast<size_t>(n);
    }
    return true;
  }

  bool Sync(int fd, const std::string& what) {
    if (::fsync(fd) == 0) return true;
    fail_.set(errno, "fsync", what);
    return false;
  }

  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference data_;
  const uint8_t* bytes_ = nullptr;
  size_t len_ = 0;
  std::string tmp_, path_, dir_;
  bool if_absent_;
  bool written_ = true;
  SysFailure fail_;
};

// putFileDurable(tmp, path, dir, data: Uint8Array, ifAbsent) -> Promise<boolean>:
// false when ifAbsent and `path` existed (left alone). On failure the
// temporary file is removed and the error names the call and its path.
Napi::Value PutFileDurable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 5 || !info[0].IsString() || !info[1].IsString() || !info[2].IsString() || !info[3].IsTypedArray() ||
      info[3].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array || !info[4].IsBoolean()) {
    throw Napi::TypeError::New(env, "putFileDurable(tmp: string, path: string, dir: string, data: Uint8Array, ifAbsent: boolean)");
  }
  auto* w = new PutFileWorker(env, info[3].As<Napi::Object>(), info[0].As<Napi::String>().Utf8Value(), info[1].As<Napi::String>().Utf8Value(),
                              info[2].As<Napi::String>().Utf8Value(), info[4].As<Napi::Boolean>().Value());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace

void InitFilePut(Napi::Env env, Napi::Object exports) { exports.Set("putFileDurable", Napi::Function::New(env, PutFileDurable, "putFileDurable")); }

}  // namespace dmthin
