/**
 * An output buffer for formatters that print millions of lines: text is
 * copied into large chunks that go to the Writable with backpressure.
 *
 * A write that fails (ENOSPC, EIO, EPIPE...) reaches Node as a write callback
 * error and an 'error' event, never as a throw; the sink records the first one
 * and rethrows it from the next maybeFlush()/flush(), so a formatter stops at
 * the first lost byte. flush() waits for the last chunk's callback: a failure
 * of the final write is seen too (a pipe writes asynchronously).
 */
import { DmthinError, SystemCallError } from '../errors';

/**
 * What the sink needs of its output: a stream.Writable, or the CLI's stdout
 * writer (fd-writer.ts).
 */
export interface SinkTarget {
  /** Queues bytes; `cb` runs once they are written (with the error if not). False: wait for 'drain'. */
  write(chunk: Uint8Array, cb: (e?: Error | null) => void): boolean;
  /** A write failed (the sink keeps the first error and stops). */
  on(event: 'error', listener: (e: Error) => void): unknown;
  /** 'drain': ready for more after write() returned false; 'close': gone. */
  on(event: 'drain' | 'close', listener: () => void): unknown;
  /** Removes a listener added with on(). */
  off(event: 'error' | 'drain' | 'close', listener: () => void): unknown;
  /** write() returned false and 'drain' has not come yet. */
  readonly writableNeedDrain: boolean;
  /** The target failed or was closed: nothing more is written. */
  readonly destroyed: boolean;
}

const CHUNK = 1 << 18;

/** "00".."99" as byte pairs: two digits per division when printing numbers. */
const DIGIT_PAIRS = new Uint8Array(200);
for (let i = 0; i < 100; i++) {
  DIGIT_PAIRS[2 * i] = 48 + Math.floor(i / 10);
  DIGIT_PAIRS[2 * i + 1] = 48 + (i % 10);
}

/** Digits of a non-negative integer below 2^53. */
function digitCount(n: number): number {
  let d = 1;
  while (n >= 10000) {
    n = Math.floor(n / 10000);
    d += 4;
  }
  return n >= 1000 ? d + 3 : n >= 100 ? d + 2 : n >= 10 ? d + 1 : d;
}

/** The ASCII bytes of a constant string (for OutputSink.bytes). */
export function asciiBytes(s: string): Uint8Array {
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

export class OutputSink {
  /**
   * The current chunk and the write position in it. Formatters on a hot path
   * call room(n) and then write bytes at `pos` themselves (bytes(), uint()),
   * which allocates nothing per line: building lines as strings made a third
   * of a 10M-mapping dump's time garbage collection.
   */
  buf = Buffer.allocUnsafe(CHUNK);
  pos = 0;
  private error: Error | undefined;
  private last: Promise<void> = Promise.resolve();
  /** Chunks the stream is done with, reused: fresh ones each waited for a GC (~20 MiB of a dump's peak). */
  private readonly spare: (typeof this.buf)[] = [];

  /** `name`: how messages call the output (default: stdout for descriptor 1, else "the output"). */
  constructor(
    private readonly out: SinkTarget,
    // Not `out === process.stdout`: reading process.stdout creates it (see fd-writer.ts).
    private readonly name = (out as { fd?: unknown }).fd === 1 ? 'stdout' : undefined,
  ) {
    out.on('error', (e) => this.fail(e));
  }

  private fail(e: Error): void {
    this.error ??= e;
  }

  private check(): void {
    if (this.error) throw outputError(this.error, this.name);
  }

  /** Room for at least n more bytes (flushes synchronously into the stream's queue). */
  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    this.queue();
    if (n > this.buf.length) this.buf = Buffer.allocUnsafe(n);
  }

  private queue(): void {
    if (this.pos === 0) return;
    const full = this.buf;
    const chunk = full.subarray(0, this.pos);
    this.last = new Promise<void>((resolve) =>
      this.out.write(chunk, (e) => {
        if (e) this.fail(e);
        // Written: the stream holds it no more.
        else if (full.length === CHUNK && this.spare.length < 4) this.spare.push(full);
        resolve();
      }),
    );
    this.buf = (full.length === CHUNK && this.spare.pop()) || Buffer.allocUnsafe(Math.max(CHUNK, full.length));
    this.pos = 0;
  }

  /** Makes room for at least n more bytes at `pos`. */
  room(n: number): void {
    this.ensure(n);
  }

  /** Appends constant bytes (asciiBytes); the caller made room. */
  bytes(b: Uint8Array): void {
    const buf = this.buf;
    let p = this.pos;
    // A loop beats buf.set() for the short tags of a line.
    for (let i = 0; i < b.length; i++) buf[p++] = b[i];
    this.pos = p;
  }

  /** Appends a non-negative integer below 2^53 in decimal; the caller made room (16 bytes). */
  uint(n: number): void {
    const buf = this.buf;
    const end = this.pos + digitCount(n);
    let p = end;
    if (n >= 0x80000000) {
      while (n >= 0x80000000) {
        const q = Math.floor(n / 100);
        const r = 2 * (n - q * 100);
        buf[--p] = DIGIT_PAIRS[r + 1];
        buf[--p] = DIGIT_PAIRS[r];
        n = q;
      }
    }
    // Small integers: int32 arithmetic.
    let m = n | 0;
    while (m >= 100) {
      const q = (m / 100) | 0;
      const r = (m - q * 100) << 1;
      buf[--p] = DIGIT_PAIRS[r + 1];
      buf[--p] = DIGIT_PAIRS[r];
      m = q;
    }
    if (m >= 10) {
      buf[--p] = DIGIT_PAIRS[(m << 1) + 1];
      buf[--p] = DIGIT_PAIRS[m << 1];
    } else buf[--p] = 48 + m;
    this.pos = end;
  }

  str(s: string): void {
    const n = Buffer.byteLength(s);
    this.ensure(n);
    this.pos += this.buf.write(s, this.pos);
  }

  /**
   * Text known to be ASCII (numbers, tags): one latin1 copy, no UTF-8 pass.
   * Building a batch of lines as one string and writing it here is the
   * fastest path in V8 (faster than writing digits byte by byte).
   */
  ascii(s: string): void {
    this.ensure(s.length);
    this.pos += this.buf.write(s, this.pos, 'latin1');
  }

  /**
   * Whether maybeFlush() has work (a full chunk or an error to report): lets
   * a caller printing many small records skip an await per record.
   */
  needsFlush(): boolean {
    return this.pos >= CHUNK - 4096 || this.error !== undefined;
  }

  /** Hands full chunks to the stream; waits if the stream asks us to. */
  async maybeFlush(): Promise<void> {
    this.check();
    if (this.pos < CHUNK - 4096) return;
    this.queue();
    await this.drained();
  }

  private async drained(): Promise<void> {
    const s = this.out;
    if (!s.writableNeedDrain) return;
    if (s.destroyed) throw outputError(this.error ?? new DmthinError('EPIPE', 'output stream closed'), this.name);
    // 'error' or 'close' instead of 'drain': the stream is gone, no 'drain' follows.
    await new Promise<void>((resolve) => {
      const done = (): void => {
        s.off('drain', done);
        s.off('error', done);
        s.off('close', done);
        resolve();
      };
      s.on('drain', done);
      s.on('error', done);
      s.on('close', done);
    });
    if (s.destroyed && !this.error) this.fail(new DmthinError('EPIPE', 'output stream closed'));
    this.check();
  }

  /** Everything written, and its last write completed without an error. */
  async flush(): Promise<void> {
    this.check();
    this.queue();
    await this.drained();
    await this.last;
    this.check();
  }
}

/**
 * A write error as a SystemCallError with Node's code (EPIPE stays EPIPE: the
 * CLI ends quietly on it).
 */
export function outputError(e: unknown, path?: string): DmthinError {
  if (e instanceof DmthinError) return e;
  const x = e as NodeJS.ErrnoException;
  const code = typeof x?.code === 'string' && x.code !== '' ? x.code : 'EIO';
  const where = path ?? (typeof x?.path === 'string' ? x.path : 'the output');
  const why = (x?.message ?? String(e)).replace(/^[A-Z]+: /, '').replace(/, write$/, '');
  return new SystemCallError(code, `cannot write ${where}: ${why}; the output is incomplete`, {
    syscall: x?.syscall ?? 'write',
    ...(path ?? x?.path ? { path: path ?? x.path } : {}),
    cause: e,
  });
}
