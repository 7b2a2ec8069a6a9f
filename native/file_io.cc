#include "file_io.h"

#include <fcntl.h>

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
