#include "dm_control.h"

#include <fcntl.h>
#include <linux/dm-ioctl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "errors.h"

// Older headers lack the late commands; their numbers are fixed by the ABI.
#ifndef DM_DEV_ARM_POLL
#define DM_DEV_ARM_POLL _IOWR(DM_IOCTL, 16, struct dm_ioctl)
#endif
#ifndef DM_GET_TARGET_VERSION
#define DM_GET_TARGET_VERSION _IOWR(DM_IOCTL, 17, struct dm_ioctl)
#endif

namespace dmthin {
namespace {

// libdevmapper and devicemapper-rs both start result buffers at 16 KiB.
constexpr size_t kInitialBufferSize = 16 * 1024;
// Far above any real result (a LIST_DEVICES of ~100k devices); past this the
// kernel is asked for memory it may not be able to vmalloc anyway.
constexpr size_t kDefaultMaxBufferSize = 64u * 1024 * 1024;
constexpr size_t kMaxRequestSize = UINT32_MAX;  // data_size is a u32

struct Command {
  const char* name;
  unsigned long request;
  bool returns_data;  // results go past the struct: size the buffer and retry on BUFFER_FULL
};

// Indexed by command number (the header's DM_*_CMD enum).
const Command kCommands[] = {
    {"DM_VERSION", DM_VERSION, false},
    {"DM_REMOVE_ALL", DM_REMOVE_ALL, false},
    {"DM_LIST_DEVICES", DM_LIST_DEVICES, true},
    {"DM_DEV_CREATE", DM_DEV_CREATE, false},
    {"DM_DEV_REMOVE", DM_DEV_REMOVE, false},
    {"DM_DEV_RENAME", DM_DEV_RENAME, false},
    {"DM_DEV_SUSPEND", DM_DEV_SUSPEND, false},
    {"DM_DEV_STATUS", DM_DEV_STATUS, false},
    {"DM_DEV_WAIT", DM_DEV_WAIT, true},
    {"DM_TABLE_LOAD", DM_TABLE_LOAD, false},
    {"DM_TABLE_CLEAR", DM_TABLE_CLEAR, false},
    {"DM_TABLE_DEPS", DM_TABLE_DEPS, true},
    {"DM_TABLE_STATUS", DM_TABLE_STATUS, true},
    {"DM_LIST_VERSIONS", DM_LIST_VERSIONS, true},
    {"DM_TARGET_MSG", DM_TARGET_MSG, true},
    {"DM_DEV_SET_GEOMETRY", DM_DEV_SET_GEOMETRY, false},
    {"DM_DEV_ARM_POLL", DM_DEV_ARM_POLL, false},
    {"DM_GET_TARGET_VERSION", DM_GET_TARGET_VERSION, true},
};
constexpr uint32_t kNumCommands = sizeof(kCommands) / sizeof(kCommands[0]);
static_assert(DM_VERSION_CMD == 0 && DM_TABLE_STATUS_CMD == 12 && DM_TARGET_MSG_CMD == 14,
              "command numbers index kCommands");

std::string DefaultControlPath() { return std::string("/dev/") + DM_DIR + "/" + DM_CONTROL_NODE; }

// The device a request is about, for error messages: name, else uuid.
std::string RequestDevice(const struct dm_ioctl& io) {
  size_t n = strnlen(io.name, sizeof(io.name));
  if (n) return std::string(io.name, n);
  n = strnlen(io.uuid, sizeof(io.uuid));
  return std::string(io.uuid, n);
}

// One ioctl with the BUFFER_FULL retry. Shared by the worker (normal path) and
// the synchronous variant (only for releasing a metadata snapshot while the
// process is exiting, when no more async work can run).
void RunIoctl(uint32_t cmd, const std::vector<uint8_t>& request, const std::string& control, size_t max_size,
              std::vector<uint64_t>& buf, size_t& result_size, SysFailure& fail) {
  const Command& c = kCommands[cmd];
  // One descriptor per call: no process-wide state to share between
  // workers, nothing to reopen after fork, and controlPath can vary per
  // call. An open of the control node is cheap next to the ioctl itself.
  // (DM_DEV_ARM_POLL needs a long-lived fd: that is DmPoll, dm_poll.cc.)
  int fd;
  do fd = ::open(control.c_str(), O_RDWR | O_CLOEXEC); while (fd < 0 && errno == EINTR);
  if (fd < 0) return fail.set(errno, "open", control, c.name);

  size_t size = request.size();
  if (c.returns_data && size < kInitialBufferSize) size = kInitialBufferSize;
  size = (size + 7) & ~size_t(7);
  if (size > max_size && size > request.size()) size = std::max(request.size(), max_size);
  for (;;) {
    // uint64_t storage keeps the struct 8-aligned, as the kernel's records expect.
    buf.assign((size + 7) / 8, 0);
    uint8_t* p = reinterpret_cast<uint8_t*>(buf.data());
    int r;
    do {
      // Re-copy every attempt: a call that returned BUFFER_FULL (or failed)
      // may have overwritten the input, e.g. a target message.
      std::memset(p, 0, size);
      std::memcpy(p, request.data(), request.size());
      reinterpret_cast<struct dm_ioctl*>(p)->data_size = static_cast<uint32_t>(size);
      r = ::ioctl(fd, c.request, p);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
      fail.set(errno, "ioctl", std::string(), c.name);
      break;
    }
    const struct dm_ioctl* out = reinterpret_cast<const struct dm_ioctl*>(p);
    if (!c.returns_data || !(out->flags & DM_BUFFER_FULL_FLAG)) {
      size_t valid = out->data_size;
      if (valid < sizeof(struct dm_ioctl)) valid = sizeof(struct dm_ioctl);  // header always readable
      if (valid > size) valid = size;
      result_size = valid;
      break;
    }
    if (size >= max_size || size * 2 > kMaxRequestSize) {
      fail.set(ENOBUFS, "ioctl", std::string(), std::string(c.name) + ": result larger than " + std::to_string(size) + " bytes");
      break;
    }
    size = std::min(size * 2, max_size);
  }
  ::close(fd);
}

Napi::Error IoctlError(Napi::Env env, const SysFailure& fail, uint32_t cmd, const std::string& device) {
  Napi::Error e = MakeErrnoError(env, fail);
  Napi::Object o = e.Value();
  o.Set("ioctl", Napi::String::New(env, kCommands[cmd].name));
  if (!device.empty()) o.Set("device", Napi::String::New(env, device));
  return e;
}

class IoctlWorker : public Napi::AsyncWorker {
 public:
  IoctlWorker(Napi::Env env, uint32_t cmd, std::vector<uint8_t> request, std::string control, size_t max_size)
      : Napi::AsyncWorker(env, "dmthin:dm-ioctl"),
        deferred_(Napi::Promise::Deferred::New(env)),
        cmd_(cmd),
        request_(std::move(request)),
        control_(std::move(control)),
        max_size_(max_size) {
    struct dm_ioctl io;
    std::memcpy(&io, request_.data(), sizeof(io));
    device_ = RequestDevice(io);
  }

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override { RunIoctl(cmd_, request_, control_, max_size_, buf_, result_size_, fail_); }

  void OnOK() override {
    Napi::Env env = Env();
    if (fail_.failed()) {
      deferred_.Reject(IoctlError(env, fail_, cmd_, device_).Value());
      return;
    }
    Napi::Buffer<uint8_t> b = Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<uint8_t*>(buf_.data()), result_size_);
    deferred_.Resolve(b);
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  uint32_t cmd_;
  std::vector<uint8_t> request_;
  std::string control_;
  size_t max_size_;
  std::string device_;
  std::vector<uint64_t> buf_;
  size_t result_size_ = 0;
  SysFailure fail_;
};

// dmIoctl(command, request, opts?) -> Promise<Buffer>; dmIoctlSync -> Buffer
Napi::Value DmIoctlImpl(const Napi::CallbackInfo& info, bool sync) {
  Napi::Env env = info.Env();
  const char* usage = "dmIoctl(command: number, request: Buffer, opts?: { controlPath?: string, maxBufferSize?: number })";
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsTypedArray()) throw Napi::TypeError::New(env, usage);
  double cmdd = info[0].As<Napi::Number>().DoubleValue();
  if (!(cmdd >= 0 && cmdd < kNumCommands) || static_cast<uint32_t>(cmdd) != cmdd)
    throw Napi::RangeError::New(env, "unknown dm ioctl command number");
  Napi::TypedArray ta = info[1].As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_uint8_array) throw Napi::TypeError::New(env, usage);
  Napi::Uint8Array req = ta.As<Napi::Uint8Array>();
  if (req.ByteLength() < sizeof(struct dm_ioctl))
    throw Napi::RangeError::New(env, "request shorter than struct dm_ioctl (" + std::to_string(sizeof(struct dm_ioctl)) + " bytes)");
  if (req.ByteLength() > kMaxRequestSize) throw Napi::RangeError::New(env, "request larger than 4 GiB");

  std::string control = DefaultControlPath();
  size_t max_size = kDefaultMaxBufferSize;
  if (info.Length() > 2 && info[2].IsObject()) {
    Napi::Object o = info[2].As<Napi::Object>();
    Napi::Value cp = o.Get("controlPath");
    if (cp.IsString()) control = cp.As<Napi::String>().Utf8Value();
    else if (!cp.IsUndefined()) throw Napi::TypeError::New(env, "controlPath must be a string");
    Napi::Value mx = o.Get("maxBufferSize");
    if (mx.IsNumber()) {
      double m = mx.As<Napi::Number>().DoubleValue();
      if (!(m >= sizeof(struct dm_ioctl) && m <= kMaxRequestSize)) throw Napi::RangeError::New(env, "maxBufferSize out of range");
      max_size = static_cast<size_t>(m);
    } else if (!mx.IsUndefined()) {
      throw Napi::TypeError::New(env, "maxBufferSize must be a number");
    }
  }
  std::vector<uint8_t> bytes(req.Data(), req.Data() + req.ByteLength());
  if (sync) {
    std::vector<uint64_t> buf;
    size_t result_size = 0;
    SysFailure fail;
    struct dm_ioctl io;
    std::memcpy(&io, bytes.data(), sizeof(io));
    RunIoctl(static_cast<uint32_t>(cmdd), bytes, control, max_size, buf, result_size, fail);
    if (fail.failed()) throw IoctlError(env, fail, static_cast<uint32_t>(cmdd), RequestDevice(io));
    return Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<uint8_t*>(buf.data()), result_size);
  }
  auto* w = new IoctlWorker(env, static_cast<uint32_t>(cmdd), std::move(bytes), std::move(control), max_size);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value DmIoctlAsync(const Napi::CallbackInfo& info) { return DmIoctlImpl(info, false); }
// Blocks the JS thread: only for exit paths (see RunIoctl).
Napi::Value DmIoctlSync(const Napi::CallbackInfo& info) { return DmIoctlImpl(info, true); }

bool ReadDev(const Napi::CallbackInfo& info, size_t i, uint32_t limit, uint32_t* out) {
  if (info.Length() <= i || !info[i].IsNumber()) return false;
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d < limit) || static_cast<uint32_t>(d) != d) return false;
  *out = static_cast<uint32_t>(d);
  return true;
}

// mknodBlock(path, major, minor, mode): creates a block device node with
// exactly `mode` (chmod after mknod, so the umask does not matter and the
// process-wide umask is never touched). Synchronous: it is one syscall.
Napi::Value MknodBlock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t major, minor, mode;
  if (info.Length() < 4 || !info[0].IsString() || !ReadDev(info, 1, 1u << 12, &major) || !ReadDev(info, 2, 1u << 20, &minor) ||
      !ReadDev(info, 3, 07777 + 1, &mode))
    throw Napi::TypeError::New(env, "mknodBlock(path: string, major: 0..4095, minor: 0..2^20-1, mode: 0..0o7777)");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  if (::mknod(path.c_str(), S_IFBLK | (mode & 0777), makedev(major, minor)) != 0) throw MakeErrnoError(env, errno, "mknod", path);
  if (::chmod(path.c_str(), mode) != 0) {
    int e = errno;
    ::unlink(path.c_str());
    throw MakeErrnoError(env, e, "chmod", path);
  }
  return env.Undefined();
}

// unlinkNode(path, major, minor) -> boolean: removes `path` only if it is a
// block device node for major:minor (so a node udev or someone else replaced
// is left alone). false when absent or not that node.
Napi::Value UnlinkNode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t major, minor;
  if (info.Length() < 3 || !info[0].IsString() || !ReadDev(info, 1, 1u << 12, &major) || !ReadDev(info, 2, 1u << 20, &minor))
    throw Napi::TypeError::New(env, "unlinkNode(path: string, major: number, minor: number)");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Napi::Boolean::New(env, false);
    throw MakeErrnoError(env, errno, "lstat", path);
  }
  if (!S_ISBLK(st.st_mode) || st.st_rdev != makedev(major, minor)) return Napi::Boolean::New(env, false);
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return Napi::Boolean::New(env, false);
    throw MakeErrnoError(env, errno, "unlink", path);
  }
  return Napi::Boolean::New(env, true);
}

Napi::Object Constants(Napi::Env env) {
  Napi::Object c = Napi::Object::New(env);
  auto num = [&](Napi::Object o, const char* k, double v) { o.Set(k, Napi::Number::New(env, v)); };

  Napi::Object version = Napi::Object::New(env);
  num(version, "major", DM_VERSION_MAJOR);
  num(version, "minor", DM_VERSION_MINOR);
  num(version, "patch", DM_VERSION_PATCHLEVEL);
  c.Set("headerVersion", version);
  c.Set("controlPath", Napi::String::New(env, DefaultControlPath()));
  c.Set("dir", Napi::String::New(env, DM_DIR));
  num(c, "nameLen", DM_NAME_LEN);
  num(c, "uuidLen", DM_UUID_LEN);
  num(c, "maxTypeName", DM_MAX_TYPE_NAME);
  num(c, "initialBufferSize", kInitialBufferSize);
  num(c, "maxBufferSize", kDefaultMaxBufferSize);

  Napi::Object commands = Napi::Object::New(env);  // name -> nr
  Napi::Object requests = Napi::Object::New(env);  // name -> ioctl request code
  Napi::Array names = Napi::Array::New(env, kNumCommands);
  for (uint32_t i = 0; i < kNumCommands; i++) {
    num(commands, kCommands[i].name, i);
    num(requests, kCommands[i].name, static_cast<double>(kCommands[i].request));
    names.Set(i, Napi::String::New(env, kCommands[i].name));
  }
  c.Set("commands", commands);
  c.Set("requests", requests);
  c.Set("commandNames", names);

  Napi::Object flags = Napi::Object::New(env);
#define FLAG(n) num(flags, #n, static_cast<double>(n))
  FLAG(DM_READONLY_FLAG);
  FLAG(DM_SUSPEND_FLAG);
  FLAG(DM_PERSISTENT_DEV_FLAG);
  FLAG(DM_STATUS_TABLE_FLAG);
  FLAG(DM_ACTIVE_PRESENT_FLAG);
  FLAG(DM_INACTIVE_PRESENT_FLAG);
  FLAG(DM_BUFFER_FULL_FLAG);
  FLAG(DM_SKIP_BDGET_FLAG);
  FLAG(DM_SKIP_LOCKFS_FLAG);
  FLAG(DM_NOFLUSH_FLAG);
  FLAG(DM_QUERY_INACTIVE_TABLE_FLAG);
  FLAG(DM_UEVENT_GENERATED_FLAG);
  FLAG(DM_UUID_FLAG);
  FLAG(DM_SECURE_DATA_FLAG);
  FLAG(DM_DATA_OUT_FLAG);
  FLAG(DM_DEFERRED_REMOVE);
#ifdef DM_INTERNAL_SUSPEND_FLAG
  FLAG(DM_INTERNAL_SUSPEND_FLAG);
#endif
#ifdef DM_IMA_MEASUREMENT_FLAG
  FLAG(DM_IMA_MEASUREMENT_FLAG);
#endif
#ifdef DM_NAME_LIST_FLAG_HAS_UUID
  FLAG(DM_NAME_LIST_FLAG_HAS_UUID);
  FLAG(DM_NAME_LIST_FLAG_DOESNT_HAVE_UUID);
#endif
#undef FLAG
  c.Set("flags", flags);

  // Layout, so the TS encoder can assert its offsets at load.
  Napi::Object layout = Napi::Object::New(env);
  Napi::Object io = Napi::Object::New(env);
#define OFF(o, s, f) num(o, #f, offsetof(struct s, f))
  num(io, "size", sizeof(struct dm_ioctl));
  OFF(io, dm_ioctl, version);
  OFF(io, dm_ioctl, data_size);
  OFF(io, dm_ioctl, data_start);
  OFF(io, dm_ioctl, target_count);
  OFF(io, dm_ioctl, open_count);
  OFF(io, dm_ioctl, flags);
  OFF(io, dm_ioctl, event_nr);
  OFF(io, dm_ioctl, padding);
  OFF(io, dm_ioctl, dev);
  OFF(io, dm_ioctl, name);
  OFF(io, dm_ioctl, uuid);
  OFF(io, dm_ioctl, data);
  layout.Set("dm_ioctl", io);
  Napi::Object spec = Napi::Object::New(env);
  num(spec, "size", sizeof(struct dm_target_spec));
  OFF(spec, dm_target_spec, sector_start);
  OFF(spec, dm_target_spec, length);
  OFF(spec, dm_target_spec, status);
  OFF(spec, dm_target_spec, next);
  OFF(spec, dm_target_spec, target_type);
  layout.Set("dm_target_spec", spec);
  Napi::Object deps = Napi::Object::New(env);
  num(deps, "size", sizeof(struct dm_target_deps));
  OFF(deps, dm_target_deps, count);
  OFF(deps, dm_target_deps, dev);
  layout.Set("dm_target_deps", deps);
  Napi::Object nl = Napi::Object::New(env);
  num(nl, "size", sizeof(struct dm_name_list));
  OFF(nl, dm_name_list, dev);
  OFF(nl, dm_name_list, next);
  OFF(nl, dm_name_list, name);
  layout.Set("dm_name_list", nl);
  Napi::Object tv = Napi::Object::New(env);
  num(tv, "size", sizeof(struct dm_target_versions));
  OFF(tv, dm_target_versions, next);
  OFF(tv, dm_target_versions, version);
  OFF(tv, dm_target_versions, name);
  layout.Set("dm_target_versions", tv);
  Napi::Object msg = Napi::Object::New(env);
  num(msg, "size", sizeof(struct dm_target_msg));
  OFF(msg, dm_target_msg, sector);
  OFF(msg, dm_target_msg, message);
  layout.Set("dm_target_msg", msg);
#undef OFF
  c.Set("layout", layout);
  return c;
}

// exports.dmConstants, made on first use: one object per environment (a
// worker's load of the addon has its own), kept here, never by redefining
// the property (a frozen or sealed exports object, or another receiver, must
// still read the same object).
struct ConstantsCache {
  Napi::ObjectReference object;
};

Napi::Value DmConstantsGet(const Napi::CallbackInfo& info) {
  auto* cache = static_cast<ConstantsCache*>(info.Data());
  if (cache->object.IsEmpty()) cache->object = Napi::Persistent(Constants(info.Env()));
  return cache->object.Value();
}

// Assigned (a test's stand-in, as with the plain property it was): the value
// takes the accessor's place on the object assigned to. Where that object
// cannot take it (frozen, sealed), a TypeError, as strict code gets for a
// read-only property.
void DmConstantsSet(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  napi_property_descriptor d = {"dmConstants", nullptr, nullptr, nullptr, nullptr, info[0],
                                static_cast<napi_property_attributes>(napi_writable | napi_enumerable | napi_configurable), nullptr};
  bool pending = false;
  if (!info.This().IsObject() || napi_define_properties(env, info.This(), 1, &d) != napi_ok) {
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
      napi_value ignored;
      napi_get_and_clear_last_exception(env, &ignored);
    }
    throw Napi::TypeError::New(env, "Cannot assign to read only property 'dmConstants' of object");
  }
}

}  // namespace

void InitDmControl(Napi::Env env, Napi::Object exports) {
  exports.Set("dmIoctl", Napi::Function::New(env, DmIoctlAsync, "dmIoctl"));
  exports.Set("dmIoctlSync", Napi::Function::New(env, DmIoctlSync, "dmIoctlSync"));
  exports.Set("mknodBlock", Napi::Function::New(env, MknodBlock, "mknodBlock"));
  exports.Set("unlinkNode", Napi::Function::New(env, UnlinkNode, "unlinkNode"));
  // Built on first use: ~110 property sets that only a run talking to
  // device-mapper needs (every other command paid them at load, ~0.2 ms).
  auto* cache = new ConstantsCache();
  exports.AddFinalizer([](Napi::Env, ConstantsCache* c) { delete c; }, cache);
  exports.DefineProperty(Napi::PropertyDescriptor::Accessor<DmConstantsGet, DmConstantsSet>(
      "dmConstants", static_cast<napi_property_attributes>(napi_enumerable | napi_configurable), cache));
}

}  // namespace dmthin
