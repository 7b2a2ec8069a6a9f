/**
 * Where a send reads block contents from. Two addressings:
 *  - 'virtual': the thin device itself (an activated snapshot, or an image of
 *    it): block n of the device is at byte n * blockBytes;
 *  - 'data': the pool's data device (offline images): a mapping's data block
 *    d is at byte d * blockBytes.
 * The native source reads with O_DIRECT, in sorted and coalesced batches, off
 * the JS thread.
 */
import { check, describeValue, DmthinError, fromNative, UsageError } from '../../errors';
import { BlockReader } from '../../native/block-reader';
import { alignedBuffer, native, type NativeRangeReader } from '../../native/binding';

/** How a DataSource is addressed: by virtual block (the thin device) or by data block (the pool's data device). */
export type DataAddressing = 'virtual' | 'data';

/** Where a send reads block contents from. */
export interface DataSource {
  /** Whether blocks are asked for by virtual or by data block number. */
  readonly addressing: DataAddressing;
  /**
   * Reads `blocks` (units of `unitBytes`, a multiple of 512) and returns
   * their bytes concatenated in request order.
   */
  readBlocks(unitBytes: number, blocks: readonly number[]): Promise<Buffer>;
  /**
   * Optional: reads byte ranges into `buf` (a buffer from allocBuffer(),
   * reused batch after batch, so a send's memory stays at its few buffers).
   * @internal
   */
  readRanges?(buf: Buffer, ranges: readonly ByteRange[]): Promise<void>;
  /**
   * Optional, with readRanges: a buffer it can read into.
   * @internal
   */
  allocBuffer?(bytes: number): Buffer;
  /**
   * Releases the source. send() calls it for the sources it opens; a source
   * given to sendStream or encodeStream is its caller's, to close once the
   * stream has ended or been destroyed (a source may serve several streams).
   */
  close?(): Promise<void>;
}

/**
 * source.readBlocks, held to its contract: exactly `blocks.length` units of
 * bytes. A source that answers short (a network or file source at its end)
 * or long would otherwise put other bytes in a stream or backup that then
 * verifies as valid.
 */
export async function readBlocksExactly(source: DataSource, unitBytes: number, blocks: readonly number[]): Promise<Buffer> {
  const data: unknown = await source.readBlocks(unitBytes, blocks);
  const want = unitBytes * blocks.length;
  if (!(data instanceof Uint8Array)) {
    throw new DmthinError('EIO', `the data source's readBlocks returned ${data === null ? 'null' : typeof data}, not a Buffer of ${want} bytes`, { syscall: 'read' });
  }
  if (data.length !== want) {
    throw new DmthinError('EIO', `the data source's readBlocks returned ${data.length} bytes for ${blocks.length} units of ${unitBytes} bytes (${want} bytes): a short or long read`, {
      syscall: 'read',
    });
  }
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.length);
}

/**
 * `length` bytes of the source at `offset`, into a buffer at `at`.
 * @internal
 */
export interface ByteRange {
  /** Where in the buffer. */
  at: number;
  /** Byte offset in the source. */
  offset: number;
  /** Bytes. */
  length: number;
}

/** Options of NativeDataSource.open. */
export interface NativeDataSourceOptions {
  /** The thin device itself ('virtual') or the pool's data device ('data'). */
  addressing: DataAddressing;
  /** 'auto' (default): O_DIRECT; buffered only for a regular file whose filesystem refuses O_DIRECT. */
  direct?: 'auto' | 'always' | 'never';
}

/** @internal The most the native reader reads or holds at once (its largest buffer): 1 GiB. */
export const MAX_READ_BYTES = 1 << 30;

/** A block device or file read through the native O_DIRECT reader. */
export class NativeDataSource implements DataSource {
  /** The file or device read. */
  readonly path: string;
  /** Its size in bytes. */
  readonly sizeBytes: number;
  /** It is a block device. */
  readonly blockDevice: boolean;
  /** Reads bypass the page cache (O_DIRECT). */
  readonly direct: boolean;

  private ranges?: Promise<NativeRangeReader>;

  private constructor(
    private readonly reader: BlockReader,
    /** How blocks are addressed. */
    readonly addressing: DataAddressing,
    private readonly directMode: 'auto' | 'always' | 'never' = 'auto',
  ) {
    this.path = reader.path;
    ({ size: this.sizeBytes, blockDevice: this.blockDevice, direct: this.direct } = reader.info);
  }

  /** Opens a block device or file read-only. */
  static async open(path: string, opts: NativeDataSourceOptions): Promise<NativeDataSource> {
    check.string(path, 'path');
    check.required(opts, 'NativeDataSource.open');
    if (opts.addressing === undefined) throw new UsageError("NativeDataSource.open needs addressing: 'virtual' (the thin device) or 'data' (the pool's data device)");
    check.oneOf(opts.addressing, 'addressing', ['virtual', 'data']);
    check.oneOf(opts.direct, 'direct', ['auto', 'always', 'never']);
    return new NativeDataSource(await BlockReader.open(path, { direct: opts.direct }), opts.addressing, opts.direct);
  }

  /** @internal 4096-aligned, for O_DIRECT reads. */
  allocBuffer(bytes: number): Buffer {
    return alignedBuffer(bytes);
  }

  /** @internal Through a second descriptor (RangeReader), several pieces in flight. */
  async readRanges(buf: Buffer, ranges: readonly ByteRange[]): Promise<void> {
    this.assertReading();
    const flat = new Float64Array(ranges.length * 3);
    ranges.forEach((r, i) => {
      if (r.offset + r.length > this.sizeBytes) {
        throw new DmthinError('EIO', `read of bytes [${r.offset}, ${r.offset + r.length}) is beyond the end of ${this.path} (${this.sizeBytes} bytes)`, {
          path: this.path,
          syscall: 'pread',
          offset: r.offset,
        });
      }
      flat.set([r.at, r.offset, r.length], i * 3);
    });
    // A second descriptor of the same file, opened the same way, on first use.
    this.ranges ??= (async () => {
      const r = new (native().RangeReader)();
      await r.open(this.path, this.directMode);
      return r;
    })();
    const r = await this.ranges;
    this.assertReading(); // close() may have begun while the descriptor was being opened
    try {
      await this.track(r.readInto(buf, flat));
    } catch (e) {
      throw fromNative(e, { path: this.path });
    }
  }

  private closing = false;
  private assertReading(): void {
    if (this.closing) throw new DmthinError('EBADF', `${this.path} is closed`, { path: this.path, syscall: 'read' });
    this.reader.assertOpen();
  }

  // Reads in flight: close() waits for them, so that its descriptors are closed when it resolves
  // (an abandoned send leaves its read-ahead running).
  private readonly inFlight = new Set<Promise<unknown>>();
  private track<T>(p: Promise<T>): Promise<T> {
    const settled = p.then(
      () => undefined,
      () => undefined,
    );
    this.inFlight.add(settled);
    void settled.then(() => this.inFlight.delete(settled));
    return p;
  }

  async readBlocks(unitBytes: number, blocks: readonly number[]): Promise<Buffer> {
    this.assertReading();
    // The caller's mistakes as such, not the addon's EUNKNOWN from inside.
    if (!Number.isSafeInteger(unitBytes) || unitBytes <= 0 || unitBytes % 512 !== 0) throw new UsageError(`unitBytes must be a positive multiple of 512, got ${describeValue(unitBytes)}`);
    if (!Array.isArray(blocks)) throw new UsageError(`blocks must be an array of block numbers, got ${describeValue(blocks)}`);
    if (unitBytes * blocks.length > MAX_READ_BYTES) throw new UsageError(`a read of ${blocks.length} units of ${unitBytes} bytes is more than 1 GiB: read fewer at once`);
    for (const b of blocks) {
      if (!Number.isSafeInteger(b) || b < 0) throw new UsageError(`block numbers must be integers of at least 0, got ${describeValue(b)}`);
      if ((b + 1) * unitBytes > this.sizeBytes) {
        throw new DmthinError('EIO', `read of bytes [${b * unitBytes}, ${(b + 1) * unitBytes}) is beyond the end of ${this.path} (${this.sizeBytes} bytes)`, {
          path: this.path,
          syscall: 'preadv',
          offset: b * unitBytes,
        });
      }
    }
    return (await this.track(this.reader.read(unitBytes, blocks))).data;
  }

  /** Closes both descriptors once the reads in flight are done; they are closed when it resolves. */
  async close(): Promise<void> {
    // No read starts once close() has begun (an abandoned send's generator may still be running
    // and ask for one while close() waits); those in flight, including any that started before, are waited for.
    this.closing = true;
    while (this.inFlight.size > 0) await Promise.all(this.inFlight);
    this.reader.close();
    const r = await this.ranges?.catch(() => undefined);
    r?.close();
  }

  /** close(), for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
