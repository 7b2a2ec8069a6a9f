/**
 * Buffered text output to a Writable with backpressure: formatters append
 * strings; the sink writes ~64 KiB chunks and waits for 'drain' when asked.
 */
import type { Writable } from 'node:stream';
import { once } from 'node:events';

export class TextSink {
  private buf = '';
  constructor(
    private readonly out: Writable,
    private readonly chunk = 1 << 16,
  ) {}

  /** Append text; call `flushIfFull()` at convenient points. */
  push(s: string): void {
    this.buf += s;
  }

  async flushIfFull(): Promise<void> {
    if (this.buf.length >= this.chunk) await this.flush();
  }

  async flush(): Promise<void> {
    if (this.buf.length === 0) return;
    const s = this.buf;
    this.buf = '';
    if (!this.out.write(s)) {
      if ((this.out as { destroyed?: boolean }).destroyed) throw new Error('output stream closed');
      await once(this.out, 'drain');
    }
  }
}
