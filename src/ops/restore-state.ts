/**
 * What a restore target holds, remembered between restores: the repository
 * and backup it was last restored from completely, or the one being written
 * (`pending`: the target is incomplete until it is restored again). A
 * restore of another backup of the same volume then writes only the chunks
 * that differ; anything it cannot trust (no state, a damaged one, a pending
 * restore, another repository, volume or geometry, a file target whose size
 * or modification time changed since) means a full restore.
 *
 * Location: `<target>.dmthin-restore.json` next to a regular-file target;
 * for a block device one file per device path under
 * /var/lib/dmthin/restore/. Written atomically. One restore per target at a
 * time: an flock(2) on `<state file>.lock` and, for a file target, on the
 * file itself (the kernel drops both when the process ends).
 */
import { DmthinError } from '../errors';
import { JobLock } from '../native/job-lock';
import { defaultJobStateFile, readStateText, writeFileAtomically, type FileStamp } from '../output/file';

export type { FileStamp };

/** Where the restore state of block-device targets is kept by default. */
export const DEFAULT_RESTORE_STATE_DIR = '/var/lib/dmthin/restore';

/** One backup written to a target, as the restore state records it. */
export interface RestoreEntry {
  /** The repository's location. */
  repo: string;
  /** The backup id. */
  backup: string;
  /** Its volume. */
  volume: string;
  /** Its device size in bytes. */
  deviceSize: number;
  /** Its chunk size in bytes. */
  chunkSize: number;
  /** ISO time. */
  at: string;
}

/** A target's restore state file. */
export interface RestoreState {
  /** Identifies the file's kind. */
  format: 'dmthin-restore-state';
  /** The file format's version. */
  version: 1;
  /** The target the state is about. */
  target: string;
  /**
   * What the target was when the state was written (output/file.ts
   * targetIdentity). Absent in states written before stop 40.
   */
  targetId?: string;
  /** The backup the target holds completely, or null. */
  current: RestoreEntry | null;
  /** A restore that started writing and did not finish (the target is incomplete), or null. */
  pending: RestoreEntry | null;
  /** A file target's size and modification time after the last complete restore. */
  file: FileStamp | null;
}


/** Where the restore state of `target` lives unless told otherwise (one file per target, whichever path names it: output/file.ts defaultJobStateFile). */
export function defaultRestoreStateFile(target: string, blockDevice: boolean, stateDir = DEFAULT_RESTORE_STATE_DIR): string {
  return defaultJobStateFile(target, blockDevice, stateDir, '.dmthin-restore.json');
}

function entryOk(x: unknown): x is RestoreEntry {
  const e = x as Record<string, unknown> | null;
  return (
    typeof e === 'object' &&
    e !== null &&
    typeof e.repo === 'string' &&
    typeof e.backup === 'string' &&
    typeof e.volume === 'string' &&
    Number.isSafeInteger(e.deviceSize) &&
    Number.isSafeInteger(e.chunkSize)
  );
}

/** The state, or null when there is none or it cannot be trusted (a full restore follows either way). */
export async function readRestoreState(path: string): Promise<RestoreState | null> {
  let text: string | null;
  try {
    text = await readStateText(path, (why) => new DmthinError('EINVAL', `the restore state ${path} is ${why}`, { path }));
  } catch (e) {
    if (e instanceof DmthinError) throw e;
    throw new DmthinError((e as NodeJS.ErrnoException).code ?? 'EIO', `cannot read the restore state ${path}: ${(e as Error).message}`, { path, cause: e });
  }
  if (text === null) return null;
  try {
    const s = JSON.parse(text) as RestoreState;
    if (s.format !== 'dmthin-restore-state' || s.version !== 1) return null;
    if (s.current !== null && !entryOk(s.current)) return null;
    if (s.pending !== null && !entryOk(s.pending)) return null;
    if (s.targetId !== undefined && typeof s.targetId !== 'string') return null;
    return { ...s, file: s.file && Number.isFinite(s.file.size) && Number.isFinite(s.file.mtimeMs) ? s.file : null };
  } catch {
    return null;
  }
}

export async function writeRestoreState(path: string, s: RestoreState): Promise<void> {
  await writeFileAtomically(path, JSON.stringify(s, null, 2) + '\n');
}

/** One restore per target (see the file comment). */
export class RestoreLock {
  private readonly locks = new JobLock('restore');

  private constructor(private readonly target: string) {}

  static acquire(target: string, stateFile: string): RestoreLock {
    const l = new RestoreLock(target);
    try {
      l.locks.lockStateFile(stateFile, (path) => l.busy('restore', path));
      return l;
    } catch (e) {
      l.release();
      throw e;
    }
  }

  /** Locks a regular-file target too (once it exists). */
  lockTarget(): void {
    // A receive locks a file target the same way: either may hold it.
    this.locks.lockFile(this.target, (path) => this.busy('receive or restore', path));
  }

  private busy(job: string, path: string): string {
    return `another ${job} is writing to ${this.target} (${path} is locked): wait for it to finish`;
  }

  release(): void {
    this.locks.release();
  }
}
