#include "range_reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <thread>
#include <memory>
#include <vector>

#include "allocator.h"
#include "errors.h"
#include "file_io.h"
#include "promise_worker.h"

namespace dmthin {
namespace {

constexpr uint64_t kPieceBytes = 1 << 20;  // one pread; a few in flight keep a virtio or NVMe queue busy
constexpr size_t kThreads = 4;

// A block device is opened on a libuv worker: its open can wait on its driver.
class OpenWorker : public PromiseWorker<RangeReader> {
 public:
  OpenWorker(Napi::Env env, RangeReader* owner, std::string path, std::string mode)
      : PromiseWorker(env, owner, "dmthin:range-open"), path_(std::move(path)), mode_(std::move(mode)) {}
  void Execute() override {
    struct stat st;
    if (::stat(path_.c_str(), &st) != 0) return fail_.set(errno, "stat", path_);
    bool blk = S_ISBLK(st.st_mode);
    if (!blk && !S_ISREG(st.st_mode)) return fail_.set(EINVAL, "open", path_, "not a regular file or block device");
    int fd = OpenMaybeDirect(path_, O_RDONLY | O_CLOEXEC, 0, blk, mode_, &direct_, fail_);
    if (fd < 0) return;
    if (!ProbeOpened(fd, path_, &probe_, fail_)) {
      ::close(fd);
      return;
    }
    fd_ = fd;
  }

 protected:
  Napi::Value Result(Napi::Env env) override {
    owner_->fd_ = fd_;
    owner_->path_ = path_;
    Napi::Object o = Napi::Object::New(env);
    o.Set("size", static_cast<double>(probe_.size));
    o.Set("direct", direct_);
    return o;
  }

 private:
  std::string path_, mode_;
  int fd_ = -1;
  bool direct_ = false;
  FileProbe probe_;
};

using Piece = RangeRing::Piece;

class ReadIntoWorker : public PromiseWorker<RangeReader> {
 public:
  ReadIntoWorker(Napi::Env env, RangeReader* owner, Napi::Object buf, uint8_t* base, std::vector<Piece> pieces)
      : PromiseWorker(env, owner, "dmthin:range-read"), fd_(owner->fd_), path_(owner->path_), base_(base), pieces_(std::move(pieces)) {
    Hold(buf);
  }
  // The read the ring could not do (range_ring.h: the kernel refused it), settling its promise.
  ReadIntoWorker(Napi::Env env, RangeReader* owner, Napi::Object buf, uint8_t* base, std::vector<Piece> pieces, Napi::Promise::Deferred deferred)
      : PromiseWorker(env, owner, "dmthin:range-read", deferred), fd_(owner->fd_), path_(owner->path_), base_(base), pieces_(std::move(pieces)) {
    Hold(buf);
  }

  void Hold(Napi::Object buf) {
    buf_ = Napi::Persistent(buf);  // the memory stays put until the read is done
    owner_->inflight_++;
  }

  void Execute() override {
    if (!owner_->BeginExecute()) return fail_.set(ECANCELED, "pread", path_, "the process is exiting");
    Read();
    owner_->EndExecute();
  }

  void Read() {
    std::atomic<size_t> next{0};
    // Threads of its own only for more than one piece's worth of bytes: a
    // small batch (a tiny send's 768 KiB in three pieces) is read here, not
    // by three threads started and joined for it.
    uint64_t bytes = 0;
    for (const Piece& p : pieces_) bytes += p.len;
    size_t nthreads = bytes > kPieceBytes ? std::min(kThreads, pieces_.size()) : 1;
    std::vector<SysFailure> fails(nthreads);
    auto work = [&](size_t t) {
      for (;;) {
        size_t i = next.fetch_add(1);
        if (i >= pieces_.size() || fails[t].failed()) return;
        if (owner_->stopping_.load()) return fails[t].set(ECANCELED, "pread", path_, "the process is exiting");
        const Piece& p = pieces_[i];
        uint64_t done = 0;
        while (done < p.len) {
          ssize_t got = ::pread(fd_, base_ + p.dst + done, p.len - done, static_cast<off_t>(p.src + done));
          if (got < 0) {
            if (errno == EINTR) continue;
            fails[t].set(errno, "pread", path_);
            fails[t].offset = static_cast<double>(p.src + done);
            return;
          }
          if (got == 0) {
            fails[t].set(EIO, "pread", path_, "short read: range beyond the end of the file or device");
            fails[t].offset = static_cast<double>(p.src + done);
            return;
          }
          done += static_cast<uint64_t>(got);
        }
      }
    };
    if (nthreads <= 1) {
      work(0);
    } else {
      std::vector<std::thread> pool;
      for (size_t t = 0; t < nthreads; t++) pool.emplace_back(work, t);
      for (auto& th : pool) th.join();
    }
    // Of several threads failing (pieces past the end of a file), the lowest offset: where it ended.
    for (auto& f : fails)
      if (f.failed() && (!fail_.failed() || (f.err == fail_.err && f.offset < fail_.offset))) fail_ = f;
  }

 protected:
  void Settled() override {
    buf_.Reset();
    owner_->FinishRead();
  }

 private:
  int fd_;
  std::string path_;
  uint8_t* base_;
  std::vector<Piece> pieces_;
  Napi::ObjectReference buf_;
};

// alignedBuffer(bytes): a Uint8Array of `bytes` at a kDirectAlign boundary
// (O_DIRECT needs one). Carved out of an ArrayBuffer that V8 owns rather
// than an external buffer: an external buffer's memory is freed by a cleanup
// hook of its own when the environment is torn down, possibly while the
// hashing thread still reads it; V8's memory outlives every cleanup hook.
// From 2 MiB up (a send's 8 MiB batches) it starts at a huge-page boundary
// and asks for huge pages (AdviseHuge): its pages are faulted in 2 MiB at a
// time, not 4 KiB (~11 us a fault in the bench VM: 2,048 for each batch
// buffer). The room before the boundary is never touched (address space,
// not memory).
Napi::Value AlignedBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double n = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
  if (!(n > 0 && n <= (1u << 30)) || static_cast<double>(static_cast<size_t>(n)) != n) throw Napi::RangeError::New(env, "alignedBuffer(bytes): 1 .. 1 GiB");
  size_t bytes = static_cast<size_t>(n);
  size_t align = bytes >= kHugePageBytes ? kHugePageBytes : kDirectAlign;
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, bytes + align);
  uintptr_t p = reinterpret_cast<uintptr_t>(ab.Data());
  size_t off = static_cast<size_t>((align - p % align) % align);
  if (align == kHugePageBytes) AdviseHuge(static_cast<uint8_t*>(ab.Data()) + off, bytes);
  return Napi::Uint8Array::New(env, bytes, ab, off);
}

}  // namespace

void RangeReader::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DefineClass(env, "RangeReader",
                                    {InstanceMethod("open", &RangeReader::Open),
                                     InstanceMethod("readInto", &RangeReader::ReadInto),
                                     InstanceMethod("close", &RangeReader::Close)});
  exports.Set("RangeReader", ctor);
  exports.Set("alignedBuffer", Napi::Function::New(env, AlignedBuffer, "alignedBuffer"));
}

// new RangeReader(options?: { ioUring?: boolean }): ioUring false reads
// through libuv's thread pool only (tests of that path).
RangeReader::RangeReader(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RangeReader>(info) {
  env_ = info.Env();
  if (info.Length() > 0 && info[0].IsObject()) {
    Napi::Value v = info[0].As<Napi::Object>().Get("ioUring");
    if (v.IsBoolean() && !v.As<Napi::Boolean>().Value()) ring_off_ = true;
  }
  if (napi_add_env_cleanup_hook(env_, EnvCleanup, this) == napi_ok) hooked_ = true;
}

RangeReader::~RangeReader() {
  if (hooked_) napi_remove_env_cleanup_hook(env_, EnvCleanup, this);
  DropRing();
  if (fd_ >= 0) ::close(fd_);
}

// Lets go of the ring: it closes once its reads are done and frees itself.
void RangeReader::DropRing() {
  if (ring_ == nullptr) return;
  ring_->Detach();
  ring_->Close();
  ring_ = nullptr;
}

bool RangeReader::BeginExecute() {
  std::lock_guard<std::mutex> l(exec_mu_);
  if (stopping_.load()) return false;
  executing_++;
  return true;
}

void RangeReader::EndExecute() {
  std::lock_guard<std::mutex> l(exec_mu_);
  if (--executing_ == 0) exec_cv_.notify_all();
}

// Before Node-API finalizes the remaining objects (and frees the read
// buffers and this reader): no read may still be writing into them.
void RangeReader::EnvCleanup(void* arg) {
  auto* self = static_cast<RangeReader*>(arg);
  self->hooked_ = false;
  self->stopping_ = true;
  std::unique_lock<std::mutex> l(self->exec_mu_);
  self->exec_cv_.wait(l, [self] { return self->executing_ == 0; });
}

// open(path, direct?) -> Promise<{ size, direct }>. A regular file is
// opened here, on the JS thread, as BlockReader opens one (the promise is
// settled when it returns): a task for libuv's thread pool would start its
// four threads, ~2.5 ms of a tiny send in the bench VM. A block device on a
// worker (OpenWorker).
Napi::Value RangeReader::Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "open(path: string, direct?: 'auto'|'always'|'never')");
  if (fd_ >= 0) throw Napi::Error::New(env, "RangeReader is already open");
  std::string mode = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "auto";
  if (mode != "auto" && mode != "always" && mode != "never") throw Napi::TypeError::New(env, "direct must be 'auto', 'always' or 'never'");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode)) {
    auto* w = new OpenWorker(env, this, path, mode);
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }
  auto d = Napi::Promise::Deferred::New(env);
  SysFailure fail;
  FileProbe probe;
  bool direct = false;
  int fd = -1;
  if (::stat(path.c_str(), &st) != 0) {
    fail.set(errno, "stat", path);
  } else if (!S_ISREG(st.st_mode)) {
    fail.set(EINVAL, "open", path, "not a regular file or block device");
  } else {
    fd = OpenMaybeDirect(path, O_RDONLY | O_CLOEXEC, 0, false, mode, &direct, fail);
    if (fd >= 0 && !ProbeOpened(fd, path, &probe, fail)) {
      ::close(fd);
      fd = -1;
    }
  }
  if (fd < 0) {
    d.Reject(MakeErrnoError(env, fail).Value());
    return d.Promise();
  }
  fd_ = fd;
  path_ = path;
  Napi::Object o = Napi::Object::New(env);
  o.Set("size", static_cast<double>(probe.size));
  o.Set("direct", direct);
  d.Resolve(o);
  return d.Promise();
}

// readInto(buf, ranges: Float64Array of [bufOffset, fileOffset, length]...)
Napi::Value RangeReader::ReadInto(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (fd_ < 0 || close_pending_) throw MakeErrnoError(env, EBADF, "read", path_);
  if (info.Length() < 2 || !info[0].IsBuffer() || !info[1].IsTypedArray())
    throw Napi::TypeError::New(env, "readInto(buf: Buffer, ranges: Float64Array)");
  Napi::Buffer<uint8_t> buf = info[0].As<Napi::Buffer<uint8_t>>();
  Napi::TypedArray ta = info[1].As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_float64_array || ta.ElementLength() % 3 != 0) throw Napi::TypeError::New(env, "ranges must be a Float64Array of triples");
  Napi::Float64Array r = ta.As<Napi::Float64Array>();
  std::vector<Piece> pieces;
  const double kMax = 9007199254740991.0;
  for (size_t i = 0; i < r.ElementLength(); i += 3) {
    double d = r[i], s = r[i + 1], l = r[i + 2];
    for (double v : {d, s, l})
      if (!(v >= 0 && v <= kMax) || static_cast<double>(static_cast<uint64_t>(v)) != v) throw Napi::RangeError::New(env, "range out of bounds");
    if (d + l > static_cast<double>(buf.Length())) throw Napi::RangeError::New(env, "range beyond the buffer");
    for (uint64_t off = 0, len = static_cast<uint64_t>(l); off < len; off += kPieceBytes)
      pieces.push_back({static_cast<uint64_t>(d) + off, static_cast<uint64_t>(s) + off, std::min<uint64_t>(kPieceBytes, len - off)});
  }
  // The buffer may be newer than this reader, and its memory is freed by a
  // cleanup hook of its own (hooks run newest first): re-registered here,
  // ours runs first and waits for the read.
  if (hooked_) napi_remove_env_cleanup_hook(env, EnvCleanup, this);
  hooked_ = napi_add_env_cleanup_hook(env, EnvCleanup, this) == napi_ok;
  if (!ring_tried_ && !ring_off_) {
    ring_tried_ = true;
    ring_ = RangeRing::Create(env, &ring_);
  }
  if (ring_ == nullptr) return ReadThroughPool(env, buf, buf.Data(), std::move(pieces), nullptr);
  // Through the ring: the buffer and this reader are held until it is done.
  auto d = Napi::Promise::Deferred::New(env);
  auto held = std::make_shared<Napi::ObjectReference>(Napi::Persistent(Napi::Object(buf)));
  uint8_t* base = buf.Data();
  Ref();
  inflight_++;
  std::vector<Piece> again = pieces;  // for the thread pool, should the kernel refuse the ring's operation
  ring_->Read(fd_, base, std::move(pieces), path_, [this, d, held, base, again](const SysFailure& f, bool unsupported) mutable {
    Napi::Env env = d.Env();
    if (unsupported) {
      // The kernel refused the ring's submissions: the thread pool from now on.
      ring_off_ = true;
      DropRing();
      inflight_--;
      ReadThroughPool(env, held->Value(), base, std::move(again), &d);
    } else {
      FinishRead();
      if (f.failed())
        d.Reject(MakeErrnoError(env, f).Value());
      else
        d.Resolve(env.Undefined());
    }
    held->Reset();
    Unref();
  });
  return d.Promise();
}

Napi::Value RangeReader::ReadThroughPool(Napi::Env env, Napi::Object buf, uint8_t* base, std::vector<Piece> pieces, Napi::Promise::Deferred* adopt) {
  auto* w = adopt != nullptr ? new ReadIntoWorker(env, this, buf, base, std::move(pieces), *adopt) : new ReadIntoWorker(env, this, buf, base, std::move(pieces));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

void RangeReader::FinishRead() {
  if (--inflight_ == 0 && close_pending_) CloseNow();
}

void RangeReader::CloseNow() {
  DropRing();
  ring_tried_ = false;  // opened again, it makes a ring again
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  close_pending_ = false;
}

Napi::Value RangeReader::Close(const Napi::CallbackInfo& info) {
  // Reads in flight keep the descriptor; the last one to finish closes it.
  if (inflight_ > 0)
    close_pending_ = true;
  else
    CloseNow();
  return info.Env().Undefined();
}

}  // namespace dmthin
