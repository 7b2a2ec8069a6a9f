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

/** A details tree read and checked whole by the addon (native/btree_walk.cc). */
export interface NativeDetailsWalk {
  /** The columns: 4 * rows + 3 f64s in device-table.ts's layout, rows [0, count) written, the maxima after them. */
  columns: ArrayBuffer;
  rows: number;
  count: number;
  /** Blocks the walk read. */
  blocksRead: number;
  /** Read on a worker thread (a block was not cached, or the tree is large), not on the calling one. */
  waited: boolean;
}

export interface NativeBlockReader {
  open(path: string, direct?: 'auto' | 'always' | 'never', exclusive?: boolean): Promise<NativeOpenInfo>;
  read(blockSize: number, blocks: Float64Array, checksum?: boolean): Promise<NativeReadResult>;
  /** Gives a read's `data` back (the addon's reader only): detached, its memory reused. False if it was not one. */
  release?(data: Buffer): boolean;
  /**
   * The device-details tree at `root` read whole and checked (the addon's
   * reader only), no block at or beyond `limit`: from the page cache on the
   * calling thread, else on a worker thread. null when it cannot answer
   * (O_DIRECT, a read error, a broken rule: the caller walks the tree
   * itself, which says what is wrong). ioUring false: one preadv2 a block.
   */
  walkDetails?(root: number, limit: number, ioUring?: boolean): Promise<NativeDetailsWalk | null>;
  close(): void;
}
