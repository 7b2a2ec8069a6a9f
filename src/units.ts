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

export const SECTOR_SIZE = 512;
export const METADATA_BLOCK_SIZE = 4096;

export const sectors = (n: number): Sectors => n as Sectors;
export const bytes = (n: number): Bytes => n as Bytes;
export const dataBlocks = (n: number): DataBlocks => n as DataBlocks;
export const metaBlocks = (n: number): MetaBlocks => n as MetaBlocks;

export function sectorsToBytes(s: Sectors): Bytes {
  return (s * SECTOR_SIZE) as Bytes;
}
export function dataBlocksToSectors(b: DataBlocks, dataBlockSize: Sectors): Sectors {
  return (b * dataBlockSize) as Sectors;
}
