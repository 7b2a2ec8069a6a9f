/**
 * CRC-32C in JavaScript, a table a byte: the addon's crc32c where the addon
 * does not load (portable.ts), and the CLI's start-up check of its module
 * pack without the addon (cli/startup.ts, which loads it only then). Imports
 * nothing: start-up compiles it from source.
 */
const TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1; // Castagnoli, reflected
    t[i] = c >>> 0;
  }
  return t;
})();

/** Same contract as the addon's crc32c: standard CRC-32C by default; raw: seed in, value out, no inversions. */
export function crc32cPortable(data: Uint8Array, seed = 0xffffffff, raw = false): number {
  let c = seed >>> 0;
  for (let i = 0; i < data.length; i++) c = TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (raw ? c : ~c) >>> 0;
}
