/**
 * restore(): any backup of a repository, directly (no chain to replay), onto
 * a block device or a regular file.
 *
 * Every chunk comes through Repository.getChunk, which verifies it (hash,
 * or authentication when encrypted) before it is handed over; a chunk of the
 * wrong length is refused too. Holes become discards or zeros as receive
 * makes them (stream/receive/target.ts). A target whose restore state says
 * it holds another backup of the same volume, completely, gets only the
 * chunks whose ids differ, and the chunks that became holes are zeroed. A
 * missing or damaged chunk stops the restore with the backup and the byte
 * range named; the state then records the target as incomplete (only a
 * full restore follows), so a partial restore is never taken for a good one.
 */
import { realpath, stat, unlink } from 'node:fs/promises';
import { dirname, isAbsolute, resolve, sep } from 'node:path';
import { check, DmthinError, RepoError, SystemCallError, throwIfAborted, UsageError } from '../errors';
import { needDirectory, refuseForeignStateFile, refuseOutputOverInputs, sameTarget, stateNotRecorded, completionNotRecorded, targetIdentity, fileStamp, sameStamp, realPathOf, type FileStamp } from '../output/file';
import { BlockWriter, type WriteSegment } from '../native/block-writer';
import { growRecordedTarget, inspectTarget, resolveZeroMethod, tooSmallAdvice, whyCannotGrow, ZERO_METHODS, zeroer, type ZeroMethod } from '../stream/receive/target';
import { allowListeners, chunksAtOnce, Repository, type KeySource, type ManifestEntry } from '../repo/repository';
import { defaultRestoreStateFile, readRestoreState, RestoreLock, writeRestoreState, type RestoreEntry, type RestoreState } from './restore-state';
import { killAfterCount } from './test-seams';

/** Options of restore. */
export interface RestoreOptions {
  /** The repository: a location (a directory, or `s3://BUCKET/PREFIX`) or an open Repository. */
  repo: string | Repository;
  /** The key of an encrypted repository given by location. */
  key?: KeySource;
  /** The backup id. */
  backup: string;
  /** Block device or regular file to write. */
  target: string;
  /** Create a regular-file target that does not exist, or grow one smaller than the backup's device (never shrinks). */
  create?: boolean;
  /** Write every chunk, whatever the restore state says the target holds. */
  full?: boolean;
  /** Where the target's restore state is kept (default: next to a file target, else under `stateDir`). */
  stateFile?: string;
  /** Directory for block-device restore states (default /var/lib/dmthin/restore). */
  stateDir?: string;
  /** How holes are made to read as zeros (default 'auto', as receive). */
  zero?: ZeroMethod;
  /** O_DIRECT for the target writes (default 'auto'). */
  direct?: 'auto' | 'always' | 'never';
  /** Chunks fetched at once (default: chunksAtOnce of the chunk size, 8 to 32). */
  concurrency?: number;
  /** Cancels the work, which then rejects with AbortError (the target is then recorded as incomplete). */
  signal?: AbortSignal;
  /** Called as the work advances. */
  onProgress?: (p: RestoreProgress) => void;
}

/** Progress of restore. */
export interface RestoreProgress {
  /** Chunk indexes done (written, zeroed or left as they were). */
  chunks: number;
  /** Chunk indexes of the device. */
  totalChunks: number;
  /** Data bytes written. */
  bytesWritten: number;
}

/** What a restore wrote. */
export interface RestoreResult {
  /** The backup restored. */
  backup: string;
  /** Its volume. */
  volume: string;
  /** The target written. */
  target: string;
  /** Device size in bytes. */
  deviceSize: number;
  /** Chunk size in bytes. */
  chunkSize: number;
  /** The backup the target held before, when only the differences to it were written; else null. */
  previous: string | null;
  /** Chunks written. */
  chunksWritten: number;
  /** Chunks made to read as zeros (holes that were not already holes of the previous backup, or of a new file). */
  chunksZeroed: number;
  /** Chunks left as they were (same in the previous backup). */
  chunksUnchanged: number;
  /** Data bytes written. */
  bytesWritten: number;
  /** The restore state file that now records the backup. */
  stateFile: string;
  /** The target file was created by this restore. */
  created: boolean;
  /** How holes were zeroed: method -> calls. */
  zeroing: Record<string, number>;
}

/** Restores a backup onto a block device or file. */
export async function restore(opts: RestoreOptions): Promise<RestoreResult> {
  checkRestoreOptions(opts);
  const owned = typeof opts.repo === 'string';
  const repo = typeof opts.repo === 'string' ? await Repository.open(opts.repo, { key: opts.key, signal: opts.signal }) : opts.repo;
  try {
    return await restoreFrom(repo, opts);
  } finally {
    if (owned) await repo.close();
  }
}

/** A caller's mistake in the options: UsageError naming it, before anything is opened (the same checks as receive's). */
function checkRestoreOptions(o: RestoreOptions): void {
  check.required(o, 'restore');
  check.nameOr(o.repo, 'repo', Repository);
  check.string(o.backup, 'backup');
  check.string(o.target, 'target');
  check.signal(o.signal);
  check.callback(o.onProgress, 'onProgress');
  check.oneOf(o.zero, 'zero', ZERO_METHODS);
  check.oneOf(o.direct, 'direct', ['auto', 'always', 'never']);
  if (o.concurrency !== undefined) check.integer(o.concurrency, 'concurrency');
  for (const k of ['stateFile', 'stateDir'] as const) if (o[k] !== undefined) check.string(o[k], k);
}

/** Refuses `path` (existing or not, links resolved) inside a local repository's directory. */
async function refuseInsideRepository(repo: Repository, path: string, role: string): Promise<void> {
  if (repo.location.startsWith('s3://')) return;
  const dir = await realpath(repo.location).catch(() => null);
  if (dir === null) return;
  const full = realPathOf(path);
  if (full === dir || full.startsWith(dir + sep)) {
    throw new UsageError(`${role} ${path} is inside the repository ${repo.location}: writing it would damage the repository; choose a path outside it`, { path });
  }
  // Another path to the repository's directory (a bind mount) has another
  // name: the directories above the path are compared with it by device and inode.
  const d = await stat(dir).catch(() => null);
  if (d !== null) {
    for (let p = dirname(full); ; p = dirname(p)) {
      const up = await stat(p).catch(() => null);
      if (up !== null && up.dev === d.dev && up.ino === d.ino) {
        throw new UsageError(`${role} ${path} is inside the repository ${repo.location} (${p} is its directory under another path): writing it would damage the repository; choose a path outside it`, { path });
      }
      if (p === dirname(p)) break;
    }
  }
  // A hard link has no path to compare: a file with other links on the repository's filesystem may be one of its files.
  const st = await stat(path).catch(() => null);
  if (st?.isFile() && st.nlink > 1 && d !== null && st.dev === d.dev) {
    throw new UsageError(
      `${role} ${path} has ${st.nlink - 1} other hard link${st.nlink > 2 ? 's' : ''} on the filesystem of the repository ${repo.location}, and may be one of its files: writing it could damage the repository; choose a file with one link, or a path on another filesystem`,
      { path },
    );
  }
}

async function restoreFrom(repo: Repository, o: RestoreOptions): Promise<RestoreResult> {
  const { header, entries } = await repo.readManifest(o.backup, { signal: o.signal });
  const { deviceSize, chunkSize: cs } = header;
  const info = await inspectTarget(o.target);
  const stateFile = o.stateFile ?? defaultRestoreStateFile(o.target, info.blockDevice, o.stateDir);
  // Nothing the restore writes may be part of the repository it reads, or be the target itself.
  await refuseInsideRepository(repo, o.target, 'the target');
  await refuseInsideRepository(repo, stateFile, 'the restore state file');
  if (resolve(stateFile) === resolve(o.target)) throw new UsageError(`the restore state file ${stateFile} is the target itself; choose another state path`, { path: stateFile });
  await refuseOutputOverInputs(stateFile, 'the restore state file', [{ path: o.target, role: 'the target' }]);
  // Directories named by the caller are not made up: a mistyped path would grow a tree (only the default state directory is made).
  if (!info.exists && o.create) await needDirectory(o.target, 'the target', 'restore');
  if (o.stateFile !== undefined) await needDirectory(o.stateFile, 'the restore state file', 'restore');
  if (o.stateFile !== undefined) await refuseForeignStateFile(o.stateFile, 'dmthin-restore-state', 'the restore state file');
  const lock = RestoreLock.acquire(o.target, stateFile);
  let writer: BlockWriter | undefined;
  try {
    if (info.exists && !info.blockDevice) lock.lockTarget();
    if (!info.exists && !o.create) throw new DmthinError('ENOENT', `target ${o.target} does not exist (option create makes a file target)`, { path: o.target });
    writer = await BlockWriter.open(o.target, { direct: o.direct, create: !info.exists });
    const created = writer.info.created;
    if (created) lock.lockTarget();
    /** Closes and removes the file this restore created (before anything is recorded or written). */
    const removeCreated = async (): Promise<void> => {
      writer?.close();
      writer = undefined;
      await unlink(o.target).catch(() => undefined);
    };
    // A file made here is sized before anything is recorded: where the filesystem
    // cannot hold it (EFBIG, ENOSPC) it is removed again and nothing is left.
    if (created && writer.size < deviceSize) {
      try {
        await writer.extend(deviceSize);
      } catch (e) {
        await removeCreated();
        throw cannotSize(e, o.target, deviceSize, o.backup);
      }
    }
    const sizeBefore = writer.size;
    if (sizeBefore < deviceSize && (info.blockDevice || !o.create)) {
      // ENOSPC: the target has no room for the device (not a full filesystem; the line says which).
      throw new DmthinError('ENOSPC', `target ${o.target} is ${sizeBefore} bytes, backup ${o.backup}'s device is ${deviceSize} bytes: ${tooSmallAdvice(info.blockDevice, deviceSize)}`, {
        path: o.target,
        targetSize: sizeBefore,
        deviceSize,
      });
    }

    const state = await readRestoreState(stateFile);
    const entry: RestoreEntry = { repo: repo.location, backup: o.backup, volume: header.volume, deviceSize, chunkSize: cs, at: new Date().toISOString() };
    const previous = created || o.full ? null : await usablePrevious(repo, state, o.target, entry, info.blockDevice ? null : await fileStamp(o.target), o.signal);

    // The target's absolute path: a later restore checks that the state is about its own target.
    const pending: RestoreState = {
      format: 'dmthin-restore-state',
      version: 1,
      target: resolve(o.target),
      targetId: targetIdentity(o.target) ?? undefined,
      current: null,
      pending: entry,
      file: null,
    };
    // What the state file was, to put back if growing the target fails (a damaged one is left pending).
    const stateFileWas = state !== null ? 'read' : await stat(stateFile).then(() => 'damaged' as const, () => 'absent' as const);
    // From here on the target is in between, until the end.
    await writeRestoreState(stateFile, pending).catch(async (e: unknown) => {
      if (created) await removeCreated();
      throw stateNotRecorded(e, 'restore', stateFile, o.target, created);
    });
    if (!writer.info.blockDevice && writer.size < deviceSize) {
      const undo = stateFileWas === 'damaged' ? null : () => (stateFileWas === 'read' ? writeRestoreState(stateFile, state!) : unlink(stateFile));
      await growRecordedTarget(writer, deviceSize, o.target, `backup ${o.backup}'s`, 'restore', undo);
    }
    // A new file, or a grown one's tail, already reads as zeros there.
    const zerosFrom = created ? 0 : Math.min(sizeBefore, deviceSize);
    const zero = zeroer(writer, info.blockDevice ? info : { ...info, exists: true }, resolveZeroMethod(info, o.zero));
    let stats: ApplyStats;
    try {
      stats = await apply(repo, o, writer, zero, entries, previous ? (await repo.readManifest(previous, { signal: o.signal })).entries : null, deviceSize, cs, zerosFrom);
      await writer.fsync();
    } catch (e) {
      throw incomplete(await deletedMeanwhile(repo, o.backup, e), o.target, stateFile);
    } finally {
      zero.close();
    }
    writer.close();
    writer = undefined;
    const stamp = info.blockDevice ? null : await fileStamp(o.target);
    await writeRestoreState(stateFile, { ...pending, current: { ...entry, at: new Date().toISOString() }, pending: null, file: stamp }).catch((e: unknown) => {
      throw completionNotRecorded(e, 'restore', stateFile, o.target);
    });
    return {
      backup: o.backup,
      volume: header.volume,
      target: o.target,
      deviceSize,
      chunkSize: cs,
      previous,
      ...stats,
      stateFile,
      created,
      zeroing: { ...zero.used },
    };
  } finally {
    writer?.close();
    lock.release();
  }
}

/** The system error of sizing a file this restore created (and removed again). */
function cannotSize(e: unknown, target: string, size: number, backup: string): unknown {
  const x = e as NodeJS.ErrnoException;
  if (e instanceof DmthinError ? !(e instanceof SystemCallError) : typeof x?.code !== 'string') return e;
  const why = whyCannotGrow(x);
  return new SystemCallError(x.code ?? 'EIO', `cannot make the target ${target} ${size} bytes, backup ${backup}'s device size: ${why}; nothing was written and the file this restore created was removed`, {
    syscall: x.syscall,
    path: target,
    cause: e,
  });
}

/** The backup the target holds completely and can be diffed against, or null (then everything is written). */
async function usablePrevious(
  repo: Repository,
  s: RestoreState | null,
  target: string,
  next: RestoreEntry,
  stamp: FileStamp | null,
  signal?: AbortSignal,
): Promise<string | null> {
  const cur = s?.current;
  if (!s || !cur || s.pending !== null) return null;
  // A state given (--state) for another target says nothing of this one. (A
  // relative path, recorded before the path was made absolute, is trusted.)
  if (isAbsolute(s.target) && !(await sameTarget(s.target, target))) return null;
  // The same path, another device or file than the state was written for (an LV made again, a link repointed);
  // a state of a dmthin before stop 40 does not say which it was written for.
  if (s.targetId === undefined || targetIdentity(target) !== s.targetId) return null;
  if (cur.repo !== next.repo || cur.volume !== next.volume || cur.deviceSize !== next.deviceSize || cur.chunkSize !== next.chunkSize) return null;
  // A file written since the last restore: its content is unknown.
  if (stamp && (!s.file || !sameStamp(s.file, stamp))) return null;
  try {
    await repo.readManifest(cur.backup, { signal });
  } catch (e) {
    if (e instanceof RepoError && e.reason === 'not-found') return null; // pruned since: restore everything
    throw e;
  }
  return cur.backup;
}

/**
 * A chunk missing because the backup itself went away while the restore ran
 * (a prune or `backups delete` took it and its chunks; restores take no
 * repository lock): said so, instead of looking like a damaged repository.
 */
async function deletedMeanwhile(repo: Repository, backup: string, e: unknown): Promise<unknown> {
  if (!(e instanceof RepoError) || e.reason !== 'not-found') return e;
  try {
    await repo.readManifest(backup);
    return e;
  } catch (x) {
    if (!(x instanceof RepoError) || x.reason !== 'not-found') return e;
    return new RepoError('not-found', `backup ${backup} was deleted while this restore ran (by a prune or 'dmthin backups delete'), and with it chunks the restore still needed`, { backup, cause: e });
  }
}

/** Adds what happened to the target to a failure after the first write. */
function incomplete(e: unknown, target: string, stateFile: string): unknown {
  if (e instanceof DmthinError) {
    const room = e.code === 'ENOSPC' || e.code === 'EDQUOT' ? 'make room there, then run the same restore again' : 'restore a backup onto it again';
    e.message += `; target ${target} is incomplete (its restore state ${stateFile} records it): ${room}`;
  }
  return e;
}

interface ApplyStats {
  chunksWritten: number;
  chunksZeroed: number;
  chunksUnchanged: number;
  bytesWritten: number;
}

/**
 * Writes the chunks of `next` that differ from `prev` (all of them without
 * one) and zeroes its holes that were not holes before (below `zerosFrom`
 * without `prev`). Chunks are fetched `concurrency` at a time, in order, and
 * written in batches of up to 8 MiB.
 */
async function apply(
  repo: Repository,
  o: RestoreOptions,
  writer: BlockWriter,
  zero: (off: number, len: number) => Promise<void>,
  next: AsyncIterable<ManifestEntry>,
  prev: AsyncIterable<ManifestEntry> | null,
  deviceSize: number,
  cs: number,
  zerosFrom: number,
): Promise<ApplyStats> {
  const nChunks = Math.ceil(deviceSize / cs);
  const stats: ApplyStats = { chunksWritten: 0, chunksZeroed: 0, chunksUnchanged: 0, bytesWritten: 0 };
  const lenOf = (i: number): number => Math.min(cs, deviceSize - i * cs);
  const window = Math.max(1, o.concurrency ?? chunksAtOnce(cs));
  allowListeners(o.signal, window);
  const fetches: { index: number; data: Promise<Buffer> }[] = [];
  let segs: WriteSegment[] = [];
  let segBytes = 0;
  let done = 0;
  // The closing call repeats nothing: an event only when a count moved.
  let told = '';
  const progress = (): void => {
    const now = `${done}/${stats.bytesWritten}`;
    if (now === told) return;
    told = now;
    o.onProgress?.({ chunks: done, totalChunks: nChunks, bytesWritten: stats.bytesWritten });
  };

  const fetch = (e: ManifestEntry): Promise<Buffer> => {
    const off = e.index * cs;
    const len = lenOf(e.index);
    const p = repo.getChunk(e.id, { signal: o.signal, maxBytes: cs }).then(
      (b) => {
        if (b.length !== len) throw new RepoError('corrupt', `chunk ${e.id} holds ${b.length} bytes, the backup's chunk ${e.index} has ${len}`, { key: e.id });
        return b;
      },
    ).catch((err: unknown) => {
      throw chunkError(err, o.backup, e, off, len);
    });
    p.catch(() => undefined); // awaited in order below
    return p;
  };
  const kill = killAfterCount(); // test seam (ops/test-seams.ts)
  // One write in flight while the next chunks are fetched (a restore waited for each 8 MiB write
  // before fetching on); every other use of the target waits for it (drain).
  let writing: Promise<void> | undefined;
  const drain = async (): Promise<void> => {
    const w = writing;
    writing = undefined;
    await w;
  };
  const flush = async (): Promise<void> => {
    await drain();
    if (segs.length === 0) return;
    const batch = segs;
    const written = stats.chunksWritten;
    segs = [];
    segBytes = 0;
    writing = writer.write(batch).then((r) => {
      stats.bytesWritten += r.bytes;
      if (kill !== undefined && written >= kill) process.kill(process.pid, 'SIGKILL');
      progress();
    });
    writing.catch(() => undefined); // awaited by the next drain
  };
  const settle = async (keep: number): Promise<void> => {
    while (fetches.length > keep) {
      const f = fetches.shift()!;
      const data = await f.data;
      throwIfAborted(o.signal);
      segs.push({ offset: f.index * cs, data });
      segBytes += data.length;
      stats.chunksWritten++;
      done++;
      if (segBytes >= 8 << 20) await flush();
    }
  };
  // Runs of chunks to zero, coalesced.
  let zeroStart = -1;
  let zeroEnd = -1;
  const zeroChunk = async (i: number): Promise<void> => {
    stats.chunksZeroed++;
    done++;
    if (zeroEnd === i) {
      zeroEnd = i + 1;
      return;
    }
    await flushZero();
    zeroStart = i;
    zeroEnd = i + 1;
  };
  const flushZero = async (): Promise<void> => {
    if (zeroStart < 0) return;
    const a = zeroStart * cs;
    const b = Math.min(zeroEnd * cs, deviceSize);
    zeroStart = zeroEnd = -1;
    await drain();
    await zero(a, b - a);
  };

  const prevIt = prev?.[Symbol.asyncIterator]();
  let p: ManifestEntry | null | undefined = prevIt ? undefined : null;
  const peekPrev = async (): Promise<ManifestEntry | null> => {
    if (p === undefined) {
      const r = await prevIt!.next();
      p = r.done ? null : r.value;
    }
    return p;
  };
  let cursor = 0;
  /** Chunks [cursor, to) are holes in the new backup. */
  const holesUntil = async (to: number): Promise<void> => {
    for (let i = cursor; i < to; ) {
      if (prevIt) {
        const q = await peekPrev();
        if (!q || q.index >= to) {
          // Holes in both: nothing to do.
          const n = to - i;
          stats.chunksUnchanged += n;
          done += n;
          break;
        }
        stats.chunksUnchanged += q.index - i;
        done += q.index - i;
        p = undefined;
        await zeroChunk(q.index); // mapped before, a hole now
        i = q.index + 1;
      } else {
        // Full: zero what may hold old bytes (not a new file's or a grown tail's zeros).
        const lim = Math.min(to, Math.ceil(zerosFrom / cs));
        for (let j = i; j < lim; j++) await zeroChunk(j);
        done += Math.max(0, to - Math.max(i, lim));
        stats.chunksUnchanged += Math.max(0, to - Math.max(i, lim));
        break;
      }
    }
    cursor = Math.max(cursor, to);
  };

  try {
    let last = -1;
    for await (const e of next) {
      throwIfAborted(o.signal);
      if (!Number.isSafeInteger(e.index) || e.index <= last || e.index >= nChunks) {
        throw new RepoError('format', `backup ${o.backup}: manifest entry for chunk ${e.index} is out of order or beyond the device (${nChunks} chunks)`, { backup: o.backup });
      }
      last = e.index;
      await holesUntil(e.index);
      let same = false;
      if (prevIt) {
        for (let q = await peekPrev(); q && q.index <= e.index; q = await peekPrev()) {
          if (q.index === e.index) same = q.id === e.id;
          p = undefined;
        }
      }
      cursor = e.index + 1;
      if (same) {
        stats.chunksUnchanged++;
        done++;
        continue;
      }
      await flushZero();
      fetches.push({ index: e.index, data: fetch(e) });
      await settle(window - 1);
    }
    await holesUntil(nChunks);
    await settle(0);
    await flush();
    await drain();
    await flushZero();
  } finally {
    // A failure elsewhere leaves no write running past the return (its own failure is the caller's to see).
    await writing?.catch(() => undefined);
    await prevIt?.return?.().catch(() => undefined);
  }
  progress();
  return stats;
}

/** A chunk that could not be used, named by backup, chunk and device range. */
function chunkError(err: unknown, backup: string, e: ManifestEntry, off: number, len: number): unknown {
  if (!(err instanceof RepoError)) return err;
  const what = err.reason === 'not-found' ? 'is missing' : err.reason === 'corrupt' ? 'is damaged' : 'cannot be read';
  // A backup does not store a chunk that is present again, so a damaged one must go before one can replace it.
  const heal =
    err.reason === 'corrupt'
      ? ' (dmthin backups verify --data --repair removes damaged chunks; the next dmthin backup of a snapshot that still holds that data then stores it again)'
      : '';
  return new RepoError(err.reason, `backup ${backup}: chunk ${e.index} (device bytes ${off}..${off + len - 1}) ${what}: ${err.message}${heal}`, {
    key: err.key,
    backup,
    index: e.index,
    offset: off,
    length: len,
    chunk: e.id,
    cause: err,
  });
}
