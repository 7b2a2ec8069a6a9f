/**
 * A dmthin backup repository (docs/repository.md): deduplicated, compressed,
 * optionally encrypted chunks plus one manifest per backup, on any Backend.
 * Objects (keys relative to the repository root):
 *   config                          format version, compression, wrapped key
 *   chunks/XX/ID                    a chunk (XX: the id's first two digits)
 *   maps/BACKUP                     a backup's chunk map (streamed)
 *   backups/BACKUP                  a backup's header: the commit point, written last
 *   journals/VOLUME/SESSION/SEQ     ids a backup session has stored so far (VOLUME keyed-hashed when encrypted)
 *   locks/ID                        shared (backup) and exclusive (gc) locks
 */
import { getMaxListeners, setMaxListeners } from 'node:events';
import { createHmac, randomBytes } from 'node:crypto';
import { AbortError, check, describeValue, RepoError, throwIfAborted, UsageError } from '../errors';
import type { Backend } from './backend';
import { chunkIdOf, DEFAULT_COMPRESSION, formatCompression, isChunkId, parseCompression, seal, sealAsync, unseal, unsealChunkAsync, type Compression, type RepoKeys } from './codec';
import { checkScryptParams, newConfig, openConfig, type KeySource, type RepoConfig, type ScryptParams } from './keys';
import { LocalBackend } from './local-backend';
import { Semaphore, type Release } from './semaphore';
import { DEFAULT_LOCK_TIMING, Locks, type FoundLock, type HeldLock, type LockTiming } from './locks';
import {
  type EntryCheck,
  checkHeader,
  checkVolume,
  decodeMap,
  encodeMap,
  isBackupId,
  parseStoredHeader,
  type ManifestEntry,
  type ManifestHeader,
  type MapDigest,
  type StoredHeader,
} from './manifest';

export type { KeySource, ScryptParams } from './keys';
export type { ManifestEntry, ManifestHeader } from './manifest';
export type { LockTiming } from './locks';

/** Options every repository call takes. */
export interface RepoCallOptions {
  /** Cancels the call, which then rejects with AbortError. */
  signal?: AbortSignal;
}

/** Options of BackupSession.putChunk. */
export interface PutChunkOptions extends RepoCallOptions {
  /**
   * The chunk's id as Repository.chunkId computed it for these bytes, when
   * the caller has it already (not hashed again, not checked).
   * @internal
   */
  id?: string;
}

/** Options of Repository.create. */
export interface RepositoryCreateOptions extends RepoCallOptions {
  /** Encrypts the repository under this key file or passphrase; absent: unencrypted. */
  key?: KeySource;
  /** `none`, `deflate[:1-9]` or `brotli[:0-11]`; default `brotli:1` (docs/repository.md, "Compression"). */
  compression?: string;
  /** scrypt cost for a passphrase (default N=65536, r=8, p=1; N a power of two of at least 2^14, r and p at least 1, 128·N·r at most 1 GiB, p at most 16); stored in the config. */
  scrypt?: ScryptParams;
}

/** The longest delay Node's timers keep (2^31 - 1 ms); a longer one fires after 1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Options of Repository.open. */
export interface RepositoryOpenOptions extends RepoCallOptions {
  /** The key file or passphrase of an encrypted repository. */
  key?: KeySource;
  /** Lock refresh and staleness times (default 5 and 30 minutes); tests shorten them. */
  lockTiming?: Partial<LockTiming>;
}

/** A committed backup as listed: its header, id and counts. */
export interface BackupSummary extends ManifestHeader {
  /** The backup id, `YYYYMMDDTHHMMSSZ-xxxxxxxx` (UTC time the session began). */
  id: string;
  /** Number of chunks in its map (holes excluded). */
  chunks: number;
  /** Bytes this backup uploaded (stored size of its new chunks). */
  storedBytes: number;
  /** Number of chunks this backup uploaded (the others were present already). */
  newChunks: number;
  /** When the backup was committed (ms since the epoch). */
  committedMs: number;
}

/**
 * How many chunks a backup stores, or a restore fetches, at once by default:
 * about 2 MiB of them, 8 to 32. A local repository's put waits on two
 * fsyncs, which the filesystem's journal commits together when many are
 * waiting, and a get is a few reads; S3 calls are as many requests in
 * flight (docs/repository.md, "Where a backup's time goes").
 */
export function chunksAtOnce(chunkSize: number): number {
  return Math.max(8, Math.min(32, Math.floor((2 << 20) / Math.max(1, chunkSize))));
}

/**
 * Lets `inFlight` calls listen on `signal` at once (an S3 request adds a
 * listener for its duration) without Node's possible-leak warning at 10.
 */
export function allowListeners(signal: AbortSignal | undefined, inFlight: number): void {
  if (signal) setMaxListeners(Math.max(getMaxListeners(signal), 2 * inFlight + 10), signal);
}

/** What putChunk did. */
export interface PutResult {
  /** The chunk id. */
  id: string;
  /** True when uploaded now; false when the repository had it already. */
  stored: boolean;
  /** Bytes uploaded (0 when not stored). */
  storedBytes: number;
}

/** A backup in progress: chunks first, then commit() writes the manifest. */
export interface BackupSession extends AsyncDisposable {
  /** The backup id the manifest will have. */
  readonly id: string;
  /** Hash, compress, encrypt, upload unless present; safe against a concurrent prune (the session's lock excludes it). */
  putChunk(plain: Uint8Array, opts?: PutChunkOptions): Promise<PutResult>;
  /** Ids stored by an interrupted earlier session of the same volume and found in the repository by beginBackup (resume: skip them). */
  readonly resumedIds: ReadonlySet<string>;
  /** Chunks a repair removed (their markers, read under the session's lock): putChunk writes them over whatever is there. */
  readonly markedIds: ReadonlySet<string>;
  /** Those of markedIds this session has written: once it commits, their markers can go (Repository.clearRemovedMarkers). */
  readonly restoredMarked: ReadonlySet<string>;
  /**
   * Writes the manifest LAST (the commit point); entries in strictly
   * increasing index. Read a base backup's manifest after beginBackup, so
   * that the chunks it names are protected by this session's lock. Each
   * entry must name a chunk the repository holds (put or resumed by this
   * session, read from a manifest since it began, or found by a stat):
   * otherwise RepoError 'not-found' naming the entry, and nothing is committed.
   */
  commit(header: ManifestHeader, entries: AsyncIterable<ManifestEntry> | Iterable<ManifestEntry>, opts?: RepoCallOptions): Promise<BackupSummary>;
}

/** A problem verify found: which backup, which chunk, where. */
export interface VerifyProblem {
  /** Backup id. */
  backup: string;
  /** Chunk index in the backup; -1 when the backup's manifest itself is damaged or missing. */
  index: number;
  /** Byte offset in the device (index * chunkSize); -1 with index -1. */
  offset: number;
  /** Chunk id ('' for a manifest problem). */
  id: string;
  /** The chunk (or manifest) is absent, or fails its authentication or hash. */
  reason: 'missing' | 'corrupt';
}

/** The result of verify. */
export interface VerifyReport {
  /** Backups checked. */
  backups: number;
  /** Chunk references checked. */
  chunks: number;
  /** Everything found wrong (the first 100000; see problemsOmitted). */
  problems: VerifyProblem[];
  /** Problems found beyond those listed. */
  problemsOmitted: number;
  /**
   * With `data`: the distinct chunks that are present but fail their
   * authentication or hash (removeDamagedChunks takes them); else empty.
   */
  damagedChunks: string[];
}

/** What removeDamagedChunks did with each id it was given. */
export interface RemovedChunks {
  /** Read again, damaged again: deleted. */
  removed: string[];
  /** Read again and sound this time (the first read's fault was passing): kept. */
  sound: string[];
  /** Absent already. */
  absent: string[];
}

/**
 * The error for backups whose header cannot be read: names them, what they
 * stop (`what`) and how to delete them.
 */
export function damagedBackupsError(location: string, damaged: readonly DamagedBackup[], what: string): RepoError {
  const first = damaged[0]!;
  const more = damaged.length > 1 ? ` and ${damaged.length - 1} more (${damaged.slice(1, 4).map((d) => d.id).join(', ')}${damaged.length > 4 ? ', ...' : ''})` : '';
  return new RepoError(
    first.error.reason,
    `backup ${first.id}${more} cannot be read (${first.error.message}); ${what}. ` +
      `Delete ${damaged.length > 1 ? 'each' : 'it'} with dmthin backups delete --repo ${location} --backup ${first.id}, or restore it from a copy`,
    { key: first.error.key, backup: first.id, cause: first.error },
  );
}

/** A backup whose header cannot be read, as listBackups reports it to onDamaged. */
export interface DamagedBackup {
  /** The backup id (from its object's name). */
  id: string;
  /** Why: RepoError 'corrupt' or 'format', naming the object. */
  error: RepoError;
}

/** What readManifest returns. */
export interface ManifestRead {
  /** The backup's header and counts. */
  header: BackupSummary;
  /** Its entries in increasing index, read and checked frame by frame as they are iterated (each iteration reads afresh). */
  entries: AsyncIterable<ManifestEntry>;
}

/** What collectGarbage did. */
export interface GarbageReport {
  /** Chunks deleted. */
  deletedChunks: number;
  /** Their stored size in bytes. */
  freedBytes: number;
  /** Temporary files of interrupted writes removed (local repositories). */
  deletedTemporary: number;
}

const MAX_PROBLEMS = 100_000;
const JOURNAL_BATCH = 4096;
const JOURNAL_INTERVAL_MS = 5000;
/** A dead session's journal older than this no longer protects its chunks. */
const JOURNAL_MAX_AGE_MS = 7 * 24 * 3600 * 1000;
const DELETE_BATCH = 1000;
/**
 * Entries read from a manifest carry where and when they were read on their
 * prototype (their own properties stay index and id, frozen), so that a
 * session's commit takes a base's entries without looking each chunk up.
 */
const READ_MARK = Symbol('dmthin.manifestRead');
interface ReadMark {
  repo: Repository;
  /** Which read (manifestReads when it began). */
  read: number;
}
let manifestReads = 0;
function markedEntries(mark: ReadMark): (index: number, id: string) => ManifestEntry {
  class Entry {
    constructor(
      readonly index: number,
      readonly id: string,
    ) {
      Object.freeze(this);
    }
  }
  Object.defineProperty(Entry.prototype, READ_MARK, { value: mark });
  return (index, id) => new Entry(index, id);
}

/** Chunks looked up at once: by commit() (entries it cannot vouch for), by beginBackup (a journal's ids). */
const STAT_CONCURRENCY = 16;
/** Chunk ids a commit remembers as found by a look-up (~100 bytes each). */
const FOUND_CACHE = 4096;
/** The largest chunk (the largest chunkSize a header may have). */
const MAX_CHUNK = 64 * 1024 * 1024;
/** The largest stored chunk: payload never larger than the plaintext (compressed only when smaller), plus the envelope (at most 34 bytes). */
const MAX_STORED_CHUNK = MAX_CHUNK + 64;
/**
 * The largest header, journal segment, lock or config read: far above what
 * dmthin writes (a header is a few KiB, a segment ~128 KiB), so a damaged
 * or hostile one is refused unread (commit refuses a larger header).
 */
export const MAX_SMALL_OBJECT = 16 * 1024 * 1024;

/**
 * The marker of a chunk `removeDamagedChunks` deleted (an empty object): the
 * backups that name it cannot be restored whole until a backup stores it
 * again, and a backup does not take one of them as its base (it would copy
 * the reference, exit 0, unrestorable). A backup that finds the chunk stored
 * again removes the marker.
 */
function removedKey(id: string): string {
  return `removed/${id}`;
}

function chunkKey(id: string): string {
  return `chunks/${id.slice(0, 2)}/${id}`;
}

function newBackupId(now: number): string {
  const t = new Date(now).toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  return `${t}-${randomBytes(4).toString('hex')}`;
}

function isAbort(e: unknown): boolean {
  return e instanceof AbortError || (e as Error)?.name === 'AbortError';
}

/**
 * Opens the backend for a location: a directory path (LocalBackend) or
 * `s3://BUCKET/PREFIX` (the S3 backend, configured from the standard AWS
 * environment).
 */
export async function openBackend(location: string): Promise<Backend> {
  if (typeof location !== 'string' || location === '') throw new RepoError('config', 'no repository location given: use a directory path or s3://BUCKET/PREFIX');
  if (/^s3:\/\//i.test(location)) {
    const m = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(location);
    if (!m) throw new RepoError('config', `${location} is not an S3 repository address: use s3://BUCKET/PREFIX (bucket in lowercase)`);
    const prefix = (m[2] ?? '').replace(/\/+$/, '');
    // Resolved at run time: the S3 backend is its own module with a heavy SDK.
    const modPath = './s3-backend';
    let mod: { createS3Backend?: (bucket: string, prefix: string) => Promise<Backend> };
    try {
      mod = (await import(modPath)) as typeof mod;
    } catch (e) {
      throw new RepoError('config', `cannot use ${location}: S3 support not built yet`, { cause: e });
    }
    if (typeof mod.createS3Backend !== 'function') throw new RepoError('config', `cannot use ${location}: S3 support not built yet`);
    return mod.createS3Backend(m[1]!, prefix);
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(location)) throw new RepoError('config', `${location}: unknown repository scheme; use a directory path or s3://BUCKET/PREFIX`);
  return new LocalBackend(location);
}

/** A backup repository on a Backend. */
export class Repository implements AsyncDisposable {
  /** Where it is: a directory path or `s3://bucket/prefix`. */
  readonly location: string;
  /** Whether chunks and manifests are encrypted (and chunk ids keyed). */
  readonly encrypted: boolean;
  /** The repository's identity (32 hex digits). */
  readonly repositoryId: string;
  /** The compression new objects get, e.g. `deflate:1`. */
  readonly compression: string;
  private readonly comp: Compression;
  private readonly locks: Locks;
  private closed = false;

  private constructor(
    private readonly backend: Backend,
    config: RepoConfig,
    private readonly keys: RepoKeys | null,
    timing: LockTiming,
    private readonly ownsBackend: boolean,
  ) {
    this.location = backend.location;
    this.encrypted = keys !== null;
    this.repositoryId = config.id;
    this.comp = parseCompression(config.compression);
    this.compression = formatCompression(this.comp);
    this.locks = new Locks(backend, keys, timing);
  }

  /** Creates a repository at a location; RepoError 'exists' if one is there. */
  static async create(location: string, opts: RepositoryCreateOptions = {}): Promise<Repository> {
    opts ??= {}; // null, as Node's own APIs take it
    const backend = await openBackend(location);
    try {
      return await Repository.fromBackend(backend, { signal: opts.signal, create: opts }, true);
    } catch (e) {
      await backend.close();
      throw e;
    }
  }

  /** Opens the repository at a location; a wrong key is refused ('bad-key') before anything is written. */
  static async open(location: string, opts: RepositoryOpenOptions = {}): Promise<Repository> {
    opts ??= {}; // null, as Node's own APIs take it
    const backend = await openBackend(location);
    try {
      return await Repository.fromBackend(backend, opts, true);
    } catch (e) {
      await backend.close();
      throw e;
    }
  }

  /** Opens (or with `create`, creates) the repository on a backend the caller owns (close() leaves it open). */
  static openBackend(backend: Backend, opts: RepositoryOpenOptions & { create?: RepositoryCreateOptions } = {}): Promise<Repository> {
    return Repository.fromBackend(backend, opts, false);
  }

  private static async fromBackend(backend: Backend, opts: RepositoryOpenOptions & { create?: RepositoryCreateOptions }, owns: boolean): Promise<Repository> {
    check.options(opts.lockTiming, 'lockTiming');
    const timing = { ...DEFAULT_LOCK_TIMING, ...opts.lockTiming };
    // NaN refreshed a lock every millisecond (setInterval), a negative staleMs made every live lock stale;
    // beyond 2^31 - 1 ms Node's timers take 1 ms.
    check.integer(timing.refreshMs, 'lockTiming.refreshMs');
    check.integer(timing.staleMs, 'lockTiming.staleMs');
    for (const [k, v] of [['refreshMs', timing.refreshMs], ['staleMs', timing.staleMs]] as const) {
      if (v > MAX_TIMER_MS) throw new UsageError(`lockTiming.${k} must be at most ${MAX_TIMER_MS} (about 24.8 days, Node's longest timer), got ${v}`, { option: 'lockTiming' });
    }
    if (timing.staleMs <= timing.refreshMs) {
      throw new UsageError(`lockTiming.staleMs (${timing.staleMs}) must be longer than lockTiming.refreshMs (${timing.refreshMs}): a held lock would look stale between its refreshes`, { option: 'lockTiming' });
    }
    const signal = opts.signal ?? opts.create?.signal;
    throwIfAborted(signal);
    if (opts.create) {
      const c = opts.create;
      if (c.scrypt !== undefined) checkScryptParams(c.scrypt);
      const compression = formatCompression(parseCompression(c.compression ?? DEFAULT_COMPRESSION));
      if (await backend.stat('config', { signal })) throw new RepoError('exists', `a repository already exists at ${backend.location}`, { key: 'config' });
      // A repository owns its whole directory (or prefix): made among other files, a mistyped path would scatter chunks/ and backups/ through them.
      for await (const o of backend.list('', { signal })) {
        throw new RepoError('exists', `${backend.location} is not empty (it holds ${o.key}): a repository is made in an empty directory or S3 prefix. Choose a new one, or empty this one`, { key: o.key });
      }
      const { config, keys, stored } = await newConfig(compression, c.key, c.scrypt);
      throwIfAborted(signal);
      if (!(await backend.put('config', stored, { ifAbsent: true, signal }))) throw new RepoError('exists', `a repository already exists at ${backend.location}`, { key: 'config' });
      await backend.keepReserve?.();
      return new Repository(backend, config, keys, timing, owns);
    }
    let stored: Buffer;
    try {
      stored = await backend.get('config', { signal, maxBytes: MAX_SMALL_OBJECT });
    } catch (e) {
      if (e instanceof RepoError && e.reason === 'not-found') throw new RepoError('not-found', `there is no dmthin repository at ${backend.location}; create one first`, { key: 'config', cause: e });
      throw e;
    }
    const { config, keys } = await openConfig(stored, opts.key, backend.location);
    return new Repository(backend, config, keys, timing, owns);
  }

  private live(): void {
    if (this.closed) throw this.closedError();
  }

  /** @internal Whether close() was called: a session's calls then fail too. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** @internal EBADF, as ThinMetadata's calls after its close. */
  closedError(what = 'the repository', advice = 'open it again'): RepoError {
    return new RepoError('config', `${what} at ${this.location} is closed: ${advice}`, { code: 'EBADF' });
  }

  /** The chunk id of a plaintext: SHA-256, or HMAC-SHA-256 under the repository's id key when encrypted. */
  chunkId(plain: Uint8Array): string {
    // A string would be hashed as its UTF-8 (not what putChunk stores), null thrown from inside node:crypto.
    if (!(plain instanceof Uint8Array)) throw new UsageError(`chunkId needs the chunk's bytes (a Buffer or Uint8Array), got ${describeValue(plain)}`);
    return chunkIdOf(plain, this.keys);
  }

  /** Starts a backup of `volume`: takes a shared lock and collects what an interrupted earlier session stored. */
  async beginBackup(volume: string, opts: { onWarning?: (message: string) => void } & RepoCallOptions = {}): Promise<BackupSession> {
    this.live();
    checkVolume(volume);
    const id = newBackupId(Date.now());
    // A repository made before space reserves (or whose reserve a prune used) gets one.
    await this.backend.keepReserve?.();
    const lock = await this.locks.acquire('shared', `backup ${volume}`, id, opts.signal);
    try {
      const liveSessions = new Set((await this.locks.scan(opts.signal)).filter((l) => !this.locks.isStale(l) && l.info?.session).map((l) => l.info!.session!));
      const resumed = new Set<string>();
      const adopted: string[] = [];
      for await (const seg of this.backend.list(`journals/${this.volumeTag(volume)}/`, opts)) {
        const session = seg.key.split('/')[2]!;
        if (liveSessions.has(session)) continue; // a concurrent backup of the same volume: not ours to take
        const ids = await this.readJournal(seg.key, opts.signal, (why) =>
          opts.onWarning?.(`a journal segment of an interrupted backup of ${volume} cannot be read (${why}); the chunks it names are not resumed: they are checked and uploaded again where missing`),
        );
        if (ids === null) continue;
        for (const x of ids) resumed.add(x);
        adopted.push(seg.key);
      }
      // Read under the lock: no repair (exclusive) runs until this session ends.
      const marked = await this.removedChunks(opts);
      for (const x of marked) resumed.delete(x); // a journal's copy of it may be the damaged one
      const lost = await this.dropAbsent(resumed, opts.signal);
      if (lost > 0)
        opts.onWarning?.(
          `${lost} chunk${lost === 1 ? '' : 's'} an interrupted backup of ${volume} stored ${lost === 1 ? 'is' : 'are'} no longer in the repository (was it copied while that backup ran, or were chunks deleted?): ${lost === 1 ? 'it is' : 'they are'} uploaded again`,
        );
      return new Session(this, this.backend, this.keys, this.comp, id, volume, this.volumeTag(volume), lock, resumed, adopted, marked);
    } catch (e) {
      await lock.release().catch(() => undefined);
      throw e;
    }
  }

  /**
   * Removes from `ids` (a journal's) the chunks the repository does not
   * hold, and counts them. A journal says what its session stored, not what
   * is there now: a repository copied while a backup ran (rsync reaches
   * journals/ after chunks/) or a chunk deleted by hand or lost by the store
   * leaves ids without their chunk, and a resumed id is neither uploaded nor
   * looked up again by putChunk or commit. One stat per id,
   * STAT_CONCURRENCY at a time; the session's lock (already held) keeps
   * what was found until its commit.
   */
  private async dropAbsent(ids: Set<string>, signal?: AbortSignal): Promise<number> {
    allowListeners(signal, STAT_CONCURRENCY);
    const slots = new Semaphore(STAT_CONCURRENCY);
    const absent: string[] = [];
    let failure = null as { error: unknown } | null;
    try {
      for (const id of ids) {
        const release = await slots.take(signal);
        if (failure) {
          release();
          break;
        }
        this.backend.stat(chunkKey(id), { signal }).then(
          (info) => {
            if (!info) absent.push(id);
            release();
          },
          (error: unknown) => {
            failure ??= { error };
            release();
          },
        );
      }
    } finally {
      // No look-up outlives the call (an abort ends them too: they share the signal).
      await slots.idle();
    }
    if (failure) throw failure.error;
    for (const id of absent) ids.delete(id);
    return absent.length;
  }

  /** The volume's name in journal keys: itself, or when encrypted a keyed hash (object names reveal no volume names). */
  private volumeTag(volume: string): string {
    return this.keys ? createHmac('sha256', this.keys.id).update(`volume ${volume}`).digest('hex').slice(0, 32) : volume;
  }

  /**
   * A journal segment's ids, or null when it cannot be read (then it protects
   * and resumes nothing: safe, as only an interrupted session's chunks depend
   * on it, and they are uploaded again), told to `damaged` with why.
   */
  private async readJournal(key: string, signal?: AbortSignal, damaged?: (why: string) => void): Promise<string[] | null> {
    try {
      const plain = unseal(await this.backend.get(key, { signal, maxBytes: MAX_SMALL_OBJECT }), key, this.keys, MAX_SMALL_OBJECT);
      if (plain.length % 32 !== 0) {
        damaged?.(`${key}: ${plain.length} bytes, not a whole number of 32-byte ids`);
        return null;
      }
      const out: string[] = [];
      for (let p = 0; p < plain.length; p += 32) out.push(plain.toString('hex', p, p + 32));
      return out;
    } catch (e) {
      if (isAbort(e)) throw e;
      if (e instanceof RepoError && (e.reason === 'corrupt' || e.reason === 'format')) {
        damaged?.(e.message);
        return null;
      }
      if (e instanceof RepoError && e.reason === 'not-found') return null; // deleted meanwhile (a commit)
      throw e;
    }
  }

  /**
   * A chunk's plaintext, authenticated and re-hashed; RepoError 'not-found' or
   * 'corrupt' with its key. `maxBytes`: the most it may hold (the chunk size
   * of the backup it is read for; at most 64 MiB): a chunk that decompresses
   * to more is damaged, stopped there.
   */
  async getChunk(id: string, opts: RepoCallOptions & { maxBytes?: number } = {}): Promise<Buffer> {
    this.live();
    if (!isChunkId(id)) throw new RepoError('config', `${JSON.stringify(id)} is not a chunk id (64 hex digits)`);
    if (opts.maxBytes !== undefined) check.integer(opts.maxBytes, 'maxBytes');
    const key = chunkKey(id);
    const { plain, id: actual } = await unsealChunkAsync(await this.backend.get(key, { signal: opts.signal, maxBytes: MAX_STORED_CHUNK }), key, this.keys, Math.min(opts.maxBytes ?? MAX_CHUNK, MAX_CHUNK));
    if (actual !== id) throw new RepoError('corrupt', `chunk ${id}: its content does not hash to its id; the chunk is damaged`, { key });
    return plain;
  }

  private async readHeader(id: string, signal?: AbortSignal): Promise<StoredHeader> {
    const key = `backups/${id}`;
    return parseStoredHeader(unseal(await this.backend.get(key, { signal, maxBytes: MAX_SMALL_OBJECT }), key, this.keys, MAX_SMALL_OBJECT), id);
  }

  private summary(h: StoredHeader): BackupSummary {
    return {
      volume: h.volume,
      deviceSize: h.deviceSize,
      chunkSize: h.chunkSize,
      createdMs: h.createdMs,
      source: h.source,
      base: h.base,
      id: h.id,
      chunks: h.chunks,
      storedBytes: h.storedBytes,
      newChunks: h.newChunks,
      committedMs: h.committedMs,
    };
  }

  private async *backupIds(signal?: AbortSignal): AsyncIterable<string> {
    for await (const o of this.backend.list('backups/', { signal })) {
      const id = o.key.slice('backups/'.length);
      if (isBackupId(id)) yield id;
    }
  }

  /**
   * Committed backups, oldest first (by createdMs, then id). A header that
   * cannot be read (RepoError 'corrupt' or 'format') is given to `onDamaged`
   * and left out of the list (its volume is unknown: whatever `volume` is
   * asked); without `onDamaged` it is thrown.
   */
  async listBackups(opts: { volume?: string; onDamaged?: (d: DamagedBackup) => void } & RepoCallOptions = {}): Promise<BackupSummary[]> {
    this.live();
    // A name no backup can have is a mistake, not an empty list (beginBackup refuses it too).
    if (opts.volume !== undefined) checkVolume(opts.volume);
    const out: BackupSummary[] = [];
    for await (const id of this.backupIds(opts.signal)) {
      let h: StoredHeader;
      try {
        h = await this.readHeader(id, opts.signal);
      } catch (e) {
        if (e instanceof RepoError && e.reason === 'not-found') continue; // deleted meanwhile
        if (opts.onDamaged && e instanceof RepoError && (e.reason === 'corrupt' || e.reason === 'format')) {
          opts.onDamaged({ id, error: e });
          continue;
        }
        throw e;
      }
      if (opts.volume === undefined || h.volume === opts.volume) out.push(this.summary(h));
    }
    return out.sort((a, b) => a.createdMs - b.createdMs || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /** A backup's header and its entries, streamed and checked frame by frame (memory bounded). */
  async readManifest(id: string, opts: RepoCallOptions = {}): Promise<ManifestRead> {
    this.live();
    if (!isBackupId(id)) throw new RepoError('not-found', `${JSON.stringify(id)} is not a backup id`, { key: `backups/${id}` });
    const h = await this.readHeader(id, opts.signal);
    const backend = this.backend;
    const keys = this.keys;
    const entries: AsyncIterable<ManifestEntry> = {
      [Symbol.asyncIterator]: () => decodeMap(id, backend.getStream(`maps/${id}`, opts), keys, h.map, opts.signal, markedEntries({ repo: this, read: ++manifestReads })),
    };
    return { header: this.summary(h), entries };
  }

  /**
   * Checks every backup: its manifest reads and authenticates, and each chunk
   * it names exists (with `data`: is fetched, authenticated, decompressed and
   * re-hashed, and has the length its backup gives that chunk, as restore
   * checks). Problems name the backup, chunk index and byte offset.
   */
  async verify(opts: { data?: boolean; onProgress?: (p: { backups: number; chunks: number }) => void } & RepoCallOptions = {}): Promise<VerifyReport> {
    this.live();
    const signal = opts.signal;
    const report: VerifyReport = { backups: 0, chunks: 0, problems: [], problemsOmitted: 0, damagedChunks: [] };
    const problem = (p: VerifyProblem) => {
      if (report.problems.length < MAX_PROBLEMS) report.problems.push(p);
      else report.problemsOmitted++;
    };
    // Without data: one listing answers every existence question.
    let present: Set<string> | null = null;
    if (!opts.data) {
      present = new Set();
      for await (const o of this.backend.list('chunks/', { signal })) {
        const id = o.key.slice(o.key.lastIndexOf('/') + 1);
        if (isChunkId(id) && o.key === chunkKey(id)) present.add(id);
      }
    }
    // A chunk's state, and its length when it reads: each backup naming it checks that against its own chunk's.
    const checked = new Map<string, 'missing' | 'corrupt' | number>();
    const checkData = async (id: string): Promise<'missing' | 'corrupt' | number> => {
      const known = checked.get(id);
      if (known !== undefined) return known;
      let r: 'missing' | 'corrupt' | number;
      try {
        r = (await this.getChunk(id, { signal })).length;
      } catch (e) {
        if (!(e instanceof RepoError)) throw e;
        if (e.reason === 'not-found') r = 'missing';
        else if (e.reason === 'corrupt' || e.reason === 'format') r = 'corrupt';
        else throw e;
        // 'format' (a newer dmthin's object) is unusable here, but not damaged: never offered for removal.
        if (e.reason === 'corrupt') report.damagedChunks.push(id);
      }
      checked.set(id, r);
      return r;
    };
    const progress = () => opts.onProgress?.({ backups: report.backups, chunks: report.chunks });
    const ids: string[] = [];
    for await (const id of this.backupIds(signal)) ids.push(id);
    ids.sort();
    // Backups begun in the same second have ids in random order: problems are listed oldest backup first by its header's time.
    const created = new Map<string, number>();
    for (const id of ids) {
      throwIfAborted(signal);
      report.backups++;
      let header: BackupSummary;
      let entries: AsyncIterable<ManifestEntry>;
      // A backup deleted while verify runs is not a problem: it is skipped.
      const gone = async () => !(await this.backend.stat(`backups/${id}`, { signal }));
      try {
        ({ header, entries } = await this.readManifest(id, { signal }));
        created.set(id, header.createdMs);
      } catch (e) {
        if (!(e instanceof RepoError) || e.reason === 'backend' || e.reason === 'config') throw e;
        if (e.reason === 'not-found' && (await gone())) {
          report.backups--;
          continue;
        }
        problem({ backup: id, index: -1, offset: -1, id: '', reason: e.reason === 'not-found' ? 'missing' : 'corrupt' });
        continue;
      }
      const inflight = new Set<Promise<void>>();
      try {
        for await (const e of entries) {
          report.chunks++;
          const at = { backup: id, index: e.index, offset: e.index * header.chunkSize, id: e.id };
          if (present) {
            if (!present.has(e.id)) problem({ ...at, reason: 'missing' });
          } else {
            // The length restore needs: the chunk size, less at the device's end. An intact chunk of another
            // length (a manifest naming the wrong chunk) is this backup's damage, not the chunk's.
            const len = Math.min(header.chunkSize, header.deviceSize - e.index * header.chunkSize);
            const p: Promise<void> = checkData(e.id).then((r) => {
              inflight.delete(p);
              if (typeof r !== 'number') problem({ ...at, reason: r });
              else if (r !== len) problem({ ...at, reason: 'corrupt' });
            });
            inflight.add(p);
            if (inflight.size >= 8) await Promise.race(inflight);
          }
          if (report.chunks % 4096 === 0) progress();
        }
      } catch (e) {
        if (!(e instanceof RepoError) || e.reason === 'backend' || e.reason === 'config') throw e;
        if (!(e.reason === 'not-found' && (await gone()))) problem({ backup: id, index: -1, offset: -1, id: '', reason: e.reason === 'not-found' ? 'missing' : 'corrupt' });
      } finally {
        await Promise.all(inflight);
      }
    }
    progress();
    const when = (id: string): number => created.get(id) ?? Infinity;
    report.problems.sort((a, b) => when(a.backup) - when(b.backup) || (a.backup < b.backup ? -1 : a.backup > b.backup ? 1 : a.index - b.index));
    return report;
  }

  /**
   * Deletes chunks that are present but damaged (verify({data: true})'s
   * damagedChunks), so that the next backup of data that hashes to them
   * stores them again: a backup stores a chunk only when it is absent, and
   * trusted a damaged one, so no backup could heal it, and every new backup
   * of that data named it and could not be restored. Chunks are stored by
   * content: once stored again, every backup naming them reads whole. Each
   * is read again first and deleted only if it is damaged again (a fault of
   * the first read, e.g. in transit, deletes nothing). Under the exclusive
   * lock, as collectGarbage: refused with 'locked' while a backup runs.
   */
  async removeDamagedChunks(ids: readonly string[], opts: RepoCallOptions = {}): Promise<RemovedChunks> {
    this.live();
    for (const id of ids) if (typeof id !== 'string' || !isChunkId(id)) throw new RepoError('config', `${String(id)} is not a chunk id (64 hex digits); nothing was deleted`);
    const done: RemovedChunks = { removed: [], sound: [], absent: [] };
    const lock = await this.locks.acquire('exclusive', 'remove damaged chunks', undefined, opts.signal, { freesSpace: true });
    try {
      for (const id of new Set(ids)) {
        throwIfAborted(opts.signal);
        try {
          await this.getChunk(id, opts);
          done.sound.push(id);
          continue;
        } catch (e) {
          if (!(e instanceof RepoError)) throw e;
          if (e.reason === 'not-found') {
            done.absent.push(id);
            continue;
          }
          if (e.reason !== 'corrupt') throw e;
        }
        lock.check();
        // The marker first: a crash between the two leaves a marker of the damaged chunk still there, which the next backup writes over (Session.putChunk).
        await this.backend.put(removedKey(id), new Uint8Array(0), { ...opts, freesSpace: true });
        await this.backend.delete([chunkKey(id)], opts);
        done.removed.push(id);
      }
    } finally {
      await lock.release();
    }
    return done;
  }

  /** The chunks removeDamagedChunks deleted that no backup has stored again since (their markers; one listing). */
  async removedChunks(opts: RepoCallOptions = {}): Promise<Set<string>> {
    this.live();
    const out = new Set<string>();
    for await (const o of this.backend.list('removed/', { signal: opts.signal })) {
      const id = o.key.slice('removed/'.length);
      if (isChunkId(id)) out.add(id);
    }
    return out;
  }

  /** Whether backup `id`'s manifest names any of `chunks` (read whole: for the rare repository with removed chunks). */
  async namesAnyChunk(id: string, chunks: ReadonlySet<string>, opts: RepoCallOptions = {}): Promise<boolean> {
    if (chunks.size === 0) return false;
    const { entries } = await this.readManifest(id, opts);
    for await (const e of entries) if (chunks.has(e.id)) return true;
    return false;
  }

  /** Removes the markers of those of `chunks` that are stored again (a backup stored them): their backups read whole again. */
  async clearRemovedMarkers(chunks: Iterable<string>, opts: RepoCallOptions = {}): Promise<string[]> {
    this.live();
    const cleared: string[] = [];
    for (const id of chunks) {
      throwIfAborted(opts.signal);
      if (!isChunkId(id) || !(await this.backend.stat(chunkKey(id), opts))) continue;
      await this.backend.delete([removedKey(id)], opts);
      cleared.push(id);
    }
    return cleared;
  }

  /** Deletes backups' manifests (header first, then map); chunks stay until collectGarbage. Unknown ids: 'not-found', nothing deleted. */
  async deleteBackups(ids: readonly string[], opts: { exclusive?: boolean } & RepoCallOptions = {}): Promise<void> {
    this.live();
    // A single id given as a string was iterated character by character ("backup 2 is not in the repository").
    if (!Array.isArray(ids)) throw new UsageError(`deleteBackups needs an array of backup ids, got ${describeValue(ids)}`);
    for (const id of ids) {
      if (!isBackupId(id) || !(await this.backend.stat(`backups/${id}`, opts)))
        throw new RepoError('not-found', `backup ${id} is not in the repository at ${this.location}; nothing was deleted`, { key: `backups/${id}` });
    }
    // Shared: excludes a concurrent collection, whose mark phase must see a stable set of manifests.
    // Exclusive (the CLI's `backups delete`): also waits for no backup to be running, as prune does.
    const lock = await this.locks.acquire(opts.exclusive ? 'exclusive' : 'shared', 'delete backups', undefined, opts.signal, { freesSpace: true });
    try {
      for (const id of ids) {
        throwIfAborted(opts.signal);
        await this.backend.delete([`backups/${id}`], opts);
        await this.backend.delete([`maps/${id}`], opts);
      }
    } finally {
      await lock.release();
    }
  }

  /**
   * Deletes every chunk that no committed manifest and no journal names,
   * under the exclusive lock (refused with 'locked' while a backup runs).
   * With `deleteBackups`, those backups' manifests are deleted first, under
   * the same lock, but only once every other manifest has been read: a
   * manifest that cannot be read stops it with 'corrupt' (or 'not-found',
   * 'format') before any deletion, so no good backup is deleted because
   * another one is damaged.
   */
  async collectGarbage(opts: { deleteBackups?: readonly string[]; onWarning?: (message: string) => void; onBackupDeleted?: (id: string) => void } & RepoCallOptions = {}): Promise<GarbageReport> {
    this.live();
    const signal = opts.signal;
    const doomed = new Set(opts.deleteBackups ?? []);
    const lock = await this.locks.acquire('exclusive', 'gc', undefined, signal, { freesSpace: true });
    let deletedBackups = 0;
    try {
      const keep = new Set<string>();
      const headers = new Set<string>();
      // Earlier deletes of headers durable first: one whose directory fsync failed
      // (`backups delete` exit 1) could come back after a crash, naming chunks swept below.
      await this.backend.syncPrefix?.('backups/', { signal });
      // Mark: every committed manifest that stays.
      for await (const id of this.backupIds(signal)) {
        if (doomed.has(id)) continue;
        headers.add(id);
        let entries: AsyncIterable<ManifestEntry>;
        try {
          ({ entries } = await this.readManifest(id, { signal }));
          for await (const e of entries) keep.add(e.id);
        } catch (e) {
          if (e instanceof RepoError && (e.reason === 'corrupt' || e.reason === 'not-found' || e.reason === 'format'))
            throw new RepoError(
              e.reason,
              `garbage collection stopped before deleting anything: backup ${id} cannot be read (${e.message}); nothing was deleted. ` +
                `Delete that backup (dmthin backups delete --repo ${this.location} --backup ${id}) or restore it from a copy, then run again`,
              { key: e.key, backup: id, cause: e },
            );
          throw e;
        }
        lock.check();
      }
      // The backups to delete: header first (gone from listings at once), then map.
      for (const id of doomed) {
        throwIfAborted(signal);
        if (!isBackupId(id)) continue;
        lock.check();
        await this.backend.delete([`backups/${id}`], { signal });
        // Gone from listings with its header: said so now, also if the map's delete then fails.
        deletedBackups++;
        opts.onBackupDeleted?.(id);
        await this.backend.delete([`maps/${id}`], { signal });
      }
      // Mark: journals. Under the exclusive lock no session is live; a dead one's journal still protects its chunks (for its resume) until it expires.
      const liveSessions = new Set((await this.locks.scan(signal)).filter((l: FoundLock) => !this.locks.isStale(l) && l.info?.session).map((l) => l.info!.session!));
      const sessions = new Map<string, { keys: string[]; newest: number }>();
      for await (const o of this.backend.list('journals/', { signal })) {
        const session = o.key.split('/').slice(0, 3).join('/');
        const s = sessions.get(session) ?? { keys: [], newest: 0 };
        s.keys.push(o.key);
        s.newest = Math.max(s.newest, o.mtimeMs);
        sessions.set(session, s);
      }
      const expired: string[] = [];
      const now = Date.now();
      for (const [session, s] of sessions) {
        if (!liveSessions.has(session.split('/')[2]!) && now - s.newest > JOURNAL_MAX_AGE_MS) {
          expired.push(...s.keys);
          continue;
        }
        // A damaged segment protects nothing: only an interrupted session's resume needs it (committed backups' maps name all their chunks).
        const damaged = (why: string) =>
          opts.onWarning?.(`a journal segment of an interrupted backup cannot be read (${why}); the chunks it names are not kept for its resume: the next backup of that volume uploads them again`);
        for (const k of s.keys) for (const x of (await this.readJournal(k, signal, damaged)) ?? []) keep.add(x);
      }
      // Journals go before the chunks they name, so no journal outlives its chunks.
      for (let i = 0; i < expired.length; i += DELETE_BATCH) await this.backend.delete(expired.slice(i, i + DELETE_BATCH), { signal });
      // Maps without a header: commits that crashed between the two writes.
      const orphans: string[] = [];
      for await (const o of this.backend.list('maps/', { signal })) if (!headers.has(o.key.slice('maps/'.length))) orphans.push(o.key);
      lock.check();
      if (orphans.length) await this.backend.delete(orphans, { signal });
      // Sweep.
      let deletedChunks = 0;
      let freedBytes = 0;
      let batch: string[] = [];
      const flush = async () => {
        lock.check();
        await this.backend.delete(batch, { signal });
        batch = [];
      };
      for await (const o of this.backend.list('chunks/', { signal })) {
        const id = o.key.slice(o.key.lastIndexOf('/') + 1);
        if (!isChunkId(id) || o.key !== chunkKey(id) || keep.has(id)) continue;
        batch.push(o.key);
        deletedChunks++;
        freedBytes += o.size;
        if (batch.length >= DELETE_BATCH) await flush();
      }
      if (batch.length) await flush();
      // Markers of removed chunks no backup names any more: nothing is left to heal.
      const staleMarkers: string[] = [];
      for await (const o of this.backend.list('removed/', { signal })) {
        const id = o.key.slice('removed/'.length);
        if (!keep.has(id)) staleMarkers.push(o.key);
      }
      if (staleMarkers.length) await this.backend.delete(staleMarkers, { signal });
      // A killed writer's temporary files (local directories): no backup runs
      // under this lock, so every one is dead, except in locks/, which other
      // processes write to take or test a lock.
      lock.check();
      const deletedTemporary = (await this.backend.sweepTemporary?.(0, { except: ['locks'] })) ?? 0;
      // Room was just made: the reserve a prune on a full filesystem used (or one the repository never had) is written again.
      await this.backend.keepReserve?.();
      return { deletedChunks, freedBytes, deletedTemporary };
    } catch (e) {
      // Manifests deleted already stay deleted: say so, their chunks wait for the next collection.
      if (deletedBackups > 0 && e instanceof Error && !isAbort(e))
        e.message += `; ${deletedBackups} backup${deletedBackups === 1 ? ' was' : 's were'} deleted already, their chunks are collected by the next prune`;
      throw e;
    } finally {
      await lock.release();
    }
  }

  /**
   * Closes the backend if the repository opened it. Calls after it, the
   * repository's and its open sessions', fail with RepoError code EBADF;
   * disposing a session still releases its lock (best effort).
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.ownsBackend) await this.backend.close();
  }

  /** Same as close(). */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

class Session implements BackupSession {
  private known: Set<string>;
  private pending: string[] = [];
  private lastFlush = Date.now();
  private seq = 0;
  private journalKeys: string[] = [];
  private flushing: Promise<void> = Promise.resolve();
  private stats = { newChunks: 0, storedBytes: 0 };
  private done = false;
  /** Manifest reads before the session's lock was taken: their entries are not vouched for. */
  private readonly readsAtStart = manifestReads;

  constructor(
    private readonly repo: Repository,
    private readonly backend: Backend,
    private readonly keys: RepoKeys | null,
    private readonly comp: Compression,
    readonly id: string,
    private readonly volume: string,
    private readonly volumeTag: string,
    private readonly lock: HeldLock,
    readonly resumedIds: ReadonlySet<string>,
    private readonly adopted: readonly string[],
    readonly markedIds: ReadonlySet<string> = new Set(),
  ) {
    this.known = new Set(resumedIds);
  }

  readonly restoredMarked = new Set<string>();

  private open(): void {
    if (this.done) throw new RepoError('config', `backup session ${this.id} is already committed or closed`, { code: 'EBADF' });
    // Its backend may be gone (an S3 client destroyed): a session does not outlive its repository.
    if (this.repo.isClosed) throw this.repo.closedError(`backup session ${this.id}: its repository`, 'open it again and begin a new backup session (this one cannot go on)');
  }

  async putChunk(plain: Uint8Array, opts: PutChunkOptions = {}): Promise<PutResult> {
    this.open();
    throwIfAborted(opts.signal);
    if (!(plain instanceof Uint8Array)) throw new RepoError('config', `putChunk takes a chunk as a Buffer or Uint8Array, got ${plain === null ? 'null' : typeof plain === 'object' ? (plain as object).constructor?.name ?? 'an object' : typeof plain}`);
    if (plain.length > MAX_CHUNK)
      throw new RepoError('config', `a chunk of ${plain.length} bytes is larger than the ${MAX_CHUNK / 2 ** 20} MiB a chunk may have`);
    const id = opts.id ?? this.repo.chunkId(plain);
    if (this.known.has(id)) return { id, stored: false, storedBytes: 0 };
    const key = chunkKey(id);
    let stored = false;
    let storedBytes = 0;
    if (this.markedIds.has(id)) {
      // Removed by a repair (or its copy damaged, the repair killed before deleting it): written
      // over whatever is there, so that this backup names a sound chunk.
      const body = await sealAsync(plain, key, this.keys, this.comp);
      stored = await this.backend.put(key, body, { signal: opts.signal });
      storedBytes = body.length;
      this.restoredMarked.add(id);
    } else if (!(await this.backend.stat(key, opts))) {
      const body = await sealAsync(plain, key, this.keys, this.comp);
      stored = await this.backend.put(key, body, { ifAbsent: true, checkedAbsent: true, signal: opts.signal });
      if (stored) storedBytes = body.length;
    }
    // ifAbsent lets exactly one of several concurrent puts of an id store it: count that one.
    if (stored) {
      this.stats.newChunks++;
      this.stats.storedBytes += storedBytes;
    }
    if (!this.known.has(id)) {
      this.known.add(id);
      this.pending.push(id);
    }
    if (this.pending.length >= JOURNAL_BATCH || Date.now() - this.lastFlush >= JOURNAL_INTERVAL_MS) await this.flushJournal(opts.signal);
    return { id, stored, storedBytes };
  }

  /** Writes the pending ids as the next journal segment (serialised: segments never race). */
  private flushJournal(signal?: AbortSignal): Promise<void> {
    const run = async () => {
      if (!this.pending.length) return;
      const ids = this.pending;
      this.pending = [];
      this.lastFlush = Date.now();
      const key = `journals/${this.volumeTag}/${this.id}/${String(this.seq++).padStart(8, '0')}`;
      const plain = Buffer.allocUnsafe(ids.length * 32);
      ids.forEach((x, i) => plain.write(x, i * 32, 'hex'));
      await this.backend.put(key, seal(plain, key, this.keys, { algorithm: 'none', level: 0 }), { signal });
      this.journalKeys.push(key);
    };
    this.flushing = this.flushing.then(run, run);
    return this.flushing;
  }

  async commit(header: ManifestHeader, entries: AsyncIterable<ManifestEntry> | Iterable<ManifestEntry>, opts: RepoCallOptions = {}): Promise<BackupSummary> {
    this.open();
    checkHeader(header);
    if (header.volume !== this.volume) throw new RepoError('config', `this session backs up volume ${this.volume}, not ${header.volume}`);
    if (header.base === this.id) throw new RepoError('config', 'a backup cannot be its own base');
    const signal = opts.signal;
    await this.flushJournal(signal);
    const digest: MapDigest = { entries: 0, frames: 0, bytes: 0, sha256: '' };
    await this.backend.put(`maps/${this.id}`, encodeMap(this.id, header, entries, this.keys, digest, signal, this.storedChunks(signal)), { signal });
    // The commit point: only with the lock surely held, so no collection can have run meanwhile.
    await this.lock.refresh();
    this.lock.check();
    throwIfAborted(signal);
    const stored: StoredHeader = {
      version: 1,
      id: this.id,
      volume: header.volume,
      deviceSize: header.deviceSize,
      chunkSize: header.chunkSize,
      createdMs: header.createdMs,
      committedMs: Date.now(),
      source: header.source,
      base: header.base,
      chunks: digest.entries,
      storedBytes: this.stats.storedBytes,
      newChunks: this.stats.newChunks,
      map: digest,
    };
    const key = `backups/${this.id}`;
    const sealed = seal(Buffer.from(JSON.stringify(stored)), key, this.keys, this.comp);
    // Readers refuse a larger header as damaged: never commit one.
    if (sealed.length > MAX_SMALL_OBJECT) throw new RepoError('config', `the header of backup ${this.id} would be ${sealed.length} bytes, more than ${MAX_SMALL_OBJECT}: its source is too large`, { key });
    if (!(await this.backend.put(key, sealed, { ifAbsent: true, signal })))
      throw new RepoError('exists', `backup ${this.id} already exists`, { key });
    this.done = true;
    // After the commit its manifest protects what matters; the journals only cost space. The
    // backup is committed whatever happens now: a journal left behind is adopted and deleted by
    // the volume's next commit (or GC), and a lock left behind goes stale.
    const journals = [...this.journalKeys, ...this.adopted];
    try {
      for (let i = 0; i < journals.length; i += DELETE_BATCH) await this.backend.delete(journals.slice(i, i + DELETE_BATCH));
    } catch {
      // (see above)
    }
    await this.lock.release().catch(() => undefined);
    const { map: _m, version: _v, ...rest } = stored;
    return rest;
  }

  /**
   * Admits an entry to the map once it names a chunk the repository holds:
   * one this session put or resumed, one read from a manifest of this
   * repository since the session began (what backup() copies from its base),
   * or else one a stat finds (a few at a time). A manifest naming a chunk
   * never stored would commit a backup that no restore can read. The
   * session's lock keeps all of them until the commit: no collection or
   * delete runs meanwhile.
   */
  private storedChunks(signal?: AbortSignal): EntryCheck {
    // Look-ups in flight, at most STAT_CONCURRENCY. A slot is taken without
    // a promise when one is free: the encoder awaits only when it must wait.
    const slots = new Semaphore(STAT_CONCURRENCY);
    let failure: { error: unknown } | null = null;
    // The first entry (by index) found to name an absent chunk.
    let missing: ManifestEntry | null = null;
    // Chunks found by a look-up, not looked up again (one named at many indexes, e.g. zeros of
    // another size). Bounded: emptied when full, so a commit of many distinct entries holds no
    // set of them all (the session's own `known` is for chunks it put).
    const found = new Set<string>();
    const check = (): void => {
      if (failure) throw failure.error;
      if (missing)
        throw new RepoError('not-found', `manifest entry ${missing.index} names chunk ${missing.id}, which the repository does not hold: store each chunk with putChunk() before commit() names it`, {
          key: chunkKey(missing.id),
        });
    };
    const start = (e: ManifestEntry, release: Release): void => {
      this.backend.stat(chunkKey(e.id), { signal }).then(
        (info) => {
          if (info) {
            if (found.size >= FOUND_CACHE) found.clear();
            found.add(e.id);
          } else if (!missing || e.index < missing.index) missing = e;
          release();
        },
        (error: unknown) => {
          failure ??= { error };
          release();
        },
      );
    };
    const lookUp = async (e: ManifestEntry): Promise<void> => {
      const release = await slots.take(signal);
      if (found.has(e.id)) return release(); // found meanwhile
      try {
        check();
      } catch (err) {
        release();
        throw err;
      }
      start(e, release);
    };
    return {
      admit: (e) => {
        check();
        if (this.known.has(e.id) || found.has(e.id) || this.readHere(e)) return;
        const release = slots.tryTake();
        if (!release) return lookUp(e);
        start(e, release);
      },
      end: async () => {
        await slots.idle();
        check();
      },
    };
  }

  /** True for an entry readManifest made from this repository after the session began. */
  private readHere(e: ManifestEntry): boolean {
    const mark = (e as Partial<Record<typeof READ_MARK, ReadMark>>)[READ_MARK];
    return mark !== undefined && mark.repo === this.repo && mark.read > this.readsAtStart;
  }

  /** Without a commit: writes the journal (so the next session resumes) and releases the lock. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.done) return;
    this.done = true;
    try {
      await this.flushJournal();
    } finally {
      await this.lock.release();
    }
  }
}
