/**
 * How the repository's objects are encoded (docs/repository.md, "Object
 * encoding"): chunk ids, compression, and the sealed envelope every chunk,
 * backup header and journal is stored in.
 *
 * Envelope, format 1:
 *   byte 0  format (1)
 *   byte 1  bits 0-3: compression (0 none, 1 deflate, 2 brotli); bit 7: encrypted
 *   plain:     payload, then SHA-256(context | bytes 0-1 | payload) (32 bytes)
 *   encrypted: 12-byte random nonce, AES-256-GCM ciphertext of the payload,
 *              16-byte tag; additional data = bytes 0-1 | context
 * `context` is the object's key (e.g. `chunks/ab/ab12...`), so an object moved
 * to another key fails authentication as surely as a flipped byte does.
 */
import { createCipheriv, createDecipheriv, createHash, createHmac, randomBytes } from 'node:crypto';
import * as zlib from 'node:zlib';
import type { BrotliOptions } from 'node:zlib';
import { RepoError } from '../errors';
import { compressInWorker, decompressInWorker, decompressWhole } from './codec-workers';

/** Version of the envelope; a reader refuses any other with RepoError 'format'. */
export const ENVELOPE_FORMAT = 1;
const FLAG_ENCRYPTED = 0x80;
const NONCE = 12;
const TAG = 16;
const SUM = 32;

/** Largest plaintext an object may decode to (a guard against decompression bombs). */
export const MAX_OBJECT_PLAIN = 256 * 1024 * 1024;

/** A compression setting: algorithm and level. */
export interface Compression {
  /** Algorithm. */
  algorithm: 'none' | 'deflate' | 'brotli';
  /** deflate: 1-9; brotli: quality 0-11; none: 0. */
  level: number;
}

const ALGO_CODE = { none: 0, deflate: 1, brotli: 2 } as const;

/** Parses `none`, `deflate[:LEVEL]`, `brotli[:QUALITY]`; RepoError 'config' otherwise. */
export function parseCompression(spec: string): Compression {
  const m = /^(none|deflate|brotli)(?::(\d{1,2}))?$/.exec(spec);
  if (m) {
    const algorithm = m[1] as Compression['algorithm'];
    const level = m[2] === undefined ? (algorithm === 'deflate' ? 1 : algorithm === 'brotli' ? 1 : 0) : Number(m[2]);
    const max = algorithm === 'deflate' ? 9 : algorithm === 'brotli' ? 11 : 0;
    const min = algorithm === 'deflate' ? 1 : 0;
    if (level >= min && level <= max) return { algorithm, level };
  }
  throw new RepoError('config', `unknown compression ${JSON.stringify(spec)}: use none, deflate:1..9 or brotli:0..11`);
}

/** Formats a Compression as parseCompression reads it. */
export function formatCompression(c: Compression): string {
  return c.algorithm === 'none' ? 'none' : `${c.algorithm}:${c.level}`;
}

/** The default, chosen by measurement (docs/repository.md, "Compression"). */
export const DEFAULT_COMPRESSION = 'brotli:1';

function brotliOpts(c: Compression, n: number): BrotliOptions {
  return { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: c.level, [zlib.constants.BROTLI_PARAM_SIZE_HINT]: n } };
}

function compress(c: Compression, data: Uint8Array): Buffer {
  if (c.algorithm === 'deflate') return zlib.deflateRawSync(data, { level: c.level });
  if (c.algorithm === 'brotli') return zlib.brotliCompressSync(data, brotliOpts(c, data.length));
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

function decompressError(context: string, e: unknown, maxPlain?: number): RepoError {
  // Stopped at maxOutputLength: intact data, more than such an object holds.
  if ((e as { code?: unknown })?.code === 'ERR_BUFFER_TOO_LARGE' && maxPlain !== undefined) return tooLarge(context, 'decompresses to', maxPlain);
  return new RepoError('corrupt', `${context}: the stored data does not decompress; the object is damaged`, { key: context, cause: e });
}

/** `what`: 'holds N bytes' or 'decompresses to' (more than the bound). */
function tooLarge(context: string, what: string, maxPlain: number): RepoError {
  return new RepoError('corrupt', `${context}: ${what} more than the ${maxPlain} bytes such an object can have; the object is damaged or was replaced`, { key: context });
}

function unknownCompression(code: number, context: string): RepoError {
  return new RepoError('format', `${context}: compression code ${code} is not one this version of dmthin reads; upgrade dmthin`, { key: context });
}

function decompress(code: number, data: Buffer, context: string, maxPlain: number): Buffer {
  try {
    if (code === 1 || code === 2) return decompressWhole(zlib, code, data, maxPlain);
  } catch (e) {
    throw decompressError(context, e, maxPlain);
  }
  if (code === 0) {
    if (data.length > maxPlain) throw tooLarge(context, `holds ${data.length} bytes,`, maxPlain);
    return data;
  }
  throw unknownCompression(code, context);
}

/**
 * Decompresses on a worker thread (codec-workers.ts, as sealAsync compresses), so concurrent
 * chunks use every core; with `idKey` defined, also the result's chunk id (hashed there too).
 */
async function decompressAsync(code: number, data: Buffer, context: string, maxPlain: number, idKey?: Buffer | null): Promise<{ out: Buffer; id?: string }> {
  if (code === 1 || code === 2) {
    try {
      return await decompressInWorker(code, data, maxPlain, undefined, idKey);
    } catch (e) {
      throw decompressError(context, e, maxPlain);
    }
  }
  // Stored as is, or a code this version does not read: decompress() says which.
  return { out: decompress(code, data, context, maxPlain) };
}

/** The keys an encrypted repository derives from its master key. */
export interface RepoKeys {
  /** AES-256-GCM key of every sealed object. */
  readonly enc: Buffer;
  /** HMAC-SHA-256 key of chunk ids. */
  readonly id: Buffer;
  /** HMAC-SHA-256 key of the config's MAC. */
  readonly mac: Buffer;
}

/** Chunk id: SHA-256 of the plaintext, or HMAC-SHA-256 under the id key when encrypted; 64 lowercase hex digits. */
export function chunkIdOf(plain: Uint8Array, keys: RepoKeys | null): string {
  return (keys ? createHmac('sha256', keys.id) : createHash('sha256')).update(plain).digest('hex');
}

/** Is `id` a well-formed chunk id? */
export function isChunkId(id: string): boolean {
  return typeof id === 'string' && /^[0-9a-f]{64}$/.test(id);
}

function plainSum(context: string, head: Buffer, payload: Uint8Array): Buffer {
  return createHash('sha256').update(context).update(head).update(payload).digest();
}

function envelope(code: number, payload: Uint8Array, context: string, keys: RepoKeys | null): Buffer {
  const head = Buffer.from([ENVELOPE_FORMAT, code | (keys ? FLAG_ENCRYPTED : 0)]);
  if (!keys) return Buffer.concat([head, payload, plainSum(context, head, payload)]);
  const nonce = randomBytes(NONCE);
  const c = createCipheriv('aes-256-gcm', keys.enc, nonce);
  c.setAAD(Buffer.concat([head, Buffer.from(context)]));
  const body = c.update(payload);
  c.final();
  return Buffer.concat([head, nonce, body, c.getAuthTag()]);
}

/** Seals `plain` for storage under key `context`: compressed (when that is smaller), then checksummed or encrypted. */
export function seal(plain: Uint8Array, context: string, keys: RepoKeys | null, compression: Compression): Buffer {
  const z = compression.algorithm === 'none' ? null : compress(compression, plain);
  return z && z.length < plain.length ? envelope(ALGO_CODE[compression.algorithm], z, context, keys) : envelope(0, plain, context, keys);
}

/** seal(), compressing on a worker thread. */
export async function sealAsync(plain: Uint8Array, context: string, keys: RepoKeys | null, compression: Compression): Promise<Buffer> {
  if (compression.algorithm === 'none') return envelope(0, plain, context, keys);
  const code = ALGO_CODE[compression.algorithm];
  // The compressed view lives only during the callback: envelope() copies it.
  return compressInWorker(code as 1 | 2, compression.level, plain, (z) => (z.length < plain.length ? envelope(code, z, context, keys) : envelope(0, plain, context, keys)));
}

/** How many envelope formats past its own a dmthin takes for a newer dmthin's (beyond: damage). */
const FORMATS_AHEAD = 8;

/** Checks the envelope and returns [compression code, payload]. */
function open(stored: Buffer, context: string, keys: RepoKeys | null): [number, Buffer] {
  const bad = (why: string) => new RepoError('corrupt', `${context}: ${why}; the object is damaged or was altered`, { key: context });
  if (stored.length < 2) throw bad('too short');
  // Formats only grow: a byte below ours (a zeroed block) was never written by any dmthin.
  if (stored[0]! < ENVELOPE_FORMAT) throw bad(`envelope format ${stored[0]}`);
  // Formats grow one at a time: a byte far above ours (text, random bytes over the object) is damage, not a newer dmthin's object.
  if (stored[0]! > ENVELOPE_FORMAT + FORMATS_AHEAD) throw bad(`envelope format byte ${stored[0]}, far beyond this dmthin's ${ENVELOPE_FORMAT}`);
  if (stored[0] !== ENVELOPE_FORMAT) {
    // A format-1 object whose first byte was damaged is corruption, not a newer format.
    const fixed = Buffer.from(stored);
    fixed[0] = ENVELOPE_FORMAT;
    try {
      open(fixed, context, keys);
    } catch {
      throw new RepoError('format', `${context}: envelope format ${stored[0]} is not one this version of dmthin reads; upgrade dmthin`, { key: context });
    }
    throw bad('format byte damaged');
  }
  const flags = stored[1]!;
  const encrypted = (flags & FLAG_ENCRYPTED) !== 0;
  if (encrypted !== (keys !== null)) throw bad(encrypted ? 'encrypted in a repository without a key' : 'not encrypted in an encrypted repository');
  if ((flags & 0x70) !== 0) throw bad('unknown flags');
  const head = stored.subarray(0, 2);
  if (!keys) {
    if (stored.length < 2 + SUM) throw bad('too short');
    const payload = stored.subarray(2, stored.length - SUM);
    if (!plainSum(context, head, payload).equals(stored.subarray(stored.length - SUM))) throw bad('checksum mismatch');
    return [flags & 0x0f, payload];
  }
  if (stored.length < 2 + NONCE + TAG) throw bad('too short');
  const d = createDecipheriv('aes-256-gcm', keys.enc, stored.subarray(2, 2 + NONCE));
  d.setAAD(Buffer.concat([head, Buffer.from(context)]));
  d.setAuthTag(stored.subarray(stored.length - TAG));
  try {
    return [flags & 0x0f, Buffer.concat([d.update(stored.subarray(2 + NONCE, stored.length - TAG)), d.final()])];
  } catch {
    throw bad('authentication failed');
  }
}

/**
 * Opens what seal() made; RepoError 'corrupt' when it fails authentication,
 * 'format' for an unknown version. `maxPlain`: the most plaintext an object
 * of its kind holds (a lock, a map frame, a chunk of its backup's size). An
 * unencrypted object's check is a hash anyone can recompute, so a small
 * forged object could otherwise decompress to 256 MiB (and a map frame to
 * millions of records): more than its kind holds is damage, stopped there.
 */
export function unseal(stored: Buffer, context: string, keys: RepoKeys | null, maxPlain = MAX_OBJECT_PLAIN): Buffer {
  const [code, payload] = open(stored, context, keys);
  return decompress(code, payload, context, maxPlain);
}

/**
 * unseal() of a chunk, decompressing on a worker thread, with the chunk id of
 * its plaintext (chunkIdOf), hashed on that worker too.
 */
export async function unsealChunkAsync(stored: Buffer, context: string, keys: RepoKeys | null, maxPlain = MAX_OBJECT_PLAIN): Promise<{ plain: Buffer; id: string }> {
  const [code, payload] = open(stored, context, keys);
  const r = await decompressAsync(code, payload, context, maxPlain, keys ? keys.id : null);
  return { plain: r.out, id: r.id ?? chunkIdOf(r.out, keys) };
}
