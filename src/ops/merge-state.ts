/**
 * What an interrupted merge left to do, kept between runs. A merge records
 * itself before its first write (`copying`) and again once the copy is
 * fsynced (`deleting`); the file goes when the merge is complete. A re-run
 * that finds it redoes the copy (copying a block twice while nothing else
 * writes is harmless) or only the delete, and never lets the half-written
 * origin be merged into from another thin or onto another origin.
 *
 * Location: one file per pool and snapshot under /var/lib/dmthin/merge/
 * (beside receive's state directory). Written atomically (temp file, fsync,
 * rename, fsync of the directory). One merge per snapshot at a time: an
 * flock(2) on `<state file>.lock`, dropped by the kernel when the process
 * dies, so no stale lock needs cleaning up.
 */
import { open, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { DmthinError, MergeError } from '../errors';
import { JobLock } from '../native/job-lock';
import { readStateText, writeFileAtomically } from '../output/file';

export const DEFAULT_MERGE_STATE_DIR = '/var/lib/dmthin/merge';

/** A thin device told apart from a later one that reuses its id. */
export interface ThinIdentity {
  devId: number;
  creationTime: number;
  /** Decimal (a u64). */
  transactionId: string;
  /**
   * The snapshot's mapping-root digest (mappingRootDigest) when its merge
   * began: a thin made again under the same id before the pool's time moved
   * on (create_thin does not move it) has the same id, time and transaction
   * but other mappings. Absent for origins (a merge writes them) and in
   * states of dmthin before it.
   */
  mappingRoot?: string;
}

export type MergeOrigin = { kind: 'external'; path: string; dev: string } | { kind: 'in-pool'; thin: ThinIdentity };

export interface MergeState {
  format: 'dmthin-merge-state';
  version: 1;
  /** dm uuid (`dm-uuid:`) or name (`dm-name:`) of the pool. */
  pool: string;
  snap: ThinIdentity;
  origin: MergeOrigin;
  phase: 'copying' | 'deleting';
  /** ISO time of the last change. */
  at: string;
}

/** Where the merge of thin `snap` of pool `poolId` is recorded unless told otherwise. */
export function defaultMergeStateFile(poolId: string, snap: number, dir = DEFAULT_MERGE_STATE_DIR): string {
  return join(dir, `${encodeURIComponent(poolId)}.snap${snap}.json`);
}

export function sameThin(a: ThinIdentity, b: ThinIdentity): boolean {
  return (
    a.devId === b.devId &&
    a.creationTime === b.creationTime &&
    a.transactionId === b.transactionId &&
    (a.mappingRoot === undefined || b.mappingRoot === undefined || a.mappingRoot === b.mappingRoot)
  );
}

export function sameOrigin(a: MergeOrigin, b: MergeOrigin): boolean {
  if (a.kind === 'external' && b.kind === 'external') return a.dev === b.dev;
  if (a.kind === 'in-pool' && b.kind === 'in-pool') return sameThin(a.thin, b.thin);
  return false;
}

export function describeOrigin(o: MergeOrigin): string {
  return o.kind === 'external' ? `external origin ${o.path} (${o.dev})` : `thin ${o.thin.devId}`;
}

function identityOk(x: unknown): x is ThinIdentity {
  const i = x as Record<string, unknown> | null;
  return !!i && Number.isInteger(i.devId) && Number.isInteger(i.creationTime) && typeof i.transactionId === 'string' && /^[0-9]{1,20}$/.test(i.transactionId) && (i.mappingRoot === undefined || (typeof i.mappingRoot === 'string' && /^[0-9a-f]{64}$/.test(i.mappingRoot)));
}

/** Why a parsed state cannot be used, or null. */
export function mergeStateProblem(s: unknown): string | null {
  if (typeof s !== 'object' || s === null || Array.isArray(s)) return 'not a JSON object';
  const o = s as Record<string, unknown>;
  if (o.format !== 'dmthin-merge-state') return 'not a dmthin merge state file (format)';
  if (o.version !== 1) return `state format version ${String(o.version)} (this build reads version 1)`;
  if (typeof o.pool !== 'string') return 'pool is not a string';
  if (!identityOk(o.snap)) return 'snap is not a thin identity';
  const og = o.origin as Record<string, unknown> | null;
  if (!og || typeof og !== 'object') return 'no origin';
  if (og.kind === 'external') {
    if (typeof og.path !== 'string' || typeof og.dev !== 'string' || !/^\d+:\d+$/.test(og.dev)) return 'origin: path or dev missing';
  } else if (og.kind === 'in-pool') {
    if (!identityOk(og.thin)) return 'origin: thin is not a thin identity';
  } else return 'origin: unknown kind';
  if (o.phase !== 'copying' && o.phase !== 'deleting') return 'phase is neither copying nor deleting';
  return null;
}

/** The recorded state, or null if there is none; a damaged file is refused (it is never guessed around). */
export async function readMergeState(file: string): Promise<MergeState | null> {
  let text: string;
  try {
    const read = await readStateText(file, (why) => new MergeError('state-file', `the merge state ${file} is ${why}`, { path: file }));
    if (read === null) return null;
    text = read;
  } catch (e) {
    if (e instanceof DmthinError) throw e;
    throw new DmthinError((e as NodeJS.ErrnoException).code ?? 'EIO', `cannot read merge state ${file}: ${(e as Error).message}`, { path: file, cause: e });
  }
  let s: unknown;
  let problem: string | null;
  try {
    s = JSON.parse(text);
    problem = mergeStateProblem(s);
  } catch (e) {
    problem = `not valid JSON (${(e as Error).message}; cut short?)`;
  }
  if (problem) {
    throw new MergeError('state-file', `the merge state ${file} is damaged: ${problem}. Check what the origin holds, then remove the file and merge again`, { path: file });
  }
  return s as MergeState;
}

export async function writeMergeState(file: string, state: MergeState): Promise<void> {
  await writeFileAtomically(file, JSON.stringify(state, null, 2) + '\n');
}

/** Removes the state once the merge is complete (durably: a crash after this finds no merge to finish). */
export async function removeMergeState(file: string): Promise<void> {
  try {
    await unlink(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new DmthinError((e as NodeJS.ErrnoException).code ?? 'EIO', `cannot remove merge state ${file}: ${(e as Error).message}`, { path: file, cause: e });
    }
  }
  await syncDir(dirname(file));
}

async function syncDir(dir: string): Promise<void> {
  const d = await open(dir, 'r').catch(() => undefined);
  if (d) await d.sync().catch(() => undefined).finally(() => d.close());
}

/**
 * Holds `<state file>.lock` (flock): one merge of a snapshot at a time; and
 * with `pool` (its name and major:minor) the pool's own sysfs directory
 * (/sys/dev/block/M:m, no writable directory needed): one merge in a pool at
 * a time. Two merges into one origin (from two snapshots, with two state
 * files) each planned against the origin as it was before either wrote, and
 * the origin ended as neither snapshot; merges are rare, and a second one is
 * refused, not queued.
 */
export class MergeLock {
  private constructor(private readonly locks: JobLock) {}

  static acquire(stateFile: string, pool?: { name: string; dev: string }): MergeLock {
    const locks = new JobLock('merge');
    try {
      locks.lockStateFile(stateFile, (path) => `another merge of this snapshot is running (${path} is locked): wait for it to finish`);
      if (pool) {
        locks.lockFile(
          `/sys/dev/block/${pool.dev}`,
          () => `another dmthin merge is running in pool ${pool.name} (one merge a pool at a time: it may write the same origin): wait for it to finish, then merge again`,
        );
      }
    } catch (e) {
      locks.release();
      throw e;
    }
    return new MergeLock(locks);
  }

  release(): void {
    this.locks.release();
  }
}
