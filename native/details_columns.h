// A device-details leaf's entries appended to typed-array columns: see details_columns.cc.
#pragma once

#include <napi.h>

namespace dmthin {

void InitDetailsColumns(Napi::Env env, Napi::Object exports);

}  // namespace dmthin
