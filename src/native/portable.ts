/**
 * Pure-JS stand-ins for the two addon features metadata reading needs, used
 * only when the addon does not load: CRC-32C and a read-only reader of
 * regular files. With them dump, ls, delta, rmap and check still work on
 * metadata image files (slower: table CRC, buffered reads, one read per
 * block); block devices, writing and device-mapper still need the addon.
 */
import { closeSync, open, read } from 'node:fs';
import { stat } from 'node:fs/promises';
import { promisify } from 'node:util';
import { fromNative, SystemCallError } from '../errors';
import type { NativeBlockReader, NativeOpenInfo, NativeReadResult } from './reader-contract';
import { crc32cPortable } from './crc32c-portable';

export { crc32cPortable };

const openAsync = promisify(open);
const readAsync = promisify(read);

/** The addon's BlockReader contract for a regular file; `unavailable` is thrown for anything else. */
export class PortableBlockReader implements NativeBlockReader {
  private fd = -1;
  private path = '';

  constructor(private readonly unavailable: Error) {}

  async open(path: string): Promise<NativeOpenInfo> {
    const st = await stat(path);
    // A block device's size needs an ioctl (BLKGETSIZE64): only the addon reads devices.
    if (st.isBlockDevice()) throw this.unavailable;
    if (!st.isFile()) throw new SystemCallError('EINVAL', `EINVAL: invalid argument, open '${path}' (not a regular file or block device)`, { syscall: 'open', path });
    this.fd = await openAsync(path, 'r');
    this.path = path;
    return { size: st.size, logicalBlockSize: 512, blockDevice: false, direct: false };
  }

  async read(blockSize: number, blocks: Float64Array, checksum = false): Promise<NativeReadResult> {
    const data = Buffer.alloc(blocks.length * blockSize);
    for (let i = 0; i < blocks.length; i++) {
      const offset = blocks[i] * blockSize;
      let got: number;
      try {
        ({ bytesRead: got } = await readAsync(this.fd, data, i * blockSize, blockSize, offset));
      } catch (e) {
        throw fromNative(e, { path: this.path, offset });
      }
      if (got < blockSize)
        throw new SystemCallError('EIO', `EIO: i/o error, read '${this.path}' (short read: block beyond the end of the device)`, { syscall: 'read', path: this.path, offset });
    }
    if (!checksum) return { data };
    const crcs = new Uint32Array(blocks.length);
    for (let i = 0; i < blocks.length; i++) crcs[i] = crc32cPortable(data.subarray(i * blockSize + 4, (i + 1) * blockSize), 0xffffffff, true);
    return { data, crcs };
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}
