/**
 * The replication cycle as a state machine over a small host interface, so
 * that every crash point can be tried on the host (test/ops/replication.test.ts)
 * with the same code the real replicator runs (ops/replicate.ts).
 *
 * Invariants, each kept by writing the state (atomically) BEFORE the step it
 * covers:
 * - a snapshot id is recorded (pending, phase 'creating') before create_snap
 *   is sent, so a crash can never leak a snapshot the state does not name;
 * - the devices suspended around create_snap are recorded before they are
 *   suspended, so a restart resumes them;
 * - a snapshot becomes `confirmed` (a possible base) only after the receiver
 *   has confirmed the whole stream; the newest confirmed snapshot is never
 *   deleted (it is what the target holds);
 * - snapshots to delete move to `doomed` in the same write that confirms the
 *   new one; a restart deletes whatever of `doomed` still exists;
 * - an interrupted transfer is retried with the SAME stream (same snapshot,
 *   same base: streams are deterministic), which a dmthin receiver accepts
 *   whether it had applied none, part or all of it. A new snapshot is taken
 *   only once the pending one is confirmed, so the target never sees streams
 *   out of order.
 */
import { DmthinError, StreamError, UsageError, throwIfAborted } from '../errors';

/** A snapshot the receiver confirmed. */
export interface ConfirmedSnapshot {
  devId: number;
  /** identityKey() of the snapshot as the stream named it. */
  key: string;
  /** The digest (hex) of the stream that carried it. */
  digest: string;
  /** ISO time the snapshot was taken. */
  takenAt: string;
  /**
   * mappingRootDigest() of the snapshot when it was sent (states written
   * before it was recorded lack it). A base whose root differs now was
   * written, or deleted and made again under its id: not what the target holds.
   */
  mappingRoot?: string;
}

export interface PendingSnapshot {
  devId: number;
  /** 'creating': create_snap may or may not have happened; 'created': it did. */
  phase: 'creating' | 'created';
  /** Devices suspended (or about to be) around create_snap, resumed after it. */
  suspended: string[];
  /** ISO time the snapshot was (about to be) taken. */
  takenAt: string;
  /** Bytes: the replicated device's size when the snapshot was taken. */
  deviceSize: number;
  /**
   * The replicated thin's snapshotted_time before create_snap: the kernel's
   * create_snap advances the pool's time and gives the snapshot's
   * creation_time and the origin's snapshotted_time that new time, which no
   * other device gets. A restart takes a thin of this id as the snapshot it
   * made only then (see recover). Absent in states written before.
   */
  originSnapshotted?: number;
}

export interface ReplicationState {
  format: 'dmthin-replicate-state';
  version: 1;
  /** The pool's identity (dm uuid, else name). */
  pool: string;
  /** The replicated thin device. */
  thin: number;
  /** Snapshot ids are taken from this range (inclusive) and no other. */
  ids: { first: number; last: number };
  /** Confirmed snapshots still kept, oldest first; the last is the base of the next increment. */
  confirmed: ConfirmedSnapshot[];
  pending: PendingSnapshot | null;
  /** Snapshot ids to delete (never the newest confirmed). */
  doomed: number[];
}

export interface TransferResult {
  /** identityKey() of the snapshot sent. */
  key: string;
  /** mappingRootDigest() of the snapshot sent. */
  mappingRoot: string;
  digest: string;
  bytes: number;
  dataBlocks: number;
  discardBlocks: number;
}

/** What the cycle needs from the world. The real one is in ops/replicate.ts. */
export interface ReplicationHost {
  readState(): Promise<ReplicationState | null>;
  /** Atomic: after a crash either the old or the new state is read back. */
  writeState(s: ReplicationState): Promise<void>;
  /** Thin device ids the pool holds now. */
  thinIds(): Promise<Set<number>>;
  /** mappingRootDigest() of thin `id` now, null when the pool has no thin `id`. */
  mappingRoot(id: number): Promise<string | null>;
  /** Thin `id`'s creation_time and snapshotted_time now, null when the pool has no thin `id`. */
  thinTimes(id: number): Promise<{ creationTime: number; snapshottedTime: number } | null>;
  /** Active devices of thin `id` that are not suspended (suspended around create_snap). */
  activeUnsuspended(id: number): Promise<string[]>;
  isSuspended(name: string): Promise<boolean>;
  suspend(name: string): Promise<void>;
  resume(name: string): Promise<void>;
  /** The replicated device's size in bytes now. */
  deviceSize(): Promise<number>;
  /** create_snap, nothing else. */
  createSnap(id: number, origin: number): Promise<void>;
  deleteThin(id: number): Promise<void>;
  /** Streams `snap` (incremental against `base`, or full) to the receiver; resolves once it confirmed. */
  transfer(snap: number, base: number | null, deviceSize: number, signal?: AbortSignal): Promise<TransferResult>;
  now(): Date;
  /** Named points of the cycle (tests kill the process at one: see docs/testing.md). */
  checkpoint?(name: CheckpointName): void;
}

export type CheckpointName = 'suspended' | 'snap-created' | 'created-recorded' | 'sent' | 'confirmed' | 'cleanup';

/** What one confirmed replication cycle did. */
export interface CycleReport {
  /** The snapshot sent in this cycle. */
  snapshot: number;
  /** The base it was sent against, or null for a full stream. */
  base: number | null;
  /** The cycle finished a transfer an earlier run had started (same stream again). */
  resumed: boolean;
  /** Stream bytes sent. */
  bytes: number;
  /** Blocks carried as data. */
  dataBlocks: number;
  /** Blocks carried as discards. */
  discardBlocks: number;
  /** Snapshots deleted after the confirmation. */
  deleted: number[];
  /** Snapshots the restart found unconfirmed and deleted (never sent completely, or left by a crash during create_snap). */
  recovered: number[];
  /**
   * A thin of the id an interrupted create_snap had chosen that is not the
   * snapshot it would have made (another program's: its times say so): left
   * in the pool, not deleted.
   */
  notOurs?: number;
  /**
   * Why a full stream was sent, when one was: the first cycle, the base
   * snapshot deleted, or changed since it was sent (written, or deleted and
   * made again under its id), or the receiver refused the increment because
   * the target does not hold its base (replaced, written, another receive
   * state) while the base is as it was sent, or because the thin's size is
   * not the one the base was received at (resized), or because the caller
   * asked for one (`full`).
   */
  fullReason?: 'first' | 'base-gone' | 'base-changed' | 'target-lacks-base' | 'size-changed' | 'asked';
  /**
   * The base snapshot that changed since it was sent (fullReason
   * 'base-changed'): no longer counted as replication's, and left in the
   * pool (it may be a device someone made under the id), never deleted.
   */
  abandoned?: number;
  /** When the sent snapshot was taken. */
  takenAt: string;
  /** Milliseconds from taking the snapshot to its confirmation: how far the target lags behind. */
  lagMs: number;
  /** Milliseconds the cycle took (recovery, snapshot, transfer, cleanup). */
  durationMs: number;
}

export interface ReplicationSettings {
  pool: string;
  thin: number;
  ids: { first: number; last: number };
  /** Confirmed snapshots to keep (>= 1: the base of the next increment). */
  keep: number;
}

export const MAX_THIN_ID = 2 ** 24 - 1;

/** A fresh state, or the recorded one after checking it belongs to these settings. */
export function adoptState(read: ReplicationState | null, s: ReplicationSettings, where: string): ReplicationState {
  if (!read) return { format: 'dmthin-replicate-state', version: 1, pool: s.pool, thin: s.thin, ids: { ...s.ids }, confirmed: [], pending: null, doomed: [] };
  if (read.pool !== s.pool || read.thin !== s.thin) {
    throw new UsageError(`${where} records the replication of thin ${read.thin} of pool ${read.pool}, not thin ${s.thin} of ${s.pool}: give another state file`, {
      path: where,
    });
  }
  if (read.ids.first !== s.ids.first || read.ids.last !== s.ids.last) {
    throw new UsageError(
      `${where} takes snapshot ids from ${read.ids.first}-${read.ids.last}, not ${s.ids.first}-${s.ids.last}: the range cannot change while snapshots of it exist`,
      { path: where },
    );
  }
  return read;
}

/** Why a parsed state cannot be used, or null. */
export function replicationStateProblem(x: unknown): string | null {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) return 'not a JSON object';
  const o = x as Record<string, unknown>;
  if (o.format !== 'dmthin-replicate-state') return 'not a dmthin replication state file (format)';
  if (o.version !== 1) return `state format version ${String(o.version)} (this build reads version 1)`;
  const id = (v: unknown) => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= MAX_THIN_ID;
  if (typeof o.pool !== 'string') return 'pool is not a string';
  if (!id(o.thin)) return 'thin is not a thin device id';
  const ids = o.ids as Record<string, unknown> | null;
  if (typeof ids !== 'object' || ids === null || !id(ids.first) || !id(ids.last) || (ids.first as number) > (ids.last as number)) return 'ids is not a range of thin ids';
  if (!Array.isArray(o.confirmed)) return 'confirmed is not a list';
  for (const c of o.confirmed as Record<string, unknown>[]) {
    if (typeof c !== 'object' || c === null || !id(c.devId) || typeof c.key !== 'string' || typeof c.digest !== 'string' || typeof c.takenAt !== 'string') {
      return 'a confirmed entry lacks devId, key, digest or takenAt';
    }
    if (c.mappingRoot !== undefined && (typeof c.mappingRoot !== 'string' || !/^[0-9a-f]{64}$/.test(c.mappingRoot))) return 'a confirmed entry has a mappingRoot that is not a SHA-256 in hex';
  }
  if (o.pending !== null) {
    const p = o.pending as Record<string, unknown>;
    if (
      typeof p !== 'object' ||
      !id(p.devId) ||
      (p.phase !== 'creating' && p.phase !== 'created') ||
      !Array.isArray(p.suspended) ||
      !Number.isSafeInteger(p.deviceSize) ||
      (p.originSnapshotted !== undefined && !(Number.isInteger(p.originSnapshotted) && (p.originSnapshotted as number) >= 0 && (p.originSnapshotted as number) < 2 ** 32))
    ) {
      return 'pending is not a pending snapshot';
    }
  }
  if (!Array.isArray(o.doomed) || !(o.doomed as unknown[]).every(id)) return 'doomed is not a list of thin ids';
  return null;
}

/**
 * Brings a recorded state back to a clean one after a crash: resumes what it
 * suspended, deletes what it doomed, drops a snapshot whose create_snap may
 * not have completed. A pending snapshot that was created stays pending: the
 * next cycle sends it (again).
 */
export async function recover(host: ReplicationHost, st: ReplicationState): Promise<{ removed: number[]; notOurs?: number }> {
  const removed: number[] = [];
  let notOurs: number | undefined;
  const ids = await host.thinIds();
  if (st.pending?.phase === 'creating') {
    for (const name of st.pending.suspended) if (await host.isSuspended(name)) await host.resume(name);
    if (ids.has(st.pending.devId)) {
      if (await madeByUs(host, st, st.pending)) st.doomed.push(st.pending.devId);
      else notOurs = st.pending.devId;
    }
    st.pending = null;
    await host.writeState(st);
  } else if (st.pending && !ids.has(st.pending.devId)) {
    // Deleted by someone else: nothing to resend.
    st.pending = null;
    await host.writeState(st);
  }
  if (st.doomed.length > 0) {
    const newest = st.confirmed.at(-1)?.devId;
    for (const id of st.doomed) {
      if (id === newest) throw new DmthinError('EUCLEAN', `replication state dooms snapshot ${id}, the base the target holds; refusing to delete it`);
      if (ids.has(id)) {
        await host.deleteThin(id);
        removed.push(id);
      }
    }
    st.doomed = [];
    await host.writeState(st);
  }
  return { removed, notOurs };
}

/**
 * Whether thin `p.devId`, found after a create_snap of it was interrupted,
 * is the snapshot that create_snap made: its creation time is later than the
 * origin's snapshot time recorded before, and the origin's snapshot time is
 * now its creation time (create_snap gives both a new time). Another
 * program's thin of that id (another replication's snapshot, a create_thin)
 * fails one of the two. A state from before originSnapshotted: taken as ours.
 */
async function madeByUs(host: ReplicationHost, st: ReplicationState, p: PendingSnapshot): Promise<boolean> {
  if (p.originSnapshotted === undefined) return true;
  // One after the other: each reads through the pool's one metadata snapshot.
  const snap = await host.thinTimes(p.devId);
  const origin = await host.thinTimes(st.thin);
  return snap !== null && origin !== null && snap.creationTime > p.originSnapshotted && origin.snapshottedTime === snap.creationTime;
}

/** The lowest id of the range that neither the pool nor the state uses. */
export function pickSnapshotId(st: ReplicationState, inPool: Set<number>): number {
  const used = new Set<number>([...st.confirmed.map((c) => c.devId), ...st.doomed, ...(st.pending ? [st.pending.devId] : [])]);
  for (let id = st.ids.first; id <= st.ids.last; id++) if (!inPool.has(id) && !used.has(id)) return id;
  throw new UsageError(`no free thin id left in the replication range ${st.ids.first}-${st.ids.last}: widen it in a new state file, or delete thin devices in it`);
}

/**
 * One cycle: recover, take a snapshot unless one is pending, send it, and
 * after the receiver's confirmation record it and delete what `keep` no
 * longer needs.
 */
export async function runCycle(host: ReplicationHost, settings: ReplicationSettings, where: string, signal?: AbortSignal, full = false): Promise<CycleReport> {
  if (!Number.isInteger(settings.keep) || settings.keep < 1) throw new UsageError('keep must be at least 1 (the base of the next increment)');
  const started = host.now().getTime();
  const st = adoptState(await host.readState(), settings, where);
  const { removed: recovered, notOurs } = await recover(host, st);
  throwIfAborted(signal);
  const resumed = st.pending !== null;

  if (!st.pending) {
    const ids = await host.thinIds();
    if (!ids.has(st.thin)) throw new UsageError(`thin device ${st.thin} does not exist in pool ${st.pool}`, { devId: st.thin });
    const devId = pickSnapshotId(st, ids);
    const toSuspend = await host.activeUnsuspended(st.thin);
    const deviceSize = await host.deviceSize();
    const originSnapshotted = (await host.thinTimes(st.thin))?.snapshottedTime;
    st.pending = { devId, phase: 'creating', suspended: toSuspend, takenAt: host.now().toISOString(), deviceSize, ...(originSnapshotted !== undefined ? { originSnapshotted } : {}) };
    await host.writeState(st);
    const done: string[] = [];
    // EEXIST: the id was free when chosen and is taken now, by another
    // program (another replicator of the pool, a user), so the thin is not
    // ours. Left pending as 'creating', a restart would delete it as ours.
    let taken: unknown;
    try {
      for (const name of toSuspend) {
        await host.suspend(name);
        done.push(name);
      }
      host.checkpoint?.('suspended');
      try {
        await host.createSnap(devId, st.thin);
      } catch (e) {
        if ((e as { code?: unknown }).code !== 'EEXIST') throw e;
        taken = e;
      }
      if (taken === undefined) host.checkpoint?.('snap-created');
    } finally {
      for (const name of done.reverse()) await host.resume(name);
    }
    if (taken !== undefined) {
      st.pending = null;
      await host.writeState(st);
      throw new DmthinError(
        'EEXIST',
        `thin id ${devId} was taken by another program between choosing it and creating the snapshot (another replication of this pool, or a device made by hand): nothing of it is recorded; run the cycle again, or give each replication its own --ids range`,
        { devId, cause: taken },
      );
    }
    st.pending = { ...st.pending, phase: 'created', suspended: [] };
    await host.writeState(st);
    host.checkpoint?.('created-recorded');
  }
  throwIfAborted(signal);

  const pending = st.pending!;
  const baseEntry = st.confirmed.at(-1) ?? null;
  const ids = await host.thinIds();
  let base: number | null = null;
  let fullReason: CycleReport['fullReason'];
  if (!baseEntry) fullReason = 'first';
  else if (!ids.has(baseEntry.devId)) fullReason = 'base-gone';
  else if (baseEntry.mappingRoot !== undefined && (await host.mappingRoot(baseEntry.devId)) !== baseEntry.mappingRoot) fullReason = 'base-changed';
  else if (full) fullReason = 'asked';
  else base = baseEntry.devId;
  let r: TransferResult;
  try {
    r = await host.transfer(pending.devId, base, pending.deviceSize, signal);
  } catch (e) {
    // The receiver checks the base before it writes anything: a refused
    // increment (a state recorded before mapping roots were, or a base
    // changed between the check above and the send) is sent again in full.
    if (base === null || !(e instanceof StreamError) || (e.reason !== 'base-mismatch' && e.reason !== 'size-changed')) throw e;
    throwIfAborted(signal);
    // Whose is the mismatch? A base whose recorded mapping root still holds
    // is the snapshot that was sent: the target lost it (replaced, written,
    // another state), and the base stays replication's, deleted when `keep`
    // drops it. Else it changed after the check above (or no root was
    // recorded to tell): abandoned as any changed base.
    const unchanged = async (id: number) => baseEntry!.mappingRoot !== undefined && (await host.mappingRoot(id)) === baseEntry!.mappingRoot;
    // The thin was resized since its base was sent: an increment cannot say so, a full stream can (the base
    // stays replication's: the receiver names the size, not the base, as the reason).
    fullReason = e.reason === 'size-changed' ? 'size-changed' : (await unchanged(base)) ? 'target-lacks-base' : 'base-changed';
    base = null;
    r = await host.transfer(pending.devId, null, pending.deviceSize, signal);
  }
  host.checkpoint?.('sent');
  // The changed base is dropped from the state, never deleted (see CycleReport.abandoned).
  const abandoned = fullReason === 'base-changed' ? baseEntry!.devId : undefined;

  // Commit point: the receiver holds `pending` now.
  const confirmed: ConfirmedSnapshot = { devId: pending.devId, key: r.key, digest: r.digest, takenAt: pending.takenAt, mappingRoot: r.mappingRoot };
  const all = [...st.confirmed.filter((c) => c.devId !== abandoned), confirmed];
  const kept = all.slice(-settings.keep);
  const dropped = all.slice(0, all.length - kept.length).map((c) => c.devId);
  st.confirmed = kept;
  st.pending = null;
  st.doomed = dropped;
  await host.writeState(st);
  host.checkpoint?.('confirmed');
  const now = host.now();
  const deleted: number[] = [];
  const present = await host.thinIds();
  for (const id of dropped) {
    if (present.has(id)) {
      await host.deleteThin(id);
      deleted.push(id);
      host.checkpoint?.('cleanup');
    }
  }
  st.doomed = [];
  await host.writeState(st);
  return {
    snapshot: pending.devId,
    base,
    resumed,
    bytes: r.bytes,
    dataBlocks: r.dataBlocks,
    discardBlocks: r.discardBlocks,
    deleted,
    recovered,
    ...(notOurs !== undefined ? { notOurs } : {}),
    ...(fullReason ? { fullReason } : {}),
    ...(abandoned !== undefined ? { abandoned } : {}),
    takenAt: pending.takenAt,
    lagMs: Math.max(0, now.getTime() - Date.parse(pending.takenAt)),
    durationMs: Math.max(0, host.now().getTime() - started),
  };
}

/** A state file that cannot be used: a typed error naming it. */
export function stateFileError(where: string, problem: string): StreamError {
  return new StreamError(
    'state-file',
    `${where}: ${problem}. It is dmthin's record of which snapshots the target holds; restore it, or start over with a new state file (a full send)`,
    { path: where },
  );
}
