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
 * Two digests (docs/stream-format.md §6): one SHA-256 of every byte (format
 * version 1, one thread), or, given a segment size, the SHA-256 of each
 * segment folded in order into an outer SHA-256 (version 2: the addon hashes
 * segments on up to four threads at once).
 *
 * Without the addon, node:crypto's hash on the JS thread (same digests).
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

/** What version 2's outer hash starts with: this text, its NUL, then the segment size (u32 LE). */
export const SEGMENTED_DIGEST_PREFIX = 'dmthin stream digest 2\0';

/** On the JS thread: every byte is hashed by the time update() returns. */
abstract class SyncHash implements StreamHash {
  abstract update(data: Uint8Array): void;
  abstract digest(): Buffer;
  updateHeld(data: Uint8Array): void {
    this.update(data);
  }
  ready(): Promise<void> {
    return Promise.resolve();
  }
  hashedThrough(): Promise<void> {
    return Promise.resolve();
  }
  abort(): void {}
}

/** Version 1's digest on the JS thread. */
class CryptoHash extends SyncHash {
  private readonly h: Hash = createHash('sha256');
  update(data: Uint8Array): void {
    this.h.update(data);
  }
  digest(): Buffer {
    return this.h.digest();
  }
}

/** Version 2's digest on the JS thread: each segment's SHA-256, folded in order, then the length. */
class SegmentedCryptoHash extends SyncHash {
  private readonly outer: Hash = createHash('sha256');
  private seg: Hash = createHash('sha256');
  private inSeg = 0;
  private total = 0;
  constructor(private readonly segmentBytes: number) {
    super();
    const size = Buffer.alloc(4);
    size.writeUInt32LE(segmentBytes);
    this.outer.update(SEGMENTED_DIGEST_PREFIX).update(size);
  }
  update(data: Uint8Array): void {
    for (let off = 0; off < data.length; ) {
      const n = Math.min(data.length - off, this.segmentBytes - this.inSeg);
      this.seg.update(data.subarray(off, off + n));
      off += n;
      this.inSeg += n;
      this.total += n;
      if (this.inSeg === this.segmentBytes) this.endSegment();
    }
  }
  private endSegment(): void {
    this.outer.update(this.seg.digest());
    this.seg = createHash('sha256');
    this.inSeg = 0;
  }
  digest(): Buffer {
    if (this.inSeg > 0) this.endSegment();
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(this.total));
    return this.outer.update(len).digest();
  }
}

/**
 * node:crypto's stream hash on the calling thread, what newStreamHash gives without the addon.
 * @internal
 */
export function cryptoStreamHash(segmentBytes = 0): StreamHash {
  return segmentBytes ? new SegmentedCryptoHash(segmentBytes) : new CryptoHash();
}

/**
 * A new stream hash: the addon's threaded one, or node:crypto's without the addon.
 * @param segmentBytes - 0: one SHA-256 of every byte (version 1); else version 2's segmented digest.
 */
export function newStreamHash(ringBytes = STREAM_HASH_RING_BYTES, segmentBytes = 0): StreamHash {
  let Pipe: (new (ringBytes?: number, segmentBytes?: number) => NativeSha256Pipe) | undefined;
  try {
    Pipe = native().Sha256Pipe;
  } catch (e) {
    if (!(e instanceof SetupError)) throw e;
  }
  if (Pipe) {
    const p = new Pipe(ringBytes, segmentBytes);
    // An addon built before version 2 ignores the segment size: it would compute version 1's digest.
    if ((p.segmentBytes?.() ?? 0) === segmentBytes) return new PipeHash(p);
    p.abort();
  }
  // An addon built before Sha256Pipe existed has none: hash here.
  return cryptoStreamHash(segmentBytes);
}
