/**
 * The IO engine: where metadata blocks come from. Everything above this layer
 * asks for batches of 4 KiB block numbers and gets back checksummed blocks.
 * Two backends: the native O_DIRECT reader (files and block devices) and an
 * in-memory one (tests, fuzzing, images already in RAM). Both are read-only.
 */
import { DmthinError, MetadataError } from '../errors';
import { crc32cFunction } from '../native/binding';
import { BlockReader, type BlockReaderOpenOptions } from '../native/block-reader';

/** Metadata block size in bytes. */
export const BLOCK_SIZE = 4096;

/**
 * The blocks of one read that are still in use; when none is, the batch's
 * buffer goes back to the reader (bounded memory: a walk that marks its blocks
 * done reuses a few buffers instead of leaving each to the garbage collector).
 */
class BatchUse {
  constructor(
    public pending: number,
    private readonly release: () => void,
  ) {}
  done(): void {
    if (--this.pending === 0) this.release();
  }
}

/**
 * One metadata block as read: a window on a batch buffer plus the raw CRC-32C
 * of its bytes [4, 4096). Hot paths read `words` (a Uint32Array over the whole
 * batch) at `base`; `data` makes a Buffer view only when asked.
 */
export class Block {
  private view?: Buffer;
  private use?: { done(): void };
  constructor(
    /** Its block number. */
    readonly nr: number,
    private readonly buf: Buffer,
    private readonly offset: number,
    /** Raw CRC (seed ~0, no final inversion); stored csum = crc ^ type constant. */
    readonly crc: number,
    /** Little-endian u32 words of the batch; this block starts at word `base`. */
    readonly words: Uint32Array,
    /**
     * The same words as signed i32: what a hot loop reads for a word that
     * may have its top bit set (a mapping value's low word). A Uint32Array
     * element of 2^31 or more is a heap number in code V8 has not optimised
     * yet (every walk's first leaves); an i32 is always a small integer.
     */
    readonly ints: Int32Array,
    /** The read this block belongs to, when its buffer can be handed back (see done()). */
    use?: { done(): void },
  ) {
    this.use = use;
  }
  /**
   * The caller will not read this block (nor anything made from it: a
   * BtreeNode, `data`, `words`) again. Once every block of its read is done,
   * the read's buffer is reused for later reads, and the views read as empty.
   * Optional: blocks never marked done are freed by the garbage collector.
   * Calling it twice is harmless.
   */
  done(): void {
    const u = this.use;
    if (u) {
      this.use = undefined;
      u.done();
    }
  }
  /** Index in `words` of the block's first word. */
  get base(): number {
    return this.offset >>> 2;
  }
  /** The block's 4096 bytes (a view, made on first use). */
  get data(): Buffer {
    return (this.view ??= this.buf.subarray(this.offset, this.offset + BLOCK_SIZE));
  }
  /** u32 at byte offset `off` (a multiple of 4) of this block. */
  u32(off: number): number {
    return this.words[(this.offset + off) >>> 2];
  }
}

if (new Uint8Array(new Uint32Array([1]).buffer)[0] !== 1) {
  // Every on-disk integer is little-endian and the hot paths read them through Uint32Arrays.
  throw new DmthinError('ENOTSUP', 'dmthin supports little-endian hosts only');
}

/** Read counters of a BlockSource. */
export interface IoStats {
  /** Blocks returned to callers. */
  blocksRead: number;
  /** read() batches issued (a tree the addon walks whole counts as one). */
  batches: number;
}

/** Where metadata blocks are read from, in batches (read-only). */
export interface BlockSource {
  /** For error messages. */
  readonly path: string;
  /** Size of the underlying file or device in bytes. */
  readonly sizeBytes: number;
  /** Blocks in request order. Duplicates allowed. */
  read(blocks: readonly number[]): Promise<Block[]>;
  /** Read counters. */
  readonly stats: IoStats;
  /** Releases the file or device. */
  close(): Promise<void>;
}

function checkRange(src: BlockSource, blocks: readonly number[]): void {
  const limit = Math.floor(src.sizeBytes / BLOCK_SIZE);
  // Indexed, not for-of: in a read that is not optimized, for-of made an object per block.
  for (let i = 0; i < blocks.length; i++) {
    const b = blocks[i];
    if (!Number.isSafeInteger(b) || b < 0) throw new DmthinError('EINVAL', `bad block number ${b}`, { path: src.path });
    if (b >= limit) {
      throw new MetadataError('truncated', `block ${b} is beyond the end of ${src.path} (${limit} blocks)`, {
        block: b,
        path: src.path,
      });
    }
  }
}

/** How metadata is opened: O_DIRECT policy and O_EXCL. */
export type OpenOptions = BlockReaderOpenOptions;

/** A file or block device read with O_DIRECT through the native addon. */
export class NativeBlockSource implements BlockSource {
  /** Read counters. */
  readonly stats: IoStats = { blocksRead: 0, batches: 0 };

  /** The file or device read. */
  readonly path: string;
  /** Its size in bytes. */
  readonly sizeBytes: number;
  /** Reads bypass the page cache (O_DIRECT). */
  readonly direct: boolean;
  /** It is a block device. */
  readonly blockDevice: boolean;
  /** The device's logical block size in bytes. */
  readonly logicalBlockSize: number;

  private constructor(
    /** @internal Its reader: for the walks the addon does whole (thin/device-table.ts), which count their reads in `stats`. */
    readonly reader: BlockReader,
  ) {
    this.path = reader.path;
    ({ size: this.sizeBytes, direct: this.direct, blockDevice: this.blockDevice, logicalBlockSize: this.logicalBlockSize } = reader.info);
  }

  /** Opens a file or block device read-only. */
  static async open(path: string, opts: OpenOptions = {}): Promise<NativeBlockSource> {
    return new NativeBlockSource(await BlockReader.open(path, opts));
  }

  async read(blocks: readonly number[]): Promise<Block[]> {
    this.reader.assertOpen();
    checkRange(this, blocks);
    const res = await this.reader.read(BLOCK_SIZE, blocks, { checksum: true });
    this.stats.batches++;
    this.stats.blocksRead += blocks.length;
    const out: Block[] = new Array(blocks.length);
    const crcs = res.crcs!;
    const d = res.data;
    const words = new Uint32Array(d.buffer, d.byteOffset, d.length >>> 2);
    const ints = new Int32Array(d.buffer, d.byteOffset, d.length >>> 2);
    const use = blocks.length > 0 ? new BatchUse(blocks.length, () => this.reader.release(d)) : undefined;
    for (let i = 0; i < blocks.length; i++) out[i] = new Block(blocks[i], d, i * BLOCK_SIZE, crcs[i], words, ints, use);
    return out;
  }

  /** Closes the file or device. */
  async close(): Promise<void> {
    this.reader.close();
  }
}

/**
 * Blocks of a file or device as they are now, through a reader of their own
 * (read-only, not exclusive; O_DIRECT unless `direct` is false), closed
 * before this returns: the blocks stay readable (their buffer is freed when
 * they are collected).
 */
export async function readBlocksAnew(path: string, blocks: readonly number[], direct = true): Promise<Block[]> {
  const io = await NativeBlockSource.open(path, { direct: direct ? 'always' : 'never', exclusive: false });
  try {
    return await io.read(blocks);
  } finally {
    await io.close();
  }
}

/** Metadata held in memory (a Buffer of whole 4 KiB blocks). */
export class MemoryBlockSource implements BlockSource {
  /** Read counters. */
  readonly stats: IoStats = { blocksRead: 0, batches: 0 };
  readonly sizeBytes: number;

  constructor(
    private readonly image: Buffer,
    readonly path = '<memory>',
  ) {
    this.sizeBytes = image.length - (image.length % BLOCK_SIZE);
  }

  async read(blocks: readonly number[]): Promise<Block[]> {
    checkRange(this, blocks);
    this.stats.batches++;
    this.stats.blocksRead += blocks.length;
    const crc32c = crc32cFunction();
    // Copy, so callers can never alias (and so mutate) the image.
    const d = Buffer.alloc(blocks.length * BLOCK_SIZE);
    blocks.forEach((nr, i) => this.image.copy(d, i * BLOCK_SIZE, nr * BLOCK_SIZE, (nr + 1) * BLOCK_SIZE));
    const words = new Uint32Array(d.buffer, d.byteOffset, d.length >>> 2);
    const ints = new Int32Array(d.buffer, d.byteOffset, d.length >>> 2);
    return blocks.map((nr, i) => {
      const crc = crc32c(d.subarray(i * BLOCK_SIZE + 4, (i + 1) * BLOCK_SIZE), 0xffffffff, true) >>> 0;
      return new Block(nr, d, i * BLOCK_SIZE, crc, words, ints);
    });
  }

  /** Nothing to release. */
  async close(): Promise<void> {}
}

/**
 * A few recently read blocks of another source, kept: for point lookups that
 * pass through the same nodes again (a delta looks two devices up in the
 * top-level and details trees, a send looks its snapshot and base up more
 * than once). Its blocks are never marked done, so their buffers stay valid
 * while held. Counts its reads in the inner source's stats.
 */
export class CachingBlockSource implements BlockSource {
  private readonly kept = new Map<number, Block>();

  constructor(
    private readonly inner: BlockSource,
    /** Blocks kept at most (the oldest go first). */
    private readonly capacity = 32,
  ) {}

  get path(): string {
    return this.inner.path;
  }

  get sizeBytes(): number {
    return this.inner.sizeBytes;
  }

  get stats(): IoStats {
    return this.inner.stats;
  }

  async read(blocks: readonly number[]): Promise<Block[]> {
    const found = new Map<number, Block>();
    for (const b of blocks) {
      const k = this.kept.get(b);
      if (k) found.set(b, k);
    }
    const missing = [...new Set(blocks.filter((b) => !found.has(b)))];
    if (missing.length) {
      const got = await this.inner.read(missing);
      for (let i = 0; i < missing.length; i++) {
        found.set(missing[i], got[i]);
        if (this.kept.size >= this.capacity) this.kept.delete(this.kept.keys().next().value!);
        this.kept.set(missing[i], got[i]);
      }
    }
    // From this call's own map: a read of more blocks than are kept still gets them all.
    return blocks.map((b) => found.get(b)!);
  }

  /** The inner source is its owner's to close. */
  async close(): Promise<void> {}
}
