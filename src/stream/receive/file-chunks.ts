/**
 * Sequential reads of a stream file (a spool or a seekable input) in chunks.
 * Given an open FileHandle, reads it from byte 0 and leaves it open: a
 * receive verifies and applies the same open file, so what is applied is what
 * was verified even if the path is pointed at another file in between.
 *
 * Two buffers are reused for the whole file, one being read while the caller
 * works on the other: memory stays at two chunks whatever the stream's size
 * (fresh buffers per chunk left hundreds of MiB for the GC to find). So a
 * chunk, and any view into it, is valid only until the next one is asked for.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { DmthinError, throwIfAborted } from '../../errors';

/** Default chunk size: small enough to bound memory, large enough that syscalls do not matter. */
export const CHUNK_BYTES = 1 << 20;

export async function* fileChunks(src: string | FileHandle, opts: { chunkBytes?: number; signal?: AbortSignal } = {}): AsyncGenerator<Buffer> {
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
  const bufs = [Buffer.allocUnsafeSlow(size), Buffer.allocUnsafeSlow(size)];
  let pos = 0;
  let turn = 0;
  const readInto = (buf: Buffer): Promise<number> => {
    return fh.read(buf, 0, size, pos).then((r) => r.bytesRead);
  };
  let next: Promise<number> | undefined;
  try {
    throwIfAborted(opts.signal);
    next = readInto(bufs[turn]);
    for (;;) {
      const n = await next;
      next = undefined;
      if (n === 0) return;
      const cur = bufs[turn];
      pos += n;
      turn ^= 1;
      // Read ahead into the other buffer while the caller works on this one.
      next = readInto(bufs[turn]);
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
