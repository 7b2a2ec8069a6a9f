/**
 * Typed wrapper of the native BlockReader (native/block_reader.cc): a block
 * device or regular file opened read-only, O_DIRECT when possible, read in
 * batches of whole units off the JS thread. The one reader every layer uses:
 * metadata blocks (pdata/block-source.ts), a send's data (stream/send/), the
 * read-back of a receive's discards (stream/receive/target.ts).
 */
import { DmthinError, fromNative, type ErrorFields } from '../errors';
import { newBlockReader, type NativeBlockReader, type NativeDetailsWalk, type NativeOpenInfo, type NativeReadResult } from './binding';
import { openError } from './open-error';

/** How a reader opens its file or device. @inline */
export interface BlockReaderOpenOptions {
  /** 'auto' (default): O_DIRECT, falling back to buffered reads only for a
   * regular file whose filesystem refuses O_DIRECT at open. */
  direct?: 'auto' | 'always' | 'never';
  /** O_EXCL on a block device: fails with EBUSY while an active pool holds it. */
  exclusive?: boolean;
}

export type BlockReaderInfo = NativeOpenInfo;

export interface ReadOptions {
  /** Also return the raw CRC-32C of bytes [4, 4096) of each unit (4 KiB units only). */
  checksum?: boolean;
  /** Fields that override the native error's (e.g. the syscall a caller reports). */
  errorFields?: ErrorFields;
}

/** Reads between two turns of the event loop (see read). */
const YIELD_EVERY = 4;
/** A reader's reads before its first such turn (see read)... */
const FIRST_TURN_AFTER = 64;
/** ...unless its first read was this long ago (ms): a signal still gets in soon. */
const FIRST_TURN_MS = 20;

export class BlockReader {
  private closed = false;
  private reads = 0;
  private firstRead = 0;

  private constructor(
    private readonly r: NativeBlockReader,
    readonly path: string,
    readonly info: BlockReaderInfo,
  ) {}

  static async open(path: string, opts: BlockReaderOpenOptions = {}): Promise<BlockReader> {
    const r = newBlockReader();
    try {
      return new BlockReader(r, path, await r.open(path, opts.direct ?? 'auto', opts.exclusive ?? false));
    } catch (e) {
      throw openError(e, path, 'reading');
    }
  }

  /** Size of the file or device in bytes, at open. */
  get sizeBytes(): number {
    return this.info.size;
  }

  /** Units `blocks` of `unitBytes` (a multiple of 512) each, concatenated in request order. */
  async read(unitBytes: number, blocks: readonly number[], opts: ReadOptions = {}): Promise<NativeReadResult> {
    this.assertOpen();
    try {
      // Not Float64Array.from(blocks): it iterates, an object per block read.
      const nrs = new Float64Array(blocks.length);
      for (let i = 0; i < blocks.length; i++) nrs[i] = blocks[i];
      const res = await this.r.read(unitBytes, nrs, opts.checksum ?? false);
      // A read of a cached file settles at once (native/block_reader.cc; an
      // O_DIRECT read never does), so a walk over one need never wait: every
      // YIELD_EVERY reads the event loop turns, for what runs only there
      // (signal handlers, V8's GC tasks, Node's frees of buffers the
      // collector found unused; without it check at 40M mappings peaked up
      // to 3 MiB higher, over 80 MiB). Not in a reader's first
      // FIRST_TURN_AFTER reads (unless FIRST_TURN_MS have passed since the
      // first: Ctrl-C waits no longer): a turn runs the young-generation
      // collection V8 schedules once that space is 80% full, ~3 ms (mostly
      // fresh pages for what survives) that a short walk ending well before
      // it fills never needs (check of a tiny image collected there, ls and
      // dump not).
      if (!this.info.direct && this.turnNow()) await new Promise<void>((resolve) => setImmediate(resolve));
      return res;
    } catch (e) {
      throw fromNative(e, { path: this.path, ...opts.errorFields });
    }
  }

  /** Counts a read of a cached file; whether the event loop turns after it (see read). */
  private turnNow(): boolean {
    const n = ++this.reads;
    if (n === 1) this.firstRead = Date.now();
    return n % YIELD_EVERY === 0 && (n > FIRST_TURN_AFTER || Date.now() - this.firstRead >= FIRST_TURN_MS);
  }

  /**
   * Hands back the `data` of a read that nothing will look at again: its
   * memory is reused by later reads at once instead of when the garbage
   * collector gets to it, and every view of it reads as empty from then on.
   * Returns false (and does nothing) for a buffer this reader did not return
   * or a reader without that ability (the portable one).
   */
  release(data: Buffer): boolean {
    return this.r.release?.(data) ?? false;
  }

  /**
   * A device-details tree read whole and checked in the addon
   * (native/btree_walk.cc): from the page cache on this thread, else on a
   * worker thread with reads that wait. null: closed, the portable reader,
   * O_DIRECT, a read error, a tree too large or broken; the caller then
   * walks it as usual (and reports what is wrong). Closing the reader stops
   * a walk on a thread at its next batch (then null). `ioUring` false: its
   * reads one preadv2 a block, as where the kernel has no io_uring (tests).
   */
  async walkDetails(root: number, limit: number, opts: { ioUring?: boolean } = {}): Promise<NativeDetailsWalk | null> {
    if (this.closed || this.r.walkDetails === undefined) return null;
    return this.r.walkDetails(root, limit, opts.ioUring ?? true);
  }

  /** EBADF once closed: callers that check their arguments first call this before. */
  assertOpen(): void {
    if (this.closed) throw new DmthinError('EBADF', `${this.path} is closed`, { path: this.path, syscall: 'read' });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.r.close();
  }
}
