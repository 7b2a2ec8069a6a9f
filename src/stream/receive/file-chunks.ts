/**
 * Sequential reads of a stream file (a spool or a seekable input) in chunks.
 * Given an open FileHandle, reads it from byte 0 and leaves it open: a
 * receive verifies and applies the same open file, so what is applied is what
 * was verified even if the path is pointed at another file in between.
 *
 * Two buffers are reused for the whole file, one being read while the caller
 * works on the other: memory stays at two chunks whatever the stream's size
 * (fresh buffers per chunk left hundreds of MiB for the GC to find). So a
 * chunk, and any view into it, is valid only until the next one is asked for
 * — unless the caller holds chunks longer and says when they are free
 * (beforeReuse; three buffers then).
 */
import { open, type FileHandle } from 'node:fs/promises';
import { DmthinError, throwIfAborted } from '../../errors';

/** Default chunk size: small enough to bound memory, large enough that syscalls do not matter. */
export const CHUNK_BYTES = 1 << 20;

/** Options of fileChunks. */
export interface FileChunksOptions {
  chunkBytes?: number;
  signal?: AbortSignal;
  /**
   * Awaited before a buffer is read into again, with the file position its
   * last chunk ended at: a consumer that keeps chunks past the next one
   * (hashed in place, later) says here when that chunk is free. Three
   * buffers are used then, so the wait overlaps the next chunk's work.
   */
  beforeReuse?: (end: number) => Promise<void>;
  /** Bytes to read at most (what an earlier pass verified): the file may have grown since. */
  limit?: number;
}

export async function* fileChunks(src: string | FileHandle, opts: FileChunksOptions = {}): AsyncGenerator<Buffer> {
  const size = opts.chunkBytes ?? CHUNK_BYTES;
  let fh: FileHandle;
  if (typeof src === 'string') {
    try {
      fh = await open(src, 'r');
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw new DmthinError(err.code ?? 'EIO', `${src}: ${err.message}`, { path: src, syscall: 'open', cause: e });
    }
  } else {
    fh = src;
  }
  const bufs = Array.from({ length: opts.beforeReuse ? 3 : 2 }, () => Buffer.allocUnsafeSlow(size));
  // Where the chunk each buffer last held ends in the file (-1: never used).
  const ends = bufs.map(() => -1);
  let pos = 0;
  let turn = 0;
  const readInto = async (i: number): Promise<number> => {
    if (opts.beforeReuse && ends[i] >= 0) await opts.beforeReuse(ends[i]);
    const want = opts.limit === undefined ? size : Math.min(size, opts.limit - pos);
    if (want <= 0) return 0;
    return fh.read(bufs[i], 0, want, pos).then((r) => r.bytesRead);
  };
  let next: Promise<number> | undefined;
  try {
    throwIfAborted(opts.signal);
    next = readInto(turn);
    for (;;) {
      const n = await next;
      next = undefined;
      if (n === 0) return;
      const cur = bufs[turn];
      pos += n;
      ends[turn] = pos;
      turn = (turn + 1) % bufs.length;
      // Read ahead into the next buffer while the caller works on this one.
      next = readInto(turn);
      next.catch(() => undefined); // awaited on the next turn, or in finally when the caller stops
      yield n === size ? cur : cur.subarray(0, n);
      throwIfAborted(opts.signal);
    }
  } finally {
    // The read ahead must not land in a buffer after the descriptor is closed or reused by the caller.
    await next?.catch(() => undefined);
    if (typeof src === 'string') await fh.close();
  }
}
