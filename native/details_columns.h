// A device-details leaf's entries appended to typed-array columns: see details_columns.cc.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>

#include "btree_walk.h"

namespace dmthin {

// Appends `count` details entries (keys: u64 word pairs, values: six words
// each) to the columns `f` of `rows` rows (device-table.ts's layout) at row
// `at`, raising the maxima; -1, or the first entry whose key or
// mapped_blocks is 2^53 or more (it and those after are not written).
int64_t AppendDetailsEntries(const uint32_t* keys, const uint32_t* values, size_t count, double* f, size_t rows, size_t at);

// Columns a details walk filled: `count` rows written of `rows`.
struct DetailsColumnsBlock {
  uint8_t* p = nullptr;
  size_t bytes = 0;
  bool huge = false;
  size_t rows = 0;
  size_t count = 0;
};

// The details tree at `root` walked whole (btree_walk.cc) into columns of
// its own; *out is set only for kOk (its memory then the caller's: see
// TakeDetailsColumns). A tree of more than `max_leaves` leaves is
// kTooLarge; an entry decodeDetailsLeaf would refuse, kRefused.
WalkStatus WalkDetailsColumns(const WalkSource& src, uint64_t root, size_t max_leaves, DetailsColumnsBlock* out, uint64_t* blocks_read);

// The columns as an ArrayBuffer that frees them when collected (b no longer holds them).
Napi::ArrayBuffer TakeDetailsColumns(Napi::Env env, DetailsColumnsBlock* b);

// Frees columns not handed to JS (none held: nothing).
void FreeDetailsColumns(DetailsColumnsBlock* b);

void InitDetailsColumns(Napi::Env env, Napi::Object exports);

}  // namespace dmthin
