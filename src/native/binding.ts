/**
 * Typed view of the native addon (native/). Only this file touches `bindings`.
 */
import bindings from 'bindings';

export interface NativeOpenInfo {
  size: number;
  logicalBlockSize: number;
  physicalBlockSize: number;
  dioMemAlign: number;
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
  close(): void;
}

export interface NativeAddon {
  crc32c(data: Uint8Array, seed?: number, raw?: boolean): number;
  crc32cTable(data: Uint8Array): number;
  crc32cHardware(): boolean;
  BlockReader: new () => NativeBlockReader;
  // dm-ioctl functions are added by the kernel bridge (native/dm_*.cc).
  [name: string]: unknown;
}

let addon: NativeAddon | undefined;

export function native(): NativeAddon {
  if (!addon) addon = bindings('dmthin') as NativeAddon;
  return addon;
}
