/**
 * Typed units. A number that means sectors must not be passed where data
 * blocks are meant; branded types make the compiler check that at no runtime cost.
 */
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

/** A number as Sectors. */
export const sectors = (n: number): Sectors => n as Sectors;
/** A number as Bytes. */
export const bytes = (n: number): Bytes => n as Bytes;
/** A number as DataBlocks. */
export const dataBlocks = (n: number): DataBlocks => n as DataBlocks;
/** A number as MetaBlocks. */
export const metaBlocks = (n: number): MetaBlocks => n as MetaBlocks;

/** Sectors to bytes. */
export function sectorsToBytes(s: Sectors): Bytes {
  return (s * SECTOR_SIZE) as Bytes;
}
/** Data blocks to sectors, given the pool's data block size. */
export function dataBlocksToSectors(b: DataBlocks, dataBlockSize: Sectors): Sectors {
  return (b * dataBlockSize) as Sectors;
}
