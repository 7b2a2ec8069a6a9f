/**
 * The running digest of a send/receive stream, computed off the JS thread.
 *
 * A stream's digest covers every byte of it: about 1 s of CPU per GiB, which
 * on the JS thread serialised with reading, CRC-32C and writing. The addon's
 * DigestPipe copies each update into a ring (a memcpy, ~0.1 s per GiB) and a
 * thread of its own hashes it, so the other work runs beside it. Callers
 * await ready(n) before an update of n bytes so the copy never waits for the
 * ring; an update that does not fit waits (blocking) for room.
 *
 * The digests of docs/stream-format.md §6: one SHA-256 of every byte (format
 * version 1, one thread), or, given a segment size, the hash of each segment
 * folded in order into an outer hash of the same function (the addon hashes
 * segments on up to four threads at once): SHA-256 for version 2, BLAKE3 for
 * versions 3 and 4.
 *
 * Without the addon, on the JS thread (same digests): node:crypto's SHA-256,
 * @noble/hashes' BLAKE3 (pure JavaScript, ~50 MB/s: a fallback only).
 */
import type { Hash } from 'node:crypto';
import { SetupError } from '../errors';
import { native, type NativeDigestPipe } from './binding';

/** The hash function of a digest: SHA-256 (format versions 1 and 2) or BLAKE3 (versions 3 and 4). */
export type DigestAlgorithm = 'sha256' | 'blake3';

/** Default ring: room for one 8 MiB record and the next. */
export const STREAM_HASH_RING_BYTES = 16 << 20;

/** A stream digest that is fed in order and read once. */
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

/** Small updates are gathered up to this many bytes before they go to the addon. */
const STAGE_BYTES = 64 << 10;

class PipeHash implements StreamHash {
  private readonly cap: number;
  private fed = 0;
  // Each call into the pipe hands bytes to its thread (a lock and a wake-up, ~10 µs here): a
  // stream of 100,000 discard records spent 0.9-1.6 s in them. Small updates (record headers,
  // discard payloads) are copied here and passed on together, before anything that must see
  // them in the pipe: a held update, ready(), hashedThrough(), digest().
  private stage: Buffer | undefined;
  private staged = 0;
  constructor(private readonly p: NativeDigestPipe) {
    this.cap = p.capacity();
  }
  private flush(): void {
    if (this.staged === 0) return;
    this.p.update(this.stage!.subarray(0, this.staged));
    this.staged = 0;
  }
  update(data: Uint8Array): void {
    this.fed += data.length;
    if (data.length > STAGE_BYTES >>> 4) {
      this.flush();
      this.p.update(data);
      return;
    }
    if (this.staged + data.length > STAGE_BYTES) this.flush();
    this.stage ??= Buffer.allocUnsafe(STAGE_BYTES);
    this.stage.set(data, this.staged);
    this.staged += data.length;
  }
  updateHeld(data: Uint8Array): void {
    // A small one is copied like any update (cheaper than a reference the thread must give back).
    if (data.length <= STAGE_BYTES >>> 4) return this.update(data);
    this.flush();
    this.p.updateHeld(data);
    this.fed += data.length;
  }
  hashedThrough(position: number): Promise<void> {
    this.flush();
    return this.p.ready(Math.max(0, this.fed - position));
  }
  ready(bytes: number): Promise<void> {
    this.flush();
    return this.p.ready(Math.max(0, this.cap - bytes));
  }
  digest(): Buffer {
    this.flush();
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

/** What a segmented digest's outer hash starts with: this text, its NUL, then the segment size (u32 LE). */
export function segmentedDigestPrefix(algorithm: DigestAlgorithm): string {
  return algorithm === 'blake3' ? 'dmthin stream digest 3\0' : 'dmthin stream digest 2\0';
}

/** One running hash on the JS thread (the subset of node:crypto's Hash used here). */
interface JsHash {
  update(data: Uint8Array | string): JsHash;
  digest(): Buffer;
}

/** node:crypto's SHA-256, loaded only when hashing on the JS thread (3-6 ms of start-up otherwise). */
function createSha256(): Hash {
  return (require('node:crypto') as typeof import('node:crypto')).createHash('sha256');
}

function jsHash(algorithm: DigestAlgorithm): JsHash {
  if (algorithm === 'sha256') return createSha256();
  // Loaded only here: a run with the addon never pays for it.
  const { blake3 } = require('@noble/hashes/blake3') as typeof import('@noble/hashes/blake3');
  const h = blake3.create({});
  const w: JsHash = {
    update(data) {
      h.update(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
      return w;
    },
    digest: () => Buffer.from(h.digest()),
  };
  return w;
}

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
  private readonly h = createSha256();
  update(data: Uint8Array): void {
    this.h.update(data);
  }
  digest(): Buffer {
    return this.h.digest();
  }
}

/** A segmented digest on the JS thread: each segment's hash, folded in order, then the length. */
class SegmentedCryptoHash extends SyncHash {
  private readonly outer: JsHash;
  private seg: JsHash;
  private inSeg = 0;
  private total = 0;
  constructor(
    private readonly segmentBytes: number,
    private readonly algorithm: DigestAlgorithm,
  ) {
    super();
    this.outer = jsHash(algorithm);
    this.seg = jsHash(algorithm);
    const size = Buffer.alloc(4);
    size.writeUInt32LE(segmentBytes);
    this.outer.update(segmentedDigestPrefix(algorithm)).update(size);
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
    this.seg = jsHash(this.algorithm);
    this.inSeg = 0;
  }
  digest(): Buffer {
    if (this.inSeg > 0) this.endSegment();
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(this.total));
    return this.outer.update(len).digest();
  }
}

function checkSpec(segmentBytes: number, algorithm: DigestAlgorithm): void {
  if (algorithm !== 'sha256' && algorithm !== 'blake3') throw new TypeError(`unknown digest algorithm '${String(algorithm)}'`);
  if (algorithm === 'blake3' && !segmentBytes) throw new RangeError('BLAKE3 is hashed in segments only (format versions 3 and 4)');
}

/**
 * The stream hash on the calling thread, what newStreamHash gives without the addon.
 * @internal
 */
export function cryptoStreamHash(segmentBytes = 0, algorithm: DigestAlgorithm = 'sha256'): StreamHash {
  checkSpec(segmentBytes, algorithm);
  return segmentBytes ? new SegmentedCryptoHash(segmentBytes, algorithm) : new CryptoHash();
}

/**
 * A new stream hash: the addon's threaded one, or the calling thread's without the addon.
 * @param segmentBytes - 0: one SHA-256 of every byte (version 1); else a segmented digest.
 * @param algorithm - the segmented digest's function: 'sha256' (version 2) or 'blake3' (versions 3 and 4).
 */
export function newStreamHash(ringBytes = STREAM_HASH_RING_BYTES, segmentBytes = 0, algorithm: DigestAlgorithm = 'sha256'): StreamHash {
  checkSpec(segmentBytes, algorithm);
  let Pipe: (new (ringBytes?: number, segmentBytes?: number, algorithm?: DigestAlgorithm) => NativeDigestPipe) | undefined;
  try {
    Pipe = native().DigestPipe;
  } catch (e) {
    if (!(e instanceof SetupError)) throw e;
  }
  if (Pipe) return new PipeHash(new Pipe(ringBytes, segmentBytes, algorithm));
  // Without the addon (it failed to build or load): hash here.
  return cryptoStreamHash(segmentBytes, algorithm);
}
