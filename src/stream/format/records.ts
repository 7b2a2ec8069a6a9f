/**
 * The send/receive stream, format versions 1 to 3: constants and the codecs of the
 * record header and of each record's payload. No IO, no policy; the layout
 * is specified in docs/stream-format.md (keep the two in step).
 */
import { StreamError, UsageError } from '../../errors';
import { SECTOR_SIZE } from '../../units';
import { crc32cFunction, sha256Of } from '../../native/binding';
import type { DigestAlgorithm } from '../../native/stream-hash';
import { MAX_SAFE_HI, TWO32 } from '../../pdata/words';

/** First 4 bytes of every record. */
export const RECORD_MAGIC = Buffer.from('DMTR', 'latin1');
/** First 8 bytes of the header record's payload. */
const STREAM_MAGIC = Buffer.from('DMTHSTRM', 'latin1');
/**
 * Whether `head` (a file's first bytes) starts as a stream does: a record
 * header, then the header record's stream magic.
 */
export function looksLikeStream(head: Uint8Array): boolean {
  const b = Buffer.from(head.buffer, head.byteOffset, head.length);
  return b.length >= RECORD_HEADER_SIZE + 8 && b.subarray(0, 4).equals(RECORD_MAGIC) && b.subarray(RECORD_HEADER_SIZE, RECORD_HEADER_SIZE + 8).equals(STREAM_MAGIC);
}

/** The stream format version this build writes by default. */
export const FORMAT_VERSION = 4;
/**
 * The stream format versions this build reads and can write: 1-3 differ in
 * the end record's digest; 4 has version 3's digest and may carry the
 * snapshots' mapping-root digests in its header.
 */
export const FORMAT_VERSIONS: readonly number[] = [1, 2, 3, 4];
/** The first version whose header may carry mapping-root digests. */
export const ROOTS_VERSION = 4;
/** The segmented digests' segment (versions 2 and 3): stream bytes per hash folded into the digest. */
export const DIGEST_SEGMENT_BYTES = 1 << 20;

/** How a format version's digest is computed (docs/stream-format.md §6). */
export interface DigestSpec {
  /** 0: one SHA-256 over every byte (version 1); else the segment size. */
  segmentBytes: number;
  /** The hash function: SHA-256 (versions 1 and 2) or BLAKE3 (versions 3 and 4). */
  algorithm: DigestAlgorithm;
}

/** The digest of a format version. */
export function digestSpec(version: number): DigestSpec {
  if (version <= 1) return { segmentBytes: 0, algorithm: 'sha256' };
  return { segmentBytes: DIGEST_SEGMENT_BYTES, algorithm: version === 2 ? 'sha256' : 'blake3' };
}

export const RECORD_HEADER_SIZE = 24;
/** Data bytes in one data record, at most: bounds memory on both sides. */
export const MAX_DATA_BYTES = 8 << 20;
export const DATA_PREFIX_SIZE = 16;
export const DISCARD_PAYLOAD_SIZE = 16;
export const END_PAYLOAD_SIZE = 72;
export const HEADER_FIXED_SIZE = 32;
export const MAX_HEADER_PAYLOAD = 4096;
const MAX_POOL_ID_BYTES = 1024;
/** Thin-pool limits on the data block size, in sectors. */
const MIN_DATA_BLOCK_SECTORS = 128;
const MAX_DATA_BLOCK_SECTORS = 2097152;

const HEADER_FLAG_INCREMENTAL = 1;
/** Version 4 on: the identities are followed by the target's (and the base's) mapping-root digest. */
const HEADER_FLAG_ROOTS = 2;
const ROOT_DIGEST_BYTES = 32;
const HEX64 = /^[0-9a-f]{64}$/;

/** The record types of a stream (docs/stream-format.md). */
export enum RecordType {
  /** The header: format, block size, device size, snapshot and base. */
  Header = 1,
  /** Data for a byte range of the device. */
  Data = 2,
  /** A range of blocks that reads as zeros. */
  Discard = 3,
  /** Counts and the SHA-256 of everything before it. */
  End = 4,
}

/**
 * What a stream's snapshot (or its base) is: enough to tell, on the receiving
 * side, that an incremental stream starts from what the target holds.
 * Not the snapshotted time: taking a snapshot of a snapshot changes it.
 */
export interface SnapshotIdentity {
  /** The pool: the dm uuid (or name) of a live pool, or a label for an offline image. */
  pool: string;
  /** The thin device id. */
  devId: number;
  /** Details tree: pool time when the device was created. */
  creationTime: number;
  /** Details tree: pool transaction id when the device was created. */
  transactionId: bigint;
}

/** A stream's header: format version, block and device size, the snapshot and its base. */
export interface StreamHeader {
  /** Stream format version. */
  version: number;
  /** Data block size of the source pool, in 512-byte sectors. */
  dataBlockSize: number;
  /** Size of the sent device in bytes (a multiple of 512). */
  deviceSize: number;
  /** The snapshot the stream carries. */
  target: SnapshotIdentity;
  /** The snapshot the stream is a delta against; null for a full stream. */
  base: SnapshotIdentity | null;
  /**
   * SHA-256 (hex) of the target's mapping-tree root node when it was sent
   * (version 4 on; absent in older streams). A receiver records it, and
   * refuses a later incremental whose baseRoot differs: the base's mappings
   * changed (it was written) after it was sent.
   */
  targetRoot?: string;
  /** The same digest of the base, now (incremental streams, version 4 on). */
  baseRoot?: string;
}

/** What the end record carries. */
export interface EndRecord {
  /** Records before the end record (the header included). */
  records: number;
  /** Virtual blocks carried by data records (a block split over several records counts once). */
  dataBlocks: number;
  /** Virtual blocks covered by discard records. */
  discardBlocks: number;
  /** Data bytes carried by data records. */
  dataBytes: number;
  /** Bytes of the stream before the end record. */
  streamBytes: number;
  /** SHA-256 of those bytes. */
  sha256: Buffer;
}


function writeU64(b: Buffer, off: number, v: number): void {
  b.writeUInt32LE(v % TWO32, off);
  b.writeUInt32LE(Math.floor(v / TWO32), off + 4);
}

/** A u64 that must fit a double exactly (< 2^53), else null. */
export function readU64(b: Buffer, off: number): number | null {
  const hi = b.readUInt32LE(off + 4);
  if (hi >= MAX_SAFE_HI) return null;
  return hi * TWO32 + b.readUInt32LE(off);
}

/** CRC-32C (standard: seed ~0, final inversion) of several parts as one. */
export function crc32cOf(parts: readonly Uint8Array[]): number {
  const crc32c = crc32cFunction();
  let c = 0xffffffff;
  for (const p of parts) c = crc32c(p, c, true);
  return ~c >>> 0;
}

// ---------------------------------------------------------------- record header

export interface RecordHeader {
  type: number;
  flags: number;
  length: number;
  seq: number;
  crc: number;
}

/**
 * A sealed record: the 24-byte header (its CRC covering header bytes [0, 20)
 * and the payload) followed by the payload parts, unchanged.
 */
export function encodeRecord(type: number, seq: number, payload: readonly Uint8Array[], flags = 0): Buffer[] {
  const length = payload.reduce((n, p) => n + p.length, 0);
  const h = Buffer.alloc(RECORD_HEADER_SIZE);
  RECORD_MAGIC.copy(h, 0);
  h.writeUInt16LE(type, 4);
  h.writeUInt16LE(flags, 6);
  h.writeUInt32LE(length, 8);
  writeU64(h, 12, seq);
  h.writeUInt32LE(crc32cOf([h.subarray(0, 20), ...payload]), 20);
  return [h, ...payload.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p.buffer, p.byteOffset, p.length)))];
}

/** The fields of a record header; magic is checked by the caller. */
export function decodeRecordHeader(h: Buffer): RecordHeader {
  return {
    type: h.readUInt16LE(4),
    flags: h.readUInt16LE(6),
    length: h.readUInt32LE(8),
    seq: readU64(h, 12) ?? -1,
    crc: h.readUInt32LE(20),
  };
}

// ---------------------------------------------------------------- identities

/** Canonical bytes of an identity (the same encoding as in the header record). */
export function encodeIdentity(id: SnapshotIdentity): Buffer {
  const pool = Buffer.from(id.pool, 'utf8');
  if (pool.length > MAX_POOL_ID_BYTES) throw new UsageError(`pool identity longer than ${MAX_POOL_ID_BYTES} bytes`);
  if (!Number.isInteger(id.devId) || id.devId < 0 || id.devId >= TWO32) throw new UsageError(`bad device id ${id.devId}`);
  if (!Number.isInteger(id.creationTime) || id.creationTime < 0 || id.creationTime >= TWO32) throw new UsageError(`bad creation time ${id.creationTime}`);
  const b = Buffer.alloc(18 + pool.length);
  b.writeBigUInt64LE(BigInt.asUintN(64, id.transactionId), 0);
  b.writeUInt32LE(id.devId, 8);
  b.writeUInt32LE(id.creationTime, 12);
  b.writeUInt16LE(pool.length, 16);
  pool.copy(b, 18);
  return b;
}

/** A stable key for an identity: SHA-256 (hex) of its canonical bytes. */
export function identityKey(id: SnapshotIdentity): string {
  return sha256Of([encodeIdentity(id)]).toString('hex');
}

export function sameIdentity(a: SnapshotIdentity, b: SnapshotIdentity): boolean {
  return a.pool === b.pool && a.devId === b.devId && a.creationTime === b.creationTime && a.transactionId === b.transactionId;
}

export function describeIdentity(id: SnapshotIdentity): string {
  return `device ${id.devId} of ${id.pool} (created at time ${id.creationTime}, transaction ${id.transactionId})`;
}

function decodeIdentity(b: Buffer, off: number, fail: (m: string) => never): { id: SnapshotIdentity; next: number } {
  if (off + 18 > b.length) fail('header record too short for a snapshot identity');
  const len = b.readUInt16LE(off + 16);
  if (len > MAX_POOL_ID_BYTES) fail(`pool identity of ${len} bytes (at most ${MAX_POOL_ID_BYTES})`);
  if (off + 18 + len > b.length) fail('header record too short for its pool identity');
  const poolBytes = b.subarray(off + 18, off + 18 + len);
  const pool = poolBytes.toString('utf8');
  // Canonical: the text must survive a round trip, so equal identities have equal bytes.
  if (!Buffer.from(pool, 'utf8').equals(poolBytes)) fail('pool identity is not valid UTF-8');
  return {
    id: {
      pool,
      devId: b.readUInt32LE(off + 8),
      creationTime: b.readUInt32LE(off + 12),
      transactionId: b.readBigUInt64LE(off),
    },
    next: off + 18 + len,
  };
}

// ---------------------------------------------------------------- header record

export function encodeHeaderPayload(h: StreamHeader): Buffer {
  checkDataBlockSize(h.dataBlockSize);
  if (!Number.isSafeInteger(h.deviceSize) || h.deviceSize < 0 || h.deviceSize % SECTOR_SIZE !== 0) {
    throw new UsageError(`device size ${h.deviceSize} is not a whole number of sectors`);
  }
  const fixed = Buffer.alloc(HEADER_FIXED_SIZE);
  STREAM_MAGIC.copy(fixed, 0);
  fixed.writeUInt32LE(h.version, 8);
  // Older versions cannot carry the digests: a stream for an older receiver goes without them.
  const roots = h.version >= ROOTS_VERSION && h.targetRoot !== undefined;
  if (roots && (!HEX64.test(h.targetRoot!) || (h.base !== null) !== (h.baseRoot !== undefined) || (h.baseRoot !== undefined && !HEX64.test(h.baseRoot)))) {
    throw new UsageError('mapping-root digests: a SHA-256 in hex for the target, and for the base exactly when there is one');
  }
  fixed.writeUInt32LE((h.base ? HEADER_FLAG_INCREMENTAL : 0) | (roots ? HEADER_FLAG_ROOTS : 0), 12);
  fixed.writeUInt32LE(h.dataBlockSize, 16);
  writeU64(fixed, 24, h.deviceSize);
  const parts = [fixed, encodeIdentity(h.target)];
  if (h.base) parts.push(encodeIdentity(h.base));
  if (roots) {
    parts.push(Buffer.from(h.targetRoot!, 'hex'));
    if (h.base) parts.push(Buffer.from(h.baseRoot!, 'hex'));
  }
  const out = Buffer.concat(parts);
  if (out.length > MAX_HEADER_PAYLOAD) throw new UsageError('header record too large');
  return out;
}

function checkDataBlockSize(s: number): void {
  if (!Number.isInteger(s) || s < MIN_DATA_BLOCK_SECTORS || s > MAX_DATA_BLOCK_SECTORS || s % MIN_DATA_BLOCK_SECTORS !== 0) {
    throw new UsageError(`data block size ${s} sectors is not a thin-pool block size (128..2097152, a multiple of 128)`);
  }
}

/** Decodes and checks a header payload whose CRC already matched. */
export function decodeHeaderPayload(b: Buffer, where: { offset: number; record: number }): StreamHeader {
  const fail = (m: string): never => {
    throw new StreamError('malformed', `header record: ${m}`, where);
  };
  if (b.length < HEADER_FIXED_SIZE || !b.subarray(0, 8).equals(STREAM_MAGIC)) {
    throw new StreamError('magic', 'not a dmthin stream (bad stream magic)', where);
  }
  const version = b.readUInt32LE(8);
  if (!FORMAT_VERSIONS.includes(version)) {
    // Only a version above the newest can come from a newer dmthin; 0 (or another gap) was never written by any.
    const advice = version > FORMAT_VERSIONS[FORMAT_VERSIONS.length - 1] ? 'upgrade dmthin' : 'no dmthin writes it: the stream is damaged or not from dmthin';
    throw new StreamError('version', `stream format version ${version} is not supported (this build reads versions ${FORMAT_VERSIONS.slice(0, -1).join(', ')} and ${FORMAT_VERSIONS[FORMAT_VERSIONS.length - 1]}): ${advice}`, where);
  }
  const flags = b.readUInt32LE(12);
  const known = HEADER_FLAG_INCREMENTAL | (version >= ROOTS_VERSION ? HEADER_FLAG_ROOTS : 0);
  if (flags & ~known) fail(`unknown flags 0x${flags.toString(16)}`);
  const dataBlockSize = b.readUInt32LE(16);
  try {
    checkDataBlockSize(dataBlockSize);
  } catch (e) {
    fail((e as Error).message);
  }
  if (b.readUInt32LE(20) !== 0) fail('reserved field is not zero');
  const deviceSize = readU64(b, 24);
  if (deviceSize === null || deviceSize % SECTOR_SIZE !== 0) fail('device size is not a whole number of sectors below 2^53');
  const t = decodeIdentity(b, HEADER_FIXED_SIZE, fail);
  let base: SnapshotIdentity | null = null;
  let next = t.next;
  if (flags & HEADER_FLAG_INCREMENTAL) {
    const bb = decodeIdentity(b, next, fail);
    base = bb.id;
    next = bb.next;
  }
  const roots: { targetRoot?: string; baseRoot?: string } = {};
  if (flags & HEADER_FLAG_ROOTS) {
    const need = ROOT_DIGEST_BYTES * (base ? 2 : 1);
    if (next + need > b.length) fail('header record too short for its mapping-root digests');
    roots.targetRoot = b.subarray(next, next + ROOT_DIGEST_BYTES).toString('hex');
    if (base) roots.baseRoot = b.subarray(next + ROOT_DIGEST_BYTES, next + need).toString('hex');
    next += need;
  }
  if (next !== b.length) fail(`${b.length - next} unexpected bytes at the end`);
  return { version, dataBlockSize, deviceSize: deviceSize!, target: t.id, base, ...roots };
}

// ---------------------------------------------------------------- data, discard, end

/** Data record prefix: virtual block, sector offset inside it, sectors of data that follow. */
export function encodeDataPrefix(block: number, offsetSectors: number, sectors: number): Buffer {
  const b = Buffer.alloc(DATA_PREFIX_SIZE);
  writeU64(b, 0, block);
  b.writeUInt32LE(offsetSectors, 8);
  b.writeUInt32LE(sectors, 12);
  return b;
}

export function encodeDiscardPayload(block: number, count: number): Buffer {
  const b = Buffer.alloc(DISCARD_PAYLOAD_SIZE);
  writeU64(b, 0, block);
  writeU64(b, 8, count);
  return b;
}

export function encodeEndPayload(e: EndRecord): Buffer {
  const b = Buffer.alloc(END_PAYLOAD_SIZE);
  writeU64(b, 0, e.records);
  writeU64(b, 8, e.dataBlocks);
  writeU64(b, 16, e.discardBlocks);
  writeU64(b, 24, e.dataBytes);
  writeU64(b, 32, e.streamBytes);
  e.sha256.copy(b, 40);
  return b;
}

export function decodeEndPayload(b: Buffer, where: { offset: number; record: number }): EndRecord {
  const f = [0, 8, 16, 24, 32].map((o) => readU64(b, o));
  if (f.some((v) => v === null)) throw new StreamError('malformed', 'end record: a count exceeds 2^53', where);
  return {
    records: f[0]!,
    dataBlocks: f[1]!,
    discardBlocks: f[2]!,
    dataBytes: f[3]!,
    streamBytes: f[4]!,
    sha256: Buffer.from(b.subarray(40, 72)),
  };
}
