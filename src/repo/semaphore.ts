/**
 * The one concurrency limit of the repository code: a counting semaphore
 * with FIFO waiters. The S3 backend bounds its requests with it, a commit its
 * chunk look-ups, and a backup (ops/backup.ts) its chunk uploads.
 */
import { AbortError } from '../errors';

/** Gives a slot back; calling it again does nothing. */
export type Release = () => void;

export class Semaphore {
  private free: number;
  private readonly waiters: (() => void)[] = [];
  private idleWaiters: (() => void)[] = [];

  constructor(private readonly size: number) {
    this.free = size;
  }

  /** A slot now, or null when all are held (no promise: the caller decides whether to wait). */
  tryTake(): Release | null {
    if (this.free === 0) return null;
    this.free--;
    return this.releaser();
  }

  /** A slot, after the waiters before this one. An abort while waiting is AbortError and takes no slot. */
  async take(signal?: AbortSignal): Promise<Release> {
    if (signal?.aborted) throw new AbortError(undefined, { cause: signal.reason });
    const now = this.tryTake();
    if (now) return now;
    await new Promise<void>((resolve, reject) => {
      const go = (): void => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      const onAbort = (): void => {
        const i = this.waiters.indexOf(go);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new AbortError(undefined, { cause: signal?.reason }));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(go);
    });
    // The slot was handed over by its releaser (free not incremented in between).
    return this.releaser();
  }

  /** Runs `fn` in a slot. */
  async run<T>(fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    const release = await this.take(signal);
    try {
      return await fn();
    } finally {
      release();
    }
  }

  /** Settles when no slot is held and no one waits. */
  idle(): Promise<void> {
    if (this.free === this.size) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  private releaser(): Release {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const next = this.waiters.shift();
      if (next) return next();
      this.free++;
      if (this.free === this.size && this.idleWaiters.length > 0) {
        const w = this.idleWaiters;
        this.idleWaiters = [];
        for (const r of w) r();
      }
    };
  }
}
