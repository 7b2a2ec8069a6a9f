/**
 * Which metadata snapshots this host's dmthin processes hold, so that one a
 * killed process left reserved (SIGKILL cannot be caught) is released by the
 * next dmthin that needs one, instead of every later reserve failing with
 * EBUSY until someone releases it by hand.
 *
 * A record is written once the reserve succeeded and its root is known, and
 * removed with the release: `<dir>/<pool name>.json` with the root, the
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

interface HeldRecord {
  format: 'dmthin-held-metadata-snap';
  version: 1;
  pool: string;
  root: number;
  pid: number;
  startTime: string;
  bootId: string;
}

/** The directory in use: DMTHIN_HELD_DIR for tests, else HELD_RECORD_DIR. */
function dir(): string {
  return process.env.DMTHIN_HELD_DIR || HELD_RECORD_DIR;
}

function fileOf(pool: string): string {
  return join(dir(), `${encodeURIComponent(pool)}.json`);
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
  const file = fileOf(pool);
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    mkdirSync(dir(), { recursive: true, mode: 0o755 });
    writeFileSync(tmp, JSON.stringify(rec) + '\n', { mode: 0o644 });
    renameSync(tmp, file);
  } catch {
    try {
      unlinkSync(tmp);
    } catch {
      // not made
    }
  }
}

function readRecord(pool: string): HeldRecord | null {
  try {
    const r = JSON.parse(readFileSync(fileOf(pool), 'utf8')) as HeldRecord;
    if (r?.format !== 'dmthin-held-metadata-snap' || r.version !== 1 || r.pool !== pool || !Number.isSafeInteger(r.root) || !Number.isSafeInteger(r.pid)) return null;
    return r;
  } catch {
    return null;
  }
}

/** Removes this process's record of `root` (another process's record is left alone). */
export function forgetHeld(pool: string, root: number): void {
  const r = readRecord(pool);
  if (!r || r.root !== root || r.pid !== process.pid) return;
  try {
    unlinkSync(fileOf(pool));
  } catch {
    // gone already
  }
}

/** What the record of `pool` says about a held root. */
export type HeldOwner = { kind: 'orphaned' } | { kind: 'running'; pid: number } | { kind: 'unknown' };

/** Who holds `heldRoot` of `pool`, as far as this host's records tell. */
export function ownerOf(pool: string, heldRoot: number): HeldOwner {
  const r = readRecord(pool);
  if (!r || r.root !== heldRoot) return { kind: 'unknown' };
  const alive = r.bootId === bootId() && startTimeOf(r.pid) === r.startTime;
  return alive ? { kind: 'running', pid: r.pid } : { kind: 'orphaned' };
}

/** Drops the record of `pool` (its snapshot was released by someone). */
export function dropRecord(pool: string): void {
  try {
    unlinkSync(fileOf(pool));
  } catch {
    // none
  }
}
