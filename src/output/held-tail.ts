/**
 * A SinkTarget that keeps back the last bytes written to it until release():
 * for output that goes out as it is made (stdout) but stands only if a check
 * at its end passes (a metadata snapshot still held). Each chunk goes on to
 * the real target when the next one comes; the last is copied and held, and
 * release() writes it. Left unreleased (the check failed), the output ends
 * short of its last chunk: a reader sees a cut document (no closing tags),
 * not a whole one with a failing exit status beside it.
 */
import { outputError, type SinkTarget } from './sink';

export class HeldTail implements SinkTarget {
  /** Chunks are copied (the last is held as a copy): the sink may reuse its buffers once called back. */
  readonly releasesChunks = true;
  private held: Buffer | undefined;

  constructor(
    private readonly out: SinkTarget,
    private readonly name = 'stdout',
  ) {}

  write(chunk: Uint8Array, cb: (e?: Error | null) => void): boolean {
    if (this.held) this.out.write(this.held, () => undefined); // its error reaches the sink as 'error'
    this.held = Buffer.from(chunk); // a copy: the caller reuses its chunk once called back
    // A failed or closed output reaches the sink as the target's 'error' and `destroyed`.
    process.nextTick(cb, null);
    return !this.out.writableNeedDrain;
  }

  /** Writes the held bytes and waits for them; throws the write's error as the sink would. */
  release(): Promise<void> {
    const b = this.held;
    this.held = undefined;
    if (!b) return Promise.resolve();
    return new Promise((resolve, reject) => this.out.write(b, (e) => (e ? reject(outputError(e, this.name)) : resolve())));
  }

  on(event: 'error' | 'drain' | 'close', listener: (e: Error) => void): unknown {
    return this.out.on(event as 'error', listener);
  }

  off(event: 'error' | 'drain' | 'close', listener: () => void): unknown {
    return this.out.off(event, listener);
  }

  get writableNeedDrain(): boolean {
    return this.out.writableNeedDrain;
  }

  get destroyed(): boolean {
    return this.out.destroyed;
  }
}
