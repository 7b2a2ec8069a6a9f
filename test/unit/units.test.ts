/**
 * The unit helpers take whole counts only, and refuse a conversion that would
 * pass 2^53 (README "JSON": no value is ever rounded). Found by an outside
 * hunt: sectors(-1) and sectors(1.5) were taken, and sectorsToBytes(2^52 + 1
 * sectors) returned a rounded number.
 */
import { bytes, dataBlocks, dataBlocksToSectors, metaBlocks, sectors, sectorsToBytes } from '../../src/units';

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
