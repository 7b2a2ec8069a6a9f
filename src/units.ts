/**
 * Typed units. A number that means sectors must not be passed where data
 * blocks are meant; branded types make the compiler check that at no runtime cost.
 */
import { DmthinError, UsageError } from './errors';

declare const unit: unique symbol;
/** A number branded with its unit T (a compile-time tag only). */
type Unit<T extends string> = number & { readonly [unit]: T };

/** 512-byte sectors. */
export type Sectors = Unit<'sectors'>;
/** Bytes. */
export type Bytes = Unit<'bytes'>;
/** Pool data blocks (data_block_size sectors each). */
export type DataBlocks = Unit<'data-blocks'>;
/** Metadata blocks (always 4096 bytes). */
export type MetaBlocks = Unit<'meta-blocks'>;

/** Bytes per sector. */
export const SECTOR_SIZE = 512;
/** Bytes per metadata block. */
export const METADATA_BLOCK_SIZE = 4096;

/**
 * The longest wait, in whole seconds, a Node timer keeps: setTimeout clamps a
 * delay above 2^31-1 ms to 1 ms, so a longer one would fire at once.
 */
export const MAX_TIMER_SECONDS = Math.floor((2 ** 31 - 1) / 1000);

/**
 * `n` as a count of `unit`: a whole number from 0 to 2^53 - 1. Anything else
 * (negative, fractional, NaN, a string) is UsageError; a count past 2^53
 * would already be rounded.
 */
function count(n: number, unit: string): number {
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) throw new UsageError(`${unit} must be a whole number from 0 to 2^53 - 1, got ${typeof n === 'number' ? n : typeof n}`);
  return n;
}
/** A product of counts, refused (ERANGE) where it would pass 2^53 and be rounded. */
function product(a: number, b: number, what: string): number {
  const p = a * b;
  if (!Number.isSafeInteger(p)) throw new DmthinError('ERANGE', `${what}: ${a} x ${b} is past 2^53 and cannot be held exactly`);
  return p;
}

/** A number as Sectors. */
export const sectors = (n: number): Sectors => count(n, 'sectors') as Sectors;
/** A number as Bytes. */
export const bytes = (n: number): Bytes => count(n, 'bytes') as Bytes;
/** A number as DataBlocks. */
export const dataBlocks = (n: number): DataBlocks => count(n, 'data blocks') as DataBlocks;
/** A number as MetaBlocks. */
export const metaBlocks = (n: number): MetaBlocks => count(n, 'metadata blocks') as MetaBlocks;

/** Sectors to bytes (ERANGE past 2^53). */
export function sectorsToBytes(s: Sectors): Bytes {
  return product(count(s, 'sectors'), SECTOR_SIZE, 'sectors to bytes') as Bytes;
}
/** Data blocks to sectors, given the pool's data block size (ERANGE past 2^53). */
export function dataBlocksToSectors(b: DataBlocks, dataBlockSize: Sectors): Sectors {
  return product(count(b, 'data blocks'), count(dataBlockSize, 'data block size'), 'data blocks to sectors') as Sectors;
}

/** A device number as `stat` gives it (`rdev`, glibc's dev_t): major and minor. */
export function devNumOfRdev(rdev: bigint | number): { major: number; minor: number } {
  // glibc's dev_t (sys/sysmacros.h): the major's low 12 bits in bits 8-19 and the rest in 44-63,
  // the minor's low 8 bits in bits 0-7 and the rest in 20-43. Linux's own are 12 and 20 bits.
  const r = BigInt(rdev);
  return { major: Number(((r >> 8n) & 0xfffn) | ((r >> 32n) & 0xfffff000n)), minor: Number((r & 0xffn) | ((r >> 12n) & 0xffffff00n)) };
}
