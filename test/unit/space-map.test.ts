import { bitmapEntry } from '../../src/pdata/space-map';
import { maxEntriesFor } from '../../src/pdata/btree';

describe('bitmap entries (2 bits, high bit first)', () => {
  // From docs/metadata-format.md §8.5: 0xAA = four blocks with count 1, 0x55 = count 2.
  test('0xAA is four ones, 0x55 four twos, 0xFF four threes', () => {
    const b = Buffer.alloc(4096);
    b[16] = 0xaa;
    b[17] = 0x55;
    b[18] = 0xff;
    expect([0, 1, 2, 3].map((e) => bitmapEntry(b, e))).toEqual([1, 1, 1, 1]);
    expect([4, 5, 6, 7].map((e) => bitmapEntry(b, e))).toEqual([2, 2, 2, 2]);
    expect([8, 9, 10, 11].map((e) => bitmapEntry(b, e))).toEqual([3, 3, 3, 3]);
    expect(bitmapEntry(b, 12)).toBe(0);
  });

  test('entries in the high half of a u64 word and the last entry', () => {
    const b = Buffer.alloc(4096);
    b[16 + 4] = 0x02; // entry 16: raw bit pattern 0b10 in the low bits of the high u32
    expect(bitmapEntry(b, 16)).toBe(1);
    // Entry 16319 is bits 62 (high) and 63 (low) of the last word.
    b[4095] = 0x80;
    expect(bitmapEntry(b, 16319)).toBe(1);
    b[4095] = 0x40;
    expect(bitmapEntry(b, 16319)).toBe(2);
  });
});

test('max_entries follows the documented table', () => {
  expect(maxEntriesFor(4)).toBe(336);
  expect(maxEntriesFor(8)).toBe(252);
  expect(maxEntriesFor(16)).toBe(168);
  expect(maxEntriesFor(24)).toBe(126);
});
