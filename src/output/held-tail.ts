/**
 * A SinkTarget that keeps back the last bytes written to it until release():
 * for output that goes out as it is made (stdout) but stands only if a check
 * at its end passes (a metadata snapshot still held). Each chunk goes on to
 * the real target when the next one comes; the last is held (a copy) and
 * release() writes it. Left unreleased (the check failed), the output ends
 * short of its last chunk: a reader sees a cut document (no closing tags),
 * not a whole one with a failing exit status beside it.
 */
import { unlessAborted } from '../errors';
import { outputError, type SinkTarget } from './sink';

export class HeldTail implements SinkTarget {
  /** Chunks are copied (the caller's is called back at once): the sink may reuse its buffers. */
  readonly releasesChunks = true;
  /** The copy of the last chunk, and how much of it is used. */
  private held: Buffer | undefined;
  private heldBytes = 0;
  /** Copies the real target is done with, reused (a fresh 256 KiB each raised a dump's peak ~8 MiB). */
  private readonly free: Buffer[] = [];

  constructor(
    private readonly out: SinkTarget,
    private readonly signal?: AbortSignal,
  ) {}

  /** The real target's descriptor: the sink names descriptor 1 'stdout' in its messages. */
  get fd(): unknown {
    return (this.out as { fd?: unknown }).fd;
  }

  write(chunk: Uint8Array, cb: (e?: Error | null) => void): boolean {
    this.forward();
    let copy = this.free.pop();
    if (!copy || copy.length < chunk.length) copy = Buffer.allocUnsafe(Math.max(chunk.length, copy?.length ?? 0));
    copy.set(chunk);
    this.held = copy;
    this.heldBytes = chunk.length;
    // A failed or closed output reaches the sink as the target's 'error' and `destroyed`.
    process.nextTick(cb, null);
    return !this.out.writableNeedDrain;
  }

  /** Hands the held copy to the real target (its write error reaches the sink as 'error'). */
  private forward(): void {
    const b = this.held;
    if (!b) return;
    this.held = undefined;
    this.out.write(b.subarray(0, this.heldBytes), (e) => {
      if (!e && this.free.length < 2) this.free.push(b);
    });
  }

  /**
   * Writes the held bytes and waits for them; throws the write's error as
   * the sink would, or AbortError when the signal fires first (a reader
   * that stopped reading must not hold off Ctrl-C).
   */
  async release(): Promise<void> {
    const b = this.held;
    if (!b) return;
    this.held = undefined;
    await unlessAborted(
      new Promise<void>((resolve, reject) => this.out.write(b.subarray(0, this.heldBytes), (e) => (e ? reject(outputError(e, this.fd === 1 ? 'stdout' : undefined)) : resolve()))),
      this.signal,
    );
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
