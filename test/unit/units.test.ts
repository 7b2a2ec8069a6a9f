/**
 * The unit helpers take whole counts only, and refuse a conversion that would
 * pass 2^53 (README "JSON": no value is ever rounded). Found by an outside
 * hunt: sectors(-1) and sectors(1.5) were taken, and sectorsToBytes(2^52 + 1
 * sectors) returned a rounded number.
 */
import { statSync } from 'node:fs';
import { encodeDev } from '../../src/dm/ioctl';
import { bytes, dataBlocks, dataBlocksToSectors, devNumOfRdev, metaBlocks, sectors, sectorsToBytes } from '../../src/units';

test('whole counts from 0 to 2^53 - 1; anything else is UsageError', () => {
  expect(sectors(0)).toBe(0);
  expect(bytes(2 ** 53 - 1)).toBe(2 ** 53 - 1);
  for (const bad of [-1, 1.5, NaN, Infinity, 2 ** 53]) {
    for (const make of [sectors, bytes, dataBlocks, metaBlocks]) expect(() => make(bad)).toThrow(expect.objectContaining({ name: 'UsageError', code: 'EINVAL' }));
  }
  expect(() => bytes('7' as unknown as number)).toThrow(expect.objectContaining({ code: 'EINVAL', message: expect.stringContaining('got string') }));
});

test('conversions are exact or ERANGE', () => {
  expect(sectorsToBytes(sectors(8))).toBe(4096);
  expect(dataBlocksToSectors(dataBlocks(3), sectors(128))).toBe(384);
  expect(sectorsToBytes(sectors(2 ** 44 - 1))).toBe(2 ** 53 - 512);
  expect(() => sectorsToBytes(sectors(2 ** 44))).toThrow(expect.objectContaining({ code: 'ERANGE' })); // 2^53 itself is past the safe range
  expect(() => sectorsToBytes(sectors(2 ** 52 + 1))).toThrow(expect.objectContaining({ code: 'ERANGE' }));
  expect(() => dataBlocksToSectors(dataBlocks(2 ** 40 + 1), sectors(2 ** 21))).toThrow(expect.objectContaining({ code: 'ERANGE' }));
});

test("a stat's rdev as major:minor, glibc's dev_t (the one decoder of dm/block-devices.ts and output/file.ts)", () => {
  expect(devNumOfRdev(statSync('/dev/null').rdev)).toEqual({ major: 1, minor: 3 });
  expect(devNumOfRdev(statSync('/dev/null', { bigint: true }).rdev)).toEqual({ major: 1, minor: 3 });
  // Within the kernel's 12-bit major and 20-bit minor, glibc's dev_t is the kernel's huge_encode_dev.
  for (const d of [{ major: 253, minor: 0 }, { major: 259, minor: 65536 }, { major: 0xfff, minor: 0xfffff }, { major: 7, minor: 255 }, { major: 7, minor: 256 }]) {
    expect(devNumOfRdev(encodeDev(d))).toEqual(d);
  }
  // Past them, glibc's other bits: the major's in 44-63, the minor's in 20-43, neither in the other.
  expect(devNumOfRdev((0x12345n << 44n) | (0x678n << 8n))).toEqual({ major: 0x12345678, minor: 0 });
  expect(devNumOfRdev((0xabcdefn << 20n) | 0x12n)).toEqual({ major: 0, minor: 0xabcdef12 });
  expect(devNumOfRdev(2n ** 64n - 1n)).toEqual({ major: 2 ** 32 - 1, minor: 2 ** 32 - 1 });
});
