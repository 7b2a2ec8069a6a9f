/**
 * The value of a mapping-tree leaf entry: a u64 holding data_block << 24 |
 * time (docs/metadata-format.md §5). Read as its
 * two little-endian u32 words lo and hi, the data block is hi * 2^8 + the top
 * byte of lo, exact since a data block has at most 40 bits.
 */
/** The snapshot time: the low 24 bits. */
const TIME_MASK = 0xffffff;

/** Data block of a mapping value given as its words (lo, hi). */
export function mappingDataBlock(lo: number, hi: number): number {
  return hi * 256 + (lo >>> 24);
}

/** Time of a mapping value given its low word. */
export function mappingTime(lo: number): number {
  return lo & TIME_MASK;
}
