/**
 * Persistent-data space maps: per-block reference counts, 2 bits per block in
 * bitmap blocks, with counts of 3 and more in an overflow btree. The data
 * space map finds its bitmaps through an index btree; the metadata space map
 * through a single index block (so that it never recurses into itself).
 */
import { MetadataError } from '../errors';
import { lookup, walkLeaves } from './btree';
import { BlockType, verifyChecksum } from './checksum';
import type { Block, BlockSource } from './block-source';
import { MAX_SAFE_HI, TWO32 } from './words';

export const ENTRIES_PER_BITMAP = 16320;
const BITMAP_HEADER_SIZE = 16;
export const MAX_METADATA_BITMAPS = 255;

/** A space map's root as the superblock records it. */
export interface SpaceMapRoot {
  /** Size of the managed device in blocks. */
  nrBlocks: number;
  /** Blocks in use, as the space map counts them. */
  nrAllocated: number;
  /** Data sm: root of the index btree. Metadata sm: the index block. */
  bitmapRoot: number;
  /** Root of the overflow ref-count btree (u32 counts). */
  refCountRoot: number;
}

function u64(buf: Buffer, off: number, what: string): number {
  const hi = buf.readUInt32LE(off + 4);
  if (hi >= MAX_SAFE_HI) throw new MetadataError('space-map', `${what} exceeds 2^53`);
  return buf.readUInt32LE(off) + hi * TWO32;
}

export function parseSpaceMapRoot(buf: Buffer, what: string): SpaceMapRoot {
  return {
    nrBlocks: u64(buf, 0, `${what} nr_blocks`),
    nrAllocated: u64(buf, 8, `${what} nr_allocated`),
    bitmapRoot: u64(buf, 16, `${what} bitmap root`),
    refCountRoot: u64(buf, 24, `${what} ref-count root`),
  };
}

/** An entry of a space map's index: where one bitmap lives, with allocator hints. */
export interface IndexEntry {
  /** Where the bitmap lives. */
  blocknr: number;
  /** Allocator hints; not authoritative (see docs). */
  nrFree: number;
  /** Allocator hint: no free entry in the bitmap before this one. */
  noneFreeBefore: number;
}

function parseIndexEntry(buf: Buffer, off: number): IndexEntry {
  return {
    blocknr: u64(buf, off, 'index entry blocknr'),
    nrFree: buf.readUInt32LE(off + 8),
    noneFreeBefore: buf.readUInt32LE(off + 12),
  };
}

/** Decodes the 2-bit entry e of a bitmap block (0..3; 3 = look in the overflow tree). */
export function bitmapEntry(data: Buffer, e: number): number {
  // Entries are packed in LE u64 words, 32 per word; bit 2k is the HIGH bit of entry k.
  const word = BITMAP_HEADER_SIZE + 8 * (e >>> 5);
  const k = e & 31;
  const w = k < 16 ? data.readUInt32LE(word) : data.readUInt32LE(word + 4);
  const s = 2 * (k & 15);
  const raw = (w >>> s) & 3;
  return ((raw & 1) << 1) | (raw >>> 1);
}

/** Which space map: the data device's or the metadata device's. */
export type SpaceMapKind = 'data' | 'metadata';

/** A space map on disk: reference counts of the data or metadata blocks (bitmaps plus an overflow tree). */
export class SpaceMap {
  private index?: IndexEntry[];

  constructor(
    private readonly io: BlockSource,
    /** Data or metadata. */
    readonly kind: SpaceMapKind,
    /** Its root from the superblock. */
    readonly root: SpaceMapRoot,
    /** Metadata device size in blocks (bounds every pointer). */
    private readonly nrMetadataBlocks: number,
  ) {}

  /** Blocks the space map covers. */
  get nrBlocks(): number {
    return this.root.nrBlocks;
  }

  /** Bitmap blocks it has (16,320 entries each). */
  get nrBitmaps(): number {
    return Math.ceil(this.root.nrBlocks / ENTRIES_PER_BITMAP);
  }

  private err(msg: string, block?: number): MetadataError {
    return new MetadataError('space-map', `${this.kind} space map: ${msg}`, { block, tree: `${this.kind}-sm` });
  }

  /** All index entries (one per bitmap). */
  async indexEntries(signal?: AbortSignal): Promise<IndexEntry[]> {
    if (this.index) return this.index;
    const n = this.nrBitmaps;
    const out: IndexEntry[] = [];
    if (this.kind === 'metadata') {
      if (n > MAX_METADATA_BITMAPS) throw this.err(`${n} bitmaps exceed the index block's ${MAX_METADATA_BITMAPS}`);
      const b = await this.metadataIndexBlock();
      for (let i = 0; i < n; i++) out.push(parseIndexEntry(b.data, 16 + 16 * i));
    } else {
      let expect = 0;
      for await (const leaf of walkLeaves(this.io, this.root.bitmapRoot, {
        tree: 'data-sm-index',
        valueSize: 16,
        nrMetadataBlocks: this.nrMetadataBlocks,
        signal,
      })) {
        for (let i = 0; i < leaf.nrEntries; i++) {
          const k = leaf.key(i);
          if (k !== expect) throw this.err(`index btree has key ${k} where ${expect} was expected`, leaf.nr);
          out.push(parseIndexEntry(leaf.data, leaf.valuesOffset + 16 * i));
          expect++;
        }
      }
      if (out.length !== n) throw this.err(`index has ${out.length} bitmaps, ${n} expected`);
    }
    for (const ie of out) if (ie.blocknr >= this.nrMetadataBlocks) throw this.err(`bitmap at ${ie.blocknr} beyond the device`, ie.blocknr);
    this.index = out;
    return out;
  }

  /**
   * The metadata space map's index block, read and checked as opening the
   * space map checks it (the kernel when it opens a pool; thin_ls and
   * thin_delta 0.9.0 when they open metadata without -m): within the
   * device, its checksum, and the block number it holds its own.
   */
  async metadataIndexBlock(): Promise<Block> {
    if (this.kind !== 'metadata') throw new TypeError('only the metadata space map has an index block');
    const ib = this.root.bitmapRoot;
    if (ib >= this.nrMetadataBlocks) throw this.err(`index block ${ib} beyond the device`, ib);
    const [b] = await this.io.read([ib]);
    verifyChecksum(b, BlockType.MetadataIndex, { tree: 'metadata-sm' });
    const self = u64(b.data, 8, 'index blocknr');
    if (self !== ib) throw new MetadataError('blocknr', `metadata index block ${ib} says it is block ${self}`, { block: ib });
    return b;
  }

  /** Reads and validates bitmap i. */
  async bitmap(i: number): Promise<Block> {
    const ie = (await this.indexEntries())[i];
    const [b] = await this.io.read([ie.blocknr]);
    this.checkBitmap(b);
    return b;
  }

  /** Validates a bitmap block (checksum, block number); throws MetadataError. */
  checkBitmap(b: Block): void {
    verifyChecksum(b, BlockType.Bitmap, { tree: `${this.kind}-sm` });
    const self = u64(b.data, 8, 'bitmap blocknr');
    if (self !== b.nr) throw new MetadataError('blocknr', `bitmap block ${b.nr} says it is block ${self}`, { block: b.nr });
  }

  /** Reference count of one block. */
  async refCount(block: number): Promise<number> {
    if (!Number.isSafeInteger(block) || block < 0 || block >= this.root.nrBlocks) {
      throw new MetadataError('data-range', `${this.kind} block ${block} is outside the space map (${this.root.nrBlocks} blocks)`, { block });
    }
    const bm = await this.bitmap(Math.floor(block / ENTRIES_PER_BITMAP));
    const v = bitmapEntry(bm.data, block % ENTRIES_PER_BITMAP);
    if (v < 3) return v;
    return this.overflowCount(block);
  }

  /** The reference count of `block` from the overflow tree (for counts of 3 and more). */
  async overflowCount(block: number): Promise<number> {
    const hit = await lookup(this.io, this.root.refCountRoot, block, {
      tree: 'ref-count',
      valueSize: 4,
      nrMetadataBlocks: this.nrMetadataBlocks,
    });
    if (!hit) throw new MetadataError('ref-count', `${this.kind} block ${block} has count 3+ but no overflow entry`, { block });
    return hit.node.value(hit.index).readUInt32LE(0);
  }
}
