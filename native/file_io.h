// Low-level pieces both block classes (BlockReader, BlockWriter) need: the
// open that adds O_DIRECT with its one allowed fallback, the probe of what was
// opened, 4096-aligned buffers, and iovec bookkeeping after a short
// preadv/pwritev. No policy here.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "errors.h"

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

namespace dmthin {

// Memory alignment for O_DIRECT buffers (covers every logical block size Linux has).
constexpr size_t kDirectAlign = 4096;

// Opens `path` with `flags` (mode for O_CREAT), adding O_DIRECT unless
// direct_mode is "never". A regular file whose filesystem refuses O_DIRECT at
// open falls back to buffered IO in "auto" mode; a block device never does.
// Returns the descriptor and sets *direct, or -1 with `fail` set.
int OpenMaybeDirect(const std::string& path, int flags, mode_t mode, bool block_device, const std::string& direct_mode,
                    bool* direct, SysFailure& fail);

// What an opened file or block device is, as both block classes report it.
struct FileProbe {
  uint64_t size = 0;
  bool block_device = false;
  // Block device: BLKSSZGET (512 if refused). Regular file: 512.
  uint32_t logical_block_size = 512;
  // Regular file: STATX_DIOALIGN's offset alignment where the kernel reports
  // it, else 0. (Its memory alignment is not kept: our buffers are page-aligned.)
  uint32_t dio_offset_align = 0;
};

// fstat()s `fd` (the path may have changed since a stat), refuses anything but
// a regular file or block device (EINVAL), and fills *out: BLKGETSIZE64 and
// the sector sizes of a block device, the size and STATX_DIOALIGN of a file.
// Returns false with `fail` set; the descriptor stays open either way.
bool ProbeOpened(int fd, const std::string& path, FileProbe* out, SysFailure& fail);

// Drops the first `n` transferred bytes from iov[idx...], advancing idx past
// fully used entries and trimming a partly used one.
void AdvanceIov(std::vector<struct iovec>& iov, size_t& idx, size_t n);

// A kDirectAlign-aligned heap buffer, freed on destruction.
struct AlignedBuf {
  uint8_t* p = nullptr;
  size_t n = 0;
  AlignedBuf() = default;
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
  ~AlignedBuf();
  bool Alloc(size_t bytes, bool zero);
};

}  // namespace dmthin
