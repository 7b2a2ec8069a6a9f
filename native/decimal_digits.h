// Decimal digits of an unsigned integer written backwards into a byte buffer:
// shared by the text writers (decimal_cells.cc, rmap_lines.cc).
#pragma once

#include <cstdint>

namespace dmthin {

// "00" to "99": two digits a step.
inline constexpr char kDigitPairs[] =
    "0001020304050607080910111213141516171819202122232425262728293031323334353637383940414243444546474849"
    "5051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";

// Digits of v, written backwards from out (exclusive); returns the new start.
inline uint8_t* WriteDigitsBackwards(uint8_t* out, uint64_t v) {
  while (v >= 4294967296ull) {
    *--out = static_cast<uint8_t>('0' + v % 10);
    v /= 10;
  }
  uint32_t w = static_cast<uint32_t>(v);
  while (w >= 100) {
    const uint32_t r = (w % 100) * 2;
    w /= 100;
    *--out = static_cast<uint8_t>(kDigitPairs[r + 1]);
    *--out = static_cast<uint8_t>(kDigitPairs[r]);
  }
  if (w >= 10) {
    *--out = static_cast<uint8_t>(kDigitPairs[w * 2 + 1]);
    *--out = static_cast<uint8_t>(kDigitPairs[w * 2]);
  } else {
    *--out = static_cast<uint8_t>('0' + w);
  }
  return out;
}

}  // namespace dmthin
