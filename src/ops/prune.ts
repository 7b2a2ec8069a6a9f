/**
 * Pruning a repository: which backups a retention policy keeps (per
 * volume: the newest N; the newest of each of the last N days; of each of
 * the last N weeks; the union of the three), deleting the manifests of the
 * others, then collecting the chunks no manifest references any more
 * (Repository.collectGarbage, which excludes concurrent backups: see
 * docs/repository.md). Days and weeks are UTC; weeks are ISO weeks
 * (Monday first).
 */
import { check, UsageError } from '../errors';
import { damagedBackupsError, Repository, type BackupSummary, type DamagedBackup, type KeySource } from '../repo/repository';

/** A retention policy: at least one count, and at least one backup kept per volume. */
export interface PrunePolicy {
  /** Keep the newest N backups of each volume. */
  keepLast?: number;
  /** Keep the newest backup of each of the newest N days (UTC) that have one. */
  keepDaily?: number;
  /** Keep the newest backup of each of the newest N ISO weeks (UTC) that have one. */
  keepWeekly?: number;
}

/** Options of prune. */
export interface PruneOptions extends PrunePolicy {
  /** The repository: a location or an open Repository. */
  repo: string | Repository;
  /** The key of an encrypted repository given by location. */
  key?: KeySource;
  /** Only this volume's backups (default: every volume, each on its own). */
  volume?: string;
  /** Say what would be deleted, delete nothing. */
  dryRun?: boolean;
  /** Cancels the work, which then rejects with AbortError. */
  signal?: AbortSignal;
  /** Told of what the collection works around (a damaged journal segment), one line each. */
  onWarning?: (message: string) => void;
  /** Told of each backup as it is deleted: what an interrupted prune had done is known. */
  onDeleted?: (id: string) => void;
}

/** What prune did. */
export interface PruneResult {
  /** Ids of the backups kept. */
  kept: string[];
  /** Ids of the backups deleted (or, with dryRun, to delete). */
  deleted: string[];
  /** Chunks the garbage collection removed (0 with dryRun). */
  deletedChunks: number;
  /** Stored bytes it freed. */
  freedBytes: number;
  /** Temporary files of interrupted writes it removed (local repositories; 0 with dryRun). */
  deletedTemporary: number;
}

function count(name: string, v: number | undefined): number {
  if (v === undefined) return 0;
  if (!Number.isSafeInteger(v) || v < 0) throw new UsageError(`${name} must be a non-negative integer, got ${v}`);
  return v;
}

/** Monday 00:00 UTC of the ISO week of `ms`, as a key. */
function weekKey(ms: number): string {
  const d = new Date(ms);
  const day = (d.getUTCDay() + 6) % 7; // Monday = 0
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() - day)).toISOString().slice(0, 10);
}

/** The ids a policy keeps among `backups` (all volumes; each volume on its own). */
export function selectKept(backups: readonly BackupSummary[], policy: PrunePolicy): Set<string> {
  if (!Array.isArray(backups)) throw new UsageError('backups must be an array of BackupSummary (Repository.listBackups)');
  check.required(policy, 'selectKept');
  const last = count('keepLast', policy.keepLast);
  const daily = count('keepDaily', policy.keepDaily);
  const weekly = count('keepWeekly', policy.keepWeekly);
  if (last + daily + weekly === 0) throw new UsageError('a prune policy must keep something: give keepLast, keepDaily or keepWeekly of at least 1');
  const byVolume = new Map<string, BackupSummary[]>();
  for (const b of backups) byVolume.set(b.volume, [...(byVolume.get(b.volume) ?? []), b]);
  const keep = new Set<string>();
  for (const list of byVolume.values()) {
    const newest = [...list].sort((a, b) => b.createdMs - a.createdMs || (a.id < b.id ? 1 : -1));
    newest.slice(0, last).forEach((b) => keep.add(b.id));
    for (const [n, key] of [
      [daily, (ms: number) => new Date(ms).toISOString().slice(0, 10)],
      [weekly, weekKey],
    ] as const) {
      const seen = new Set<string>();
      for (const b of newest) {
        if (seen.size >= n) break;
        const k = key(b.createdMs);
        if (seen.has(k)) continue;
        seen.add(k);
        keep.add(b.id);
      }
    }
  }
  return keep;
}

/** Deletes the backups a policy does not keep, then the chunks nothing references. */
export async function prune(opts: PruneOptions): Promise<PruneResult> {
  check.required(opts, 'prune');
  check.nameOr(opts.repo, 'repo', Repository);
  check.signal(opts.signal);
  check.callback(opts.onWarning, 'onWarning');
  check.callback(opts.onDeleted, 'onDeleted');
  selectKept([], opts); // the policy is checked before the repository is opened
  const owned = typeof opts.repo === 'string';
  const repo = typeof opts.repo === 'string' ? await Repository.open(opts.repo, { key: opts.key, signal: opts.signal }) : opts.repo;
  try {
    // Every header must read, also of other volumes: GC would stop at it, and nothing may be deleted before.
    const damaged: DamagedBackup[] = [];
    const all = await repo.listBackups({ volume: opts.volume, signal: opts.signal, onDamaged: (d) => damaged.push(d) });
    if (damaged.length) throw damagedBackupsError(repo.location, damaged, 'prune stopped before deleting anything: nothing was deleted');
    const keep = selectKept(all, opts);
    const deleted = all.filter((b) => !keep.has(b.id)).map((b) => b.id);
    const kept = all.filter((b) => keep.has(b.id)).map((b) => b.id);
    if (opts.dryRun) return { kept, deleted, deletedChunks: 0, freedBytes: 0, deletedTemporary: 0 };
    // One pass under the exclusive lock: every backup kept is read and checked before any is deleted.
    const gc = await repo.collectGarbage({ deleteBackups: deleted, signal: opts.signal, onWarning: opts.onWarning, onBackupDeleted: opts.onDeleted });
    return { kept, deleted, deletedChunks: gc.deletedChunks, freedBytes: gc.freedBytes, deletedTemporary: gc.deletedTemporary };
  } finally {
    if (owned) await repo.close();
  }
}
