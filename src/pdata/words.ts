/**
 * The on-disk word. Every integer on disk is little-endian; hot paths read
 * them as u32 words (block-source.ts checks the host is little-endian). A u64
 * is its two words lo + hi * 2^32, held as a number while it is below 2^53:
 * a high word at or above MAX_SAFE_HI makes a value a number cannot hold, and
 * each caller decides what that means (an error, a bigint, another path).
 */
export const TWO32 = 2 ** 32;
/** High words at or above this make a u64 of 2^53 or more. */
export const MAX_SAFE_HI = 2 ** 21;
