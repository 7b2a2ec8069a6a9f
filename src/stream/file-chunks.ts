/**
 * Sequential reads of a stream file (a spool or a seekable input) in large
 * chunks. Each chunk is a fresh buffer: the verifier hands out views into it.
 */
import { open } from 'node:fs/promises';
import { DmthinError, throwIfAborted } from '../errors';

export async function* fileChunks(path: string, opts: { chunkBytes?: number; signal?: AbortSignal } = {}): AsyncGenerator<Buffer> {
  const size = opts.chunkBytes ?? 16 << 20;
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new DmthinError(err.code ?? 'EIO', `${path}: ${err.message}`, { path, syscall: 'open', cause: e });
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
    await fh.close();
  }
}
