// Right-aligned decimal columns written into a text buffer: see decimal_cells.cc.
#pragma once

#include <napi.h>

namespace dmthin {

void InitDecimalCells(Napi::Env env, Napi::Object exports);

}  // namespace dmthin
