// Device-mapper control: the dm ioctl (off the JS thread, with the
// BUFFER_FULL retry), /dev/mapper node helpers, and the header's constants.
// It moves bytes only: struct encoding/decoding lives in src/dm/ioctl.ts,
// which checks its layout against the constants exported here.
#pragma once

#include <napi.h>

namespace dmthin {

// Adds dmIoctl, mknodBlock, unlinkNode and dmConstants to the exports.
void InitDmControl(Napi::Env env, Napi::Object exports);

}  // namespace dmthin
