/**
 * Typed wrapper of the native BlockWriter (native/block_writer.cc): a block
 * device or regular file opened write-only, O_DIRECT when possible, never
 * truncated, never created unless asked. Every call runs off the JS thread;
 * anything outside [0, size) is refused with ENOSPC before a syscall is made.
 */
import { check, DmthinError, fromNative } from '../errors';
import { native, type DiscardMethod, type NativeBlockWriter, type NativeWriterInfo, type NativeWriterOpenOptions, type ZeroOutMethod } from './binding';
import { openError } from './open-error';

export type { DiscardMethod, ZeroOutMethod } from './binding';

/** Options of BlockWriter.open. */
export interface BlockWriterOpenOptions extends NativeWriterOpenOptions {
  /** 'auto' (default): O_DIRECT, buffered only for a regular file whose filesystem refuses O_DIRECT at open. */
  direct?: 'auto' | 'always' | 'never';
  /** Create a regular file that does not exist (never for block devices; never truncates). */
  create?: boolean;
  /** O_EXCL on a block device (default true): a mounted or claimed device fails with EBUSY. */
  exclusive?: boolean;
  /** Permission bits of a created file (default 0o600). */
  mode?: number;
}

/** What BlockWriter.open found: size, kind, O_DIRECT, alignment. */
export type BlockWriterInfo = NativeWriterInfo;

/** Bytes to write at a byte offset. */
export interface WriteSegment {
  /** Byte offset in the target. */
  offset: number;
  /** The bytes. */
  data: Uint8Array;
}

/** A block device or regular file opened for writing: O_DIRECT when possible, never truncated, no writes outside it. */
export class BlockWriter implements AsyncDisposable {
  private closed = false;

  private constructor(
    private readonly w: NativeBlockWriter,
    /** The file or device written. */
    readonly path: string,
    /** What open found. */
    readonly info: BlockWriterInfo,
  ) {}

  /** Opens a block device or regular file for writing. */
  static async open(path: string, opts: BlockWriterOpenOptions = {}): Promise<BlockWriter> {
    const w = new (native().BlockWriter)();
    try {
      return new BlockWriter(w, path, await w.open(path, opts));
    } catch (e) {
      throw openError(e, path, 'writing');
    }
  }

  /** Current size in bytes (grows with extend()). */
  get size(): number {
    return this.w.size();
  }

  private async call<T>(p: () => Promise<T>): Promise<T> {
    if (this.closed) throw new DmthinError('EBADF', `${this.path} is closed`, { path: this.path });
    try {
      return await p();
    } catch (e) {
      throw fromNative(e, { path: this.path });
    }
  }

  /** Writes disjoint segments in one call; adjacent ones are coalesced. */
  write(segments: readonly WriteSegment[]): Promise<{
    /** Bytes written. */
    bytes: number;
    /** Write calls made after coalescing. */
    writes: number;
  }> {
    const offsets = Float64Array.from(segments, (s) => s.offset);
    const bufs = segments.map((s) => s.data);
    return this.call(() => this.w.write(offsets, bufs));
  }

  /** BLKDISCARD on a block device, a punched hole in a file. */
  async discard(offset: number, length: number): Promise<DiscardMethod> {
    checkRange(offset, length);
    return this.call(() => this.w.discard(offset, length));
  }

  /**
   * discard() of several ranges (offset, length pairs, ascending and
   * disjoint) in one call: one trip to a thread for all of them. The first
   * failure stops it; its `offset` names the range.
   */
  discardMany(ranges: Float64Array): Promise<DiscardMethod> {
    return this.call(() => this.w.discardMany(ranges));
  }

  /** BLKZEROOUT / fallocate(ZERO_RANGE), else written zeros: the range reads back as zeros. */
  async zeroOut(offset: number, length: number): Promise<ZeroOutMethod> {
    checkRange(offset, length);
    return this.call(() => this.w.zeroOut(offset, length));
  }

  /** Grows a regular file to `size` (no-op if already as large). */
  async extend(size: number): Promise<number> {
    check.integer(size, 'size', 0);
    return this.call(() => this.w.extend(size));
  }

  /** Flushes what was written to stable storage. */
  fsync(): Promise<void> {
    return this.call(() => this.w.fsync());
  }

  /** Closes once writes in flight have finished. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.w.close();
  }

  /** Closes it (`await using`). */
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }
}

/** A byte range as the native writer takes it: UsageError for anything else (a negative offset was EUNKNOWN with the addon's signature as its message). */
function checkRange(offset: unknown, length: unknown): void {
  check.integer(offset, 'offset', 0);
  check.integer(length, 'length', 0);
}
