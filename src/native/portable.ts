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

const TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1; // Castagnoli, reflected
    t[i] = c >>> 0;
  }
  return t;
})();

/** Same contract as the addon's crc32c: standard CRC-32C by default; raw: seed in, value out, no inversions. */
export function crc32cPortable(data: Uint8Array, seed = 0xffffffff, raw = false): number {
  let c = seed >>> 0;
  for (let i = 0; i < data.length; i++) c = TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (raw ? c : ~c) >>> 0;
}

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
