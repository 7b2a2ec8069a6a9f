// CRC-32C (Castagnoli). The metadata checksum of a block is the raw value
// (seed ~0, no final inversion) of bytes [4, 4096) xor a per-type constant.
#pragma once

#include <cstddef>
#include <cstdint>
#include <napi.h>

namespace dmthin {

// Raw update: no pre- or post-inversion; callers choose the seed.
uint32_t Crc32cUpdate(uint32_t crc, const uint8_t* data, size_t len);
// Standard CRC-32C of a buffer ("123456789" -> 0xE3069283).
inline uint32_t Crc32c(const uint8_t* data, size_t len) { return ~Crc32cUpdate(0xFFFFFFFFu, data, len); }
bool Crc32cHardware();

void InitCrc32c(Napi::Env env, Napi::Object exports);

}  // namespace dmthin
