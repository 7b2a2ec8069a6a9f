#include "block_writer.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits.h>
#include <vector>

#include "errors.h"
#include "file_io.h"
#include "promise_worker.h"

namespace dmthin {
namespace {

constexpr size_t kChunk = 8u << 20;  // bounce buffer for O_DIRECT writes and zero fill

// Largest offset a JS number carries exactly; sizes beyond it are not representable anyway.
constexpr double kMaxSafe = 9007199254740991.0;

bool ToU64(double d, uint64_t* out) {
  if (!(d >= 0 && d <= kMaxSafe) || static_cast<double>(static_cast<uint64_t>(d)) != d) return false;
  *out = static_cast<uint64_t>(d);
  return true;
}

bool ToU64(const Napi::Value& v, uint64_t* out) { return v.IsNumber() && ToU64(v.As<Napi::Number>().DoubleValue(), out); }

Napi::Value Rejected(Napi::Env env, const SysFailure& f) {
  auto d = Napi::Promise::Deferred::New(env);
  d.Reject(MakeErrnoError(env, f).Value());
  return d.Promise();
}

// ENOSPC is what a block device answers for a write past its end; a regular
// file would silently grow instead, so both are refused up front.
bool OutOfRange(const BlockWriter* w, uint64_t off, uint64_t len, const char* syscall, SysFailure* f) {
  if (off <= w->size_ && len <= w->size_ - off) return false;
  f->set(ENOSPC, syscall, w->path_,
         "range [" + std::to_string(off) + ", " + std::to_string(off + len) + ") is outside the target (" +
             std::to_string(w->size_) + " bytes)");
  f->offset = static_cast<double>(off);
  return true;
}

// pwritev until done: short writes continue, EINTR retries, 0 is "no space".
bool PwriteAll(int fd, std::vector<struct iovec> iov, uint64_t off, const std::string& path, SysFailure& fail) {
  size_t idx = 0;
  while (idx < iov.size()) {
    int cnt = static_cast<int>(std::min<size_t>(iov.size() - idx, IOV_MAX));
    ssize_t n = ::pwritev(fd, iov.data() + idx, cnt, static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail.set(errno, "pwritev", path);
      fail.offset = static_cast<double>(off);
      return false;
    }
    if (n == 0) {
      fail.set(ENOSPC, "pwritev", path, "write made no progress");
      fail.offset = static_cast<double>(off);
      return false;
    }
    off += static_cast<uint64_t>(n);
    AdvanceIov(iov, idx, static_cast<size_t>(n));
  }
  return true;
}

// Writes `len` zero bytes at `off`: through the O_DIRECT descriptor when the
// range is aligned, else through the buffered one.
bool WriteZeros(BlockWriter* w, int fd, uint64_t off, uint64_t len, SysFailure& fail) {
  bool aligned = !w->direct_ || ((off | len) % w->logical_block_size_) == 0;
  if (!aligned) {
    fd = w->BufferedFd(fail);
    if (fd < 0) return false;
  }
  AlignedBuf zeros;
  if (!zeros.Alloc(static_cast<size_t>(std::min<uint64_t>(len, kChunk)), true)) {
    fail.set(ENOMEM, "posix_memalign", w->path_);
    return false;
  }
  while (len > 0) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(len, kChunk));
    if (!PwriteAll(fd, {{zeros.p, n}}, off, w->path_, fail)) return false;
    off += n;
    len -= n;
  }
  return true;
}

// Base for workers that resolve a promise and hold the writer open meanwhile.
class WriterWorker : public PromiseWorker<BlockWriter> {
 public:
  WriterWorker(Napi::Env env, BlockWriter* owner, const char* name) : PromiseWorker(env, owner, name), fd_(owner->fd_) { owner_->Begin(); }

 protected:
  void Settled() override { owner_->Finish(); }

  int fd_;
};

// ---------------------------------------------------------------- open

class OpenWorker : public PromiseWorker<BlockWriter> {
 public:
  OpenWorker(Napi::Env env, BlockWriter* owner, std::string path, std::string direct_mode, bool create, bool exclusive, uint32_t mode)
      : PromiseWorker(env, owner, "dmthin:open-write"),
        path_(std::move(path)),
        direct_mode_(std::move(direct_mode)),
        create_(create),
        exclusive_(exclusive),
        mode_(mode) {}

  void Execute() override {
    struct stat st;
    bool exists = ::stat(path_.c_str(), &st) == 0;
    if (!exists && (errno != ENOENT || !create_)) return fail_.set(errno, "stat", path_);
    bool blk = exists && S_ISBLK(st.st_mode);
    if (exists && !blk && !S_ISREG(st.st_mode)) return fail_.set(EINVAL, "open", path_, "not a regular file or block device");

    // Never O_TRUNC; O_CREAT only for a regular file the caller asked to create.
    int flags = O_WRONLY | O_CLOEXEC;
    if (!exists) flags |= O_CREAT;
    if (blk && exclusive_) flags |= O_EXCL;  // refuses a mounted or otherwise claimed device (EBUSY)
    int fd = OpenMaybeDirect(path_, flags, mode_, blk, direct_mode_, &direct_, fail_);
    if (fd < 0) return;
    if (!ProbeOpened(fd, path_, &probe_, fail_)) {
      ::close(fd);
      return;
    }
    fd_ = fd;
    created_ = !exists;
  }

 protected:
  Napi::Value Result(Napi::Env env) override {
    // O_DIRECT on a file aligns to STATX_DIOALIGN where the kernel tells it.
    const uint32_t lbs = probe_.block_device ? probe_.logical_block_size
                         : direct_ && probe_.dio_offset_align ? probe_.dio_offset_align
                                                              : 512;
    owner_->fd_ = fd_;
    owner_->path_ = path_;
    owner_->size_ = probe_.size;
    owner_->block_device_ = probe_.block_device;
    owner_->direct_ = direct_;
    owner_->logical_block_size_ = lbs;
    Napi::Object o = Napi::Object::New(env);
    o.Set("size", static_cast<double>(probe_.size));
    o.Set("blockDevice", probe_.block_device);
    o.Set("direct", direct_);
    o.Set("logicalBlockSize", lbs);
    o.Set("created", created_);
    return o;
  }

 private:
  std::string path_;
  std::string direct_mode_;
  bool create_, exclusive_;
  uint32_t mode_;
  int fd_ = -1;
  bool direct_ = false, created_ = false;
  FileProbe probe_;
};

// ---------------------------------------------------------------- write

struct Segment {
  uint64_t off;
  const uint8_t* data;
  size_t len;
};

class WriteWorker : public WriterWorker {
 public:
  WriteWorker(Napi::Env env, BlockWriter* owner, std::vector<Segment> segs, Napi::Array keep)
      : WriterWorker(env, owner, "dmthin:write"), segs_(std::move(segs)), keep_(Napi::Persistent(keep)) {}

  void Execute() override {
    // Segments arrive sorted and disjoint; adjacent ones become one write.
    size_t i = 0;
    while (i < segs_.size()) {
      size_t j = i + 1;
      uint64_t end = segs_[i].off + segs_[i].len;
      while (j < segs_.size() && segs_[j].off == end) end += segs_[j++].len;
      if (!WriteRun(i, j, end - segs_[i].off)) return;
      writes_++;
      i = j;
    }
  }

 protected:
  Napi::Value Result(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("bytes", static_cast<double>(bytes_));
    o.Set("writes", static_cast<double>(writes_));
    return o;
  }

 private:
  bool WriteRun(size_t a, size_t b, uint64_t total) {
    uint64_t off = segs_[a].off;
    bool aligned = ((off | total) % owner_->logical_block_size_) == 0;
    if (!owner_->direct_ || !aligned) {
      int fd = fd_;
      if (owner_->direct_) {
        fd = owner_->BufferedFd(fail_);
        if (fd < 0) return false;
      }
      std::vector<struct iovec> iov;
      for (size_t k = a; k < b; k++) iov.push_back({const_cast<uint8_t*>(segs_[k].data), segs_[k].len});
      if (!PwriteAll(fd, std::move(iov), off, owner_->path_, fail_)) return false;
      bytes_ += total;
      return true;
    }
    // Buffers aligned for O_DIRECT already (receive's batches come from
    // alignedBuffer): written in place. The bound is 4096 for the memory and
    // every length whatever the device says, so no device refuses them.
    const uintptr_t mem_align = std::max<uintptr_t>(owner_->logical_block_size_, kDirectAlign);
    bool in_place = true;
    for (size_t k = a; k < b && in_place; k++) {
      in_place = reinterpret_cast<uintptr_t>(segs_[k].data) % mem_align == 0 && segs_[k].len % mem_align == 0;
    }
    if (in_place) {
      std::vector<struct iovec> iov;
      for (size_t k = a; k < b; k++) iov.push_back({const_cast<uint8_t*>(segs_[k].data), segs_[k].len});
      if (!PwriteAll(fd_, std::move(iov), off, owner_->path_, fail_)) return false;
      bytes_ += total;
      return true;
    }
    // Else O_DIRECT through an aligned bounce buffer (JS buffers are not aligned).
    if (!bounce_.p && !bounce_.Alloc(static_cast<size_t>(std::min<uint64_t>(kChunk, total)), false)) {
      fail_.set(ENOMEM, "posix_memalign", owner_->path_);
      return false;
    }
    if (bounce_.n < std::min<uint64_t>(kChunk, total)) {
      AlignedBuf bigger;
      if (!bigger.Alloc(static_cast<size_t>(std::min<uint64_t>(kChunk, total)), false)) {
        fail_.set(ENOMEM, "posix_memalign", owner_->path_);
        return false;
      }
      std::swap(bounce_.p, bigger.p);
      std::swap(bounce_.n, bigger.n);
    }
    // The chunk stays a multiple of the logical block size so every pwrite is aligned.
    size_t cap = bounce_.n - bounce_.n % owner_->logical_block_size_;
    size_t k = a, inseg = 0;
    while (k < b) {
      size_t fill = 0;
      while (fill < cap && k < b) {
        size_t n = std::min(cap - fill, segs_[k].len - inseg);
        std::memcpy(bounce_.p + fill, segs_[k].data + inseg, n);
        fill += n;
        inseg += n;
        if (inseg == segs_[k].len) {
          k++;
          inseg = 0;
        }
      }
      if (!PwriteAll(fd_, {{bounce_.p, fill}}, off, owner_->path_, fail_)) return false;
      off += fill;
      bytes_ += fill;
    }
    return true;
  }

  std::vector<Segment> segs_;
  Napi::Reference<Napi::Array> keep_;  // keeps the caller's buffers alive and unmoved
  AlignedBuf bounce_;
  uint64_t bytes_ = 0, writes_ = 0;
};

// ---------------------------------------------------------------- discard / zero

class RangeWorker : public WriterWorker {
 public:
  enum Op { kDiscard, kZero };
  using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;
  RangeWorker(Napi::Env env, BlockWriter* owner, Op op, Ranges ranges)
      : WriterWorker(env, owner, op == kDiscard ? "dmthin:discard" : "dmthin:zeroout"), op_(op), ranges_(std::move(ranges)) {}

  // Several ranges in one call (discardMany): one trip to a thread for all of them, in order;
  // the first failure stops it, its offset naming the range.
  void Execute() override {
    how_ = "none";
    for (const auto& r : ranges_) {
      off_ = r.first;
      len_ = r.second;
      if (len_ > 0 && !One()) return;
    }
  }

 protected:
  Napi::Value Result(Napi::Env env) override { return Napi::String::New(env, how_); }

 private:
  bool One() {
    if (op_ == kDiscard) {
      if (owner_->block_device_) {
        uint64_t r[2] = {off_, len_};
        if (::ioctl(fd_, BLKDISCARD, r) != 0) return Fail(errno, "ioctl", "BLKDISCARD");
        how_ = "blkdiscard";
      } else {
        if (Fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) != 0) return Fail(errno, "fallocate", "PUNCH_HOLE");
        how_ = "punch-hole";
      }
      return true;
    }
    // Zeroing: the cheapest way the target offers, else write the zeros.
    if (owner_->block_device_) {
      uint64_t r[2] = {off_, len_};
      if (::ioctl(fd_, BLKZEROOUT, r) == 0) {
        how_ = "blkzeroout";
        return true;
      }
      if (errno != EOPNOTSUPP && errno != EINVAL && errno != ENOTTY) return Fail(errno, "ioctl", "BLKZEROOUT");
    } else {
      if (Fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE) == 0) {
        how_ = "zero-range";
        return true;
      }
      if (errno != EOPNOTSUPP && errno != EINVAL) return Fail(errno, "fallocate", "ZERO_RANGE");
    }
    if (!WriteZeros(owner_, fd_, off_, len_, fail_)) return false;
    how_ = "written";
    return true;
  }
  int Fallocate(int mode) {
    int r;
    do r = ::fallocate(fd_, mode, static_cast<off_t>(off_), static_cast<off_t>(len_)); while (r != 0 && errno == EINTR);
    return r;
  }
  bool Fail(int err, const char* sc, const char* what) {
    fail_.set(err, sc, owner_->path_, what);
    fail_.offset = static_cast<double>(off_);
    return false;
  }
  Op op_;
  Ranges ranges_;
  uint64_t off_ = 0, len_ = 0;
  std::string how_;
};

// ---------------------------------------------------------------- fsync / extend

class FsyncWorker : public WriterWorker {
 public:
  FsyncWorker(Napi::Env env, BlockWriter* owner) : WriterWorker(env, owner, "dmthin:fsync") {}
  void Execute() override {
    if (::fsync(fd_) != 0) return fail_.set(errno, "fsync", owner_->path_);
    std::lock_guard<std::mutex> lock(owner_->buffered_mu_);
    if (owner_->buffered_fd_ >= 0 && ::fsync(owner_->buffered_fd_) != 0) return fail_.set(errno, "fsync", owner_->path_);
  }
};

class ExtendWorker : public WriterWorker {
 public:
  ExtendWorker(Napi::Env env, BlockWriter* owner, uint64_t size) : WriterWorker(env, owner, "dmthin:extend"), size_(size) {}
  void Execute() override {
    if (::ftruncate(fd_, static_cast<off_t>(size_)) != 0) fail_.set(errno, "ftruncate", owner_->path_);
  }
  void OnOK() override {
    if (!fail_.failed()) owner_->size_ = size_;
    WriterWorker::OnOK();
  }

 protected:
  Napi::Value Result(Napi::Env env) override { return Napi::Number::New(env, static_cast<double>(size_)); }

 private:
  uint64_t size_;
};

}  // namespace

// ---------------------------------------------------------------- class

void BlockWriter::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DefineClass(env, "BlockWriter",
                                    {InstanceMethod("open", &BlockWriter::Open),
                                     InstanceMethod("write", &BlockWriter::Write),
                                     InstanceMethod("discard", &BlockWriter::Discard),
                                     InstanceMethod("discardMany", &BlockWriter::DiscardMany),
                                     InstanceMethod("zeroOut", &BlockWriter::ZeroOut),
                                     InstanceMethod("extend", &BlockWriter::Extend),
                                     InstanceMethod("fsync", &BlockWriter::Fsync),
                                     InstanceMethod("size", &BlockWriter::Size),
                                     InstanceMethod("close", &BlockWriter::Close)});
  exports.Set("BlockWriter", ctor);
}

BlockWriter::BlockWriter(const Napi::CallbackInfo& info) : Napi::ObjectWrap<BlockWriter>(info) {}

BlockWriter::~BlockWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (buffered_fd_ >= 0) ::close(buffered_fd_);
}

int BlockWriter::BufferedFd(SysFailure& fail) {
  std::lock_guard<std::mutex> lock(buffered_mu_);
  if (buffered_fd_ >= 0) return buffered_fd_;
  int fd;
  // Same file, no O_DIRECT; never O_CREAT here (the file exists by now).
  do fd = ::open(path_.c_str(), O_WRONLY | O_CLOEXEC); while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    fail.set(errno, "open", path_);
    return -1;
  }
  buffered_fd_ = fd;
  return fd;
}

void BlockWriter::Begin() { inflight_++; }

void BlockWriter::Finish() {
  if (--inflight_ == 0 && close_pending_) CloseNow();
}

void BlockWriter::CloseNow() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  std::lock_guard<std::mutex> lock(buffered_mu_);
  if (buffered_fd_ >= 0) ::close(buffered_fd_);
  buffered_fd_ = -1;
  close_pending_ = false;
}

Napi::Value BlockWriter::Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString())
    throw Napi::TypeError::New(env, "open(path: string, opts?: { direct?: 'auto'|'always'|'never', create?: boolean, exclusive?: boolean, mode?: number })");
  if (fd_ >= 0 || opening_) throw Napi::Error::New(env, "BlockWriter is already open");
  std::string mode = "auto";
  bool create = false, exclusive = true;
  uint32_t perm = 0600;
  if (info.Length() > 1 && info[1].IsObject()) {
    Napi::Object o = info[1].As<Napi::Object>();
    if (o.Has("direct") && o.Get("direct").IsString()) mode = o.Get("direct").As<Napi::String>().Utf8Value();
    if (o.Has("create")) create = o.Get("create").ToBoolean().Value();
    if (o.Has("exclusive")) exclusive = o.Get("exclusive").ToBoolean().Value();
    if (o.Has("mode") && o.Get("mode").IsNumber()) perm = o.Get("mode").As<Napi::Number>().Uint32Value() & 07777;
  }
  if (mode != "auto" && mode != "always" && mode != "never") throw Napi::TypeError::New(env, "direct must be 'auto', 'always' or 'never'");
  opening_ = true;
  auto* w = new OpenWorker(env, this, info[0].As<Napi::String>().Utf8Value(), mode, create, exclusive, perm);
  Napi::Promise p = w->Promise();
  w->Queue();
  opening_ = false;
  return p;
}

Napi::Value BlockWriter::Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (fd_ < 0 || close_pending_) return Rejected(env, [&] { SysFailure f; f.set(EBADF, "pwrite", path_); return f; }());
  if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsArray())
    throw Napi::TypeError::New(env, "write(offsets: Float64Array, buffers: Uint8Array[])");
  Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_float64_array) throw Napi::TypeError::New(env, "offsets must be a Float64Array");
  Napi::Float64Array offs = ta.As<Napi::Float64Array>();
  Napi::Array bufs = info[1].As<Napi::Array>();
  size_t n = offs.ElementLength();
  if (bufs.Length() != n) throw Napi::RangeError::New(env, "offsets and buffers differ in length");
  std::vector<Segment> segs;
  segs.reserve(n);
  for (size_t i = 0; i < n; i++) {
    Napi::Value v = bufs.Get(static_cast<uint32_t>(i));
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      throw Napi::TypeError::New(env, "buffers must be Uint8Arrays");
    Napi::Uint8Array b = v.As<Napi::Uint8Array>();
    uint64_t off;
    if (!ToU64(static_cast<double>(offs[i]), &off)) throw Napi::RangeError::New(env, "bad offset " + std::to_string(offs[i]));
    if (b.ByteLength() == 0) continue;
    segs.push_back({off, b.Data(), b.ByteLength()});
  }
  std::sort(segs.begin(), segs.end(), [](const Segment& a, const Segment& b) { return a.off < b.off; });
  for (size_t i = 0; i < segs.size(); i++) {
    SysFailure f;
    if (OutOfRange(this, segs[i].off, segs[i].len, "pwrite", &f)) return Rejected(env, f);
    if (i > 0 && segs[i].off < segs[i - 1].off + segs[i - 1].len) {
      f.set(EINVAL, "pwrite", path_, "overlapping writes in one batch at offset " + std::to_string(segs[i].off));
      return Rejected(env, f);
    }
  }
  auto* w = new WriteWorker(env, this, std::move(segs), bufs);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// A range discard or zeroOut may not take: outside the target, or not whole sectors of a block device.
static bool BadRange(const BlockWriter* self, uint64_t off, uint64_t len, const char* sc, SysFailure* f) {
  if (OutOfRange(self, off, len, sc, f)) return true;
  if (self->block_device_ && ((off | len) & 511) != 0) {
    f->set(EINVAL, sc, self->path_, "block device ranges must be multiples of 512 bytes");
    return true;
  }
  return false;
}

static Napi::Value RangeOp(BlockWriter* self, const Napi::CallbackInfo& info, RangeWorker::Op op) {
  Napi::Env env = info.Env();
  const char* sc = op == RangeWorker::kDiscard ? "discard" : "zeroout";
  if (self->fd_ < 0 || self->close_pending_) return Rejected(env, [&] { SysFailure f; f.set(EBADF, sc, self->path_); return f; }());
  uint64_t off, len;
  if (info.Length() < 2 || !ToU64(info[0], &off) || !ToU64(info[1], &len))
    throw Napi::TypeError::New(env, std::string(sc) + "(offset: number, length: number)");
  SysFailure f;
  if (BadRange(self, off, len, sc, &f)) return Rejected(env, f);
  auto* w = new RangeWorker(env, self, op, {{off, len}});
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// discardMany(ranges: Float64Array of offset, length pairs): ascending, disjoint ranges, each checked as discard()'s.
Napi::Value BlockWriter::DiscardMany(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (fd_ < 0 || close_pending_) return Rejected(env, [&] { SysFailure f; f.set(EBADF, "discard", path_); return f; }());
  if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
    throw Napi::TypeError::New(env, "discardMany(ranges: Float64Array of offset, length pairs)");
  Napi::Float64Array a = info[0].As<Napi::Float64Array>();
  if (a.ElementLength() % 2 != 0) throw Napi::TypeError::New(env, "discardMany: ranges must hold offset, length pairs");
  RangeWorker::Ranges ranges;
  ranges.reserve(a.ElementLength() / 2);
  SysFailure f;
  for (size_t i = 0; i < a.ElementLength(); i += 2) {
    uint64_t off, len;
    if (!ToU64(static_cast<double>(a[i]), &off) || !ToU64(static_cast<double>(a[i + 1]), &len))
      throw Napi::TypeError::New(env, "discardMany: offsets and lengths must be whole numbers from 0 to 2^53");
    if (BadRange(this, off, len, "discard", &f)) return Rejected(env, f);
    if (!ranges.empty() && off < ranges.back().first + ranges.back().second) {
      f.set(EINVAL, "discard", path_, "overlapping or unordered ranges in one batch at offset " + std::to_string(off));
      return Rejected(env, f);
    }
    ranges.emplace_back(off, len);
  }
  auto* w = new RangeWorker(env, this, RangeWorker::kDiscard, std::move(ranges));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value BlockWriter::Discard(const Napi::CallbackInfo& info) { return RangeOp(this, info, RangeWorker::kDiscard); }

Napi::Value BlockWriter::ZeroOut(const Napi::CallbackInfo& info) { return RangeOp(this, info, RangeWorker::kZero); }

Napi::Value BlockWriter::Extend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (fd_ < 0 || close_pending_) return Rejected(env, [&] { SysFailure f; f.set(EBADF, "ftruncate", path_); return f; }());
  uint64_t size;
  if (info.Length() < 1 || !ToU64(info[0], &size)) throw Napi::TypeError::New(env, "extend(size: number)");
  SysFailure f;
  // Only grows, and only regular files: a device's size is the device's.
  if (block_device_) {
    f.set(EINVAL, "ftruncate", path_, "cannot resize a block device");
    return Rejected(env, f);
  }
  if (size <= size_) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Resolve(Napi::Number::New(env, static_cast<double>(size_)));
    return d.Promise();
  }
  auto* w = new ExtendWorker(env, this, size);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value BlockWriter::Fsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (fd_ < 0 || close_pending_) return Rejected(env, [&] { SysFailure f; f.set(EBADF, "fsync", path_); return f; }());
  auto* w = new FsyncWorker(env, this);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value BlockWriter::Size(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), static_cast<double>(size_)); }

Napi::Value BlockWriter::Close(const Napi::CallbackInfo& info) {
  // Work in flight keeps the descriptor; the last worker to finish closes it.
  if (inflight_ > 0)
    close_pending_ = true;
  else
    CloseNow();
  return info.Env().Undefined();
}

}  // namespace dmthin
