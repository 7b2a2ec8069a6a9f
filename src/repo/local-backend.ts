/**
 * The Backend contract (backend.ts) on a local directory. An object is a
 * file at `ROOT/KEY`. A put writes a temporary file beside the target (its
 * name holds `~`, which no key may, so listings skip it), fsyncs it, then
 * renames it over the target (or, for `ifAbsent`, hard-links it, which fails
 * with EEXIST rather than replace) and fsyncs the directory: a reader, also
 * after a crash at any point, sees the old object, the new one, or none,
 * never a prefix. A crash can leave a temporary file behind; it is never
 * listed and `sweepTemporary()` removes old ones.
 */
import { randomBytes } from 'node:crypto';
import { constants as fsc, statSync } from 'node:fs';
import { link, lstat, mkdir, open, opendir, rename, rmdir, stat, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, join, resolve, sep } from 'node:path';
import { AbortError, errnoOf, RepoError, throwIfAborted } from '../errors';
import { MAX_GET_BYTES, type Backend, type BackendCallOptions, type GetOptions, type ObjectInfo, type PutOptions } from './backend';
import { putFileDurableFunction } from '../native/binding';

const KEY_RE = /^[A-Za-z0-9._-]+(?:\/[A-Za-z0-9._-]+)*$/;
const TEMP_MARK = '~tmp~';
/**
 * The space reserve at the root: its `~` keeps it out of listings (no key
 * has one) and it is not TEMP_MARK, so sweeps leave it. Enough for the
 * lock objects a prune writes (one block each, and their refreshes).
 */
const RESERVE = 'reserve~space';
/** @internal exported for tests */
export const RESERVE_BYTES = 1 << 20;
const READ_PIECE = 1 << 20;

/** Throws RepoError 'config' unless `key` is a key the Backend contract allows. */
export function checkKey(key: string): void {
  const ok = typeof key === 'string' && key.length <= 512 && KEY_RE.test(key) && !key.split('/').some((s) => s === '.' || s === '..');
  if (!ok) throw new RepoError('config', `invalid object key ${JSON.stringify(key)}: keys are [A-Za-z0-9._/-], no "." or ".." segment, at most 512 bytes`, { key });
}

/** Checks a listing prefix: a key, a key ending in "/", or "". */
function checkPrefix(prefix: string): void {
  if (prefix === '') return;
  checkKey(prefix.endsWith('/') ? prefix.slice(0, -1) : prefix);
}

/**
 * A store failure (reason 'backend') that keeps the system's code (ENOSPC,
 * ENOTDIR, EACCES...; EIO when there is none) and says what to do about it.
 * @internal exported for tests
 */
export function backendError(op: string, key: string, path: string, e: unknown, root?: string): RepoError {
  const err = e as NodeJS.ErrnoException;
  const code = typeof err.code === 'string' && errnoOf(err.code) !== undefined ? err.code : 'EIO';
  const what = `local repository: ${op} of ${key} failed (${err.code ?? err.message})`;
  let advice: string;
  switch (code) {
    case 'ENOSPC':
      advice = `the filesystem holding ${root ?? dirname(path)} is full: free space on it, then run again`;
      break;
    case 'EDQUOT':
      advice = `the disk quota on ${root ?? dirname(path)} is used up: free space or raise the quota, then run again`;
      break;
    case 'ENOTDIR':
    case 'EEXIST':
      advice = `${fileInTheWay(path) ?? 'a path on the way'} is not a directory; the repository must be a directory (or a path where one can be made), with only dmthin's folders in it`;
      break;
    case 'EACCES':
    case 'EPERM':
      advice = `no permission: check the owner and mode of ${dirname(path)} and the files in it`;
      break;
    case 'EROFS':
      advice = `${root ?? dirname(path)} is on a read-only filesystem`;
      break;
    case 'ELOOP':
      advice = `a symbolic link on the way to ${path} loops`;
      break;
    default:
      advice = `check the directory ${dirname(path)} is writable and its disk healthy`;
  }
  return new RepoError('backend', `${what}: ${advice}`, { code, key, path, syscall: err.syscall, cause: e });
}

/** The first path from / down to `path`'s directory that exists and is not a directory (for ENOTDIR). */
function fileInTheWay(path: string): string | undefined {
  let p: string = sep;
  for (const part of dirname(resolve(path)).split(sep).filter(Boolean)) {
    p = join(p, part);
    try {
      if (!statSync(p).isDirectory()) return p;
    } catch {
      return undefined;
    }
  }
  return undefined;
}

/** An object that cannot be what was stored there: RepoError 'corrupt' (EBADMSG) naming it. */
function damaged(key: string, path: string, why: string, cause?: unknown): RepoError {
  return new RepoError('corrupt', `${key} in the local repository ${why}; the object is damaged or was replaced`, { key, path, cause });
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

type PutFileDurable = NonNullable<ReturnType<typeof putFileDurableFunction>>;

/** An error thrown by a put's body stream, carried past the disk-error wrapping. */
class FromBody {
  constructor(readonly error: unknown) {}
}

/** A repository on a directory of the local filesystem. */
export class LocalBackend implements Backend {
  /** The directory (absolute). */
  readonly location: string;
  private readonly root: string;
  /** Directories this backend made or found (a put need not stat them again). */
  private readonly dirs = new Set<string>();
  /** Temporary names: a random tag per backend and a counter (O_EXCL catches the unthinkable clash). */
  private readonly tmpTag = randomBytes(6).toString('hex');
  private tmpSeq = 0;

  /** Uses directory `dir` (created on the first put if absent). */
  constructor(dir: string) {
    this.root = resolve(dir);
    this.location = this.root;
  }

  private pathOf(key: string): string {
    checkKey(key);
    return join(this.root, ...key.split('/'));
  }

  /** Creates `dir` and missing parents up to the root, fsyncing each parent that gained an entry. */
  private async ensureDir(dir: string): Promise<void> {
    if (this.dirs.has(dir)) return;
    await this.makeDir(dir);
    this.dirs.add(dir);
  }

  private async makeDir(dir: string): Promise<void> {
    try {
      const s = await stat(dir);
      if (s.isDirectory()) return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    if (dir !== this.root) await this.makeDir(dirname(dir));
    else await mkdir(dirname(dir), { recursive: true });
    try {
      await mkdir(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      return;
    }
    // The new directory's entry must itself be durable before objects in it are.
    await fsyncDir(dirname(dir));
  }

  /**
   * Stores an object atomically and durably (see the file comment). With
   * `freesSpace`, a put of a body in memory that finds the filesystem full
   * gives up the space reserve and is tried once more.
   */
  async put(key: string, body: Uint8Array | AsyncIterable<Uint8Array>, opts: PutOptions = {}): Promise<boolean> {
    let written: boolean;
    try {
      written = await this.putOnce(key, body, opts);
    } catch (e) {
      const full = e instanceof RepoError && (e.code === 'ENOSPC' || e.code === 'EDQUOT');
      if (!full || !opts.freesSpace || !(body instanceof Uint8Array) || !(await this.giveUpReserve())) throw e;
      written = await this.putOnce(key, body, opts);
    }
    // ifAbsent found something at a chunk's key: the chunk, or damage no
    // listing, stat or get takes for one (a symbolic link, a directory, a
    // FIFO), which a create-only put left there for good, so that the chunk
    // stayed unreadable through every later backup that stored it. Damage is
    // replaced (an empty directory removed first). Only chunks (content-
    // addressed: what belongs there is known): any other create-only put,
    // the config's or a lock's, keeps refusing whatever is at its key.
    if (!written && opts.ifAbsent && key.startsWith('chunks/') && body instanceof Uint8Array && (await this.notAnObject(key))) return this.putOnce(key, body, { ...opts, ifAbsent: false });
    return written;
  }

  /** Whether the key holds something that is not a regular file (a non-empty directory: RepoError 'corrupt'). */
  private async notAnObject(key: string): Promise<boolean> {
    const path = this.pathOf(key);
    let st;
    try {
      st = await lstat(path);
    } catch {
      return false; // gone meanwhile: the put's answer stands
    }
    if (st.isFile()) return false;
    if (st.isDirectory()) {
      try {
        await rmdir(path);
      } catch (e) {
        throw damaged(key, path, `is a directory, not a regular file (${(e as NodeJS.ErrnoException).code ?? 'not removable'}); remove it`, e);
      }
    }
    return true;
  }

  /**
   * Writes the space reserve when it is missing (a new repository, one made
   * before reserves, or after a prune used it): random bytes, which a
   * compressing filesystem cannot store in less. Without room, none.
   */
  async keepReserve(): Promise<void> {
    const path = join(this.root, RESERVE);
    try {
      if ((await lstat(path)).size === RESERVE_BYTES) return;
    } catch {
      // missing (or unreadable): made below
    }
    // Written as any object is (temporary file, fsync, rename, directory fsync); the put removes its temporary file on failure.
    await this.putOnce(RESERVE, randomBytes(RESERVE_BYTES), {}, path).catch(() => undefined); // no room: the repository works without one, as before
  }

  /** Deletes the space reserve: true when there was one. */
  private async giveUpReserve(): Promise<boolean> {
    try {
      await unlink(join(this.root, RESERVE));
    } catch {
      return false;
    }
    await fsyncDir(this.root).catch(() => undefined);
    return true;
  }

  /** One put of `key` (at `path`: the reserve's, which is no key, is given). */
  private async putOnce(key: string, body: Uint8Array | AsyncIterable<Uint8Array>, opts: PutOptions, path = this.pathOf(key)): Promise<boolean> {
    throwIfAborted(opts.signal);
    const dir = dirname(path);
    const tmp = `${path}${TEMP_MARK}${this.tmpTag}${(this.tmpSeq++).toString(36)}`;
    const durable = body instanceof Uint8Array ? putFileDurableFunction() : null;
    if (durable) return this.putWhole(key, path, dir, tmp, body as Uint8Array, opts, durable);
    let fh: FileHandle | undefined;
    let tmpExists = false;
    try {
      await this.ensureDir(dir);
      fh = await open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
      tmpExists = true;
      if (body instanceof Uint8Array) {
        await fh.writeFile(body);
      } else {
        const it = body[Symbol.asyncIterator]();
        for (;;) {
          let r: IteratorResult<Uint8Array>;
          try {
            r = await it.next();
          } catch (e) {
            throw new FromBody(e);
          }
          if (r.done) break;
          throwIfAborted(opts.signal);
          await fh.writeFile(r.value);
        }
      }
      await fh.sync();
      await fh.close();
      fh = undefined;
      throwIfAborted(opts.signal);
      let written = true;
      if (opts.ifAbsent) {
        try {
          await link(tmp, path);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
          written = false;
        }
        await unlink(tmp);
        tmpExists = false;
      } else {
        await rename(tmp, path);
        tmpExists = false;
      }
      if (written) await fsyncDir(dir);
      return written;
    } catch (e) {
      // The caller's body failed (say a source refusing its input): its own error, not a disk fault.
      if (e instanceof FromBody) throw e.error;
      if (e instanceof RepoError || (e as Error).name === 'AbortError') throw e;
      throw backendError('put', key, path, e, this.root);
    } finally {
      if (fh) await fh.close().catch(() => undefined);
      if (tmpExists) await unlink(tmp).catch(() => undefined);
    }
  }

  /**
   * put() of a body in memory: the same sequence as one task of the native
   * addon (native/file_put.cc), not eleven thread-pool hops of Node's fs.
   */
  private async putWhole(key: string, path: string, dir: string, tmp: string, body: Uint8Array, opts: PutOptions, durable: PutFileDurable): Promise<boolean> {
    try {
      await this.ensureDir(dir);
      throwIfAborted(opts.signal);
      try {
        return await durable(tmp, path, dir, body, opts.ifAbsent === true);
      } catch (e) {
        // A directory removed behind this backend's back: make it again, once.
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || !this.dirs.delete(dir)) throw e;
        await this.ensureDir(dir);
        return await durable(tmp, path, dir, body, opts.ifAbsent === true);
      }
    } catch (e) {
      if (e instanceof RepoError || (e as Error).name === 'AbortError') throw e;
      throw backendError('put', key, path, e, this.root);
    }
  }

  /**
   * Opens an object for reading: never following a symbolic link (objects
   * are regular files: the listing never shows anything else) and never
   * blocking (a FIFO in its place would hang the open), then refuses what
   * is not a regular file or is larger than `maxBytes`, before reading any.
   */
  private async openObject(key: string, path: string, opts: GetOptions): Promise<{ fh: FileHandle; size: number }> {
    throwIfAborted(opts.signal);
    let fh: FileHandle;
    try {
      fh = await open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
    } catch (e) {
      throw this.readError(key, path, e, opts.signal);
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) {
        const what = st.isFIFO() ? 'a FIFO' : st.isCharacterDevice() || st.isBlockDevice() ? 'a device' : st.isSocket() ? 'a socket' : st.isDirectory() ? 'a directory' : 'not a file';
        throw damaged(key, path, `is ${what}, not a regular file`);
      }
      if (opts.maxBytes !== undefined && st.size > opts.maxBytes) throw damaged(key, path, `is ${st.size} bytes, more than the ${opts.maxBytes} such an object can have`);
      return { fh, size: st.size };
    } catch (e) {
      await fh.close().catch(() => undefined);
      if (e instanceof RepoError) throw e;
      throw this.readError(key, path, e, opts.signal);
    }
  }

  /** The whole object (at most maxBytes, default MAX_GET_BYTES). */
  async get(key: string, opts: GetOptions = {}): Promise<Buffer> {
    const path = this.pathOf(key);
    const { fh, size } = await this.openObject(key, path, { ...opts, maxBytes: opts.maxBytes ?? MAX_GET_BYTES });
    try {
      const buf = Buffer.allocUnsafe(size);
      let off = 0;
      // An object is never rewritten in place (puts rename a new file over it): its size holds.
      while (off < size) {
        throwIfAborted(opts.signal);
        const { bytesRead } = await fh.read(buf, off, Math.min(size - off, 1 << 30), off);
        if (bytesRead === 0) break;
        off += bytesRead;
      }
      return off === size ? buf : buf.subarray(0, off);
    } catch (e) {
      if (e instanceof RepoError || (e as Error).name === 'AbortError') throw e;
      throw this.readError(key, path, e, opts.signal);
    } finally {
      await fh.close().catch(() => undefined);
    }
  }

  private readError(key: string, path: string, e: unknown, signal?: AbortSignal): unknown {
    const code = (e as NodeJS.ErrnoException).code;
    if (signal?.aborted) return new AbortError(undefined, { cause: signal.reason });
    if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR') return new RepoError('not-found', `${key} is not in the repository at ${this.root}`, { key, path });
    // O_NOFOLLOW met a symbolic link: no object is one.
    if (code === 'ELOOP') return damaged(key, path, 'is a symbolic link, not a regular file', e);
    if (code === 'EFBIG' || code === 'ERR_FS_FILE_TOO_LARGE') return damaged(key, path, 'is larger than any object can be', e);
    return backendError('read', key, path, e, this.root);
  }

  /** The object in pieces of at most 1 MiB. */
  async *getStream(key: string, opts: GetOptions = {}): AsyncIterable<Buffer> {
    const path = this.pathOf(key);
    const { fh } = await this.openObject(key, path, opts);
    try {
      for (;;) {
        throwIfAborted(opts.signal);
        const buf = Buffer.allocUnsafe(READ_PIECE);
        let n: number;
        try {
          ({ bytesRead: n } = await fh.read(buf, 0, READ_PIECE, null));
        } catch (e) {
          throw this.readError(key, path, e, opts.signal);
        }
        if (n === 0) return;
        yield n === READ_PIECE ? buf : buf.subarray(0, n);
      }
    } finally {
      await fh.close();
    }
  }

  /**
   * Size and time, or null when absent. Only a regular file is an object:
   * not a directory, nor a symbolic link (get() never follows one, so a
   * chunk found through one was named by backups and could not be read).
   */
  async stat(key: string, opts: BackendCallOptions = {}): Promise<ObjectInfo | null> {
    const path = this.pathOf(key);
    throwIfAborted(opts.signal);
    try {
      const s = await lstat(path);
      return s.isFile() ? { key, size: s.size, mtimeMs: s.mtimeMs } : null;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return null;
      throw backendError('stat', key, path, e, this.root);
    }
  }

  /** Walks the directories under the prefix, one directory handle at a time (memory bounded). */
  async *list(prefix: string, opts: BackendCallOptions = {}): AsyncIterable<ObjectInfo> {
    checkPrefix(prefix);
    const cut = prefix.lastIndexOf('/');
    const base = cut < 0 ? '' : prefix.slice(0, cut);
    yield* this.walk(base, prefix, opts.signal);
  }

  private async *walk(relDir: string, prefix: string, signal?: AbortSignal): AsyncIterable<ObjectInfo> {
    const dirPath = relDir ? join(this.root, ...relDir.split('/')) : this.root;
    let dir;
    try {
      dir = await opendir(dirPath, { bufferSize: 256 });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return;
      throw backendError('list', relDir || '.', dirPath, e, this.root);
    }
    try {
      for await (const ent of dir) {
        throwIfAborted(signal);
        if (ent.name.includes('~')) continue;
        const key = relDir ? `${relDir}/${ent.name}` : ent.name;
        if (ent.isDirectory()) {
          // Descend only where keys below can still match the prefix.
          const k = `${key}/`;
          if (k.startsWith(prefix) || prefix.startsWith(k)) yield* this.walk(key, prefix, signal);
        } else if (ent.isFile() && key.startsWith(prefix)) {
          try {
            const s = await lstat(join(dirPath, ent.name));
            yield { key, size: s.size, mtimeMs: s.mtimeMs };
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw backendError('list', key, dirPath, e, this.root);
          }
        }
      }
    } finally {
      await dir.close().catch(() => undefined);
    }
  }

  /** Unlinks each key (absent ones are fine), then fsyncs the directories touched. */
  async delete(keys: readonly string[], opts: BackendCallOptions = {}): Promise<void> {
    const dirs = new Set<string>();
    for (const key of keys) {
      const path = this.pathOf(key);
      throwIfAborted(opts.signal);
      try {
        await unlink(path);
        dirs.add(dirname(path));
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== 'ENOENT' && code !== 'ENOTDIR') throw backendError('delete', key, path, e, this.root);
      }
    }
    for (const d of dirs) await fsyncDir(d).catch((e) => Promise.reject(backendError('delete', d, d, e, this.root)));
  }

  /** fsyncs the directory of `prefix` (a folder such as 'backups/'); absent, nothing to do. */
  async syncPrefix(prefix: string, opts: BackendCallOptions = {}): Promise<void> {
    checkPrefix(prefix);
    throwIfAborted(opts.signal);
    const dir = join(this.root, ...prefix.split('/').filter(Boolean));
    try {
      await fsyncDir(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw backendError('sync', prefix, dir, e, this.root);
    }
  }

  /**
   * Removes temporary files older than `olderThanMs` left by writers that
   * crashed mid-put, outside the top-level folders in `except` (never needed
   * for correctness: they are never listed).
   */
  async sweepTemporary(olderThanMs = 24 * 3600 * 1000, opts: { except?: readonly string[] } = {}): Promise<number> {
    let n = 0;
    const now = Date.now();
    const skip = new Set((opts.except ?? []).map((d) => join(this.root, d)));
    const visit = async (dirPath: string): Promise<void> => {
      if (skip.has(dirPath)) return;
      let dir;
      try {
        dir = await opendir(dirPath);
      } catch {
        return;
      }
      for await (const ent of dir) {
        const p = join(dirPath, ent.name);
        if (ent.isDirectory()) await visit(p);
        else if (ent.name.includes(TEMP_MARK)) {
          const s = await lstat(p).catch(() => null);
          if (s && now - s.mtimeMs > olderThanMs && (await unlink(p).then(() => true, () => false))) n++;
        }
      }
    };
    await visit(this.root);
    return n;
  }

  /** Nothing to release: every call opens and closes its own descriptors. */
  async close(): Promise<void> {}

  /** Same as close(). */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
