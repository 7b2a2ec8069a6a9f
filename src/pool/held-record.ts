/**
 * Which metadata snapshots this host's dmthin processes hold, so that one a
 * killed process left reserved (SIGKILL cannot be caught) is released by the
 * next dmthin that needs one, instead of every later reserve failing with
 * EBUSY until someone releases it by hand.
 *
 * A record is written once the reserve succeeded and its root is known, and
 * removed with the release: `<dir>/<pool name>.json` (/var/lib/dmthin/held,
 * else /run/dmthin/held) with the root, the
 * process (pid and its start time) and the boot. Another record's snapshot
 * counts as orphaned only when its process is gone (no such pid, another
 * start time, another boot) and the pool still holds exactly its root; a
 * snapshot someone else reserved (thin_dump -m, a script) has no record and
 * is never touched. Records are best effort: a record that cannot be written
 * only means no automatic release later.
 */
import { mkdirSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Where records live (root's state directory, beside restore/ and merge/). */
export const HELD_RECORD_DIR = '/var/lib/dmthin/held';
/**
 * Where a record goes when HELD_RECORD_DIR cannot be written (/var/lib read-only
 * or full): /run is a tmpfs, and a record is only needed until the next boot.
 * Without it a dmthin killed there left its snapshot held for good (hunt L item 7).
 */
export const HELD_RECORD_FALLBACK_DIR = '/run/dmthin/held';

interface HeldRecord {
  format: 'dmthin-held-metadata-snap';
  version: 1;
  pool: string;
  root: number;
  pid: number;
  startTime: string;
  bootId: string;
}

/** The directories in use, first choice first: DMTHIN_HELD_DIR (for tests; a ':'-separated list), else HELD_RECORD_DIR and its fallback. */
function dirs(): string[] {
  const env = process.env.DMTHIN_HELD_DIR;
  return env ? env.split(':').filter((d) => d !== '') : [HELD_RECORD_DIR, HELD_RECORD_FALLBACK_DIR];
}

function fileOf(dir: string, pool: string): string {
  return join(dir, `${encodeURIComponent(pool)}.json`);
}

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
}

/** Field 22 of /proc/PID/stat (start time in clock ticks since boot), or null when there is no such process. */
function startTimeOf(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

/** Records that this process holds `root` of `pool`. */
export function recordHeld(pool: string, root: number): void {
  const rec: HeldRecord = { format: 'dmthin-held-metadata-snap', version: 1, pool, root, pid: process.pid, startTime: startTimeOf(process.pid) ?? '', bootId: bootId() };
  const all = dirs();
  for (const [i, dir] of all.entries()) {
    const file = fileOf(dir, pool);
    const tmp = `${file}.${process.pid}.tmp`;
    try {
      mkdirSync(dir, { recursive: true, mode: 0o755 });
      writeFileSync(tmp, JSON.stringify(rec) + '\n', { mode: 0o644 });
      renameSync(tmp, file);
      // A stale record in a directory before this one (not writable now, perhaps removable) would speak for the same pool.
      for (const before of all.slice(0, i)) {
        try {
          unlinkSync(fileOf(before, pool));
        } catch {
          // none, or not removable: ownerOf prefers a live record
        }
      }
      return;
    } catch {
      try {
        unlinkSync(tmp);
      } catch {
        // not made
      }
    }
  }
}

/** The records of `pool` in each directory, with where each is. */
function readRecords(pool: string): { file: string; r: HeldRecord }[] {
  const found: { file: string; r: HeldRecord }[] = [];
  for (const dir of dirs()) {
    const file = fileOf(dir, pool);
    try {
      const r = JSON.parse(readFileSync(file, 'utf8')) as HeldRecord;
      if (r?.format !== 'dmthin-held-metadata-snap' || r.version !== 1 || r.pool !== pool || !Number.isSafeInteger(r.root) || !Number.isSafeInteger(r.pid)) continue;
      found.push({ file, r });
    } catch {
      // none there, or not readable: counts as none
    }
  }
  return found;
}

/** Removes this process's record of `root` (another process's record is left alone). */
export function forgetHeld(pool: string, root: number): void {
  for (const { file, r } of readRecords(pool)) {
    if (r.root !== root || r.pid !== process.pid) continue;
    try {
      unlinkSync(file);
    } catch {
      // gone already
    }
  }
}

/** What the record of `pool` says about a held root. */
export type HeldOwner = { kind: 'orphaned' } | { kind: 'running'; pid: number } | { kind: 'unknown' };

/** Who holds `heldRoot` of `pool`, as far as this host's records tell. */
export function ownerOf(pool: string, heldRoot: number): HeldOwner {
  // A record of another root is stale (someone else reserved since): only those of this root count, and
  // a live one among them wins (a dead process's record in one directory, a live one's in the fallback).
  const rs = readRecords(pool).filter((x) => x.r.root === heldRoot).map((x) => x.r);
  if (rs.length === 0) return { kind: 'unknown' };
  const boot = bootId();
  const live = rs.find((r) => r.bootId === boot && startTimeOf(r.pid) === r.startTime);
  return live ? { kind: 'running', pid: live.pid } : { kind: 'orphaned' };
}

/** Drops the records of `pool` (its snapshot was released by someone). */
export function dropRecord(pool: string): void {
  for (const dir of dirs()) {
    try {
      unlinkSync(fileOf(dir, pool));
    } catch {
      // none
    }
  }
}
