/**
 * The IO engine: where metadata blocks come from. Everything above this layer
 * asks for batches of 4 KiB block numbers and gets back checksummed blocks.
 * Two backends: the native O_DIRECT reader (files and block devices) and an
 * in-memory one (tests, fuzzing, images already in RAM). Both are read-only.
 */
import { DmthinError, MetadataError, fromNative } from '../errors';
import { native, NativeBlockReader } from '../native/binding';

export const BLOCK_SIZE = 4096;

/** One metadata block as read: its bytes and the raw CRC-32C of bytes [4, 4096). */
export interface Block {
  readonly nr: number;
  readonly data: Buffer;
  /** Raw CRC (seed ~0, no final inversion); stored csum = crc ^ type constant. */
  readonly crc: number;
}

export interface IoStats {
  /** Blocks returned to callers. */
  blocksRead: number;
  /** read() batches issued. */
  batches: number;
}

export interface BlockSource {
  /** For error messages. */
  readonly path: string;
  /** Size of the underlying file or device in bytes. */
  readonly sizeBytes: number;
  /** Blocks in request order. Duplicates allowed. */
  read(blocks: readonly number[]): Promise<Block[]>;
  readonly stats: IoStats;
  close(): Promise<void>;
}

function checkRange(src: BlockSource, blocks: readonly number[]): void {
  const limit = Math.floor(src.sizeBytes / BLOCK_SIZE);
  for (const b of blocks) {
    if (!Number.isSafeInteger(b) || b < 0) throw new DmthinError('EINVAL', `bad block number ${b}`, { path: src.path });
    if (b >= limit) {
      throw new MetadataError('truncated', `block ${b} is beyond the end of ${src.path} (${limit} blocks)`, {
        block: b,
        path: src.path,
      });
    }
  }
}

export interface OpenOptions {
  /** 'auto' (default): O_DIRECT, falling back to buffered reads only for a
   * regular file whose filesystem refuses O_DIRECT at open. */
  direct?: 'auto' | 'always' | 'never';
  /** O_EXCL on a block device: fails with EBUSY while an active pool holds it. */
  exclusive?: boolean;
}

/** A file or block device read with O_DIRECT through the native addon. */
export class NativeBlockSource implements BlockSource {
  readonly stats: IoStats = { blocksRead: 0, batches: 0 };
  private closed = false;

  private constructor(
    private readonly reader: NativeBlockReader,
    readonly path: string,
    readonly sizeBytes: number,
    readonly direct: boolean,
    readonly blockDevice: boolean,
    readonly logicalBlockSize: number,
  ) {}

  static async open(path: string, opts: OpenOptions = {}): Promise<NativeBlockSource> {
    const r = new (native().BlockReader)();
    try {
      const info = await r.open(path, opts.direct ?? 'auto', opts.exclusive ?? false);
      return new NativeBlockSource(r, path, info.size, info.direct, info.blockDevice, info.logicalBlockSize);
    } catch (e) {
      throw fromNative(e, { path });
    }
  }

  async read(blocks: readonly number[]): Promise<Block[]> {
    if (this.closed) throw new DmthinError('EBADF', `${this.path} is closed`, { path: this.path, syscall: 'read' });
    checkRange(this, blocks);
    let res;
    try {
      res = await this.reader.read(BLOCK_SIZE, Float64Array.from(blocks), true);
    } catch (e) {
      throw fromNative(e, { path: this.path });
    }
    this.stats.batches++;
    this.stats.blocksRead += blocks.length;
    const out: Block[] = new Array(blocks.length);
    const crcs = res.crcs!;
    for (let i = 0; i < blocks.length; i++) {
      out[i] = { nr: blocks[i], data: res.data.subarray(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE), crc: crcs[i] };
    }
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.reader.close();
  }
}

/** Metadata held in memory (a Buffer of whole 4 KiB blocks). */
export class MemoryBlockSource implements BlockSource {
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
    const crc32c = native().crc32c;
    return blocks.map((nr) => {
      // Copy, so callers can never alias (and so mutate) the image.
      const data = Buffer.from(this.image.subarray(nr * BLOCK_SIZE, (nr + 1) * BLOCK_SIZE));
      return { nr, data, crc: crc32c(data.subarray(4), 0xffffffff, true) >>> 0 };
    });
  }

  async close(): Promise<void> {}
}
