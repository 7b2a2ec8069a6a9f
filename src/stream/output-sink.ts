/**
 * An output buffer for formatters that print millions of lines: text is
 * copied into large chunks that go to the Writable with backpressure.
 */
import type { Writable } from 'node:stream';
import { once } from 'node:events';
import { DmthinError } from '../errors';

const CHUNK = 1 << 18;

export class OutputSink {
  private buf = Buffer.allocUnsafe(CHUNK);
  private pos = 0;

  constructor(private readonly out: Writable) {}

  /** Room for at least n more bytes (flushes synchronously into the stream's queue). */
  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    this.queue();
    if (n > this.buf.length) this.buf = Buffer.allocUnsafe(n);
  }

  private queue(): void {
    if (this.pos === 0) return;
    this.out.write(this.buf.subarray(0, this.pos));
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

  /** Hands full chunks to the stream; waits if the stream asks us to. */
  async maybeFlush(): Promise<void> {
    if (this.pos < CHUNK - 4096) return;
    const s = this.out;
    this.queue();
    if (s.writableNeedDrain) {
      if (s.destroyed) throw new DmthinError('EPIPE', 'output stream closed');
      await once(s, 'drain');
    }
  }

  async flush(): Promise<void> {
    this.queue();
    if (this.out.writableNeedDrain) await once(this.out, 'drain');
  }
}
