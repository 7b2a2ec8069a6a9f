/**
 * Sequential reads of a stream file (a spool or a seekable input) in large
 * chunks. Each chunk is a fresh buffer: the verifier hands out views into it.
 * Given an open FileHandle, reads it from byte 0 and leaves it open: a
 * receive verifies and applies the same open file, so what is applied is what
 * was verified even if the path is pointed at another file in between.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { DmthinError, throwIfAborted } from '../../errors';

export async function* fileChunks(src: string | FileHandle, opts: { chunkBytes?: number; signal?: AbortSignal } = {}): AsyncGenerator<Buffer> {
  const size = opts.chunkBytes ?? 16 << 20;
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
  try {
    let pos = 0;
    for (;;) {
      throwIfAborted(opts.signal);
      const buf = Buffer.allocUnsafe(size);
      const { bytesRead } = await fh.read(buf, 0, size, pos);
      if (bytesRead === 0) return;
      pos += bytesRead;
      yield bytesRead === size ? buf : buf.subarray(0, bytesRead);
    }
  } finally {
    if (typeof src === 'string') await fh.close();
  }
}
