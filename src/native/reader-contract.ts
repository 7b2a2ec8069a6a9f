/**
 * What a block reader is to the layers above: the addon's (binding.ts) and
 * the portable one (portable.ts, when the addon does not load) both are one.
 * A file of its own so that neither of the two imports the other for it.
 */

export interface NativeOpenInfo {
  size: number;
  logicalBlockSize: number;
  blockDevice: boolean;
  direct: boolean;
}

export interface NativeReadResult {
  /** n * blockSize bytes, 4096-aligned, blocks in request order. */
  data: Buffer;
  /** Raw CRC-32C (seed ~0, no final inversion) of bytes [4, 4096) of each block. */
  crcs?: Uint32Array;
}

export interface NativeBlockReader {
  open(path: string, direct?: 'auto' | 'always' | 'never', exclusive?: boolean): Promise<NativeOpenInfo>;
  read(blockSize: number, blocks: Float64Array, checksum?: boolean): Promise<NativeReadResult>;
  /** Gives a read's `data` back (the addon's reader only): detached, its memory reused. False if it was not one. */
  release?(data: Buffer): boolean;
  close(): void;
}
