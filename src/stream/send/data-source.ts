/**
 * Where a send reads block contents from. Two addressings:
 *  - 'virtual': the thin device itself (an activated snapshot, or an image of
 *    it): block n of the device is at byte n * blockBytes;
 *  - 'data': the pool's data device (offline images): a mapping's data block
 *    d is at byte d * blockBytes.
 * The native source reads with O_DIRECT, in sorted and coalesced batches, off
 * the JS thread.
 */
import { fromNative, DmthinError } from '../../errors';
import { native, type NativeBlockReader } from '../../native/binding';

export type DataAddressing = 'virtual' | 'data';

export interface DataSource {
  readonly addressing: DataAddressing;
  /**
   * Reads `blocks` (units of `unitBytes`, a multiple of 512) and returns
   * their bytes concatenated in request order.
   */
  readBlocks(unitBytes: number, blocks: readonly number[]): Promise<Buffer>;
  close?(): Promise<void>;
}

export interface NativeDataSourceOptions {
  addressing: DataAddressing;
  /** 'auto' (default): O_DIRECT; buffered only for a regular file whose filesystem refuses O_DIRECT. */
  direct?: 'auto' | 'always' | 'never';
}

/** A block device or file read through the native O_DIRECT reader. */
export class NativeDataSource implements DataSource {
  private closed = false;

  private constructor(
    private readonly reader: NativeBlockReader,
    readonly path: string,
    readonly addressing: DataAddressing,
    readonly sizeBytes: number,
    readonly blockDevice: boolean,
    readonly direct: boolean,
  ) {}

  static async open(path: string, opts: NativeDataSourceOptions): Promise<NativeDataSource> {
    const r = new (native().BlockReader)();
    try {
      const info = await r.open(path, opts.direct ?? 'auto', false);
      return new NativeDataSource(r, path, opts.addressing, info.size, info.blockDevice, info.direct);
    } catch (e) {
      throw fromNative(e, { path });
    }
  }

  async readBlocks(unitBytes: number, blocks: readonly number[]): Promise<Buffer> {
    if (this.closed) throw new DmthinError('EBADF', `${this.path} is closed`, { path: this.path, syscall: 'read' });
    for (const b of blocks) {
      if ((b + 1) * unitBytes > this.sizeBytes) {
        throw new DmthinError('EIO', `read of bytes [${b * unitBytes}, ${(b + 1) * unitBytes}) is beyond the end of ${this.path} (${this.sizeBytes} bytes)`, {
          path: this.path,
          syscall: 'preadv',
          offset: b * unitBytes,
        });
      }
    }
    try {
      return (await this.reader.read(unitBytes, Float64Array.from(blocks))).data;
    } catch (e) {
      throw fromNative(e, { path: this.path });
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.reader.close();
  }
}
