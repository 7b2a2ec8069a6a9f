/**
 * The running SHA-256 of a send/receive stream, computed off the JS thread.
 *
 * A stream's digest covers every byte of it: about 1 s of CPU per GiB, which
 * on the JS thread serialised with reading, CRC-32C and writing. The addon's
 * Sha256Pipe copies each update into a ring (a memcpy, ~0.1 s per GiB) and a
 * thread of its own hashes it, so the other work runs beside it. Callers
 * await ready(n) before an update of n bytes so the copy never waits for the
 * ring; an update that does not fit waits (blocking) for room.
 *
 * Without the addon, node:crypto's hash on the JS thread (same digest).
 */
import { createHash, type Hash } from 'node:crypto';
import { SetupError } from '../errors';
import { native, type NativeSha256Pipe } from './binding';

/** Default ring: room for one 8 MiB record and the next. */
export const STREAM_HASH_RING_BYTES = 16 << 20;

/** A SHA-256 that is fed in order and read once. */
export interface StreamHash {
  /** Adds bytes (copied: the caller may reuse its buffer at once). */
  update(data: Uint8Array): void;
  /** Adds bytes without copying them: the caller never changes `data` after this (it is hashed later, in place). */
  updateHeld(data: Uint8Array): void;
  /** Resolves once `bytes` more can be added without blocking (all queued bytes hashed when `bytes` is at least the ring's size). */
  ready(bytes: number): Promise<void>;
  /** Resolves once the first `position` bytes added have been hashed (held buffers up to there are free again). */
  hashedThrough(position: number): Promise<void>;
  /** The digest of everything added; the hash cannot be used after. */
  digest(): Buffer;
  /** Gives up (the stream ends in an error): hashing stops and held buffers are let go; idempotent, also after digest(). */
  abort(): void;
}

class PipeHash implements StreamHash {
  private readonly cap: number;
  private fed = 0;
  constructor(private readonly p: NativeSha256Pipe) {
    this.cap = p.capacity();
  }
  update(data: Uint8Array): void {
    this.p.update(data);
    this.fed += data.length;
  }
  updateHeld(data: Uint8Array): void {
    this.p.updateHeld(data);
    this.fed += data.length;
  }
  hashedThrough(position: number): Promise<void> {
    return this.p.ready(Math.max(0, this.fed - position));
  }
  ready(bytes: number): Promise<void> {
    return this.p.ready(Math.max(0, this.cap - bytes));
  }
  digest(): Buffer {
    this.done = true;
    return this.p.digest();
  }
  abort(): void {
    if (this.done) return;
    this.done = true;
    this.p.abort();
  }
  private done = false;
}

class CryptoHash implements StreamHash {
  private readonly h: Hash = createHash('sha256');
  update(data: Uint8Array): void {
    this.h.update(data);
  }
  updateHeld(data: Uint8Array): void {
    this.h.update(data);
  }
  ready(): Promise<void> {
    return Promise.resolve();
  }
  hashedThrough(): Promise<void> {
    return Promise.resolve();
  }
  digest(): Buffer {
    return this.h.digest();
  }
  abort(): void {}
}

/** A new stream hash: the addon's threaded one, or node:crypto's without the addon. */
export function newStreamHash(ringBytes = STREAM_HASH_RING_BYTES): StreamHash {
  let Pipe: (new (ringBytes?: number) => NativeSha256Pipe) | undefined;
  try {
    Pipe = native().Sha256Pipe;
  } catch (e) {
    if (!(e instanceof SetupError)) throw e;
  }
  // An addon built before Sha256Pipe existed has none: hash here.
  return Pipe ? new PipeHash(new Pipe(ringBytes)) : new CryptoHash();
}
