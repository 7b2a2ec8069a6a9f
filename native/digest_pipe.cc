#include "digest_pipe.h"

#include <dlfcn.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <set>
#include <string>
#include <system_error>

#include "promise_worker.h"

namespace dmthin {
namespace {

constexpr size_t kDefaultRing = 16 << 20;
constexpr size_t kMinRing = 64 << 10;
constexpr size_t kMaxRing = 256 << 20;
// The largest piece a lane hashes in one turn (Enqueue cuts bytes so): small
// enough that a waiting producer gets room back often, large enough that the
// lock costs nothing.
constexpr size_t kSlice = 256 << 10;
// A stream's first bytes, up to this many, are hashed on the calling thread
// as they come; the ring and the lanes' threads are made only for a stream
// that goes beyond them. A short stream (a tiny send: one header and 768 KiB
// of data) otherwise paid for starting, waking and joining two threads more
// than the ~0.3 ms its hashing takes.
constexpr uint64_t kInlineBytes = 1 << 20;
// The outer hash starts with this text and its NUL (docs/stream-format.md §6):
// version 2's with SHA-256, that of versions 3 and 4 with BLAKE3.
constexpr char kOuterPrefixSha256[] = "dmthin stream digest 2";
constexpr char kOuterPrefixBlake3[] = "dmthin stream digest 3";
static_assert(sizeof kOuterPrefixSha256 == sizeof kOuterPrefixBlake3, "the constructor hashes either prefix with one length");

class ReadyWorker : public PromiseWorker<DigestPipe> {
 public:
  ReadyWorker(Napi::Env env, DigestPipe* owner, uint64_t bytes) : PromiseWorker(env, owner, "dmthin:digest-ready"), bytes_(bytes) {}
  void Execute() override { owner_->WaitQueuedAtMost(bytes_); }

 private:
  uint64_t bytes_;
};

// Live pipes, for the exit handler. Never freed: a static destructor could
// run before the handler that walks it.
std::mutex& LiveMu() {
  static auto* m = new std::mutex;
  return *m;
}
std::set<DigestPipe*>& Live() {
  static auto* s = new std::set<DigestPipe*>;
  return *s;
}

// process.exit() ends the process without tearing the environment down (no
// cleanup hooks, no finalizers), and then OpenSSL's own exit handler frees
// its state: a thread still inside a hash update would crash. Registered
// after OpenSSL's (the addon loads later), so it runs first.
void AbandonAllAtExit() {
  std::lock_guard<std::mutex> l(LiveMu());
  for (DigestPipe* p : Live()) p->Abandon();
}

}  // namespace

RunningHash::~RunningHash() {
  if (evp_) EVP_MD_CTX_free(evp_);
}

bool RunningHash::Init(Algo algo) {
  algo_ = algo;
  if (algo == Algo::kBlake3) {
    blake3_hasher_init(&b3_);
    return true;
  }
  if (!evp_) evp_ = EVP_MD_CTX_new();
  return evp_ && EVP_DigestInit_ex(evp_, EVP_sha256(), nullptr) == 1;
}

bool RunningHash::Update(const void* p, size_t n) {
  if (algo_ == Algo::kBlake3) {
    blake3_hasher_update(&b3_, p, n);
    return true;
  }
  return EVP_DigestUpdate(evp_, p, n) == 1;
}

bool RunningHash::Final(uint8_t out[32]) {
  if (algo_ == Algo::kBlake3) {
    blake3_hasher_finalize(&b3_, out, 32);
    return true;
  }
  unsigned int n = 0;
  return EVP_DigestFinal_ex(evp_, out, &n) == 1 && n == 32;
}

// OpenSSL's low-level SHA-256 (SHA256_Init/Update/Final: the same code as
// EVP's, without the provider lookup whose first use in a process took
// ~0.6 ms of a tiny send, for two digests of a few KB). Deprecated in
// OpenSSL 3 and absent from a build without deprecated calls, so looked up
// at run time; EVP otherwise.
struct LowLevelSha256 {
  // SHA256_CTX is 112 bytes in OpenSSL 1.1 and 3; room to spare.
  using Init = int (*)(void*);
  using Update = int (*)(void*, const void*, size_t);
  using Final = int (*)(unsigned char*, void*);
  Init init = nullptr;
  Update update = nullptr;
  Final final = nullptr;
};
static const LowLevelSha256& LowLevel() {
  static const LowLevelSha256 f = [] {
    LowLevelSha256 l;
    l.init = reinterpret_cast<LowLevelSha256::Init>(::dlsym(RTLD_DEFAULT, "SHA256_Init"));
    l.update = reinterpret_cast<LowLevelSha256::Update>(::dlsym(RTLD_DEFAULT, "SHA256_Update"));
    l.final = reinterpret_cast<LowLevelSha256::Final>(::dlsym(RTLD_DEFAULT, "SHA256_Final"));
    if (!l.init || !l.update || !l.final) l = LowLevelSha256{};
    return l;
  }();
  return f;
}

// sha256(parts: Uint8Array[]): the SHA-256 of the parts in order, on the
// calling thread (for a few small inputs: snapshot identities). Node's
// node:crypto costs a command 3-6 ms of start-up to load; this does not.
static Napi::Value Sha256Once(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArray()) throw Napi::TypeError::New(env, "sha256(parts: Uint8Array[])");
  Napi::Array parts = info[0].As<Napi::Array>();
  std::vector<std::pair<const uint8_t*, size_t>> spans;
  for (uint32_t i = 0; i < parts.Length(); i++) {
    Napi::Value v = parts.Get(i);
    if (!v.IsTypedArray()) throw Napi::TypeError::New(env, "sha256(parts: Uint8Array[])");
    Napi::TypedArray ta = v.As<Napi::TypedArray>();
    spans.emplace_back(static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset(), ta.ByteLength());
  }
  uint8_t md[32];
  const LowLevelSha256& l = LowLevel();
  if (l.init) {
    alignas(16) unsigned char ctx[256];
    bool ok = l.init(ctx) == 1;
    for (auto& sp : spans) ok = ok && l.update(ctx, sp.first, sp.second) == 1;
    if (ok && l.final(md, ctx) == 1) return Napi::Buffer<uint8_t>::Copy(env, md, 32);
  }
  RunningHash h;
  bool ok = h.Init(RunningHash::Algo::kSha256);
  for (auto& sp : spans) ok = ok && h.Update(sp.first, sp.second);
  if (!ok || !h.Final(md)) throw Napi::Error::New(env, "SHA-256 is not available from Node's OpenSSL");
  return Napi::Buffer<uint8_t>::Copy(env, md, 32);
}

void DigestPipe::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DefineClass(env, "DigestPipe",
                                    {InstanceMethod("update", &DigestPipe::Update),
                                     InstanceMethod("updateHeld", &DigestPipe::UpdateHeld),
                                     InstanceMethod("queued", &DigestPipe::Queued),
                                     InstanceMethod("ready", &DigestPipe::Ready),
                                     InstanceMethod("digest", &DigestPipe::Digest),
                                     InstanceMethod("capacity", &DigestPipe::Capacity),
                                     InstanceMethod("segmentBytes", &DigestPipe::SegmentBytes),
                                     InstanceMethod("algorithm", &DigestPipe::Algorithm),
                                     InstanceMethod("abort", &DigestPipe::Abort)});
  exports.Set("DigestPipe", ctor);
  exports.Set("sha256", Napi::Function::New(env, Sha256Once, "sha256"));
  static std::once_flag once;
  std::call_once(once, [] { std::atexit(AbandonAllAtExit); });
}

// Runs when the environment is torn down (the process ends normally, or a
// worker thread's environment goes), before Node-API finalizes what remains:
// the buffers held for hashing are freed there in any order, so the thread
// must have stopped reading them first. Hooks run last-registered first and
// Node-API's own teardown hook was registered when the addon loaded.
void DigestPipe::EnvCleanup(void* arg) {
  auto* self = static_cast<DigestPipe*>(arg);
  self->hooked_ = false;
  self->Abandon();
  for (auto& r : self->refs_) r.Reset();
  self->refs_.clear();
}

DigestPipe::DigestPipe(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DigestPipe>(info) {
  Napi::Env env = info.Env();
  size_t cap = kDefaultRing;
  if (info.Length() > 0 && info[0].IsNumber()) {
    double c = info[0].As<Napi::Number>().DoubleValue();
    if (!(c >= kMinRing && c <= kMaxRing)) throw Napi::RangeError::New(env, "ring size must be 64 KiB .. 256 MiB");
    cap = static_cast<size_t>(c);
  }
  if (info.Length() > 1 && info[1].IsNumber()) {
    double sb = info[1].As<Napi::Number>().DoubleValue();
    if (!(sb == 0 || (sb >= 4096 && sb <= (1u << 30) && std::fmod(sb, 4096) == 0))) {
      throw Napi::RangeError::New(env, "segment size must be 0 or a multiple of 4 KiB up to 1 GiB");
    }
    seg_bytes_ = static_cast<uint64_t>(sb);
  }
  if (info.Length() > 2 && !info[2].IsUndefined()) {
    std::string a = info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "";
    if (a == "blake3") {
      algo_ = RunningHash::Algo::kBlake3;
    } else if (a != "sha256") {
      throw Napi::TypeError::New(env, "algorithm must be 'sha256' or 'blake3'");
    }
    if (algo_ == RunningHash::Algo::kBlake3 && seg_bytes_ == 0) throw Napi::RangeError::New(env, "BLAKE3 is hashed in segments only (format version 3)");
  }
  // Version 1 is one SHA-256: one lane. Version 2's lanes: one per core, at most four.
  unsigned cores = std::thread::hardware_concurrency();
  size_t lanes = seg_bytes_ == 0 ? 1 : std::clamp<unsigned>(cores == 0 ? 1 : cores, 1, 4);
  lanes_ = std::vector<Lane>(lanes);  // sized once: the threads keep pointers into it
  bool ok = true;
  if (seg_bytes_ == 0) ok = lanes_[0].h.Init(algo_);
  if (ok && seg_bytes_ != 0) {
    uint8_t sz[4];
    for (int i = 0; i < 4; i++) sz[i] = static_cast<uint8_t>(seg_bytes_ >> (8 * i));
    bool b3 = algo_ == RunningHash::Algo::kBlake3;
    ok = outer_.Init(algo_) && outer_.Update(b3 ? kOuterPrefixBlake3 : kOuterPrefixSha256, sizeof kOuterPrefixSha256) && outer_.Update(sz, 4);
  }
  if (!ok) {
    lanes_.clear();
    throw Napi::Error::New(env, "SHA-256 is not available from Node's OpenSSL");
  }
  cap_ = cap;  // the ring itself, and the threads, come with Start()
  env_ = env;
  if (napi_add_env_cleanup_hook(env, EnvCleanup, this) == napi_ok) hooked_ = true;
  std::lock_guard<std::mutex> l(LiveMu());
  Live().insert(this);
}

// The ring and the lanes' threads, once a stream goes beyond kInlineBytes.
// JS thread, before anything is queued.
void DigestPipe::Start(Napi::Env env) {
  ring_ = static_cast<uint8_t*>(std::malloc(cap_));
  if (!ring_) throw Napi::Error::New(env, "out of memory for the digest's ring");
  // V8 does not see this memory otherwise.
  Napi::MemoryManagement::AdjustExternalMemory(env, static_cast<int64_t>(cap_));
  try {
    for (Lane& ln : lanes_) {
      Lane* lp = &ln;
      ln.thread = std::thread([this, lp] { Run(lp); });
    }
  } catch (const std::system_error& e) {
    // No thread to be had (RLIMIT_NPROC, memory): an error, not std::terminate (exit 134). The
    // lanes started stop, the pipe is finished.
    Stop(true);
    finished_ = true;
    FreeRing(env);
    throw Napi::Error::New(env, std::string("the digest's threads could not be started: ") + e.what());
  }
  started_ = true;
}

// Before Start(): `n` bytes hashed here, as the lanes would hash them (the
// same segments, each on the lane state of its turn, folded in order), so
// the lanes started later go on from where this left off.
void DigestPipe::HashInline(const uint8_t* p, size_t n) {
  std::lock_guard<std::mutex> l(mu_);
  size_t lanes = lanes_.size();
  while (n > 0) {
    uint64_t seg = seg_bytes_ ? fed_ / seg_bytes_ : 0;
    size_t take = n;
    if (seg_bytes_) take = static_cast<size_t>(std::min<uint64_t>(take, (seg + 1) * seg_bytes_ - fed_));
    fed_ += take;
    n -= take;
    Lane& lane = lanes_[seg % lanes];
    bool ok = true;
    if (seg_bytes_ && lane.seg != static_cast<int64_t>(seg)) {
      ok = lane.h.Init(algo_);
      lane.seg = static_cast<int64_t>(seg);
    }
    ok = ok && lane.h.Update(p, take);
    if (ok && seg_bytes_ != 0 && fed_ % seg_bytes_ == 0) {
      std::array<uint8_t, 32> md;
      ok = lane.h.Final(md.data());
      lane.seg = -1;
      if (ok) {
        seg_done_[seg] = md;
        FoldLocked();
      }
    }
    if (!ok) failed_ = true;
    p += take;
  }
}

// Update's and UpdateHeld's first step: true when the bytes were hashed here
// (the stream still within kInlineBytes); else the pipe is started, if it
// was not, and the caller queues them.
bool DigestPipe::HashedBeforeStart(Napi::Env env, const uint8_t* p, size_t n) {
  if (started_) return false;
  if (fed_ + n <= kInlineBytes) {
    HashInline(p, n);
    return true;
  }
  Start(env);
  return false;
}

DigestPipe::~DigestPipe() {
  {
    std::lock_guard<std::mutex> l(LiveMu());
    Live().erase(this);
  }
  if (hooked_) napi_remove_env_cleanup_hook(env_, EnvCleanup, this);
  Stop(true);
  for (auto& r : refs_) r.Reset();
  FreeRing(Env());
}

// The ring, if Start() made it, given back (and to V8's count).
void DigestPipe::FreeRing(Napi::Env env) {
  if (!ring_) return;
  std::free(ring_);
  ring_ = nullptr;
  Napi::MemoryManagement::AdjustExternalMemory(env, -static_cast<int64_t>(cap_));
}

void DigestPipe::Stop(bool abandon) {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
    if (abandon) abandon_ = true;
  }
  for (Lane& ln : lanes_) ln.cv.notify_all();
  space_cv_.notify_all();
  for (Lane& ln : lanes_) {
    if (ln.thread.joinable()) ln.thread.join();
  }
}

void DigestPipe::Abandon() { Stop(true); }

// An external buffer (the addon's aligned send buffers) frees its memory in
// a cleanup hook of its own, and hooks run newest first: ours is registered
// again after the newest buffer held, so it stops the thread before any
// held buffer is freed.
void DigestPipe::Rehook(napi_env env) {
  if (hooked_) napi_remove_env_cleanup_hook(env, EnvCleanup, this);
  hooked_ = napi_add_env_cleanup_hook(env, EnvCleanup, this) == napi_ok;
}

// Cuts bytes into pieces of at most kSlice that never cross a segment's end
// and gives each to its segment's lane. Pieces are freed in stream order
// (the ring is given back in order) whichever lane finishes first.
void DigestPipe::Enqueue(const uint8_t* p, size_t n, bool held) {
  size_t lanes = lanes_.size();
  uint32_t woken = 0;  // lanes given pieces (at most four)
  while (n > 0) {
    uint64_t seg = seg_bytes_ ? fed_ / seg_bytes_ : 0;
    size_t take = std::min(n, kSlice);
    if (seg_bytes_) take = static_cast<size_t>(std::min<uint64_t>(take, (seg + 1) * seg_bytes_ - fed_));
    fed_ += take;
    n -= take;
    bool seg_end = seg_bytes_ != 0 && fed_ % seg_bytes_ == 0;
    pieces_.push_back({p, take, seg, held, held && n == 0, seg_end, false});
    lanes_[seg % lanes].q.push_back(popped_ + pieces_.size() - 1);
    woken |= 1u << (seg % lanes);
    queued_ += take;
    p += take;
  }
  for (size_t i = 0; i < lanes; i++) {
    if (woken & (1u << i)) lanes_[i].cv.notify_one();
  }
}

// Segmented digests: the segment digests whose turn has come go into the outer hash.
void DigestPipe::FoldLocked() {
  for (auto it = seg_done_.begin(); it != seg_done_.end() && it->first == next_fold_; it = seg_done_.erase(it)) {
    if (!outer_.Update(it->second.data(), 32)) failed_ = true;
    next_fold_++;
  }
}

void DigestPipe::Run(Lane* lane) {
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    lane->cv.wait(l, [&] { return stop_ || !lane->q.empty(); });
    if (abandon_ || (stop_ && lane->q.empty())) break;
    uint64_t id = lane->q.front();
    Piece pc = pieces_[id - popped_];
    // The piece is this lane's alone until marked done: producers only append.
    l.unlock();
    bool ok = true;
    if (seg_bytes_ && lane->seg != static_cast<int64_t>(pc.seg)) {
      ok = lane->h.Init(algo_);
      lane->seg = static_cast<int64_t>(pc.seg);
    }
    ok = ok && lane->h.Update(pc.p, pc.n);
    std::array<uint8_t, 32> md;
    if (pc.seg_end) {
      ok = ok && lane->h.Final(md.data());
      lane->seg = -1;
    }
    l.lock();
    if (!ok) failed_ = true;
    if (pc.seg_end && ok) {
      seg_done_[pc.seg] = md;
      FoldLocked();
    }
    lane->q.pop_front();
    pieces_[id - popped_].done = true;
    // Counted off in stream order, so "at most N queued" means every byte
    // before the last N is hashed (what hashedThrough and held buffers rely on).
    bool freed = false;
    while (!pieces_.empty() && pieces_.front().done) {
      freed = true;
      const Piece& f = pieces_.front();
      queued_ -= f.n;
      if (!f.held) ring_tail_ += f.n;
      if (f.held_last) held_done_++;
      pieces_.pop_front();
      popped_++;
    }
    if (freed) space_cv_.notify_all();
  }
  space_cv_.notify_all();
}

// After the lanes have ended (all bytes hashed): the digest. A segmented
// digest ends the last, partial segment, folds it and appends the length.
bool DigestPipe::FinishLanes(uint8_t out[32]) {
  if (failed_) return false;
  if (seg_bytes_ == 0) return lanes_[0].h.Final(out);
  for (Lane& ln : lanes_) {
    if (ln.seg < 0) continue;
    std::array<uint8_t, 32> md;
    if (!ln.h.Final(md.data())) return false;
    seg_done_[static_cast<uint64_t>(ln.seg)] = md;
    ln.seg = -1;
  }
  FoldLocked();
  if (failed_ || !seg_done_.empty()) return false;
  uint8_t len[8];
  for (int i = 0; i < 8; i++) len[i] = static_cast<uint8_t>(fed_ >> (8 * i));
  return outer_.Update(len, 8) && outer_.Final(out);
}

void DigestPipe::WaitQueuedAtMost(uint64_t bytes) {
  std::unique_lock<std::mutex> l(mu_);
  space_cv_.wait(l, [&] { return stop_ || queued_ <= bytes; });
}

// JS thread: drops the references of held buffers the thread is done with.
void DigestPipe::ReleaseHashed() {
  uint64_t done;
  {
    std::lock_guard<std::mutex> l(mu_);
    done = held_done_;
  }
  while (held_released_ < done && !refs_.empty()) {
    refs_.front().Reset();
    refs_.pop_front();
    held_released_++;
  }
}

static const uint8_t* BytesOf(const Napi::CallbackInfo& info, const char* usage, size_t* len) {
  if (info.Length() < 1 || !info[0].IsTypedArray()) throw Napi::TypeError::New(info.Env(), usage);
  Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
  *len = ta.ByteLength();
  return static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
}

Napi::Value DigestPipe::Update(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t len;
  const uint8_t* src = BytesOf(info, "update(data: Uint8Array)", &len);
  if (finished_) throw Napi::Error::New(env, "the hash is finished (digest taken or aborted)");
  if (HashedBeforeStart(env, src, len)) return env.Undefined();
  ReleaseHashed();
  std::unique_lock<std::mutex> l(mu_);
  while (len > 0) {
    // Blocks only when the ring is full: callers that await ready() first never wait here.
    space_cv_.wait(l, [this] { return ring_head_ - ring_tail_ < cap_; });
    // Empty (the thread has hashed all of it): start again at the ring's first byte. Small
    // updates that the thread keeps up with (a send of discard records) then touch only the
    // ring's first pages instead of walking all 16 MiB into the process's resident memory.
    if (ring_head_ == ring_tail_ && ring_head_ % cap_ != 0) ring_head_ = ring_tail_ = ring_head_ + (cap_ - ring_head_ % cap_);
    size_t off = static_cast<size_t>(ring_head_ % cap_);
    size_t n = std::min<size_t>({len, cap_ - static_cast<size_t>(ring_head_ - ring_tail_), cap_ - off});
    ring_head_ += n;  // taken: the thread will not reach it before it is queued below
    l.unlock();
    std::memcpy(ring_ + off, src, n);
    l.lock();
    Enqueue(ring_ + off, n, false);
    src += n;
    len -= n;
  }
  return env.Undefined();
}

Napi::Value DigestPipe::UpdateHeld(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t len;
  const uint8_t* src = BytesOf(info, "updateHeld(data: Uint8Array)", &len);
  if (finished_) throw Napi::Error::New(env, "the hash is finished (digest taken or aborted)");
  // Hashed now, if so: the caller may change the buffer again at once.
  if (HashedBeforeStart(env, src, len)) return env.Undefined();
  ReleaseHashed();
  if (len == 0) return env.Undefined();
  // The reference keeps the buffer's memory alive until the thread has hashed it.
  refs_.push_back(Napi::Reference<Napi::Value>::New(info[0], 1));
  Rehook(env);
  {
    std::lock_guard<std::mutex> l(mu_);
    Enqueue(src, len, true);
  }
  return env.Undefined();
}

Napi::Value DigestPipe::Queued(const Napi::CallbackInfo& info) {
  ReleaseHashed();
  std::lock_guard<std::mutex> l(mu_);
  return Napi::Number::New(info.Env(), static_cast<double>(queued_));
}

Napi::Value DigestPipe::Capacity(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), static_cast<double>(cap_)); }

Napi::Value DigestPipe::SegmentBytes(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), static_cast<double>(seg_bytes_)); }

Napi::Value DigestPipe::Algorithm(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), algo_ == RunningHash::Algo::kBlake3 ? "blake3" : "sha256");
}

Napi::Value DigestPipe::Ready(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double b = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 0;
  uint64_t bytes = b > 0 ? static_cast<uint64_t>(b) : 0;
  ReleaseHashed();
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stop_ || queued_ <= bytes) {
      auto d = Napi::Promise::Deferred::New(env);
      d.Resolve(env.Undefined());
      return d.Promise();
    }
  }
  auto* w = new ReadyWorker(env, this, bytes);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// abort(): the stream will not be finished (an error ends it): stop hashing
// now and let go of the held buffers and the ring, without waiting for the
// garbage collector to find this object.
Napi::Value DigestPipe::Abort(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  finished_ = true;
  Abandon();
  for (auto& r : refs_) r.Reset();
  refs_.clear();
  FreeRing(env);
  return env.Undefined();
}

Napi::Value DigestPipe::Digest(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (finished_) throw Napi::Error::New(env, "the hash is finished (digest taken or aborted)");
  finished_ = true;
  Stop(false);  // the thread hashes what is queued, then ends
  ReleaseHashed();
  uint8_t md[32];
  if (!FinishLanes(md)) throw Napi::Error::New(env, algo_ == RunningHash::Algo::kBlake3 ? "the BLAKE3 digest failed" : "SHA-256 failed in Node's OpenSSL");
  FreeRing(env);
  return Napi::Buffer<uint8_t>::Copy(env, md, 32);
}

}  // namespace dmthin
