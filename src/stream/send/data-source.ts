/**
 * Where a send reads block contents from. Two addressings:
 *  - 'virtual': the thin device itself (an activated snapshot, or an image of
 *    it): block n of the device is at byte n * blockBytes;
 *  - 'data': the pool's data device (offline images): a mapping's data block
 *    d is at byte d * blockBytes.
 * The native source reads with O_DIRECT, in sorted and coalesced batches, off
 * the JS thread.
 */
import { DmthinError } from '../../errors';
import { BlockReader } from '../../native/block-reader';

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
  readonly path: string;
  readonly sizeBytes: number;
  readonly blockDevice: boolean;
  readonly direct: boolean;

  private constructor(
    private readonly reader: BlockReader,
    readonly addressing: DataAddressing,
  ) {
    this.path = reader.path;
    ({ size: this.sizeBytes, blockDevice: this.blockDevice, direct: this.direct } = reader.info);
  }

  static async open(path: string, opts: NativeDataSourceOptions): Promise<NativeDataSource> {
    return new NativeDataSource(await BlockReader.open(path, { direct: opts.direct }), opts.addressing);
  }

  async readBlocks(unitBytes: number, blocks: readonly number[]): Promise<Buffer> {
    this.reader.assertOpen();
    for (const b of blocks) {
      if ((b + 1) * unitBytes > this.sizeBytes) {
        throw new DmthinError('EIO', `read of bytes [${b * unitBytes}, ${(b + 1) * unitBytes}) is beyond the end of ${this.path} (${this.sizeBytes} bytes)`, {
          path: this.path,
          syscall: 'preadv',
          offset: b * unitBytes,
        });
      }
    }
    return (await this.reader.read(unitBytes, blocks)).data;
  }

  async close(): Promise<void> {
    this.reader.close();
  }
}
