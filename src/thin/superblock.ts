/**
 * The thin-pool superblock (block 0, and the metadata-snapshot copy).
 */
import { MetadataError } from '../errors';
import { BlockType, verifyChecksum } from '../pdata/checksum';
import type { Block } from '../pdata/block-source';
import { parseSpaceMapRoot, SpaceMapRoot } from '../pdata/space-map';
import { MAX_SAFE_HI, TWO32 } from '../pdata/words';

/** The thin superblock's magic number. */
export const THIN_SUPERBLOCK_MAGIC = 27022010;
const NEEDS_CHECK_FLAG = 1;
/** Bits in incompat/compat_ro flags that this reader understands (none are defined upstream). */
const KNOWN_INCOMPAT = 0;

/** A decoded thin-pool superblock. */
export interface Superblock {
  /** Where it was read from: 0, or the held root for a metadata snapshot. */
  location: number;
  /** Raw flags word. */
  flags: number;
  /** The needs_check flag: the kernel asks for thin_check before use. */
  needsCheck: boolean;
  /** 16 raw bytes (the kernel writes zeros). */
  uuid: Buffer;
  /** Magic number (THIN_SUPERBLOCK_MAGIC in a valid superblock). */
  magic: bigint;
  /** Metadata format version (1 or 2). */
  version: number;
  /** Snapshot "time" counter. */
  time: number;
  /** The pool's transaction id. */
  transactionId: bigint;
  /** Block of the metadata-snapshot copy, or 0. */
  heldRoot: number;
  /** Zeroed in a metadata-snapshot copy. */
  dataSpaceMap: SpaceMapRoot;
  /** The metadata space map's root. */
  metadataSpaceMap: SpaceMapRoot;
  /** Root block of the top-level mapping tree (device id -> mapping tree). */
  dataMappingRoot: number;
  /** Root block of the device details tree. */
  deviceDetailsRoot: number;
  /** In 512-byte sectors. */
  dataBlockSize: number;
  /** In 512-byte sectors (8: 4 KiB). */
  metadataBlockSize: number;
  /** Written at format time only; may be stale after a resize. */
  metadataNrBlocks: bigint;
  /** Compatible feature flags. */
  compatFlags: number;
  /** Read-only-compatible feature flags. */
  compatRoFlags: number;
  /** Incompatible feature flags (none known: refused if set). */
  incompatFlags: number;
}

function u64(d: Buffer, off: number, name: string): number {
  const hi = d.readUInt32LE(off + 4);
  if (hi >= MAX_SAFE_HI) throw new MetadataError('block-range', `superblock: ${name} (offset ${off}) is ${d.readBigUInt64LE(off)}, beyond any metadata device`, { block: 0 });
  return d.readUInt32LE(off) + hi * TWO32;
}

/** Parses and validates a superblock read from `block.nr`. */
export function parseSuperblock(block: Block): Superblock {
  const d = block.data;
  const where = block.nr === 0 ? 'superblock' : `metadata snapshot superblock (block ${block.nr})`;
  if (block.nr === 0 && d.every((b) => b === 0)) {
    throw new MetadataError('magic', 'metadata is not formatted: block 0 is all zeros', { block: 0 });
  }
  verifyChecksum(block, BlockType.Superblock, { tree: 'superblock' });
  const blocknr = d.readBigUInt64LE(8);
  if (blocknr !== BigInt(block.nr)) {
    throw new MetadataError('blocknr', `${where} says it is block ${blocknr}`, { block: block.nr });
  }
  const magic = d.readBigUInt64LE(32);
  if (magic !== BigInt(THIN_SUPERBLOCK_MAGIC)) {
    throw new MetadataError('magic', `${where}: bad magic ${magic} (not thin-pool metadata)`, { block: block.nr });
  }
  const version = d.readUInt32LE(40);
  if (version !== 1 && version !== 2) {
    throw new MetadataError('version', `${where}: unsupported metadata version ${version} (1 and 2 are supported)`, { block: block.nr });
  }
  const metadataBlockSize = d.readUInt32LE(0x154);
  if (metadataBlockSize !== 8) {
    throw new MetadataError('block-size', `${where}: metadata block size ${metadataBlockSize} sectors is not supported (only 8)`, {
      block: block.nr,
    });
  }
  const dataBlockSize = d.readUInt32LE(0x150);
  if (dataBlockSize < 128 || dataBlockSize > 2097152 || dataBlockSize % 128 !== 0) {
    throw new MetadataError('block-size', `${where}: bad data block size ${dataBlockSize} sectors (the kernel takes 128 to 2097152, a multiple of 128): damaged, or not made by the kernel`, { block: block.nr });
  }
  const incompatFlags = d.readUInt32LE(0x168);
  if (incompatFlags & ~KNOWN_INCOMPAT) {
    throw new MetadataError('feature-flags', `${where}: unknown incompatible feature flags 0x${incompatFlags.toString(16)}`, {
      block: block.nr,
    });
  }
  const flags = d.readUInt32LE(4);
  return {
    location: block.nr,
    flags,
    needsCheck: (flags & NEEDS_CHECK_FLAG) !== 0,
    uuid: Buffer.from(d.subarray(16, 32)),
    magic,
    version,
    time: d.readUInt32LE(0x2c),
    transactionId: d.readBigUInt64LE(0x30),
    heldRoot: u64(d, 0x38, 'the held metadata root'),
    dataSpaceMap: parseSpaceMapRoot(d.subarray(0x40, 0x60), 'data space map'),
    metadataSpaceMap: parseSpaceMapRoot(d.subarray(0xc0, 0xe0), 'metadata space map'),
    dataMappingRoot: u64(d, 0x140, 'the top-level mapping tree\'s root'),
    deviceDetailsRoot: u64(d, 0x148, 'the device details tree\'s root'),
    dataBlockSize,
    metadataBlockSize,
    metadataNrBlocks: d.readBigUInt64LE(0x158),
    compatFlags: d.readUInt32LE(0x160),
    compatRoFlags: d.readUInt32LE(0x164),
    incompatFlags,
  };
}
