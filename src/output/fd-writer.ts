/**
 * Ordered writes to an inherited file descriptor (the CLI's stdout) without
 * node:stream. Node's process.stdout is a net.Socket for a pipe and a
 * stream.Writable for a file: creating it loads net and the stream modules,
 * ~6 ms of every run's start-up here (a pipe; ~3.5 ms for a file), more than
 * a tiny command's own work.
 *
 * Each write goes out whole, continued after a short write, in the order
 * given, the writes queued at once (a send's record: header, then payload;
 * or held by cork()) together in one writev(2): to a pipe, a socket or a
 * terminal through fs.write/fs.writev (the thread pool,
 * so a slow reader blocks no JavaScript); to a regular file or one of the
 * memory devices (/dev/null, /dev/full...) at once, as Node's process.stdout
 * writes to files, its callback in a later tick as fs.write's would be. A
 * short command then starts no thread pool for its output (four threads),
 * and a long one wakes no thread per chunk. The first error (EPIPE, ENOSPC, EIO...) is kept: it fails that write
 * and every later one, and is emitted once as 'error' to listeners (none: it
 * is only kept, for flushed() to throw). A descriptor some other process set
 * non-blocking answers EAGAIN when full: the write is retried after a pause
 * (1 ms, doubling to 64 ms) rather than given up.
 *
 * It has what OutputSink uses of a Writable (write with a callback,
 * writableNeedDrain, 'drain', 'error', destroyed).
 */
import { EventEmitter } from 'node:events';
import { fstatSync, type Stats, write as fsWrite, writev as fsWritev, writeSync, writevSync } from 'node:fs';

interface Pending {
  buf: Uint8Array;
  off: number;
  cb: ((e?: Error | null) => void) | undefined;
}

/** Bytes queued before write() asks its caller to wait for 'drain'. */
const HIGH_WATER = 1 << 20;
/** Buffers one writev(2) takes at most (Linux's IOV_MAX). */
const IOV_MAX = 1024;
const MAX_PAUSE_MS = 64;

export class FdWriter extends EventEmitter {
  /** True once a write failed: nothing more is written. */
  destroyed = false;
  /** The queue passed the high-water mark; 'drain' follows when it is empty. */
  writableNeedDrain = false;
  private readonly queue: Pending[] = [];
  private head = 0;
  private queued = 0;
  private busy = false;
  private error: Error | undefined;
  private pause = 1;
  private idle: (() => void)[] = [];
  /** Written at once (see above); decided at the first write. */
  private inline: boolean | undefined;
  /** cork() calls not yet matched by uncork(): writes are queued, not started. */
  private corked = 0;

  constructor(readonly fd: number) {
    super();
  }

  /** Queues bytes (a string as UTF-8); `cb` runs once they are written or failed. */
  write(chunk: string | Uint8Array, cb?: (e?: Error | null) => void): boolean {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    if (this.error) {
      const e = this.error;
      if (cb) process.nextTick(cb, e);
      return false;
    }
    this.queue.push({ buf, off: 0, cb });
    this.queued += buf.length;
    if (!this.busy && this.corked === 0) this.next();
    if (this.queued >= HIGH_WATER) this.writableNeedDrain = true;
    return !this.writableNeedDrain;
  }

  /**
   * Holds the queued writes until uncork(), which starts them as one
   * writev(2) (a send writes a record's header and payload together: one
   * system call where it made two, each ~10 us in the bench VM). As a
   * Writable's cork(): a write in flight completes, nothing more starts.
   */
  cork(): void {
    this.corked++;
  }

  /** Ends a cork(): the writes held start. */
  uncork(): void {
    if (this.corked === 0) return;
    if (--this.corked === 0 && !this.busy && !this.error) this.next();
  }

  /** Resolves when everything queued so far is written; rejects with the first write error. */
  flushed(): Promise<void> {
    if (this.error) return Promise.reject(this.error);
    if (!this.busy && this.head >= this.queue.length) return Promise.resolve(); // nothing in flight, nothing held by cork()
    return new Promise((resolve, reject) => this.idle.push(() => (this.error ? reject(this.error) : resolve())));
  }

  private next(): void {
    const p = this.queue[this.head];
    if (p !== undefined && this.corked > 0) {
      this.busy = false; // held: uncork() starts it
      return;
    }
    if (p === undefined) {
      this.busy = false;
      this.queue.length = 0;
      this.head = 0;
      if (this.writableNeedDrain) {
        this.writableNeedDrain = false;
        this.emit('drain');
      }
      for (const f of this.idle.splice(0)) f();
      return;
    }
    this.busy = true;
    if (p.buf.length === 0) {
      this.done(p);
      return;
    }
    this.inline ??= writesAtOnce(this.fd);
    let k = 1;
    while (k < IOV_MAX && this.head + k < this.queue.length && this.queue[this.head + k].buf.length > 0) k++;
    if (k > 1) {
      const bufs: Uint8Array[] = [];
      for (let i = 0; i < k; i++) {
        const q = this.queue[this.head + i];
        bufs.push(q.off === 0 ? q.buf : q.buf.subarray(q.off));
      }
      if (this.inline) {
        let n = 0;
        let err: Error | null = null;
        try {
          n = writevSync(this.fd, bufs);
        } catch (e) {
          err = e as Error;
        }
        process.nextTick(() => this.wroteMany(k, err, n));
        return;
      }
      fsWritev(this.fd, bufs, (e, n) => this.wroteMany(k, e, n));
      return;
    }
    if (this.inline) {
      let n = 0;
      let err: Error | null = null;
      try {
        n = writeSync(this.fd, p.buf, p.off, p.buf.length - p.off);
      } catch (e) {
        err = e as Error;
      }
      process.nextTick(() => this.wrote(p, err, n));
      return;
    }
    fsWrite(this.fd, p.buf, p.off, p.buf.length - p.off, null, (e, n) => this.wrote(p, e, n));
  }

  private wrote(p: Pending, e: Error | null, n: number): void {
    if (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') {
        setTimeout(() => this.next(), this.pause);
        this.pause = Math.min(this.pause * 2, MAX_PAUSE_MS);
        return;
      }
      this.fail(e);
      return;
    }
    this.pause = 1;
    p.off += n;
    if (p.off < p.buf.length) {
      if (n === 0) {
        this.fail(Object.assign(new Error('write to the output made no progress'), { code: 'EIO', syscall: 'write' }));
        return;
      }
      this.next();
      return;
    }
    this.done(p);
  }

  /** A writev of the `k` queued buffers from the head: those written whole are done, a short one goes on. */
  private wroteMany(k: number, e: Error | null, n: number): void {
    if (e) {
      this.wrote(this.queue[this.head], e, 0);
      return;
    }
    this.pause = 1;
    if (n === 0) {
      this.fail(Object.assign(new Error('write to the output made no progress'), { code: 'EIO', syscall: 'write' }));
      return;
    }
    for (let i = 0; i < k && n > 0; i++) {
      const p = this.queue[this.head];
      const take = Math.min(n, p.buf.length - p.off);
      p.off += take;
      n -= take;
      if (p.off < p.buf.length) break;
      this.finishHead(p);
    }
    this.next();
  }

  private done(p: Pending): void {
    this.finishHead(p);
    this.next();
  }

  /** The write at the head is complete: off the queue, its callback called. */
  private finishHead(p: Pending): void {
    this.queue[this.head++] = undefined as unknown as Pending;
    this.queued -= p.buf.length;
    p.cb?.();
  }

  private fail(e: Error): void {
    this.error = e;
    this.destroyed = true;
    this.busy = false;
    const failed = this.queue.slice(this.head);
    this.queue.length = 0;
    this.head = 0;
    this.queued = 0;
    for (const p of failed) p.cb?.(e);
    if (this.listenerCount('error') > 0) this.emit('error', e);
    this.emit('close');
    for (const f of this.idle.splice(0)) f();
  }
}

/** One of Linux's memory devices, major 1: /dev/null, zero, full, the random devices... (never a terminal). */
export function isMemoryDevice(st: Stats): boolean {
  // The major number's low 12 bits are bits 8-19 of Linux's dev_t.
  return st.isCharacterDevice() && ((st.rdev >>> 8) & 0xfff) === 1;
}

/**
 * A regular file or a memory device, which never make a writer wait on a
 * reader. Anything else, or a failed fstat, is written through the thread pool.
 */
function writesAtOnce(fd: number): boolean {
  try {
    const st = fstatSync(fd);
    return st.isFile() || isMemoryDevice(st);
  } catch {
    return false;
  }
}
