/**
 * Repository locks as objects `locks/ID` through the Backend alone, so they
 * work on S3 as on a directory (docs/repository.md, "Locks"). Backups hold
 * shared locks, garbage collection an exclusive one. Taking a lock: remove
 * stale locks, refuse if a conflicting live lock is there, write ours, list
 * again and withdraw if a conflicting one appeared meanwhile (two racers both
 * withdraw; neither proceeds wrongly). A held lock is rewritten every
 * `refreshMs`; a lock not rewritten for `staleMs`, or one written on this
 * host by a process that no longer exists, is stale.
 */
import { readFileSync, readlinkSync } from 'node:fs';
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { RepoError, throwIfAborted } from '../errors';
import type { Backend } from './backend';
import { seal, unseal, type Compression, type RepoKeys } from './codec';

/** Lock timing (defaults: refresh every 5 minutes, stale after 30). */
export interface LockTiming {
  /** How often a held lock is rewritten. */
  refreshMs: number;
  /** A lock not rewritten for this long is stale and may be removed. */
  staleMs: number;
}

/** The default lock timing. */
export const DEFAULT_LOCK_TIMING: LockTiming = { refreshMs: 5 * 60_000, staleMs: 30 * 60_000 };

/** A lock object's content. */
export interface LockInfo {
  kind: 'shared' | 'exclusive';
  /** What holds it: `backup VOLUME`, `gc`... */
  purpose: string;
  host: string;
  pid: number;
  createdMs: number;
  refreshedMs: number;
  /** The backup session (journal) this lock keeps alive, if any. */
  session?: string;
  /**
   * Which boot of which machine and which pid namespace `pid` belongs to
   * (see processSpace); absent in locks of dmthin before it, and where
   * /proc cannot tell.
   */
  space?: string;
}

/** A lock as a scan found it. */
export interface FoundLock {
  key: string;
  /** Null when the object could not be read (counted live until its mtime is stale). */
  info: LockInfo | null;
  mtimeMs: number;
}

const NONE: Compression = { algorithm: 'none', level: 0 };

/**
 * The kernel's boot id and this process's pid namespace: a pid names this
 * process's neighbour only within both. A host name alone is no such
 * proof: a container, or a clone of a VM, has the same one, and its live
 * backup's lock was judged stale by a prune here ("its pid is gone"),
 * which then deleted the chunks that backup had stored.
 */
let space: string | null | undefined;
function processSpace(): string | null {
  if (space !== undefined) return space;
  try {
    space = `${readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()} ${readlinkSync('/proc/self/ns/pid')}`;
  } catch {
    space = null;
  }
  return space;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function isLockInfo(v: unknown): v is LockInfo {
  const o = v as Record<string, unknown> | null;
  return (
    o !== null &&
    typeof o === 'object' &&
    (o.kind === 'shared' || o.kind === 'exclusive') &&
    typeof o.purpose === 'string' &&
    typeof o.host === 'string' &&
    Number.isSafeInteger(o.pid) &&
    Number.isFinite(o.createdMs) &&
    Number.isFinite(o.refreshedMs) &&
    Math.abs(o.refreshedMs as number) <= 8.64e15 &&
    (o.space === undefined || typeof o.space === 'string')
  );
}

/** The lock rules over one backend. */
export class Locks {
  constructor(
    private readonly backend: Backend,
    private readonly keys: RepoKeys | null,
    readonly timing: LockTiming,
  ) {}

  /** Is this lock stale at `now`? */
  isStale(l: FoundLock, now = Date.now()): boolean {
    // Unreadable, or refreshed "in the future" (a clock far ahead, or a forged
    // time): judged by when the object was last written, not by what it says.
    if (!l.info || l.info.refreshedMs > now + this.timing.staleMs) return now - l.mtimeMs > this.timing.staleMs;
    if (now - l.info.refreshedMs > this.timing.staleMs) return true;
    // Its pid is looked up only where it means this machine's process: the same host name, and
    // (locks that record it) the same boot and pid namespace. Elsewhere only the time tells.
    if (l.info.host !== hostname() || l.info.pid === process.pid) return false;
    if (l.info.space !== undefined && l.info.space !== processSpace()) return false;
    return !pidAlive(l.info.pid);
  }

  /** Every lock object, read. */
  async scan(signal?: AbortSignal): Promise<FoundLock[]> {
    const out: FoundLock[] = [];
    for await (const o of this.backend.list('locks/', { signal })) {
      let info: LockInfo | null = null;
      try {
        info = JSON.parse(unseal(await this.backend.get(o.key, { signal, maxBytes: 1 << 20 }), o.key, this.keys, 1 << 20).toString('utf8')) as LockInfo;
        // Not the shape a lock is written with ({} made prune say "Invalid time value"): unreadable.
        if (!isLockInfo(info)) info = null;
      } catch (e) {
        if (e instanceof RepoError && e.reason === 'not-found') continue; // released meanwhile
        if ((e as Error).name === 'AbortError') throw e;
      }
      out.push({ key: o.key, info, mtimeMs: o.mtimeMs });
    }
    return out;
  }

  /** Live locks after removing the stale ones (never `own`, the caller's lock). */
  async live(signal?: AbortSignal, own?: string): Promise<FoundLock[]> {
    const all = await this.scan(signal);
    const now = Date.now();
    const stale = all.filter((l) => l.key !== own && this.isStale(l, now));
    if (stale.length) await this.backend.delete(stale.map((l) => l.key), { signal });
    return all.filter((l) => !stale.includes(l));
  }

  /** Takes a lock; RepoError 'locked' naming the holder when a conflicting live lock exists. */
  async acquire(kind: LockInfo['kind'], purpose: string, session?: string, signal?: AbortSignal, opts: { freesSpace?: boolean } = {}): Promise<HeldLock> {
    const conflict = (ls: FoundLock[], own?: string) =>
      ls.find((l) => l.key !== own && (kind === 'exclusive' || l.info === null || l.info.kind === 'exclusive'));
    const refuse = (l: FoundLock) => {
      const who = l.info ? `${l.info.purpose} (host ${l.info.host}, pid ${l.info.pid}, refreshed ${new Date(l.info.refreshedMs).toISOString()})` : `an unreadable lock ${l.key}`;
      return new RepoError(
        'locked',
        `the repository at ${this.backend.location} is locked by ${who}; wait for it to finish (a lock not refreshed for ${Math.round(this.timing.staleMs / 60000)} minutes is stale and removed)`,
        { key: l.key },
      );
    };
    const before = conflict(await this.live(signal));
    if (before) throw refuse(before);
    const now = Date.now();
    const where = processSpace();
    const info: LockInfo = { kind, purpose, host: hostname(), pid: process.pid, createdMs: now, refreshedMs: now, ...(session ? { session } : {}), ...(where ? { space: where } : {}) };
    const key = `locks/${now.toString(16).padStart(12, '0')}-${randomBytes(8).toString('hex')}`;
    const freesSpace = opts.freesSpace === true;
    await this.backend.put(key, seal(Buffer.from(JSON.stringify(info)), key, this.keys, NONE), { signal, freesSpace });
    const held = new HeldLock(this.backend, this.keys, key, info, this.timing, freesSpace);
    try {
      throwIfAborted(signal);
      const after = conflict(await this.live(signal, key), key);
      if (after) throw refuse(after);
    } catch (e) {
      await held.release();
      throw e;
    }
    return held;
  }
}

/** A lock this process holds; refreshed in the background until released. */
export class HeldLock {
  private lastOk: number;
  private lost = false;
  private timer: NodeJS.Timeout | undefined;
  private refreshing: Promise<void> | undefined;

  constructor(
    private readonly backend: Backend,
    private readonly keys: RepoKeys | null,
    readonly key: string,
    private readonly info: LockInfo,
    private readonly timing: LockTiming,
    /** The lock of work that frees space: its writes may use a full directory's reserve (PutOptions.freesSpace). */
    private readonly freesSpace = false,
  ) {
    this.lastOk = info.refreshedMs;
    this.timer = setInterval(() => void this.refresh().catch(() => undefined), timing.refreshMs);
    this.timer.unref();
  }

  /** Rewrites the lock with a new time, unless it was removed or is too old to refresh safely (then it is lost for good). */
  refresh(): Promise<void> {
    this.refreshing ??= (async () => {
      try {
        if (this.lost || !this.timer) return;
        // Never bring back a lock others may already have judged stale and removed:
        // past half the stale time it is given up instead.
        if (Date.now() - this.lastOk > this.timing.staleMs / 2 || !(await this.backend.stat(this.key))) {
          this.lost = true;
          return;
        }
        const now = Date.now();
        const info = { ...this.info, refreshedMs: now };
        await this.backend.put(this.key, seal(Buffer.from(JSON.stringify(info)), this.key, this.keys, NONE), { freesSpace: this.freesSpace });
        this.lastOk = now;
      } finally {
        this.refreshing = undefined;
      }
    })();
    return this.refreshing;
  }

  /**
   * Throws RepoError 'locked' unless the lock is surely still held: present
   * at the last refresh, and that refresh young enough that no other process
   * can have judged it stale.
   */
  check(): void {
    if (this.lost || Date.now() - this.lastOk > this.timing.staleMs / 2)
      throw new RepoError('locked', `the lock ${this.key} was lost (not refreshed in time, or removed as stale); the operation was stopped before it could do harm: run it again`, { key: this.key });
  }

  /** Stops refreshing and deletes the lock object. */
  async release(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.refreshing?.catch(() => undefined);
    await this.backend.delete([this.key]);
  }
}
