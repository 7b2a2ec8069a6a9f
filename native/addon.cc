// Module entry: the native layer is IO only (block reads and writes, CRC-32C, dm ioctls and event polls, flock),
// plus the stream digest (SHA-256 or BLAKE3) hashed on threads of its own, the CLI's exit guard, malloc settings and
// read-only file mappings (its module pack, file_map.cc),
// and four CPU steps a CLI run finishes before V8 optimises them (measured: JS's first tiers are several times
// slower): the integer cells of ls's table (decimal_cells.cc), the device-details leaves' copy into ls's columns
// (details_columns.cc), rmap's lines (rmap_lines.cc) and its sort (std_sort.cc).
#include <napi.h>

#include "allocator.h"
#include "block_reader.h"
#include "block_writer.h"
#include "crc32c.h"
#include "decimal_cells.h"
#include "details_columns.h"
#include "dm_control.h"
#include "dm_poll.h"
#include "exit_guard.h"
#include "file_lock.h"
#include "file_map.h"
#include "file_put.h"
#include "range_reader.h"
#include "rmap_lines.h"
#include "std_sort.h"
#include "digest_pipe.h"

namespace dmthin {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitCrc32c(env, exports);
  InitDecimalCells(env, exports);
  InitDetailsColumns(env, exports);
  InitRmapLines(env, exports);
  InitStdSort(env, exports);
  BlockReader::Init(env, exports);
  BlockWriter::Init(env, exports);
  InitDmControl(env, exports);
  DmPoll::Init(env, exports);
  InitFileLock(env, exports);
  InitFilePut(env, exports);
  DigestPipe::Init(env, exports);
  RangeReader::Init(env, exports);
  InitExitGuard(env, exports);
  InitAllocator(env, exports);
  InitFileMap(env, exports);
  return exports;
}

}  // namespace dmthin

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return dmthin::Init(env, exports); }
NODE_API_MODULE(dmthin, InitModule)
