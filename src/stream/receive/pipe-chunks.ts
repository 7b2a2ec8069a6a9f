/**
 * Reading a pipe (stdin) in large chunks of two reused buffers.
 *
 * process.stdin hands out a fresh 64 KiB Buffer per read: a 1 GiB stream is
 * 16,000 of them, and V8 frees their memory only when it gets round to it
 * (reading 1 GiB from stdin and dropping it peaks at 85 MiB, against 48 with
 * reused buffers). Here a net.Socket with `onread` reads into one scratch
 * buffer (epoll, no thread blocked in read(2), so nothing keeps the process
 * from exiting), each read is copied into one of two 1 MiB chunks (~0.1 s
 * per GiB), and the socket is paused while both chunks are taken.
 *
 * The socket is opened on a new descriptor of the same pipe
 * (/proc/self/fd/N, O_NONBLOCK: a named FIFO with no writer would block the
 * open, and the socket wants it anyway): process.stdin, if anything made it,
 * keeps fd 0 to itself, and O_NONBLOCK is not set on the shell's descriptor. Anything that is not a
 * FIFO (a socket, a terminal, a file) gets null from openPipe().
 */
import { closeSync, constants, fstatSync, openSync } from 'node:fs';
import { Socket, type SocketConstructorOpts } from 'node:net';
import { AbortError, DmthinError } from '../../errors';
import { CHUNK_BYTES } from './file-chunks';

/** A new non-blocking descriptor of the FIFO at `fd`, or null when `fd` is not a FIFO (or cannot be reopened). */
export function openPipe(fd: number): number | null {
  try {
    if (!fstatSync(fd).isFIFO()) return null;
    return openSync(`/proc/self/fd/${fd}`, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch {
    return null;
  }
}

/** Options of pipeChunks. */
export interface PipeChunksOptions {
  chunkBytes?: number;
  signal?: AbortSignal;
}

/**
 * The bytes of the pipe `fd` (taken over and closed at the end), in chunks
 * of up to `chunkBytes`. A chunk is valid until the next one is asked for.
 */
export async function* pipeChunks(fd: number, opts: PipeChunksOptions = {}): AsyncGenerator<Buffer> {
  const size = Math.max(opts.chunkBytes ?? CHUNK_BYTES, 512 << 10);
  // Node reads every time into the start of one user buffer (its generator
  // is called once): each read is copied out into the chunk being filled.
  const scratch = Buffer.allocUnsafeSlow(256 << 10);
  // A buffer is handed over once less than a read's worth of room is left.
  const handOver = size - scratch.length;
  const bufs = [Buffer.allocUnsafeSlow(size), Buffer.allocUnsafeSlow(size)];
  let filling: number | null = 0; // the buffer being read into; null while both are taken (socket paused)
  let fill = 0;
  const ready: Buffer[] = [];
  let ended = false;
  let failure: Error | null = null;
  let wake: (() => void) | null = null;
  const poke = (): void => {
    const w = wake;
    wake = null;
    w?.();
  };

  let sock: Socket;
  try {
    // `onread` is a documented option of the constructor too (Node's types list it for connect() only).
    sock = new Socket({
      fd,
      readable: true,
      writable: false,
      onread: {
        buffer: scratch,
        callback: (n: number): boolean => {
          // Never called while paused, so a buffer is being filled.
          scratch.copy(bufs[filling!], fill, 0, n);
          fill += n;
          if (fill < handOver) return true;
          ready.push(bufs[filling!].subarray(0, fill));
          poke();
          fill = 0;
          // The other buffer is free only if the reader gave it back (it holds at most one, and one waits in `ready`).
          const other = filling! ^ 1;
          if (ready.length === 1 && !taken.has(other)) {
            filling = other;
            return true;
          }
          filling = null;
          return false; // pauses the socket until the reader frees a buffer
        },
      },
    } as SocketConstructorOpts);
  } catch (e) {
    closeSync(fd);
    throw e;
  }
  // Buffers the reader holds (yielded, not yet given back).
  const taken = new Set<number>();
  sock.on('end', () => {
    ended = true;
    poke();
  });
  sock.on('error', (e: NodeJS.ErrnoException) => {
    failure ??= new DmthinError(e.code ?? 'EIO', `cannot read the input pipe: ${e.message}`, { syscall: 'read', cause: e });
    poke();
  });
  const onAbort = (): void => {
    failure ??= new AbortError(undefined, { cause: opts.signal?.reason });
    poke();
  };
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  if (opts.signal?.aborted) onAbort();

  try {
    for (;;) {
      while (!ready.length && !ended && !failure) await new Promise<void>((res) => (wake = res));
      if (failure) throw failure;
      let chunk = ready.shift();
      if (!chunk) {
        // Ended: what the buffer being filled holds is the last chunk.
        if (filling === null || fill === 0) return;
        chunk = bufs[filling].subarray(0, fill);
        fill = 0;
        filling = null;
      }
      const i: number = chunk.buffer === bufs[0].buffer ? 0 : 1;
      taken.add(i);
      yield chunk;
      taken.delete(i);
      if (failure) throw failure;
      if (filling === null && !ended) {
        // The socket waited for this buffer (the other one may still be in `ready`).
        filling = i;
        fill = 0;
        sock.resume();
      }
    }
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
    sock.destroy(); // closes the descriptor
  }
}
