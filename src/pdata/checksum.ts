/**
 * Block checksums: stored csum = crc32c_raw(block[4..4096)) ^ a per-type constant,
 * so a checksum that is valid for another type tells us what the block really is.
 */
import { MetadataError } from '../errors';
import type { Block } from './block-source';
import { crc32cFunction } from '../native/binding';

/** Metadata block types, by the constant each XORs into its checksum. */
export enum BlockType {
  /** The superblock (and its metadata-snapshot copy). */
  Superblock = 160774,
  /** A btree node. */
  BtreeNode = 121107,
  /** A space-map bitmap. */
  Bitmap = 240779,
  /** The metadata space map's index block. */
  MetadataIndex = 160478,
}

const TYPE_NAMES: Record<number, string> = {
  [BlockType.Superblock]: 'superblock',
  [BlockType.BtreeNode]: 'btree node',
  [BlockType.Bitmap]: 'space-map bitmap',
  [BlockType.MetadataIndex]: 'metadata space-map index',
  9031977: 'cache superblock',
  146538381: 'era superblock',
  595846735: 'array block',
};

function typeName(t: number): string {
  return TYPE_NAMES[t] ?? `unknown block type (xor ${t})`;
}

/** What the stored checksum says the block is, or undefined if it matches no known type. */
export function blockTypeOf(block: Block): number | undefined {
  const stored = block.u32(0);
  const x = (stored ^ block.crc) >>> 0;
  return TYPE_NAMES[x] !== undefined ? x : undefined;
}

/**
 * Throws MetadataError('checksum' | 'block-type') unless the block is of the
 * expected type. `where` (e.g. "mapping tree of device 1") goes into the message.
 */
export function verifyChecksum(block: Block, expected: BlockType, context: { tree?: string; devId?: number } = {}, where?: string): void {
  const stored = block.u32(0);
  if (((block.crc ^ expected) >>> 0) === stored) return;
  const actual = blockTypeOf(block);
  const what = typeName(expected);
  const at = where ? `block ${block.nr} (${where})` : `block ${block.nr}`;
  if (actual !== undefined) {
    throw new MetadataError('block-type', `${at}: expected a ${what}, found a ${typeName(actual)}`, {
      block: block.nr,
      ...context,
    });
  }
  if (block.data.every((b) => b === 0)) {
    throw new MetadataError('checksum', `${at}: expected a ${what}, found an all-zero block`, {
      block: block.nr,
      ...context,
    });
  }
  throw new MetadataError('checksum', `bad checksum in ${what} (block ${block.nr}${where ? `, ${where}` : ''})`, { block: block.nr, ...context });
}

/** Standard CRC-32C ("123456789" -> 0xE3069283). */
export function crc32c(data: Uint8Array): number {
  return crc32cFunction()(data) >>> 0;
}

/** The csum to store in a block of the given type (for tools that build blocks). */
export function blockChecksum(data: Uint8Array, type: BlockType): number {
  return ((crc32cFunction()(data.subarray(4), 0xffffffff, true) ^ type) >>> 0) as number;
}
