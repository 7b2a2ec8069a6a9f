#include "file_io.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace dmthin {

int OpenMaybeDirect(const std::string& path, int flags, mode_t mode, bool block_device, const std::string& direct_mode,
                    bool* direct, SysFailure& fail) {
  *direct = direct_mode != "never";
  int fd = -1;
  if (*direct) {
    do fd = ::open(path.c_str(), flags | O_DIRECT, mode); while (fd < 0 && errno == EINTR);
    // Filesystems without O_DIRECT (older tmpfs) refuse the open itself.
    // Buffered IO is acceptable for regular files only, never for a block device.
    if (fd < 0 && errno == EINVAL && !block_device && direct_mode == "auto") {
      *direct = false;
    } else if (fd < 0) {
      fail.set(errno, "open", path);
      return -1;
    }
  }
  if (fd < 0) {
    do fd = ::open(path.c_str(), flags, mode); while (fd < 0 && errno == EINTR);
    if (fd < 0) fail.set(errno, "open", path);
  }
  return fd;
}

bool ProbeOpened(int fd, const std::string& path, FileProbe* out, SysFailure& fail) {
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    fail.set(errno, "fstat", path);
    return false;
  }
  out->block_device = S_ISBLK(st.st_mode);
  if (!out->block_device && !S_ISREG(st.st_mode)) {
    fail.set(EINVAL, "open", path, "not a regular file or block device");
    return false;
  }
  if (out->block_device) {
    uint64_t bytes = 0;
    if (::ioctl(fd, BLKGETSIZE64, &bytes) != 0) {
      fail.set(errno, "ioctl", path, "BLKGETSIZE64");
      return false;
    }
    out->size = bytes;
    int lbs = 0;
    if (::ioctl(fd, BLKSSZGET, &lbs) == 0 && lbs > 0) out->logical_block_size = static_cast<uint32_t>(lbs);
    return true;
  }
  out->size = static_cast<uint64_t>(st.st_size);
#ifdef STATX_DIOALIGN
  struct statx sx;
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN) && sx.stx_dio_offset_align) {
    out->dio_offset_align = sx.stx_dio_offset_align;
  }
#endif
  return true;
}

void AdvanceIov(std::vector<struct iovec>& iov, size_t& idx, size_t n) {
  while (n > 0 && idx < iov.size()) {
    if (n >= iov[idx].iov_len) {
      n -= iov[idx].iov_len;
      idx++;
    } else {
      iov[idx].iov_base = static_cast<uint8_t*>(iov[idx].iov_base) + n;
      iov[idx].iov_len -= n;
      n = 0;
    }
  }
}

AlignedBuf::~AlignedBuf() { std::free(p); }

bool AlignedBuf::Alloc(size_t bytes, bool zero) {
  std::free(p);
  p = nullptr;
  n = 0;
  if (::posix_memalign(reinterpret_cast<void**>(&p), kDirectAlign, bytes) != 0) {
    p = nullptr;
    return false;
  }
  n = bytes;
  if (zero) std::memset(p, 0, bytes);
  return true;
}

}  // namespace dmthin
