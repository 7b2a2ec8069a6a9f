// A persistent-data btree walked level by level from a source of 4 KiB
// blocks, every node checked by the rules of src/pdata/btree.ts. See
// btree_walk.cc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

namespace dmthin {

enum class WalkStatus {
  kOk,          // every node passed; every leaf went to on_leaf in key order
  kRefused,     // a node broke a rule, or on_leaf said no: the caller's own walk reports why
  kWouldBlock,  // a read would have waited (not in the page cache)
  kTooLarge,    // more nodes in a level than the caller allows, or on_leaf_level said so
  kReadFailed,  // a read failed otherwise
};

struct WalkSource {
  // Blocks at or beyond this are refused (the smaller of the metadata
  // device's block count and the file's).
  uint64_t limit;
  // Where a level's nodes are read, `window_blocks` 4 KiB blocks at a time
  // (the caller's buffer: a reused one spares fresh pages).
  uint8_t* window;
  size_t window_blocks;
  // Reads `n` blocks into `out` (n * 4096 bytes, in order): 0, EAGAIN (would
  // block) or another errno.
  std::function<int(const uint64_t* blocks, size_t n, uint8_t* out)> read;
};

struct WalkCallbacks {
  // The leaf level is reached and holds `leaves` nodes, before any leaf is
  // passed on: kOk to go on, else the walk ends with that status.
  std::function<WalkStatus(size_t leaves)> on_leaf_level;
  // A leaf that passed every check (the node's 4096 bytes), in key order;
  // false refuses the walk (an entry the caller cannot take).
  std::function<bool(const uint8_t* node)> on_leaf;
};

// Walks the tree at `root` whose leaves hold values of `leaf_value_size`
// bytes; a level of more than `max_level_nodes` nodes is kTooLarge (a bound
// on the walk's memory and time).
// *blocks_read counts the blocks read.
WalkStatus WalkBtree(const WalkSource& src, uint64_t root, uint32_t leaf_value_size, size_t max_level_nodes, const WalkCallbacks& cb,
                     uint64_t* blocks_read);

}  // namespace dmthin
