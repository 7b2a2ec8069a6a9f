/**
 * Manifest encoding (docs/repository.md, "Manifests"). A backup is two
 * objects: its chunk map `maps/ID`, streamed out first, and its header
 * `backups/ID`, a small sealed JSON object written last (the commit point)
 * that carries the map's frame count, length and SHA-256. Both directions
 * stream: memory stays bounded by one frame whatever the device size.
 *
 * Map object, version 1: the 8 bytes `DMTHMAP1`, then frames, each a 4-byte
 * big-endian length and a sealed envelope (codec.ts) whose context is
 * `maps/ID#N` (N the frame number) plus `$` on the last frame, so a frame
 * moved, dropped or cut off fails authentication. A frame's plaintext is a
 * run of records: varint(index - previous index) (the first previous is
 * -1), then the 32-byte chunk id.
 */
import { createHash } from 'node:crypto';
import { RepoError, throwIfAborted } from '../errors';
import { seal, unseal, type Compression, type RepoKeys } from './codec';

/** Magic and version of a chunk map object. */
export const MAP_MAGIC = Buffer.from('DMTHMAP1');
const FRAME_RECORDS = 1024; // ~34 KiB of plaintext per frame
const MAX_FRAME = 1 << 20;
const NO_COMPRESSION: Compression = { algorithm: 'none', level: 0 };

/** One backup's header: everything but the chunk map. */
export interface ManifestHeader {
  /** Volume name, `[A-Za-z0-9._-]{1,128}` (not `.` or `..`). */
  volume: string;
  /** Device size in bytes, a multiple of 512; the last chunk may be short. */
  deviceSize: number;
  /** Chunk size in bytes, set by the writer (a multiple of 512). */
  chunkSize: number;
  /** Date.now() at backup start. */
  createdMs: number;
  /** Opaque to the repository: the writer's description of the source. */
  source: Record<string, unknown>;
  /** Id of the backup this one was computed from, or null (full). */
  base: string | null;
}

/** Chunk index (offset / chunkSize) to chunk id; an absent index is a hole. */
export interface ManifestEntry {
  /** Chunk index. */
  index: number;
  /** Chunk id (64 hex digits). */
  id: string;
}

/** What the header object holds about its map. */
export interface MapDigest {
  /** Number of entries. */
  entries: number;
  /** Number of frames. */
  frames: number;
  /** Length of the map object in bytes. */
  bytes: number;
  /** SHA-256 (hex) of every frame's plaintext, in order. */
  sha256: string;
}

/** The stored header: ManifestHeader plus identity, counts and the map digest. */
export interface StoredHeader extends ManifestHeader {
  version: 1;
  id: string;
  committedMs: number;
  chunks: number;
  storedBytes: number;
  newChunks: number;
  map: MapDigest;
}

const VOLUME_RE = /^[A-Za-z0-9._-]{1,128}$/;
/** Throws RepoError 'config' unless `v` is a usable volume name. */
export function checkVolume(v: string): void {
  if (typeof v !== 'string' || !VOLUME_RE.test(v) || v === '.' || v === '..')
    throw new RepoError('config', `invalid volume name ${JSON.stringify(v)}: use 1 to 128 of [A-Za-z0-9._-] (not "." or "..")`);
}

const BACKUP_ID_RE = /^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$/;
/** Is `id` a well-formed backup id (`YYYYMMDDTHHMMSSZ-xxxxxxxx`)? */
export function isBackupId(id: string): boolean {
  return typeof id === 'string' && BACKUP_ID_RE.test(id);
}

/** Throws RepoError 'config' unless the header is well formed. */
export function checkHeader(h: ManifestHeader): void {
  checkVolume(h.volume);
  const bad = (what: string) => new RepoError('config', `invalid backup header: ${what}`);
  if (!Number.isSafeInteger(h.deviceSize) || h.deviceSize < 0 || h.deviceSize % 512 !== 0) throw bad(`deviceSize ${h.deviceSize} is not a multiple of 512`);
  if (!Number.isSafeInteger(h.chunkSize) || h.chunkSize <= 0 || h.chunkSize % 512 !== 0 || h.chunkSize > 64 * 1024 * 1024)
    throw bad(`chunkSize ${h.chunkSize} is not a multiple of 512 up to 64 MiB`);
  if (!Number.isFinite(h.createdMs)) throw bad('createdMs is not a time');
  if (h.source === null || typeof h.source !== 'object') throw bad('source is not an object');
  if (h.base !== null && !isBackupId(h.base)) throw bad(`base ${JSON.stringify(h.base)} is not a backup id`);
}

function putVarint(out: Buffer, pos: number, n: number): number {
  while (n >= 0x80) {
    out[pos++] = (n % 0x80) | 0x80;
    n = Math.floor(n / 0x80);
  }
  out[pos++] = n;
  return pos;
}

/** What encodeMap asks about each entry it takes (a commit: does the repository hold its chunk?). */
export interface EntryCheck {
  /** Each well-formed entry, in order; a returned promise makes the encoder wait for it. */
  admit(e: ManifestEntry): Promise<void> | void;
  /** After the last entry, before the last frame: rejects if an entry failed. */
  end(): Promise<void>;
}

/**
 * Encodes entries as the map object, piece by piece (one frame each).
 * `digest` is filled in when the iteration ends. Entries must have strictly
 * increasing indexes below the chunk count of `deviceSize`.
 */
export async function* encodeMap(
  backupId: string,
  header: ManifestHeader,
  entries: AsyncIterable<ManifestEntry> | Iterable<ManifestEntry>,
  keys: RepoKeys | null,
  digest: MapDigest,
  signal?: AbortSignal,
  check?: EntryCheck,
): AsyncGenerator<Uint8Array> {
  const limit = Math.ceil(header.deviceSize / header.chunkSize);
  const hash = createHash('sha256');
  let prev = -1;
  let frame = 0;
  let bytes = MAP_MAGIC.length;
  let count = 0;
  let buf = Buffer.alloc(FRAME_RECORDS * 40);
  let pos = 0;
  let inFrame = 0;
  yield MAP_MAGIC;
  const flush = (last: boolean): Buffer => {
    const plain = buf.subarray(0, pos);
    hash.update(plain);
    const sealed = seal(plain, `maps/${backupId}#${frame}${last ? '$' : ''}`, keys, NO_COMPRESSION);
    const out = Buffer.allocUnsafe(4 + sealed.length);
    out.writeUInt32BE(sealed.length, 0);
    sealed.copy(out, 4);
    frame++;
    bytes += out.length;
    buf = Buffer.alloc(FRAME_RECORDS * 40);
    pos = 0;
    inFrame = 0;
    return out;
  };
  // Returns true when a frame is full.
  const add = (e: ManifestEntry): boolean => {
    if (!Number.isSafeInteger(e.index) || e.index <= prev || e.index >= limit)
      throw new RepoError('config', `manifest entry index ${e.index} after ${prev}: indexes must increase strictly and stay below ${limit} (deviceSize / chunkSize)`);
    const at = putVarint(buf, pos, e.index - prev);
    // Buffer#write stops at the first non-hex digit: 32 bytes written means 64 hex digits.
    if (typeof e.id !== 'string' || e.id.length !== 64 || buf.write(e.id, at, 'hex') !== 32)
      throw new RepoError('config', `manifest entry ${e.index}: ${JSON.stringify(e.id)} is not a chunk id`);
    pos = at + 32;
    prev = e.index;
    count++;
    return ++inFrame === FRAME_RECORDS;
  };
  if (Symbol.iterator in entries) {
    // A plain iterable is walked without a microtask per entry (unless its check waits).
    for (const e of entries as Iterable<ManifestEntry>) {
      const full = add(e);
      const wait = check?.admit(e);
      if (wait) await wait;
      if (full) {
        throwIfAborted(signal);
        yield flush(false);
      }
    }
  } else {
    for await (const e of entries) {
      const full = add(e);
      const wait = check?.admit(e);
      if (wait) await wait;
      if (full) {
        throwIfAborted(signal);
        yield flush(false);
      }
    }
  }
  await check?.end();
  yield flush(true);
  digest.entries = count;
  digest.frames = frame;
  digest.bytes = bytes;
  digest.sha256 = hash.digest('hex');
}

/**
 * Decodes a map object streamed from `pieces`, checking each frame as it
 * arrives and the digest at the end. Damage is RepoError 'corrupt' naming
 * the map; entries before the damaged frame have been yielded already.
 */
export async function* decodeMap(
  backupId: string,
  pieces: AsyncIterable<Buffer>,
  keys: RepoKeys | null,
  want: MapDigest,
  signal?: AbortSignal,
  entry: (index: number, id: string) => ManifestEntry = (index, id) => ({ index, id }),
): AsyncGenerator<ManifestEntry> {
  const key = `maps/${backupId}`;
  const corrupt = (why: string) => new RepoError('corrupt', `the chunk map of backup ${backupId} is damaged (${why}); its backup cannot be trusted`, { key });
  const hash = createHash('sha256');
  let pending: Buffer = Buffer.alloc(0);
  let frame = 0;
  let bytes = 0;
  let count = 0;
  let prev = -1;
  let done = false;
  const it = pieces[Symbol.asyncIterator]();
  let eof = false;
  // Reads until `pending` holds at least n bytes (or the object ends).
  const fill = async (n: number): Promise<boolean> => {
    while (pending.length < n && !eof) {
      const r = await it.next();
      if (r.done) eof = true;
      else {
        bytes += r.value.length;
        pending = pending.length ? Buffer.concat([pending, r.value]) : r.value;
      }
    }
    return pending.length >= n;
  };
  try {
    // The (authenticated) header is version 1, so its map must be version 1 too.
    if (!(await fill(MAP_MAGIC.length)) || !pending.subarray(0, MAP_MAGIC.length).equals(MAP_MAGIC)) throw corrupt('bad magic');
    pending = pending.subarray(MAP_MAGIC.length);
    while (!done) {
      throwIfAborted(signal);
      if (!(await fill(4))) throw corrupt(`cut off after frame ${frame}`);
      const len = pending.readUInt32BE(0);
      if (len > MAX_FRAME || len < 2) throw corrupt(`frame ${frame} length ${len}`);
      if (!(await fill(4 + len))) throw corrupt(`cut off in frame ${frame}`);
      const sealed = pending.subarray(4, 4 + len);
      pending = pending.subarray(4 + len);
      // The last frame is the one that authenticates with the `$` context.
      const isLast = frame + 1 === want.frames;
      let plain: Buffer;
      try {
        plain = unseal(Buffer.from(sealed), `${key}#${frame}${isLast ? '$' : ''}`, keys, MAX_FRAME); // frames are stored uncompressed, at most MAX_FRAME
      } catch (e) {
        if (e instanceof RepoError && e.reason === 'corrupt') throw corrupt(`frame ${frame} fails its check`);
        throw e;
      }
      hash.update(plain);
      const batch: ManifestEntry[] = [];
      let p = 0;
      while (p < plain.length) {
        let d = 0;
        let mul = 1;
        for (;;) {
          if (p >= plain.length || mul > 2 ** 49) throw corrupt(`frame ${frame} record`);
          const b = plain[p++]!;
          d += (b & 0x7f) * mul;
          mul *= 0x80;
          if (b < 0x80) break;
        }
        if (d < 1 || p + 32 > plain.length) throw corrupt(`frame ${frame} record`);
        prev += d;
        batch.push(entry(prev, plain.toString('hex', p, p + 32)));
        p += 32;
        count++;
      }
      frame++;
      if (isLast) done = true;
      for (const e of batch) yield e;
    }
    if ((await fill(1)) || bytes !== want.bytes) throw corrupt('data after the last frame');
    if (count !== want.entries || hash.digest('hex') !== want.sha256) throw corrupt('entry count or checksum differs from the header');
  } finally {
    await it.return?.();
  }
}

/** Parses a backup header object's plaintext, checking its shape. */
export function parseStoredHeader(plain: Buffer, backupId: string): StoredHeader {
  const key = `backups/${backupId}`;
  let h: StoredHeader;
  try {
    h = JSON.parse(plain.toString('utf8')) as StoredHeader;
  } catch {
    throw new RepoError('corrupt', `backup ${backupId}: its header is not JSON`, { key });
  }
  if (h.version !== 1) throw new RepoError('format', `backup ${backupId}: header version ${String(h.version)} is not one this dmthin reads; upgrade dmthin`, { key });
  if (h.id !== backupId || !h.map || typeof h.map.sha256 !== 'string') throw new RepoError('corrupt', `backup ${backupId}: its header does not describe it`, { key });
  // The rules a header was written under (checkHeader), held to when it is
  // read: a stored one that breaks them (a deviceSize that is no number, a
  // chunk size of 0) is damage, before restore or verify trust its fields.
  try {
    checkHeader(h);
  } catch (e) {
    throw new RepoError('corrupt', `backup ${backupId}: its header is damaged (${(e as Error).message.replace(/^invalid backup header: /, '')})`, { key, cause: e });
  }
  return h;
}
