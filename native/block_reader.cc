#include "block_reader.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits.h>
#include <thread>
#include <vector>

#include "allocator.h"
#include "btree_walk.h"
#include "crc32c.h"
#include "details_columns.h"
#include "errors.h"
#include "file_io.h"
#include "promise_worker.h"
#include "uring.h"

namespace dmthin {
namespace {

constexpr uint64_t kMaxBatchBytes = 1ull << 30;  // one call never allocates more than 1 GiB
constexpr uint64_t kMaxGapBytes = 32 << 10;      // read small holes instead of seeking
constexpr uint64_t kPieceBytes = 256 << 10;      // longest single preadv
constexpr size_t kMaxThreads = 4;                // requests kept in flight per batch
// walkDetails reads a level a ring's batch (128 KiB) at a time, into a
// buffer of its own: a pooled 1 MiB one was a fresh 2 MiB huge page for a
// short ls (~0.75 ms zeroing it in the bench VM).
constexpr size_t kWalkWindowBlocks = BatchReads::kMaxBatch;
// walkDetails' bounds: 65,536 leaves (over 8 million devices; 256 MiB read)
// and a metadata device of 2^26 blocks; on the JS thread 4,096 leaves (over
// 170,000 devices; a few ms), more on a worker thread.
constexpr size_t kMaxWalkLeaves = size_t{1} << 16;
constexpr size_t kMaxCachedWalkLeaves = size_t{1} << 12;
constexpr uint64_t kMaxWalkBlocks = uint64_t{1} << 26;

// ---------------------------------------------------------------- open

class OpenWorker : public PromiseWorker<BlockReader> {
 public:
  OpenWorker(Napi::Env env, BlockReader* owner, std::string path, std::string direct_mode, bool exclusive)
      : PromiseWorker(env, owner, "dmthin:open"), path_(std::move(path)), direct_mode_(std::move(direct_mode)), exclusive_(exclusive) {}

  void Execute() override {
    struct stat st;
    if (::stat(path_.c_str(), &st) != 0) return fail_.set(errno, "stat", path_);
    OpenStatted(st);
  }

  // On the JS thread, before queueing: a regular file is opened (or a path
  // that is neither a file nor a block device refused) at once, and true
  // returned; a block device, whose open can wait on its driver, goes to a
  // thread. A short command then never starts libuv's thread pool (four
  // threads) nor wakes a thread to open a file.
  bool TryInline() {
    struct stat st;
    if (::stat(path_.c_str(), &st) != 0) {
      fail_.set(errno, "stat", path_);
      return true;
    }
    if (S_ISBLK(st.st_mode)) return false;
    OpenStatted(st);
    return true;
  }

  // Settles the promise now (TryInline answered: the worker is never queued).
  void SettleNow() { OnOK(); }

 private:
  void OpenStatted(const struct stat& st) {
    bool blk = S_ISBLK(st.st_mode);
    if (!blk && !S_ISREG(st.st_mode)) return fail_.set(EINVAL, "open", path_, "not a regular file or block device");

    // Read-only, always: dmthin never opens metadata for writing.
    int flags = O_RDONLY | O_CLOEXEC;
    if (exclusive_ && blk) flags |= O_EXCL;  // a claimed device (active pool) gives EBUSY
    int fd = OpenMaybeDirect(path_, flags, 0, blk, direct_mode_, &direct_, fail_);
    if (fd < 0) return;
    if (!ProbeOpened(fd, path_, &probe_, fail_)) {
      ::close(fd);
      return;
    }
    fd_ = fd;
  }

 protected:
  void Settled() override {
    if (fail_.failed()) owner_->fd_ = -1;
  }

  Napi::Value Result(Napi::Env env) override {
    owner_->fd_ = fd_;
    owner_->path_ = path_;
    owner_->try_cached_ = !direct_;
    owner_->direct_ = direct_;
    owner_->cancel_walks_ = false;
    Napi::Object o = Napi::Object::New(env);
    o.Set("size", static_cast<double>(probe_.size));
    // A file's O_DIRECT alignment, where the kernel tells it, stands for its logical block size.
    const bool file_align = !probe_.block_device && probe_.dio_offset_align;
    o.Set("logicalBlockSize", file_align ? probe_.dio_offset_align : probe_.logical_block_size);
    o.Set("blockDevice", probe_.block_device);
    o.Set("direct", direct_);
    return o;
  }

 private:
  std::string path_;
  std::string direct_mode_;
  bool exclusive_;
  int fd_ = -1;
  bool direct_ = false;
  FileProbe probe_;
};

// ---------------------------------------------------------------- read

struct Request {
  uint64_t block;
  uint32_t slot;  // index in the caller's list = position in the output buffer
};

struct Run {
  size_t begin, end;  // range in the sorted request list
};

class ReadWorker : public PromiseWorker<BlockReader> {
 public:
  ReadWorker(Napi::Env env, BlockReader* owner, std::vector<Request> reqs, uint32_t block_size, bool checksum)
      : PromiseWorker(env, owner, "dmthin:read"),
        fd_(owner->fd_),
        path_(owner->path_),
        pool_(owner->pool_),
        reqs_(std::move(reqs)),
        block_size_(block_size),
        checksum_(checksum) {
    owner_->inflight_++;
    // The buffer comes from this (the JS) thread's malloc arena: taken on a
    // worker thread and freed here, it left each libuv thread's arena holding
    // freed batches (peak RSS +6..10 MiB on a 10M-mapping walk).
    n_ = reqs_.size();
    if (n_) out_ = pool_->Take(n_ * block_size_, &cap_);
  }
  ~ReadWorker() override {
    if (out_) pool_->Give(out_, cap_);
  }

  void Execute() override {
    if (n_ == 0) return;
    if (!out_) return fail_.set(ENOMEM, cap_ > BufferPool::kPooledBytes ? "mmap" : "posix_memalign", path_);
    std::vector<Run> runs = Plan();

    // Random reads need several in flight to use the device; a few threads do that.
    unsigned nthreads = static_cast<unsigned>(std::min<size_t>(kMaxThreads, runs.size()));
    std::atomic<size_t> next{0};
    std::vector<SysFailure> fails(nthreads);
    auto work = [&](unsigned t) {
      AlignedBuf scratch;
      if (!scratch.Alloc(static_cast<size_t>(block_size_), false)) {
        fails[t].set(ENOMEM, "posix_memalign", path_);
        return;
      }
      for (;;) {
        size_t r = next.fetch_add(1);
        if (r >= runs.size()) break;
        if (!ReadRun(runs[r], scratch.p, fails[t])) break;
      }
    };
    if (nthreads == 1) {
      work(0);
    } else {
      std::vector<std::thread> pool;
      for (unsigned t = 0; t < nthreads; t++) pool.emplace_back(work, t);
      for (auto& th : pool) th.join();
    }
    for (auto& f : fails)
      if (f.failed()) {
        fail_ = f;
        return;
      }

    Checksums();
  }

  // JS thread: the whole batch from the page cache without waiting (preadv2
  // with RWF_NOWAIT), so that the read needs no worker thread. False when any
  // of it is not cached (or anything else fails): Execute then does it all.
  // *refused: the kernel or filesystem does not know RWF_NOWAIT.
  bool TryCached(bool* refused) {
    if (n_ == 0 || !out_) return false;
    std::vector<Run> runs = Plan();
    AlignedBuf scratch;
    if (!scratch.Alloc(static_cast<size_t>(block_size_), false)) return false;
    SysFailure f;
    for (const Run& r : runs)
      if (!ReadRun(r, scratch.p, f, RWF_NOWAIT)) {
        *refused = f.err == EOPNOTSUPP || f.err == EINVAL;
        return false;
      }
    Checksums();
    return true;
  }

  // Settles the promise now (TryCached succeeded: the worker is never queued).
  void SettleNow() { OnOK(); }

 protected:
  void Settled() override { owner_->FinishRead(); }

  Napi::Value Result(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    Napi::Buffer<uint8_t> data;
    if (n_ == 0) {
      data = Napi::Buffer<uint8_t>::New(env, 0);
    } else {
      auto* rb = new ReadBuffer{out_, cap_, pool_};
      out_ = nullptr;  // ownership moves to the Buffer
      // V8 does not see memory behind an external Buffer: tell it, so that a
      // long walk's dropped batches are collected promptly instead of
      // piling up between major GCs. A released buffer is un-accounted at once.
      Napi::MemoryManagement::AdjustExternalMemory(env, static_cast<int64_t>(rb->cap));
      data = Napi::Buffer<uint8_t>::New(env, rb->p, n_ * block_size_, [](Napi::Env e, uint8_t*, ReadBuffer* b) {
        if (!b->released) {
          b->pool->live.erase(b->p);
          b->pool->Give(b->p, b->cap);
          Napi::MemoryManagement::AdjustExternalMemory(e, -static_cast<int64_t>(b->cap));
        }
        delete b;
      }, rb);
      pool_->live[rb->p] = rb;
    }
    o.Set("data", data);
    if (checksum_) {
      Napi::Uint32Array c = Napi::Uint32Array::New(env, n_);
      if (n_) std::memcpy(c.Data(), crcs_.data(), n_ * 4);
      o.Set("crcs", c);
    }
    return o;
  }


 private:
  // Sorts the requests and coalesces them into runs: blocks at most
  // kMaxGapBlocks apart go in one preadv; the holes land in a scratch buffer.
  // Duplicate requests are read once and copied. Long runs are cut into
  // pieces so that several threads stream them at once: a virtio or NVMe
  // device delivers more with a few requests queued.
  std::vector<Run> Plan() {
    std::stable_sort(reqs_.begin(), reqs_.end(), [](const Request& a, const Request& b) { return a.block < b.block; });
    const uint64_t max_gap = kMaxGapBytes / block_size_;
    const uint64_t piece = std::max<uint64_t>(1, kPieceBytes / block_size_);
    std::vector<Run> runs;
    size_t start = 0;
    for (size_t i = 1; i <= n_; i++) {
      bool split = i == n_ || reqs_[i].block - reqs_[i - 1].block > max_gap + 1 ||
                   (reqs_[i].block != reqs_[i - 1].block && reqs_[i].block - reqs_[start].block >= piece);
      if (split) {
        runs.push_back({start, i});
        start = i;
      }
    }
    return runs;
  }

  void Checksums() {
    if (!checksum_) return;
    crcs_.resize(n_);
    for (size_t i = 0; i < n_; i++) crcs_[i] = Crc32cUpdate(0xFFFFFFFFu, out_ + i * block_size_ + 4, block_size_ - 4);
  }

  bool ReadRun(const Run& run, uint8_t* scratch, SysFailure& fail, int flags = 0) {
    uint64_t first = reqs_[run.begin].block;
    uint64_t last = reqs_[run.end - 1].block;
    size_t nblocks = static_cast<size_t>(last - first + 1);
    std::vector<struct iovec> iov;
    iov.reserve(nblocks);
    size_t j = run.begin;
    for (uint64_t b = first; b <= last; b++) {
      if (j < run.end && reqs_[j].block == b) {
        iov.push_back({out_ + static_cast<size_t>(reqs_[j].slot) * block_size_, block_size_});
        while (j < run.end && reqs_[j].block == b) j++;
      } else {
        iov.push_back({scratch, block_size_});
      }
    }
    uint64_t off = first * block_size_;
    size_t idx = 0;
    size_t total = static_cast<size_t>(nblocks) * block_size_;
    size_t done = 0;
    while (done < total) {
      int cnt = static_cast<int>(std::min<size_t>(iov.size() - idx, IOV_MAX));
      ssize_t got = ::preadv2(fd_, iov.data() + idx, cnt, static_cast<off_t>(off + done), flags);
      if (got < 0) {
        if (errno == EINTR) continue;
        fail.set(errno, "preadv", path_);
        fail.offset = static_cast<double>(off + done);
        return false;
      }
      if (got == 0) {
        // The device ends inside this run: the caller asked for a block past the end.
        fail.set(EIO, "preadv", path_, "short read: block beyond the end of the device");
        fail.offset = static_cast<double>(off + done);
        return false;
      }
      done += static_cast<size_t>(got);
      AdvanceIov(iov, idx, static_cast<size_t>(got));
    }
    // Copy the duplicates from the first slot that received each block.
    for (size_t k = run.begin + 1; k < run.end; k++) {
      if (reqs_[k].block == reqs_[k - 1].block) {
        size_t src = k - 1;
        while (src > run.begin && reqs_[src - 1].block == reqs_[k].block) src--;
        std::memcpy(out_ + static_cast<size_t>(reqs_[k].slot) * block_size_,
                    out_ + static_cast<size_t>(reqs_[src].slot) * block_size_, block_size_);
      }
    }
    return true;
  }

  int fd_;
  std::string path_;
  std::shared_ptr<BufferPool> pool_;
  std::vector<Request> reqs_;
  uint32_t block_size_;
  bool checksum_;
  size_t n_ = 0;
  uint8_t* out_ = nullptr;
  size_t cap_ = 0;
  std::vector<uint32_t> crcs_;
};


// ---------------------------------------------------------------- details walk

class WalkWorker : public PromiseWorker<BlockReader> {
 public:
  WalkWorker(Napi::Env env, BlockReader* owner, uint64_t root, uint64_t limit, bool ring)
      : PromiseWorker(env, owner, "dmthin:walk"), fd_(owner->fd_), cancel_(&owner->cancel_walks_), root_(root), limit_(limit), reads_(ring) {
    owner_->inflight_++;
  }
  ~WalkWorker() override { FreeDetailsColumns(&cols_); }

  // JS thread, from the page cache only, and at most kMaxCachedWalkLeaves
  // leaves (the event loop waits meanwhile): true when that settled it.
  // Not cached, or larger: false, and the worker thread walks it (Queue).
  bool TryCached() {
    const WalkStatus st = Walk(false, kMaxCachedWalkLeaves);
    return st != WalkStatus::kWouldBlock && st != WalkStatus::kTooLarge;
  }

  // A worker thread: the walk again, its reads waiting for the disk.
  void Execute() override {
    waited_ = true;
    Walk(true, kMaxWalkLeaves);
  }

  void SettleNow() { OnOK(); }

 protected:
  void Settled() override { owner_->FinishRead(); }

  Napi::Value Result(Napi::Env env) override {
    if (status_ != WalkStatus::kOk) return env.Null();
    Napi::Object o = Napi::Object::New(env);
    o.Set("rows", static_cast<double>(cols_.rows));
    o.Set("count", static_cast<double>(cols_.count));
    o.Set("blocksRead", static_cast<double>(blocks_read_));
    o.Set("waited", waited_);
    o.Set("columns", TakeDetailsColumns(env, &cols_));  // last: it empties cols_
    return o;
  }

 private:
  WalkStatus Walk(bool wait, size_t max_leaves) {
    FreeDetailsColumns(&cols_);
    status_ = WalkStatus::kReadFailed;
    AlignedBuf window;
    try {
      if (!window.Alloc(kWalkWindowBlocks * 4096, false)) return status_;
      WalkSource src;
      src.limit = limit_;
      src.window = window.p;
      src.window_blocks = kWalkWindowBlocks;
      const int fd = fd_;
      const std::atomic<bool>* cancel = cancel_;
      BatchReads* reads = &reads_;
      src.read = [fd, reads, wait, cancel](const uint64_t* blocks, size_t n, uint8_t* out) {
        // The reader closed meanwhile (a cancelled command): stop at the next batch.
        if (cancel->load(std::memory_order_relaxed)) return ECANCELED;
        return reads->Read(fd, blocks, n, out, wait);
      };
      status_ = WalkDetailsColumns(src, root_, max_leaves, &cols_, &blocks_read_);
    } catch (...) {
      status_ = WalkStatus::kReadFailed;  // out of memory: the caller's walk
    }
    // Reads the kernel would not wait for may still land in the window: never freed then.
    if (reads_.Poisoned()) window.p = nullptr;
    return status_;
  }

  int fd_;
  const std::atomic<bool>* cancel_;
  uint64_t root_;
  uint64_t limit_;
  // Its reads' ring, set up on first use and closed with the walk (the JS
  // thread's attempt, then the worker's: one at a time).
  BatchReads reads_;
  WalkStatus status_ = WalkStatus::kReadFailed;
  DetailsColumnsBlock cols_;
  uint64_t blocks_read_ = 0;
  bool waited_ = false;
};

}  // namespace

// ---------------------------------------------------------------- buffers

BufferPool::~BufferPool() {
  // The pool dies after the last buffer handed out (each holds a reference to it).
  for (auto& list : heap_free_)
    for (uint8_t* p : list) std::free(p);
  for (uint8_t* s : slabs_) ::munmap(s, kSlabBytes);
}

uint8_t* BufferPool::NewSlab() {
  uint8_t* slab = MapHuge(kSlabBytes);
  if (slab) slabs_.push_back(slab);
  return slab;
}

uint8_t* BufferPool::TakeSlabPiece(int k) {
  auto& list = slab_free_[k - kMinClass];
  if (!list.empty()) {
    uint8_t* p = list.back();
    list.pop_back();
    return p;
  }
  // Halve a piece of the next class (a new slab above the largest): pieces are
  // never merged again, so a slab serves whatever mix of sizes a walk asks for.
  uint8_t* big = nullptr;
  if (k < kMaxClass) {
    big = TakeSlabPiece(k + 1);
  } else if (slabs_.size() < kMaxSlabs) {
    big = NewSlab();
    if (big) slab_free_[k - kMinClass].push_back(big + (size_t{1} << k));
    return big;
  }
  if (big) list.push_back(big + (size_t{1} << k));
  return big;
}

bool BufferPool::InSlab(const uint8_t* p) const {
  for (const uint8_t* s : slabs_)
    if (p >= s && p < s + kSlabBytes) return true;
  return false;
}

int BufferPool::ClassOf(size_t cap) {
  for (int k = kMinClass; k <= kMaxClass; k++)
    if (cap == (size_t{1} << k)) return k - kMinClass;
  return -1;
}

uint8_t* BufferPool::Take(size_t bytes, size_t* cap) {
  *cap = bytes;
  if (bytes >= (size_t{1} << kMinClass) && bytes <= kPooledBytes) {
    int k = kMinClass;
    while ((size_t{1} << k) < bytes) k++;
    *cap = size_t{1} << k;
    std::lock_guard<std::mutex> g(mu);
    if (uint8_t* p = TakeSlabPiece(k)) return p;
    auto& list = heap_free_[k - kMinClass];
    if (!list.empty()) {
      uint8_t* p = list.back();
      list.pop_back();
      heap_free_bytes_ -= *cap;
      return p;
    }
  }
  // A batch above the pooled sizes (ls reads the details and top-level trees
  // 1,024 blocks at a time): its own huge-page mapping, unmapped when given
  // back. From malloc it was a fresh mmap all the same (above the 1 MiB
  // threshold the CLI sets), faulted in 4 KiB at a time: 1,600 of the 7,300
  // faults of ls on 70,000 devices.
  if (bytes > kPooledBytes) return MapHuge(bytes);
  void* p = nullptr;
  if (::posix_memalign(&p, kDirectAlign, *cap) != 0) return nullptr;
  return static_cast<uint8_t*>(p);
}

void BufferPool::Give(uint8_t* p, size_t cap) {
  int k = ClassOf(cap);
  if (k >= 0) {
    std::lock_guard<std::mutex> g(mu);
    if (InSlab(p)) {
      slab_free_[k].push_back(p);
      return;
    }
    if (heap_free_bytes_ + cap <= kMaxFreeBytes) {
      heap_free_[k].push_back(p);
      heap_free_bytes_ += cap;
      return;
    }
  }
  if (cap > kPooledBytes) {
    ::munmap(p, HugeSpan(cap));
    return;
  }
  std::free(p);
}

// ---------------------------------------------------------------- class

void BlockReader::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DefineClass(env, "BlockReader",
                                    {InstanceMethod("open", &BlockReader::Open),
                                     InstanceMethod("read", &BlockReader::Read),
                                     InstanceMethod("close", &BlockReader::Close),
                                     InstanceMethod("release", &BlockReader::Release),
                                     InstanceMethod("walkDetails", &BlockReader::WalkDetails)});
  exports.Set("BlockReader", ctor);
}

BlockReader::BlockReader(const Napi::CallbackInfo& info) : Napi::ObjectWrap<BlockReader>(info) {}

BlockReader::~BlockReader() {
  if (fd_ >= 0) ::close(fd_);
}

Napi::Value BlockReader::Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "open(path: string, direct?: 'auto'|'always'|'never', exclusive?: boolean)");
  if (fd_ >= 0 || opening_) throw Napi::Error::New(env, "BlockReader is already open");
  std::string mode = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "auto";
  if (mode != "auto" && mode != "always" && mode != "never") throw Napi::TypeError::New(env, "direct must be 'auto', 'always' or 'never'");
  bool exclusive = info.Length() > 2 && info[2].ToBoolean().Value();
  opening_ = true;
  auto* w = new OpenWorker(env, this, info[0].As<Napi::String>().Utf8Value(), mode, exclusive);
  Napi::Promise p = w->Promise();
  bool inline_done = false;
  try {
    inline_done = w->TryInline();
  } catch (...) {
    inline_done = false;  // out of memory in its strings: the thread opens it and reports
  }
  if (inline_done) {
    w->SettleNow();
    delete w;
    opening_ = false;
    return p;
  }
  w->Queue();
  opening_ = false;  // fd_ is set on completion; the JS wrapper serialises open/read
  return p;
}

Napi::Value BlockReader::Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (fd_ < 0 || close_pending_) {
    throw MakeErrnoError(env, EBADF, "read", path_);
  }
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsTypedArray())
    throw Napi::TypeError::New(env, "read(blockSize: number, blocks: Float64Array, checksum?: boolean)");
  double bs = info[0].As<Napi::Number>().DoubleValue();
  if (!(bs >= 512 && bs <= (1 << 30)) || static_cast<uint32_t>(bs) != bs || (static_cast<uint32_t>(bs) % 512) != 0)
    throw Napi::RangeError::New(env, "blockSize must be a multiple of 512 up to 1 GiB");
  uint32_t block_size = static_cast<uint32_t>(bs);
  Napi::TypedArray ta = info[1].As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_float64_array) throw Napi::TypeError::New(env, "blocks must be a Float64Array");
  Napi::Float64Array arr = ta.As<Napi::Float64Array>();
  bool checksum = info.Length() > 2 && info[2].ToBoolean().Value();
  if (checksum && block_size != 4096) throw Napi::RangeError::New(env, "checksums are computed for 4096-byte blocks only");
  size_t n = arr.ElementLength();
  if (static_cast<uint64_t>(n) * block_size > kMaxBatchBytes) throw Napi::RangeError::New(env, "batch larger than 1 GiB");
  std::vector<Request> reqs(n);
  const double limit = static_cast<double>(INT64_MAX / block_size);
  for (size_t i = 0; i < n; i++) {
    double b = arr[i];
    if (!(b >= 0 && b < limit) || static_cast<double>(static_cast<uint64_t>(b)) != b)
      throw Napi::RangeError::New(env, "block number out of range: " + std::to_string(b));
    reqs[i] = {static_cast<uint64_t>(b), static_cast<uint32_t>(i)};
  }
  auto* w = new ReadWorker(env, this, std::move(reqs), block_size, checksum);
  Napi::Promise p = w->Promise();
  // A metadata file read through the page cache is usually cached whole:
  // then the read is a copy, done here. Handing it to a libuv thread cost
  // the JS thread ~70 us a batch on the bench VM (waking the thread).
  // (The JS wrapper lets the event loop turn every few reads: a walk whose
  // reads all settle here would never wait, see src/native/block-reader.ts.)
  bool refused = false;
  bool cached = false;
  if (try_cached_) {
    // Out of memory here (its vectors) falls back to the thread, whose
    // Execute reports errors through the promise; never a throw that would
    // leave this worker, its promise and the reader's in-flight count behind.
    try {
      cached = w->TryCached(&refused);
    } catch (...) {
      cached = false;
    }
  }
  if (cached) {
    w->SettleNow();
    delete w;
    return p;
  }
  if (refused) try_cached_ = false;
  w->Queue();
  return p;
}

// release(data: Buffer): true when `data` was a batch of this reader, now
// detached (every view of it reads as empty) and its memory reused or freed;
// false for anything else (left alone).
Napi::Value BlockReader::Release(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsBuffer()) throw Napi::TypeError::New(env, "release(data: Buffer)");
  Napi::Buffer<uint8_t> buf = info[0].As<Napi::Buffer<uint8_t>>();
  auto it = pool_->live.find(buf.Data());
  if (it == pool_->live.end()) return Napi::Boolean::New(env, false);
  Napi::ArrayBuffer ab = buf.ArrayBuffer();
  if (ab.Data() != buf.Data()) return Napi::Boolean::New(env, false);  // a view that does not start at the batch
  ReadBuffer* rb = it->second;
  pool_->live.erase(it);
  rb->released = true;
  uint8_t* p = rb->p;
  size_t cap = rb->cap;
  // Detach first: no JS view can reach the memory once it is reused.
  // (The finalizer may run inside Detach and delete rb: not touched after.)
  ab.Detach();
  pool_->Give(p, cap);
  Napi::MemoryManagement::AdjustExternalMemory(env, -static_cast<int64_t>(cap));
  return Napi::Boolean::New(env, true);
}

// walkDetails(root, limit, ioUring = true) -> Promise<{ columns: ArrayBuffer, rows, count, blocksRead, waited } | null>
// The device-details tree at `root` read whole and checked (btree_walk.cc)
// into details columns (details_columns.cc); blocks at or beyond `limit`
// are refused. First on this thread from the page cache; when a block is
// not cached (or the tree is large), again on a worker thread with reads
// that wait (`waited`). null when it cannot answer: O_DIRECT, a read
// error, a tree too large or any rule broken. The caller then walks the
// tree itself, which reports what is wrong. ioUring false: one preadv2 a
// block (tests of that path).
Napi::Value BlockReader::WalkDetails(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) throw Napi::TypeError::New(env, "walkDetails(root: number, limit: number, ioUring?: boolean)");
  const double root = info[0].As<Napi::Number>().DoubleValue();
  const double limit = info[1].As<Napi::Number>().DoubleValue();
  const bool ring = info.Length() < 3 || info[2].IsUndefined() || info[2].ToBoolean().Value();
  auto isIndex = [](double d) { return d >= 0 && d <= 9007199254740992.0 && std::floor(d) == d; };
  if (!isIndex(root) || !isIndex(limit)) throw Napi::RangeError::New(env, "walkDetails: root and limit must be integers in 0..2^53");
  // Buffered files only (an O_DIRECT device's reads are the caller's
  // batches on threads); a metadata device of more than 2^26 blocks (256
  // GiB) is left to the caller's walk (the walk's bit per block).
  if (fd_ < 0 || close_pending_ || direct_ || limit > static_cast<double>(kMaxWalkBlocks)) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Resolve(env.Null());
    return d.Promise();
  }
  auto* w = new WalkWorker(env, this, static_cast<uint64_t>(root), static_cast<uint64_t>(limit), ring);
  Napi::Promise p = w->Promise();
  bool settled = false;
  if (try_cached_) {
    // Never a throw past here: it would leave the worker, its promise and the reader's in-flight count behind.
    try {
      settled = w->TryCached();
    } catch (...) {
      settled = false;
    }
  }
  if (settled) {
    w->SettleNow();
    delete w;
    return p;
  }
  w->Queue();
  return p;
}

void BlockReader::FinishRead() {
  if (--inflight_ == 0 && close_pending_) CloseNow();
}

void BlockReader::CloseNow() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  close_pending_ = false;
}

Napi::Value BlockReader::Close(const Napi::CallbackInfo& info) {
  // Reads in flight keep the descriptor; the last one to finish closes it.
  // A details walk on a thread stops at its next batch.
  cancel_walks_ = true;
  if (inflight_ > 0)
    close_pending_ = true;
  else
    CloseNow();
  return info.Env().Undefined();
}

}  // namespace dmthin
