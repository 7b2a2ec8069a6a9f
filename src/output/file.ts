/**
 * Output files that are never left half-written, and never written over an
 * input.
 *
 * OutputFile writes a temporary file beside FILE (same directory, so the
 * rename stays on one filesystem), fsyncs it, renames it over FILE and fsyncs
 * the directory. Until the rename FILE is untouched: absent stays absent, an
 * old FILE keeps its content. discard() (on any failure, Ctrl-C, SIGTERM)
 * removes the temporary file. A FILE that exists and is not a regular file (a
 * block or character device, a FIFO: /dev/null, a disk) is written in place,
 * as the reference tools do; renaming over it would replace the device node.
 *
 * refuseOutputOverInputs() compares an output path with the inputs by device
 * and inode, through symlinks and hard links, before anything is opened for
 * writing.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants, existsSync, lstatSync, readFileSync, readlinkSync, realpathSync, statSync } from 'node:fs';
import { access, lstat, mkdir, open, readdir, readFile, readlink, realpath, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { check, DmthinError, isSystemError, SystemCallError, throwIfAborted, UsageError } from '../errors';
import { devNumOfRdev } from '../units';
import { outputError } from './sink';

/** A Node fs error as a SystemCallError naming the path and what was being done. */
function fsError(e: unknown, what: string, path: string): DmthinError {
  if (e instanceof DmthinError) return e;
  const x = e as NodeJS.ErrnoException;
  const why = (x?.message ?? String(e)).replace(/^[A-Z]+: /, '').replace(/, \w+ '.*'$/, '').replace(/, \w+$/, '');
  return new SystemCallError(typeof x?.code === 'string' ? x.code : 'EIO', `cannot ${what} ${path}: ${why}`, {
    syscall: x?.syscall,
    path,
    cause: e,
  });
}

/** A Writable onto a file descriptor that writes every byte (short writes are continued) and reports every error. */
class FileWritable extends Writable {
  constructor(
    private readonly fh: FileHandle,
    private readonly path: string,
  ) {
    super({ highWaterMark: 1 << 20 });
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    (async () => {
      for (let off = 0; off < chunk.length; ) {
        const { bytesWritten } = await this.fh.write(chunk, off, chunk.length - off);
        if (bytesWritten <= 0) throw new SystemCallError('EIO', `write of ${this.path} made no progress`, { syscall: 'write', path: this.path });
        off += bytesWritten;
      }
    })().then(
      () => cb(),
      (e) => cb(outputError(e, this.path)),
    );
  }
  /** Corked writes (a send's record: its header, then its payload) in one writev(2), short writes continued. */
  override _writev(chunks: { chunk: Buffer }[], cb: (e?: Error | null) => void): void {
    (async () => {
      let bufs = chunks.map((c) => c.chunk).filter((b) => b.length > 0); // writev of empty buffers alone writes 0: no progress to wait for
      while (bufs.length > 0) {
        const { bytesWritten } = await this.fh.writev(bufs);
        if (bytesWritten <= 0) throw new SystemCallError('EIO', `write of ${this.path} made no progress`, { syscall: 'write', path: this.path });
        let n = bytesWritten;
        while (bufs.length > 0 && n >= bufs[0].length) n -= bufs.shift()!.length;
        if (n > 0) bufs[0] = bufs[0].subarray(n);
      }
    })().then(
      () => cb(),
      (e) => cb(outputError(e, this.path)),
    );
  }
}

/**
 * `path` with the symlinks at its end followed, each link's text joined to
 * its directory as text (never folded by resolve(): `lnk/..` is the parent
 * of where lnk leads, as the kernel reads it). Stops at what is not a link
 * or does not exist (a dangling link names the file to create). `at` is
 * where it stopped; `error` why it stopped short (an lstat or readlink
 * failure, or ELOOP after 40 links).
 */
async function followLinks(path: string): Promise<{ at: string; error?: unknown }> {
  let p = path;
  try {
    for (let hops = 0; hops < 40; hops++) {
      const st = await lstat(p).catch((e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return null;
        throw e;
      });
      if (!st?.isSymbolicLink()) return { at: p };
      const to = await readlink(p);
      p = to.startsWith('/') ? to : `${dirname(p)}/${to}`;
    }
  } catch (e) {
    return { at: p, error: e };
  }
  return { at: p, error: new SystemCallError('ELOOP', `cannot write ${path}: too many levels of symbolic links`, { path, syscall: 'open' }) };
}

/** The file a path that may not exist yet leads to (a dangling link names the file to create). */
async function resolveTarget(path: string): Promise<string> {
  const { at: p, error } = await followLinks(path);
  if (error) throw error instanceof SystemCallError ? error : fsError(error, 'inspect', path);
  return realpath(p).catch(async (e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw e;
    // The file is new: its directory may itself be reached through links (realpath is native: kernel-style).
    return join(await realpath(dirname(p)).catch(() => resolve(dirname(p))), basename(p));
  });
}

export interface OutputFileOptions {
  /** Cancels commit(): an aborted output is discarded. */
  signal?: AbortSignal;
}

/**
 * `.FILE.dmthin-`: the start of the names of FILE's temporary files (then
 * PID-RANDOM.tmp, about 30 bytes in all beside FILE's name). A name too long
 * to take them (a filesystem's names end at 255 bytes) is cut and a digest
 * of it added, so the prefix stays FILE's own.
 */
const tempPrefix = (target: string): string => {
  const name = basename(target);
  return `.${Buffer.byteLength(name) <= 200 ? name : shortName(name)}.dmthin-`;
};

/** A name of at most 177 bytes standing for `name`: its first 160 bytes (whole characters) and a digest of all of it. */
function shortName(name: string): string {
  const digest = createHash('sha256').update(name).digest('hex').slice(0, 16);
  return `${Buffer.from(name).subarray(0, 160).toString('utf8').replace(/\uFFFD+$/, '')}~${digest}`;
}

/**
 * `path` + `suffix`, a file beside it; where that name and `room` bytes more
 * (a `.lock` beside it) would pass the 255 bytes a filesystem's names end
 * at, `path`'s name is cut and given a digest (shortName) first.
 */
function besideName(path: string, suffix: string, room: number): string {
  const name = basename(path);
  if (Buffer.byteLength(name + suffix) + room <= 255) return path + suffix;
  return join(dirname(path), shortName(name) + suffix);
}

/**
 * Removes FILE's temporary files left by runs of this host that were killed
 * (SIGKILL, a crash) before their rename: those whose process is gone. A
 * live process's file (another dmthin writing FILE now) is left alone, as is
 * any other name.
 */
export async function removeDeadTemps(target: string): Promise<void> {
  const dir = dirname(target);
  const prefix = tempPrefix(target);
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const m = /^(\d+)-[0-9a-f]{8}\.tmp$/.exec(name.slice(prefix.length));
    if (!m || processAlive(Number(m[1]))) continue;
    await unlink(join(dir, name)).catch(() => undefined);
  }
}

/** A new temporary file's name beside `target` (its name, this process, 8 random hex digits), which removeDeadTemps knows. */
export function tempPathBeside(target: string): string {
  return join(dirname(target), `${tempPrefix(target)}${process.pid}-${randomBytes(4).toString('hex')}.tmp`);
}

/** Whether a process of this id runs on this host (EPERM: it does, as another user). */
function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

export class OutputFile {
  private done = false;

  private constructor(
    /** The path given. */
    readonly path: string,
    /** The file FILE resolves to (symlinks followed). */
    readonly target: string,
    /** The temporary file, or null when the target is a device or FIFO written in place. */
    readonly tmp: string | null,
    private readonly fh: FileHandle,
    /** Data goes here; a failed write errors the stream (see OutputSink). */
    readonly stream: Writable,
    private readonly syncTarget: boolean,
    private readonly signal?: AbortSignal,
  ) {}

  /** Opens the temporary file beside `path` (or a device/FIFO in place). */
  static async create(path: string, opts: OutputFileOptions = {}): Promise<OutputFile> {
    throwIfAborted(opts.signal);
    // The path as the kernel opens it first: a magic link such as /dev/stdout
    // (-> /proc/self/fd/1 -> "pipe:[N]") names a pipe that no symlink text leads to.
    const given = await stat(path).catch(() => null);
    const target = given && !given.isFile() && !given.isDirectory() ? path : await resolveTarget(path);
    const existing = await stat(target).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return null;
      throw fsError(e, 'inspect', path);
    });
    // A file no name leads to (/dev/fd/N of a removed file, a memfd: the link
    // reads "/x (deleted)"): the kernel's file, written in place, never a new
    // file of that name.
    if (given?.isFile() && !(existing && existing.dev === given.dev && existing.ino === given.ino)) {
      const fh = await open(path, constants.O_WRONLY | constants.O_TRUNC).catch((e) => {
        throw fsError(e, 'open', path);
      });
      return new OutputFile(path, path, null, fh, new FileWritable(fh, path), true, opts.signal);
    }
    if (existing?.isDirectory()) throw new SystemCallError('EISDIR', `cannot write ${path}: it is a directory`, { path, syscall: 'open' });
    // What the kernel's open(O_CREAT) says of "name/" that is no directory (the file would be "name").
    if (!existing && path.endsWith('/')) throw new SystemCallError('EISDIR', `cannot write ${path}: a path ending in / names a directory, and there is none`, { path, syscall: 'open' });
    if (existing && !existing.isFile()) {
      // A device or FIFO: written where it is. fsync means something only for a block device.
      const fh = existing.isFIFO()
        ? await openFifoForWriting(target, path, opts.signal)
        : await open(target, constants.O_WRONLY).catch((e) => {
            throw fsError(e, 'open', path);
          });
      return new OutputFile(path, target, null, fh, new FileWritable(fh, path), existing.isBlockDevice(), opts.signal);
    }
    // A file its caller may not write (mode 0444, another user's) is refused
    // as open(O_WRONLY) refuses it: the rename below needs only the directory.
    if (existing) {
      await access(target, constants.W_OK).catch((e) => {
        throw fsError(e, 'open', path);
      });
    }
    await removeDeadTemps(target);
    const tmp = tempPathBeside(target);
    const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, existing ? existing.mode & 0o7777 : 0o666).catch((e) => {
      throw fsError(e, 'create a temporary file beside', path);
    });
    if (existing) {
      // The replacement keeps the old file's permissions and (as root) its owner:
      // the owner first, since a chown clears the set-user-ID and set-group-ID bits (outside hunt T).
      try {
        if (process.getuid?.() === 0) await fh.chown(existing.uid, existing.gid);
        await fh.chmod(existing.mode & 0o7777);
      } catch (e) {
        await fh.close().catch(() => undefined);
        await unlink(tmp).catch(() => undefined);
        throw fsError(e, 'set the permissions of a temporary file beside', path);
      }
    }
    return new OutputFile(path, target, tmp, fh, new FileWritable(fh, path), true, opts.signal);
  }

  /**
   * Ends the stream, fsyncs the file, renames it over FILE and fsyncs the
   * directory. On failure before the rename, the temporary file is removed and
   * FILE is as it was.
   */
  async commit(): Promise<void> {
    if (this.done) throw new DmthinError('EBADF', `${this.path}: output already closed`, { path: this.path });
    try {
      throwIfAborted(this.signal);
      this.stream.end();
      await finished(this.stream).catch((e) => {
        throw outputError(e, this.path);
      });
      if (this.syncTarget) {
        await this.fh.sync().catch((e) => {
          throw fsError(e, 'fsync', this.path);
        });
      }
      await this.fh.close().catch((e) => {
        throw fsError(e, 'close', this.path);
      });
      throwIfAborted(this.signal);
      if (this.tmp) {
        await rename(this.tmp, this.target).catch((e) => {
          throw fsError(e, `rename ${this.tmp} to`, this.target);
        });
      }
    } catch (e) {
      await this.discard();
      throw e;
    }
    this.done = true;
    if (!this.tmp) return;
    // The rename is durable only once the directory is.
    const dir = dirname(this.target);
    const d = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY).catch((e) => {
      throw fsError(e, `open the directory of`, this.path);
    });
    try {
      await d.sync().catch((e) => {
        throw new SystemCallError(
          (e as NodeJS.ErrnoException).code ?? 'EIO',
          `${this.path} was written, but fsync of its directory ${dir} failed (${(e as Error).message}): the new file may not survive a crash`,
          { path: dir, syscall: 'fsync', cause: e },
        );
      });
    } finally {
      await d.close().catch(() => undefined);
    }
  }

  /** Drops the output: the temporary file is removed, FILE is left as it was. Safe to call twice. */
  async discard(): Promise<void> {
    if (this.done) return;
    this.done = true;
    this.stream.destroy();
    const closed = this.fh.close().catch(() => undefined);
    if (this.tmp) {
      await closed;
      await unlink(this.tmp).catch(() => undefined);
    }
    // A device or FIFO written in place: the close is not waited for. It waits
    // for a write in flight, which a FIFO whose reader stopped reading holds
    // for as long as the reader wants; an interrupted command ended only then.
  }
}

/**
 * Opens a FIFO for writing as open(O_WRONLY) would, but so that a signal
 * ends the wait for its reader: that open blocks a thread until a reader
 * comes, and dump -o FIFO without one ignored SIGINT and SIGTERM (thin_dump
 * ends with 130, 143). Without O_NONBLOCK's ENXIO (no reader yet) it is asked
 * again every 50 ms; once a reader is there, the descriptor written is a
 * blocking one (a full pipe waits for the reader, as for any writer).
 */
async function openFifoForWriting(target: string, path: string, signal?: AbortSignal): Promise<FileHandle> {
  for (;;) {
    throwIfAborted(signal);
    let probe: FileHandle;
    try {
      probe = await open(target, constants.O_WRONLY | constants.O_NONBLOCK);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENXIO') throw fsError(e, 'open', path);
      await sleep(50, undefined, { signal }).catch(() => undefined);
      continue;
    }
    try {
      return await open(target, constants.O_WRONLY).catch((e) => {
        throw fsError(e, 'open', path);
      });
    } finally {
      await probe.close();
    }
  }
}

export interface NamedInput {
  /** A path the command reads (absent or non-file inputs, e.g. a pool name, are skipped). */
  path: string | undefined;
  /** What it is, for the message ("the metadata", "the target"). */
  role: string;
}

/**
 * Where a path that does not exist yet would be created, as its directory's
 * identity (device and inode) and the name in it: a dangling symlink is
 * followed (the open follows it), and the directory is looked up as the
 * kernel looks it up (`lnk/..` is lnk's parent, a bind mount the same
 * directory), not by its path's text. null: the directory does not exist.
 */
async function wouldBeAt(path: string): Promise<string | null> {
  const p = (await followLinks(path)).at;
  // dirname() of the text as given: join()/resolve() would fold `x/..` before the kernel follows x.
  const d = await stat(dirname(p)).catch(() => null);
  return d ? `${d.dev}:${d.ino}/${basename(p)}` : null;
}

/**
 * Whether two paths name the same target: the same path, the same file
 * (device and inode, symlinks followed), the same block device (rdev: a
 * /dev/mapper link and its /dev/dm-N), or, when neither exists, the same
 * place. A job's state file records its target's path: a state given for
 * another target must not be taken as this one's.
 */
export async function sameTarget(a: string, b: string): Promise<boolean> {
  // Never by the paths' text: `lnk/../f` and `f` are different files when lnk leads elsewhere.
  const [x, y] = await Promise.all([stat(a).catch(() => null), stat(b).catch(() => null)]);
  if (!x && !y) {
    const [pa, pb] = await Promise.all([wouldBeAt(a), wouldBeAt(b)]);
    return pa !== null && pa === pb;
  }
  if (!x || !y) return false;
  if (x.isBlockDevice() || y.isBlockDevice()) return x.isBlockDevice() && y.isBlockDevice() && x.rdev === y.rdev;
  return x.dev === y.dev && x.ino === y.ino;
}

/**
 * What a target is beyond its path, recorded in a job's state file: a path
 * that now leads elsewhere (a repointed symlink, an LV removed and made again
 * under its name, a loop device attached to another file) must not be taken
 * as the target the state describes. A dm device by its uuid (LVM gives
 * every LV one, kept across activations; dm minors are not) or, without one,
 * its name; a loop device by its backing file; another block device by its
 * number; a file by device, inode and birth time (an inode number is reused
 * soon after a file is removed). null: nothing there.
 */
export function targetIdentity(path: string): string | null {
  // Synchronous: a stat and three small reads of /sys, also under defaultJobStateFile.
  let st;
  try {
    st = statSync(path, { bigint: true });
  } catch {
    return null;
  }
  if (st.isBlockDevice()) {
    const { major, minor } = devNumOfRdev(st.rdev);
    const read = (f: string): string => {
      try {
        return readFileSync(`/sys/dev/block/${major}:${minor}/${f}`, 'utf8').trim();
      } catch {
        return '';
      }
    };
    const uuid = read('dm/uuid');
    if (uuid !== '') return `dm-uuid:${uuid}`;
    const name = read('dm/name');
    if (name !== '') return `dm-name:${name}`;
    const backing = read('loop/backing_file');
    if (backing !== '') return `loop:${backing}`;
    return `block:${major}:${minor}`;
  }
  return `file:${st.dev}:${st.ino}:${st.birthtimeNs}`;
}

/** A path with its links followed as the kernel follows them; for one that does not exist yet, where a dangling link leads, in its directory's real place. */
export function realPathOf(path: string): string {
  try {
    return realpathSync.native(path);
  } catch {
    // Not there (yet). A dangling symbolic link leads to where the file will be made (an
    // open with O_CREAT follows it): followed, so a receive with --create through the link
    // keeps its state beside the file, as it does once the file exists.
    let p = resolve(path);
    for (let hops = 0; hops < 40; hops++) {
      try {
        if (!lstatSync(p).isSymbolicLink()) break;
        p = resolve(dirname(p), readlinkSync(p));
      } catch {
        break;
      }
    }
    try {
      return realpathSync.native(p);
    } catch {
      try {
        return join(realpathSync.native(dirname(p)), basename(p));
      } catch {
        return p;
      }
    }
  }
}

/** A file's size and modification time (a file written since no longer holds what the state says). */
export interface FileStamp {
  /** Bytes. */
  size: number;
  /** Modification time, ms since the epoch. */
  mtimeMs: number;
}

/** The file's stamp now. */
export async function fileStamp(path: string): Promise<FileStamp> {
  const st = await stat(path);
  return { size: st.size, mtimeMs: st.mtimeMs };
}

/** Whether two stamps are the same (the file not written in between). */
export function sameStamp(a: FileStamp, b: FileStamp): boolean {
  return a.size === b.size && a.mtimeMs === b.mtimeMs;
}

/**
 * Where a job (receive, restore) keeps the state of `target` unless told
 * otherwise: one file per target, whichever path names it, so that a job
 * through one name sees what a job through another did. A file target's
 * state is beside the file its path leads to (`<file><fileSuffix>`; a name
 * too long for that is cut and given a digest of itself); a block
 * device's is in `stateDir`, named by its identity when it is a dm device
 * (/dev/vg/lv, /dev/mapper/vg-lv and /dev/dm-N share it; see
 * targetIdentity), else by its path with links followed. A state kept under
 * the name used before stop 40 (the path as given) is still found when the
 * new name has none.
 */
export function defaultJobStateFile(target: string, blockDevice: boolean, stateDir: string, fileSuffix: string): string {
  check.string(target, 'target');
  check.string(stateDir, 'stateDir');
  const abs = resolve(target);
  const legacy = blockDevice ? join(stateDir, `${encodeURIComponent(abs.replace(/^\/+/, ''))}.json`) : `${abs}${fileSuffix}`;
  // Room for the lock file's `.lock` (native/job-lock.ts) beside a name that is cut to fit.
  const inDir = (name: string): string => besideName(join(stateDir, encodeURIComponent(name)), '.json', 5);
  let canonical: string;
  if (blockDevice) {
    const id = targetIdentity(target);
    canonical = id !== null && id.startsWith('dm-') ? inDir(id) : inDir(realPathOf(target).replace(/^\/+/, ''));
  } else canonical = besideName(realPathOf(target), fileSuffix, 5);
  if (canonical !== legacy && !existsSync(canonical) && existsSync(legacy)) return legacy;
  return canonical;
}

/**
 * Refuses an output path that names an input's target as sameTarget()
 * decides: the same file (device and inode, symlinks followed; a hard link
 * is the same file), the same block device, or, when neither exists yet, the
 * same place (a target that a job is to create with `--create` is an input
 * that does not exist either).
 */
export async function refuseOutputOverInputs(output: string, outputRole: string, inputs: readonly NamedInput[]): Promise<void> {
  for (const i of inputs) {
    if (i.path === undefined) continue;
    if (await sameTarget(i.path, output)) {
      const named = resolve(i.path) === resolve(output) ? '' : ` ${i.path} (the same file)`;
      throw new UsageError(
        `${outputRole} ${output} is ${i.role}${named}: writing there would destroy it; choose another path`,
        { path: output, input: i.path },
      );
    }
  }
}

/** The most a state file (receive, restore, merge, replication) can be: a few KiB of JSON; far more is not dmthin's. */
export const MAX_STATE_BYTES = 16 << 20;

/**
 * The text of a state file, or null when there is none. Opened without
 * blocking (a FIFO named as the state waited for a writer for ever) and read
 * only when it is a regular file of at most MAX_STATE_BYTES (a device, or a
 * file of hundreds of MB, was read whole into memory); else throws
 * `refuse(why)`, where `why` completes "STATE is ...".
 */
export async function readStateText(path: string, refuse: (why: string) => Error): Promise<string | null> {
  let fh: FileHandle;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw refuse('not a regular file (a state is a file dmthin writes): give the path of a file for it');
    if (st.size > MAX_STATE_BYTES) throw refuse(`${st.size} bytes, more than a state file holds (${MAX_STATE_BYTES}): it is not one of dmthin's; give the path of the state, or another path`);
    return await fh.readFile('utf8');
  } finally {
    await fh.close();
  }
}

/**
 * Refuses a state file path that holds something other than a state of
 * `format`: a job replaces its state file whole, so a mistyped --state (a
 * metadata image, a document) would be lost. A file that is one of ours but
 * damaged (cut short too) is the caller's to judge; absent or empty is fine.
 * For a path the caller named: a default path is dmthin's own name.
 */
export async function refuseForeignStateFile(path: string, format: string, what: string): Promise<void> {
  const st = await stat(path).catch(() => null);
  if (!st) return;
  if (!st.isFile()) throw new UsageError(`${what} ${path} exists and is not a regular file: choose another path for it`, { path });
  // Empty: nothing to lose. A state is a few KiB of JSON; anything much larger is something else.
  let ours = st.size === 0;
  if (!ours && st.size <= 1 << 20) {
    const text = await readFile(path, 'utf8').catch(() => '');
    try {
      ours = (JSON.parse(text) as { format?: unknown } | null)?.format === format;
    } catch {
      // One of ours cut short still names its format near its start.
      ours = new RegExp(`^\\s*\\{\\s*"format"\\s*:\\s*"${format}"`).test(text);
    }
  }
  if (!ours) {
    throw new DmthinError('EEXIST', `${what} ${path} exists and is not a ${format} file (it would be replaced): choose another path, or remove the file if it is a damaged state`, { path });
  }
}

/** Refuses `path` when its directory does not exist (ENOENT) or is no directory (ENOTDIR): jobs make files, not directory trees. */
export async function needDirectory(path: string, what: string, job: string): Promise<void> {
  const dir = dirname(resolve(path));
  const st = await stat(dir).catch(() => null);
  if (st?.isDirectory()) return;
  const code = st ? 'ENOTDIR' : 'ENOENT';
  throw new DmthinError(code, `the directory ${dir} of ${what} ${st ? 'is not a directory' : 'does not exist'}: create it first (${job} makes files, not directories)`, { path: dir, syscall: 'stat' });
}

/**
 * The error of a job (receive, restore) whose pending record could not be
 * written before its first write to the target: the state file is as it was
 * (it is replaced atomically) and the target untouched, or removed when the
 * job created it.
 */
export function stateNotRecorded(e: unknown, job: string, stateFile: string, target: string, removed: boolean): unknown {
  if (!isSystemError(e)) return e;
  const { why, full } = stateWriteFailure(e);
  const what = removed ? `the target ${target} this ${job} created was removed` : `nothing was written to the target ${target}`;
  return new SystemCallError(e.code ?? 'EIO', `cannot record this ${job} in ${stateFile} (${why}), so ${what}: ${full ? 'make room' : 'fix the cause'}, then run the same ${job} again`, {
    syscall: e.syscall,
    path: stateFile,
    cause: e,
  });
}

/**
 * The error of a job whose target is complete but whose closing record could
 * not be written: the state file still records the job as pending (it is
 * replaced atomically), so running the job again completes it.
 */
export function completionNotRecorded(e: unknown, job: string, stateFile: string, target: string): unknown {
  if (!isSystemError(e)) return e;
  const { why, full } = stateWriteFailure(e);
  const fix = full ? 'make room (the state file is replaced through a copy beside it)' : 'fix the cause';
  return new SystemCallError(
    e.code ?? 'EIO',
    `the target ${target} is written, but recording that in ${stateFile} failed (${why}): it still records this ${job} as pending; ${fix}, then run the same ${job} again to complete it`,
    { syscall: e.syscall, path: stateFile, cause: e },
  );
}

/** A failed state write's reason without Node's code prefix or the output sink's tail, and whether the filesystem is full. */
function stateWriteFailure(e: NodeJS.ErrnoException): { why: string; full: boolean } {
  const why = String(e.message ?? '').replace(/^[A-Z]+: /, '').replace(/; the output is incomplete$/, '');
  return { why, full: e.code === 'ENOSPC' || e.code === 'EDQUOT' };
}

/** Replaces `path` with `text` atomically and durably (temporary file, fsync, rename, directory fsync). */
export async function writeFileAtomically(path: string, text: string): Promise<void> {
  const existing = await stat(path).catch(() => null);
  // OutputFile writes a device or FIFO in place: a state file named over one would destroy it.
  if (existing && !existing.isFile()) throw new UsageError(`${path} exists and is not a regular file: choose another path for this file`, { path });
  await mkdir(dirname(path), { recursive: true, mode: 0o755 }).catch((e) => {
    throw fsError(e, 'create the directory of', path);
  });
  const f = await OutputFile.create(path);
  try {
    f.stream.write(text);
    await f.commit();
  } catch (e) {
    await f.discard();
    throw e;
  }
}
