// A btree walked in native code, for the one place where the TypeScript walk
// (src/pdata/btree.ts, LeafWalk) cost more than the work: `ls` of the
// details' fields on a pool of many devices, a short command that is over
// before V8 optimises the walk (70,000 devices: ~15 ms of the JS thread for
// 1,121 nodes, the reads ~4 ms of it).
//
// It decides only whether the tree is sound: any rule broken is kRefused,
// with no reason, and the caller then walks the tree in TypeScript, which
// says what is wrong (its MetadataError kinds and messages stay in one
// home). So this must accept no tree that btree.ts refuses; a tree it
// refuses and btree.ts accepts only costs the second walk. The rules are
// btree.ts's: the checksum, the block's own number, the flags, the value
// size and max_entries for it, nr_entries <= max_entries, keys strictly
// increasing inside the range the parent gives, at least a third full below
// the root, no empty internal node, every leaf at one depth, no block twice
// in the tree, no pointer at or beyond the limit, at most 16 levels.
// test/unit/btree-walk.test.ts compares the two on damaged trees.
//
// Level by level (each level's nodes in key order, read a window at a
// time), not depth first: the same nodes and the same checks, and a
// level's reads go out together.
#include "btree_walk.h"

#include <cerrno>
#include <cstring>
#include <algorithm>
#include <vector>

#include "crc32c.h"

namespace dmthin {
namespace {

constexpr size_t kBlockBytes = 4096;
constexpr size_t kHeaderBytes = 32;
constexpr uint32_t kBtreeNodeSalt = 121107;  // checksum.ts BlockType.BtreeNode
constexpr uint32_t kInternalNode = 1;
constexpr uint32_t kLeafNode = 2;
constexpr int kMaxDepth = 16;  // btree.ts MAX_DEPTH

// A node to read and the keys its parent allows: [lo, hi), no upper bound when open.
struct Span {
  uint64_t block;
  uint64_t lo;
  uint64_t hi;
  bool open;
};

inline uint32_t U32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline uint64_t U64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// btree.ts maxEntriesFor.
uint32_t MaxEntriesFor(uint32_t value_size) {
  const uint32_t n = static_cast<uint32_t>((kBlockBytes - kHeaderBytes) / (8 + static_cast<size_t>(value_size)));
  return n - n % 3;
}

// The checks of one node (BtreeNode's constructor, checkKeys, checkFill and
// TreeValidator.visit's own), read as block `s.block` at `depth`.
bool NodeSound(const uint8_t* n, const Span& s, uint32_t leaf_value_size, int depth, bool* leaf) {
  if ((Crc32cUpdate(0xFFFFFFFFu, n + 4, kBlockBytes - 4) ^ kBtreeNodeSalt) != U32(n)) return false;
  const uint32_t flags = U32(n + 4);
  if (U64(n + 8) != s.block) return false;
  if (flags != kInternalNode && flags != kLeafNode) return false;
  *leaf = flags == kLeafNode;
  const uint32_t count = U32(n + 16);
  const uint32_t max = U32(n + 20);
  const uint32_t value_size = U32(n + 24);
  if (value_size != (*leaf ? leaf_value_size : 8)) return false;
  if (max != MaxEntriesFor(value_size)) return false;
  if (count > max) return false;
  if (count > 0) {
    const uint8_t* keys = n + kHeaderBytes;
    uint64_t prev = U64(keys);
    if (prev < s.lo) return false;
    for (uint32_t i = 1; i < count; i++) {
      const uint64_t k = U64(keys + 8 * static_cast<size_t>(i));
      if (k <= prev) return false;
      prev = k;
    }
    if (!s.open && prev >= s.hi) return false;
  }
  if (depth > 0 && count < max / 3) return false;
  if (!*leaf && count == 0) return false;
  return true;
}

}  // namespace

WalkStatus WalkBtree(const WalkSource& src, uint64_t root, uint32_t leaf_value_size, size_t max_level_nodes, const WalkCallbacks& cb, uint64_t* blocks_read) {
  *blocks_read = 0;
  if (root >= src.limit) return WalkStatus::kRefused;
  std::vector<uint64_t> seen(static_cast<size_t>((src.limit + 63) / 64), 0);
  if (src.window == nullptr || src.window_blocks == 0) return WalkStatus::kReadFailed;
  std::vector<Span> level{{root, 0, 0, true}};
  std::vector<Span> next;
  std::vector<uint64_t> nrs;
  for (int depth = 0;; depth++) {
    if (depth >= kMaxDepth) return WalkStatus::kRefused;
    for (const Span& s : level) {
      if (s.block >= src.limit) return WalkStatus::kRefused;
      uint64_t& word = seen[static_cast<size_t>(s.block >> 6)];
      const uint64_t bit = uint64_t{1} << (s.block & 63);
      if (word & bit) return WalkStatus::kRefused;
      word |= bit;
    }
    bool leaves = false;
    next.clear();
    for (size_t at = 0; at < level.size(); at += src.window_blocks) {
      const size_t n = std::min(src.window_blocks, level.size() - at);
      nrs.resize(n);
      for (size_t i = 0; i < n; i++) nrs[i] = level[at + i].block;
      const int err = src.read(nrs.data(), n, src.window);
      if (err == EAGAIN) return WalkStatus::kWouldBlock;
      if (err != 0) return WalkStatus::kReadFailed;
      *blocks_read += n;
      for (size_t i = 0; i < n; i++) {
        const Span& s = level[at + i];
        const uint8_t* node = src.window + i * kBlockBytes;
        bool leaf = false;
        if (!NodeSound(node, s, leaf_value_size, depth, &leaf)) return WalkStatus::kRefused;
        // One level holds leaves only or internal nodes only: else the leaves are at two depths.
        if (at + i == 0) {
          leaves = leaf;
          if (leaf) {
            const WalkStatus go = cb.on_leaf_level(level.size());
            if (go != WalkStatus::kOk) return go;
          }
        } else if (leaf != leaves) {
          return WalkStatus::kRefused;
        }
        if (leaf) {
          if (!cb.on_leaf(node)) return WalkStatus::kRefused;
          continue;
        }
        const uint32_t count = U32(node + 16);
        const uint8_t* keys = node + kHeaderBytes;
        const uint8_t* values = keys + 8 * static_cast<size_t>(U32(node + 20));
        // Every child is a block of its own below the limit, so more children than that is a block twice.
        if (next.size() + count > src.limit) return WalkStatus::kRefused;
        if (next.size() + count > max_level_nodes) return WalkStatus::kTooLarge;
        for (uint32_t c = 0; c < count; c++) {
          const bool last = c + 1 == count;
          next.push_back({U64(values + 8 * static_cast<size_t>(c)), U64(keys + 8 * static_cast<size_t>(c)),
                          last ? s.hi : U64(keys + 8 * static_cast<size_t>(c + 1)), last && s.open});
        }
      }
    }
    if (leaves) return WalkStatus::kOk;
    level.swap(next);
  }
}

}  // namespace dmthin
