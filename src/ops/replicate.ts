/**
 * replicate(): continuous asynchronous replication of a live thin device.
 * Each cycle takes a snapshot (its active devices suspended around
 * create_snap), sends what changed since the snapshot the target last
 * confirmed (a full stream the first time) into a local target or a command
 * (`ssh host dmthin receive ...`), and only after the receiver confirmed
 * deletes the snapshots `keep` no longer needs. The cycle and its crash
 * safety are in ops/replication.ts; this file is the real pool, receiver and
 * state file behind it.
 */
import { spawn } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, type Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { AbortError, check, DmthinError, UsageError, throwIfAborted } from '../errors';
import { JobLock } from '../native/job-lock';
import { readStateText, refuseOutputOverInputs, writeFileAtomically } from '../output/file';
import { devNumOf } from '../dm/block-devices';
import { isLvmUuid } from '../pool/lvm';
import { withMetadataSnapshot } from '../pool/live-metadata';
import { mappingRootDigest } from '../stream/send/plan';
import { ThinPool } from '../pool/thin-pool';
import { identityKey } from '../stream/format/records';
import { identityOf } from '../stream/send/plan';
import { MAX_TIMER_SECONDS, SECTOR_SIZE } from '../units';
import { receive, type ReceiveOptions } from './receive';
import {
  MAX_THIN_ID,
  replicationStateProblem,
  runCycle,
  stateFileError,
  type CycleReport,
  type ReplicationHost,
  type ReplicationState,
  type TransferResult,
} from './replication';
import { send } from './send';
import { killAtPoint } from './test-seams';

export type { CycleReport } from './replication';

/** Where replication state files go unless told otherwise. */
export const DEFAULT_REPLICATE_STATE_DIR = '/var/lib/dmthin/replicate';
/** Default snapshot id range: the top 4096 thin ids (thin ids are 24 bits). */
export const DEFAULT_SNAPSHOT_IDS: SnapshotIdRange = { first: MAX_THIN_ID - 4095, last: MAX_THIN_ID };

/** A range of thin ids, both ends included. */
export interface SnapshotIdRange {
  /** The first id. */
  first: number;
  /** The last id. */
  last: number;
}

/** What replicate() takes. */
export interface ReplicateOptions {
  /** The live pool (dm name or an open ThinPool). */
  pool: string | ThinPool;
  /** The thin device to replicate. */
  thin: number;
  /** A block device or regular file received into in this process (as `dmthin receive --target`). */
  target?: string;
  /** Options of that receive (create a missing file target, its state file...). */
  receive?: Pick<ReceiveOptions, 'create' | 'stateFile' | 'stateDir' | 'spoolDir' | 'zero' | 'direct'>;
  /** A shell command that reads the stream on stdin and exits 0 once it holds it (e.g. `ssh host dmthin receive --target /dev/vg/replica`). */
  toCommand?: string;
  /** Seconds between the starts of two cycles, above 0 and at most 2147483 (24.8 days, the longest a Node timer waits; fractions allowed); omitted: one cycle (and, after a crash, the resumed one first). */
  every?: number;
  /** Confirmed snapshots kept in the pool (default 1: the base of the next increment). */
  keep?: number;
  /** Snapshot ids dmthin may use, inclusive (default the top 4096 ids). Recorded; cannot change later. */
  ids?: SnapshotIdRange;
  /** Replication state (default /var/lib/dmthin/replicate/<pool>-<thin>.json). */
  stateFile?: string;
  /** The thin's size in bytes when it is not active (an active thin's table length is used otherwise). */
  deviceSize?: number;
  /** Where send spills its extent list (default TMPDIR). */
  tmpDir?: string;
  /** Stream format version sent (default FORMAT_VERSION, 4; an older one for a receiving command that reads only that). */
  formatVersion?: number;
  /**
   * Send the next cycle in full, whatever the target holds (then increments
   * again): after the receiving side was replaced or reset, which a
   * receiving command cannot tell replicate.
   */
  full?: boolean;
  /** Aborting abandons the current cycle (its snapshot stays pending and is sent again by the next run) and ends the iteration with AbortError. */
  signal?: AbortSignal;
  /** Bytes of stream sent so far in the current cycle. */
  onProgress?: (p: { phase: 'snapshot' | 'send'; bytes: number }) => void;
}

/** Where the state of replicating `thin` of `pool` lives unless told otherwise. */
export function defaultReplicateStateFile(poolName: string, thin: number, dir = DEFAULT_REPLICATE_STATE_DIR): string {
  check.string(poolName, 'poolName');
  check.integer(thin, 'thin', 0);
  return join(dir, `${encodeURIComponent(poolName)}-${thin}.json`);
}

/** One replicator per state file: an flock on `<state>.lock`, dropped by the kernel when the process dies. */
function lockState(stateFile: string): () => void {
  const locks = new JobLock('replication');
  locks.lockStateFile(stateFile, () => `another replication is using ${stateFile}: wait for it, or stop it`);
  return () => locks.release();
}

async function readReplicationState(file: string): Promise<ReplicationState | null> {
  let text: string;
  try {
    const read = await readStateText(file, (why) => stateFileError(file, why));
    if (read === null) return null;
    text = read;
  } catch (e) {
    if (e instanceof DmthinError) throw e;
    throw new DmthinError((e as NodeJS.ErrnoException).code ?? 'EIO', `cannot read replication state ${file}: ${(e as Error).message}`, { path: file, cause: e });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw stateFileError(file, `not valid JSON (${(e as Error).message})`);
  }
  const problem = replicationStateProblem(parsed);
  if (problem) throw stateFileError(file, problem);
  return parsed as ReplicationState;
}

/** @internal Runs `cmd` with the stream on its stdin; resolves when it exited 0. Its stdout goes to our stderr (our stdout carries the reports). */
export function commandReceiver(cmd: string, signal?: AbortSignal): { stdin: Writable; done: Promise<void> } {
  // The child writes our descriptor 2 itself: piped through process.stderr,
  // a stderr that went away raised an 'error' event in our process.
  const child = spawn('/bin/sh', ['-c', cmd], { stdio: ['pipe', 2, 'inherit'], signal, killSignal: 'SIGTERM' });
  // A receiver that exits early makes our writes fail with EPIPE; the exit status says why.
  child.stdin!.on('error', () => undefined);
  const done = new Promise<void>((resolve, reject) => {
    child.on('error', (e) => reject(signal?.aborted ? new AbortError('replication interrupted', { cause: e }) : e));
    child.on('close', (code, sig) => {
      if (code === 0) resolve();
      else
        reject(
          new DmthinError('ECOMM', `the receiving command ${sig ? `was killed by ${sig}` : `exited with status ${code}`}: the snapshot is kept and sent again next cycle`, {
            command: cmd,
            status: code,
          }),
        );
    });
  });
  // The verdict may come before anyone awaits it (a receiver that exits at once): not an unhandled rejection.
  done.catch(() => undefined);
  return { stdin: child.stdin!, done };
}

/** Our writes failed because the receiving command went away: its exit status is the news. */
function receiverGone(e: unknown): boolean {
  const code = (e as { code?: string } | undefined)?.code;
  return code === 'EPIPE' || code === 'ERR_STREAM_DESTROYED' || code === 'ECONNRESET';
}

/**
 * Test seam (docs/testing.md, ops/test-seams.ts): DMTHIN_TEST_KILL_AT=<point>
 * kills a replicator at an exact point of its cycle. Points: the cycle's
 * checkpoints, plus 'mid-send' (after the first data was sent) and
 * 'mid-apply' (a local target half written).
 */
const crashPoint = killAtPoint;

class PoolReplicationHost implements ReplicationHost {
  constructor(
    private readonly pool: ThinPool,
    private readonly poolId: string,
    private readonly stateFile: string,
    private readonly o: ReplicateOptions,
  ) {}

  readState() {
    return readReplicationState(this.stateFile);
  }
  writeState(s: ReplicationState) {
    return writeFileAtomically(this.stateFile, JSON.stringify(s, null, 2) + '\n');
  }
  async thinIds() {
    return new Set((await withMetadataSnapshot(this.pool, (md) => md.devices(), { signal: this.o.signal })).keys());
  }
  async thinTimes(id: number) {
    return withMetadataSnapshot(this.pool, async (md) => {
      const d = await md.deviceDetails(id);
      return d ? { creationTime: d.creationTime, snapshottedTime: d.snapshottedTime } : null;
    }, { signal: this.o.signal });
  }
  async mappingRoot(id: number) {
    return withMetadataSnapshot(this.pool, async (md) => ((await md.devices()).has(id) ? mappingRootDigest(md, id) : null), { signal: this.o.signal });
  }
  async activeUnsuspended(id: number) {
    const out: string[] = [];
    for (const t of await this.pool.activeThins()) if (t.devId === id && !(await this.pool.dm.info(t.name)).suspended) out.push(t.name);
    return out;
  }
  async isSuspended(name: string) {
    try {
      return (await this.pool.dm.info(name)).suspended;
    } catch (e) {
      if ((e as { code?: string }).code === 'ENXIO') return false; // gone: nothing to resume
      throw e;
    }
  }
  async suspend(name: string) {
    await this.pool.dm.suspend(name);
  }
  async resume(name: string) {
    await this.pool.dm.resume(name);
  }
  async deviceSize() {
    const active = (await this.pool.activeThins()).find((t) => t.devId === this.o.thin);
    if (active) {
      const size = (await this.pool.dm.table(active.name)).reduce((n, t) => n + Number(t.length), 0) * SECTOR_SIZE;
      if (this.o.deviceSize !== undefined && this.o.deviceSize !== size) {
        throw new UsageError(`the device size given (${this.o.deviceSize} bytes) differs from the size of active thin device ${active.name} (${size} bytes)`, {
          devId: this.o.thin,
        });
      }
      return size;
    }
    if (this.o.deviceSize === undefined) {
      throw new UsageError(`thin device ${this.o.thin} of pool ${this.pool.name} is not active, so its size is unknown: activate it, or give its size in bytes (option deviceSize)`, {
        devId: this.o.thin,
      });
    }
    return this.o.deviceSize;
  }
  createSnap(id: number, origin: number) {
    // The cycle suspends the origin's devices itself (and records them first).
    return this.pool.createSnap(id, origin, { suspendOrigin: false });
  }
  deleteThin(id: number) {
    return this.pool.delete(id);
  }
  now() {
    return new Date();
  }
  checkpoint(name: string) {
    crashPoint(name);
  }

  async transfer(snap: number, base: number | null, deviceSize: number, signal?: AbortSignal): Promise<TransferResult> {
    const [details, mappingRoot] = await withMetadataSnapshot(this.pool, async (md) => {
      const d = (await md.devices()).get(snap);
      return [d, d ? await mappingRootDigest(md, snap, signal) : ''] as const;
    }, { signal });
    if (!details) throw new DmthinError('ENODEV', `replication snapshot ${snap} is not in pool ${this.pool.name}`, { devId: snap });
    const key = identityKey(identityOf(this.poolId, details));
    const sendOpts = { pool: this.pool, snap, base: base ?? undefined, deviceSize, poolId: this.poolId, tmpDir: this.o.tmpDir, formatVersion: this.o.formatVersion, signal };
    const onProgress = (p: { phase: string; bytes: number }) => {
      if (p.phase !== 'data') return;
      if (p.bytes > 0) crashPoint('mid-send');
      this.o.onProgress?.({ phase: 'send', bytes: p.bytes });
    };
    if (this.o.toCommand !== undefined) {
      const rx = commandReceiver(this.o.toCommand, signal);
      let failed: { e: unknown } | undefined;
      const s = await send({ ...sendOpts, output: rx.stdin, onProgress }).catch((e) => {
        failed = { e };
        return null;
      });
      if (failed && !receiverGone(failed.e)) {
        // Our side failed (or was interrupted): the receiver gets a cut stream, which a dmthin receive refuses.
        rx.stdin.destroy();
        await rx.done.catch(() => undefined);
        throw failed.e;
      }
      await rx.done; // the receiver's verdict, also when it went away early (EPIPE, a destroyed pipe)
      if (failed || !s) {
        throw new DmthinError('ECOMM', 'the receiving command exited with status 0 before it read the whole stream: the snapshot is kept and sent again next cycle', {
          command: this.o.toCommand,
          cause: failed?.e,
        });
      }
      return { key, mappingRoot, digest: s.digest, bytes: s.bytes, dataBlocks: s.dataBlocks, discardBlocks: s.discardBlocks };
    }
    const pipe = new PassThrough({ highWaterMark: 1 << 20 });
    const received = receive({
      ...this.o.receive,
      target: this.o.target!,
      input: pipe,
      signal,
      onProgress: (p) => {
        if (p.phase === 'apply' && p.bytes > 0) crashPoint('mid-apply');
      },
    });
    const sent = send({ ...sendOpts, output: pipe, onProgress }).catch((e) => {
      pipe.destroy(e);
      throw e;
    });
    received.catch((e) => pipe.destroy(e));
    // Both sides settle before the cycle ends: the first failure is thrown only
    // once send has released its metadata snapshot. Promise.all threw as soon as
    // receive gave up (an abort reaches it first), and a process that then
    // exited could leave the pool's snapshot held, its reserve still in flight.
    let failed: { e: unknown } | undefined;
    const first = <T>(p: Promise<T>): Promise<T | undefined> => p.catch((e: unknown) => ((failed ??= { e }), undefined));
    const [s, r] = await Promise.all([first(sent), first(received)]);
    if (failed || !s || !r) throw failed?.e;
    if (r.digest !== s.digest) throw new DmthinError('EIO', `the receiver recorded stream ${r.digest}, not the one sent (${s.digest})`);
    return { key, mappingRoot, digest: s.digest, bytes: s.bytes, dataBlocks: s.dataBlocks, discardBlocks: s.discardBlocks };
  }
}

/**
 * Refuses a block-device target that is the replicated thin or one of its
 * replication snapshots, active on this pool: the stream would be written
 * over its own source (a full one discards whatever the snapshot does not map).
 */
async function refuseTargetInPool(pool: ThinPool, target: string, thin: number, ids: { first: number; last: number }): Promise<void> {
  const st = await stat(target).catch(() => null);
  if (!st?.isBlockDevice()) return;
  const { major, minor } = await devNumOf(target);
  for (const t of await pool.activeThins()) {
    if (t.dev.major !== major || t.dev.minor !== minor) continue;
    if (t.devId === thin || (t.devId >= ids.first && t.devId <= ids.last)) {
      throw new UsageError(`the target ${target} is ${t.devId === thin ? 'the replicated thin device itself' : `replication snapshot ${t.devId}`} (${t.name}, pool ${pool.name}): replicating onto it would overwrite the source; choose another device`, { path: target, devId: t.devId });
    }
  }
}

/**
 * Replicates `thin` cycle after cycle, yielding one report per confirmed
 * cycle. Without `every`, one cycle (preceded by the one an interrupted run
 * left pending, if any). A failed cycle throws; its snapshot stays pending
 * and the next run sends it again before taking a new one.
 */
export async function* replicate(o: ReplicateOptions): AsyncGenerator<CycleReport> {
  check.required(o, 'replicate');
  check.nameOr(o.pool, 'pool', ThinPool);
  check.signal(o.signal);
  check.callback(o.onProgress, 'onProgress');
  check.boolean(o.full, 'full');
  if ((o.target === undefined) === (o.toCommand === undefined)) throw new UsageError('give exactly one of target (a device or file) or toCommand (a command reading the stream)');
  // Above the timer's limit the sleep between cycles would be 1 ms: cycles back to back.
  if (o.every !== undefined && !(typeof o.every === 'number' && o.every > 0 && o.every <= MAX_TIMER_SECONDS)) {
    throw new UsageError(`every must be a number of seconds above 0 and at most ${MAX_TIMER_SECONDS}, not ${String(o.every)}`);
  }
  const keep = o.keep ?? 1;
  const ids = o.ids ?? DEFAULT_SNAPSHOT_IDS;
  for (const v of [ids.first, ids.last, o.thin]) {
    if (!Number.isInteger(v) || v < 0 || v > MAX_THIN_ID) throw new UsageError(`thin ids are integers 0..${MAX_THIN_ID}, not ${v}`);
  }
  if (ids.first > ids.last) throw new UsageError(`empty snapshot id range ${ids.first}-${ids.last}`);
  if (o.thin >= ids.first && o.thin <= ids.last) throw new UsageError(`thin ${o.thin} lies in the snapshot id range ${ids.first}-${ids.last}: choose a range without it`);
  // The states are written over the paths they name: never the target, and not each other.
  if (o.stateFile !== undefined) {
    await refuseOutputOverInputs(o.stateFile, 'the replication state file', [
      { path: o.target, role: 'the target' },
      { path: o.receive?.stateFile, role: "the target's receive state file" },
    ]);
  }
  const pool = typeof o.pool === 'string' ? await ThinPool.open(o.pool) : o.pool;
  const info = await pool.info();
  if (isLvmUuid(info.uuid)) {
    throw new UsageError(
      `pool ${pool.name} is managed by LVM: replication creates and deletes thin snapshots with pool messages, which LVM would not know of ` +
        `(it could later reuse their ids). Take snapshots with lvcreate and send them with dmthin send instead`,
      { device: pool.name },
    );
  }
  const poolId = info.uuid ? `dm-uuid:${info.uuid}` : `dm-name:${pool.name}`;
  if (o.target !== undefined) await refuseTargetInPool(pool, o.target, o.thin, ids);
  const stateFile = o.stateFile ?? defaultReplicateStateFile(pool.name, o.thin);
  const unlock = lockState(stateFile);
  try {
    const host = new PoolReplicationHost(pool, poolId, stateFile, o);
    const settings = { pool: poolId, thin: o.thin, ids, keep };
    // `full` is for the first cycle through (a resumed one, then none).
    let full = o.full === true;
    for (;;) {
      throwIfAborted(o.signal);
      const started = Date.now();
      const report = await runCycle(host, settings, stateFile, o.signal, full);
      full = false;
      yield report;
      if (o.every === undefined) {
        if (report.resumed) continue; // the pending one is through: now the current data
        return;
      }
      const wait = o.every * 1000 - (Date.now() - started);
      if (wait > 0) await sleep(wait, undefined, { signal: o.signal }).catch(() => throwIfAborted(o.signal));
    }
  } finally {
    unlock();
  }
}
