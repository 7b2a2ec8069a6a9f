/**
 * A byte-level output buffer for formatters that print millions of lines:
 * literal parts are pre-encoded, integers are written digit by digit, and
 * full chunks go to the Writable with backpressure. No per-line strings, so
 * no garbage to collect.
 */
import type { Writable } from 'node:stream';
import { once } from 'node:events';

const CHUNK = 1 << 18;

export class ByteSink {
  private buf = Buffer.allocUnsafe(CHUNK);
  private pos = 0;
  private readonly digits = new Uint8Array(24);

  constructor(private readonly out: Writable) {}

  /** Pre-encode a literal once, write it many times. */
  static lit(s: string): Uint8Array {
    return Uint8Array.from(Buffer.from(s, 'latin1'));
  }

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

  bytes(b: Uint8Array): void {
    const n = b.length;
    this.ensure(n);
    const buf = this.buf;
    let p = this.pos;
    // Literals are short: a plain loop beats Buffer.copy's native call.
    for (let i = 0; i < n; i++) buf[p++] = b[i];
    this.pos = p;
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

  /** A non-negative safe integer in decimal. */
  uint(v: number): void {
    this.ensure(20);
    if (v < 10) {
      this.buf[this.pos++] = 48 + v;
      return;
    }
    let i = 0;
    while (v > 0) {
      const q = Math.floor(v / 10);
      this.digits[i++] = 48 + (v - q * 10);
      v = q;
    }
    while (i > 0) this.buf[this.pos++] = this.digits[--i];
  }

  /** Hands full chunks to the stream; waits if the stream asks us to. */
  async maybeFlush(): Promise<void> {
    if (this.pos < CHUNK - 4096) return;
    const s = this.out;
    this.queue();
    if (s.writableNeedDrain) {
      if (s.destroyed) throw new Error('output stream closed');
      await once(s, 'drain');
    }
  }

  async flush(): Promise<void> {
    this.queue();
    if (this.out.writableNeedDrain) await once(this.out, 'drain');
  }
}
