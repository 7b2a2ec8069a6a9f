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
import type { Writable } from 'node:stream';
import { DmthinError, SystemCallError } from '../errors';

const CHUNK = 1 << 18;

export class OutputSink {
  private buf = Buffer.allocUnsafe(CHUNK);
  private pos = 0;
  private error: Error | undefined;
  private last: Promise<void> = Promise.resolve();

  /** `name`: how messages call the output (default: stdout, or "the output"). */
  constructor(
    private readonly out: Writable,
    private readonly name = out === process.stdout ? 'stdout' : undefined,
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
    const chunk = this.buf.subarray(0, this.pos);
    this.last = new Promise<void>((resolve) =>
      this.out.write(chunk, (e) => {
        if (e) this.fail(e);
        resolve();
      }),
    );
    this.buf = Buffer.allocUnsafe(Math.max(CHUNK, this.buf.length));
    this.pos = 0;
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
