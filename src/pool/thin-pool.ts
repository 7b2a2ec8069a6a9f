/**
 * ThinPool: a live dm thin-pool, driven through the dm ioctls: status,
 * the six pool messages, metadata snapshots, and the metadata reader through
 * the held root.
 *
 *   const pool = await ThinPool.open('pool');
 *   await pool.createThin(1);
 *   await using snap = await pool.reserveMetadataSnap();
 *   await using md = await snap.open();
 */
import { AbortError, DmIoctlError, DmthinError, MetadataSnapError, NameLookupError, UsageError, heldNowWords, snapshotReleased, throwIfAborted, check } from '../errors';
import { DeviceMapper } from '../dm/device-mapper';
import { formatDev, type DevNum, type DmTarget } from '../dm/ioctl';
import {
  MAX_THIN_ID,
  THIN_POOL_TARGET,
  PoolMessage,
  type ThinId,
  type ThinPoolFeature,
  type ThinPoolStatus,
  type ThinPoolStatusWorking,
  type ThinPoolTable,
  parseThinPoolStatus,
  parseThinPoolTable,
  thinPoolTarget,
} from '../dm/targets/thin-pool';
import { parseThinTable, THIN_TARGET } from '../dm/targets/thin';
import type { DeltaExtent, DeltaOptions } from '../thin/delta';
import { staleOr, ThinMetadata } from '../thin/metadata';
import { readBlocksAnew } from '../pdata/block-source';
import { type DataBlocks, type Sectors, dataBlocks, sectors } from '../units';
import { devNumOf, devPathOf, sizeInSectors } from '../dm/block-devices';
import { guard, unguard, type Releasable } from './release-guard';
import { type PoolEvent, derivePoolEvents } from './events';
import { lvmThinId, type LvmPoolName } from './lvm';
import { resolvePool } from './pool-name';
import { dropRecord, forgetHeld, ownerOf, recordHeld, type HeldOwner } from './held-record';

/** What ThinPool.create builds a pool from. */
export interface ThinPoolCreateOptions {
  /** The dm name of the new pool device. */
  name: string;
  /** Metadata device: a block device path or 'major:minor'. */
  metadataDev: string;
  /** Data device: a block device path or 'major:minor'. */
  dataDev: string;
  /** In 512-byte sectors: 128 (64 KiB) .. 2097152 (1 GiB), a multiple of 128. */
  dataBlockSize: Sectors;
  /** Free data blocks below which the pool raises a dm event. */
  lowWaterMark: DataBlocks;
  /** Feature arguments of the table line (at most 4). */
  features?: ThinPoolFeature[];
  /** Pool length in sectors; default: the whole data device, whole blocks only. */
  length?: Sectors;
  /** The dm uuid of the pool device. */
  uuid?: string;
  /** The DeviceMapper to use (default: a new one on /dev/mapper/control). */
  dm?: DeviceMapper;
}

/** What waitEvent() resolves to. */
export interface PoolWaitResult {
  /** The event counter now (pass it to the next wait). */
  eventNr: number;
  /** The pool's status after the event. */
  status: ThinPoolStatus;
}

/** What waitEvent() and events() take. */
export interface PoolWaitOptions {
  /** Aborting ends the wait at once with AbortError (code ABORT_ERR). */
  signal?: AbortSignal;
  /** Read the status without committing metadata first. */
  noflush?: boolean;
}

/** Options of ThinPool.createSnap. */
export interface CreateSnapOptions {
  /**
   * Suspend active thin devices of the origin around the message so the
   * snapshot is consistent (default true). Pass false if you suspended them.
   */
  suspendOrigin?: boolean;
}

/** Which metadata snapshot openMetadata() reads through. */
export type MetadataSnapshotUse = 'reserve' | 'held' | 'held-or-reserve';

/** Options of ThinPool.openMetadata: which metadata snapshot to read through. */
export interface OpenMetadataOptions {
  /**
   * 'reserve' (default): reserve one now, released with the handle; 'held':
   * the one someone else holds (left held); 'held-or-reserve': the held one
   * if any, else reserve.
   */
  snapshot?: MetadataSnapshotUse;
  /** The held snapshot must be at this block (refused otherwise). */
  root?: number;
  /** When one is reserved: how long to wait for another dmthin process holding it (reserveMetadataSnap). */
  waitMs?: number;
  /** Ends that wait early. */
  signal?: AbortSignal;
}

/** A live pool's metadata and what reading it holds. */
export interface LiveMetadata extends AsyncDisposable {
  /** The metadata, read through the snapshot. */
  readonly metadata: ThinMetadata;
  /**
   * Checks that the snapshot read through is still the one opened: the pool
   * still holds it at the same block, with the same superblock copy there.
   * Call it once the reading is done (and before trusting what was read):
   * anyone may release a held snapshot (`dmsetup message POOL 0
   * release_metadata_snap`), and the pool then reuses the blocks only it
   * held, so a walk in progress reads whatever is written there, checksums
   * and all. MetadataSnapError ESTALE when it was released or replaced.
   * withMetadataSnapshot() and changedBlocks() call it; so does the CLI's -m.
   */
  verify(): Promise<void>;
  /** Closes the metadata, then releases the snapshot if it was reserved for it. Idempotent. */
  release(): Promise<void>;
}

/** An active thin device of the pool (a dm device with a `thin` table). */
export interface ActiveThin {
  /** Its dm name. */
  name: string;
  /** Its thin device id in the pool. */
  devId: number;
  /** Its device number. */
  dev: DevNum;
}

/** A live dm thin-pool: status, the pool messages, metadata snapshots, metadata reads. */
export class ThinPool {
  private constructor(
    /** The pool's dm device name. */
    readonly name: string,
    /** The DeviceMapper it is driven through. */
    readonly dm: DeviceMapper,
    /** The pool's own device number (thin table lines refer to it). */
    readonly dev: DevNum,
    /** VG, LV and dm uuid when LVM made the pool (its thin volumes are LVM's to create, activate and remove). */
    readonly lvm?: LvmPoolName,
  ) {}

  /** Creates and activates a pool (DEV_CREATE, TABLE_LOAD, resume; removed again if a step fails). */
  static async create(o: ThinPoolCreateOptions): Promise<ThinPool> {
    check.required(o, 'ThinPool.create');
    for (const k of ['name', 'metadataDev', 'dataDev'] as const) check.string(o[k], k);
    const dm = o.dm ?? new DeviceMapper();
    const [meta, data] = [await devNumOf(o.metadataDev), await devNumOf(o.dataDev)];
    if (meta.major === data.major && meta.minor === data.minor) throw new UsageError('metadata and data must be different devices');
    let length = o.length;
    if (length === undefined) {
      const total = await sizeInSectors(data);
      length = sectors(total - (total % o.dataBlockSize));
      if (length <= 0) throw new UsageError(`data device ${o.dataDev} is smaller than one data block`);
    }
    const target = thinPoolTarget(length, {
      metadataDev: meta,
      dataDev: data,
      dataBlockSize: o.dataBlockSize,
      lowWaterMark: o.lowWaterMark,
      features: o.features,
    });
    const info = await dm.createWithTable(o.name, [target], { uuid: o.uuid });
    return new ThinPool(o.name, dm, info.dev);
  }

  /**
   * An existing pool by its dm name (`pool`, `vg-pool-tpool`), LVM's `VG/LV`,
   * LVM's own pool device `vg-pool` (a linear layer over `-tpool`, followed)
   * or a device node (`/dev/mapper/NAME`, `/dev/VG/LV`). `name` is then the
   * thin-pool device's dm name. Fails with a NameLookupError: ENXIO
   * ('not-found') if there is none, EINVAL ('not-a-pool') if the device is
   * something else (the message says what).
   */
  static async open(name: string, opts: { dm?: DeviceMapper } = {}): Promise<ThinPool> {
    check.string(name, 'pool name');
    check.options(opts, 'ThinPool.open options');
    opts ??= {}; // null, as Node's own APIs take it
    const dm = opts.dm ?? new DeviceMapper();
    const r = await resolvePool(name, dm);
    return new ThinPool(r.name, dm, r.dev, r.lvm);
  }

  /**
   * The thin id of a thin volume of this pool given by id (a decimal string
   * or number) or, for an LVM pool, by LV name (`VG/LV`, or `LV` in the
   * pool's VG; looked up with `lvs`, so lvm2 must be installed).
   */
  async thinId(idOrName: string | number): Promise<number> {
    if (typeof idOrName === 'number' || /^[0-9]+$/.test(idOrName)) {
      const n = Number(idOrName);
      if (!Number.isSafeInteger(n) || n > MAX_THIN_ID) throw new UsageError(`thin id out of range (0..${MAX_THIN_ID}): ${idOrName}`);
      return n;
    }
    if (!this.lvm) {
      throw new NameLookupError('not-a-thin', `'${idOrName}' is not a thin id, and pool ${this.name} is not LVM's, so it has no LV names`, { given: idOrName, device: this.name });
    }
    return lvmThinId(this.lvm, idOrName);
  }

  /** `major:minor` of the pool, for thin table lines. */
  get devString(): string {
    return formatDev(this.dev);
  }

  /** The active table: metadata and data devices, block size, low-water mark, features. */
  async table(): Promise<
    ThinPoolTable & {
      /** The pool's length in sectors. */
      length: Sectors;
    }
  > {
    const [t] = await this.dm.table(this.name);
    return { ...parseThinPoolTable(t.params), length: t.length };
  }

  /**
   * Typed status. The kernel commits metadata before reporting unless
   * `noflush` is set.
   */
  async status(opts: { noflush?: boolean } = {}): Promise<ThinPoolStatus> {
    return this.onlyStatus(await this.dm.status(this.name, { noflush: opts.noflush }));
  }

  private onlyStatus(t: DmTarget[]): ThinPoolStatus {
    if (t.length !== 1 || t[0].type !== THIN_POOL_TARGET)
      throw new DmthinError('EPROTO', `${this.name} is no longer a thin-pool (table: ${t.map((x) => x.type).join(', ') || 'none'})`, { device: this.name });
    return parseThinPoolStatus(t[0].params);
  }

  /** Status of a working pool; throws (EIO) when the pool reports Fail or Error. */
  async workingStatus(opts: { noflush?: boolean } = {}): Promise<ThinPoolStatusWorking> {
    const s = await this.status(opts);
    if (s.kind !== 'working') throw new DmthinError('EIO', `thin-pool ${this.name} status is ${s.kind}`, { device: this.name });
    return s;
  }

  /** Sends a pool message (already validated text, e.g. from PoolMessage). */
  async message(text: string): Promise<void> {
    await this.dm.targetMessage(this.name, sectors(0), text);
  }

  /** create_thin: a new, empty thin device `id` (EEXIST if it exists). */
  async createThin(id: number): Promise<void> {
    await this.message(PoolMessage.createThin(id));
  }

  /** create_snap; active thin devices of the origin are suspended around it unless told not to. */
  async createSnap(id: number, originId: number, opts: CreateSnapOptions = {}): Promise<void> {
    const msg = PoolMessage.createSnap(id, originId); // validate before touching anything
    const toSuspend = opts.suspendOrigin === false ? [] : (await this.activeThins()).filter((t) => BigInt(t.devId) === BigInt(originId));
    const suspended: ActiveThin[] = [];
    try {
      for (const t of toSuspend) {
        // Already suspended (by the caller): suspending again is a no-op for
        // the kernel, but resuming it afterwards would not be ours to do.
        if ((await this.dm.info(t.name)).suspended) continue;
        await this.dm.suspend(t.name);
        suspended.push(t);
      }
      await this.message(msg);
    } finally {
      for (const t of suspended.reverse()) await this.dm.resume(t.name);
    }
  }

  /** delete: removes thin device `id` and its mappings (EBUSY while it is active). */
  async delete(id: number): Promise<void> {
    await this.message(PoolMessage.delete(id));
  }

  /** Compare-and-swap of the pool's transaction id (EINVAL if `current` is not it); u64s, so bigints. */
  async setTransactionId(current: bigint, next: bigint): Promise<void> {
    await this.message(PoolMessage.setTransactionId(current, next));
  }

  /**
   * Reserves the pool's metadata snapshot. The handle releases it when
   * disposed, on SIGINT/SIGTERM/SIGHUP and at process exit.
   *
   * A pool holds one at a time. One held by another dmthin process of this
   * host that is still running (its record says so, pool/held-record.ts) is
   * waited for, up to `waitMs` (default 60 s): two dmthin commands on one
   * pool (a dump while replicate runs) take turns instead of the second
   * failing with EBUSY. One a killed dmthin left is released and reserved
   * afresh; one anybody else holds (thin_dump -m, a script) is EBUSY at once,
   * after a moment's grace in which a dmthin that has just reserved writes
   * its record. The wait ends early on `signal` and on SIGINT/SIGTERM/SIGHUP.
   */
  async reserveMetadataSnap(opts: ReserveOptions = {}): Promise<MetadataSnapshot> {
    check.signal(opts.signal);
    const waitMs = opts.waitMs ?? DEFAULT_RESERVE_WAIT_MS;
    if (!(typeof waitMs === 'number' && waitMs >= 0 && waitMs <= MAX_RESERVE_WAIT_MS)) throw new UsageError(`waitMs must be 0..${MAX_RESERVE_WAIT_MS} milliseconds, not ${String(waitMs)}`);
    const started = Date.now();
    let releasedMeanwhile = 0;
    let orphansReleased = 0;
    for (;;) {
      throwIfAborted(opts.signal);
      let refusal: DmIoctlError;
      try {
        return await this.reserveOnce();
      } catch (e) {
        if (!isMessageError(e, 'EBUSY') && !isMessageError(e, 'ENOTSUP')) throw e;
        refusal = e;
      }
      // Refused: looked at (status, record) until it can be reserved, without
      // asking the kernel again before then. The grace for a record is counted
      // from when this root was first seen held: another waiter may have just
      // reserved it after the one waited for released (outside hunt Q).
      let unrecordedSince = Date.now();
      let seen: bigint | number | null = null;
      for (;;) {
        const status = await this.workingStatus().catch(() => null);
        const held = status?.heldMetadataRoot ?? null;
        if (held !== seen) {
          seen = held;
          unrecordedSince = Date.now();
        }
        if (isMessageError(refusal, 'ENOTSUP') || held === null) {
          // None held after EBUSY: the holder released it between the reserve and
          // the status (try again, a few times). A pool out of data space still
          // serves messages; one in read-only mode or needing a check does not.
          const serves = status !== null && status.mode !== 'ro' && status.needsCheck !== true;
          if (held === null && isMessageError(refusal, 'EBUSY') && serves && releasedMeanwhile++ < 5) break;
          throw notWritable(this.name, refusal, status);
        }
        const owner = ownerOf(this.name, Number(held));
        if (owner.kind === 'orphaned' && orphansReleased++ < 3) {
          // Left held by a dmthin process that was killed: released, then reserved afresh.
          // Another dmthin may have found the same orphan: released already (EINVAL), or
          // released and reserved afresh (the root moved): then only try again.
          const now = (await this.workingStatus().catch(() => null))?.heldMetadataRoot ?? null;
          if (now === held) await this.releaseMetadataSnap().catch((e: unknown) => {
            if (!isMessageError(e, 'EINVAL')) throw e;
          });
          break;
        }
        const now = Date.now();
        // This process's own (a reserve while one is held, nested): waiting could only end in the timeout.
        const own = owner.kind === 'running' && owner.pid === process.pid;
        const waiting = own ? false : owner.kind === 'running' ? now - started < waitMs : now - unrecordedSince < Math.min(RECORD_GRACE_MS, waitMs);
        if (!waiting) throw heldBy(this.name, Number(held), owner, now - started, refusal);
        await pauseUnlessInterrupted(RESERVE_POLL_MS, opts.signal, this.name);
      }
    }
  }

  private async reserveOnce(): Promise<MetadataSnapshot> {
    const snap = new MetadataSnapshot(this);
    // Guarded before the message is sent: a signal that arrives while the
    // reserve ioctl is in flight would otherwise kill the process (no
    // handler yet) and leave the root held. The guard's release waits for
    // the reserve to settle, then releases what it reserved.
    guard(snap);
    try {
      await snap.reserve();
    } catch (e) {
      unguard(snap);
      throw e;
    }
    try {
      if (snap.released) throw new AbortError('metadata snapshot released (process signalled) before it could be used', { device: this.name });
      snap.root = await snap.readRoot();
      recordHeld(this.name, snap.root);
      // Its bytes, to tell it at release from a copy someone else reserved at the same block.
      // Best effort: without it (the device's path not found, a read error) release() goes by the status alone.
      snap.copy = await this.metadataDevicePath()
        .then((path) => readBlocksAnew(path, [snap.root]))
        .then(
          ([b]) => Buffer.from(b.data),
          () => undefined,
        );
    } catch (e) {
      await snap.release().catch(() => undefined);
      throw e;
    }
    return snap;
  }

  /**
   * Extents in which thin device `snapId` differs from `baseId` (`different`,
   * `left_only` = only in the base, `right_only` = only in the snapshot), in
   * virtual-block order, read through a metadata snapshot reserved for the
   * walk and released when it ends: finished, thrown, aborted or abandoned
   * (`break`). Blocks both map the same are skipped unless `includeSame`.
   * Ends with MetadataSnapError ESTALE after the last extent when something
   * else released the snapshot during the walk (LiveMetadata.verify).
   */
  async *changedBlocks(baseId: number, snapId: number, opts: DeltaOptions = {}): AsyncGenerator<DeltaExtent> {
    await using live = await this.openMetadata({ signal: opts?.signal });
    try {
      yield* live.metadata.delta(baseId, snapId, { includeSame: false, ...opts });
    } catch (e) {
      throw await staleOr(live, e);
    }
    // The last extent is out: an ESTALE here says the extents came from a snapshot released meanwhile.
    await live.verify();
  }

  /** Releases a held metadata snapshot (EINVAL if none). Prefer disposing the handle. */
  async releaseMetadataSnap(): Promise<void> {
    await this.message(PoolMessage.releaseMetadataSnap());
    dropRecord(this.name);
  }

  /** Path of the pool's metadata device (from its table, via sysfs). */
  async metadataDevicePath(): Promise<string> {
    const t = await this.table();
    return devPathOf(await devNumOf(t.metadataDev));
  }

  /**
   * The pool's metadata through the held metadata snapshot (its root must be
   * held: reserve one first). Opened read-only, O_DIRECT, without O_EXCL.
   * What is read stands only while that snapshot stays held:
   * `verifySnapshot()` after the read says so (ESTALE if it was released).
   */
  async metadata(): Promise<ThinMetadata> {
    return (await this.openMetadata({ snapshot: 'held' })).metadata;
  }

  /**
   * The one way to read a live pool's metadata: always through a metadata
   * snapshot (the live root changes under a reader), read-only, O_DIRECT,
   * without O_EXCL. Every other reader of a live pool (metadata(),
   * changedBlocks(), withMetadataSnapshot(), the CLI's -m) goes through here.
   */
  async openMetadata(opts: OpenMetadataOptions = {}): Promise<LiveMetadata> {
    const use = opts.snapshot ?? 'reserve';
    if (use !== 'reserve') {
      const held = (await this.workingStatus()).heldMetadataRoot;
      // 'held-or-reserve' and a snapshot another dmthin holds (running: it
      // releases it when its command ends, perhaps mid-read here; or killed):
      // reserved, which waits for it or frees it. Anyone else's is read as held.
      const mayReserve = held !== null && use === 'held-or-reserve' && opts.root === undefined;
      let owner = mayReserve ? ownerOf(this.name, Number(held)) : { kind: 'unknown' as const };
      // No record yet may be a dmthin that has just reserved it and not yet written its record (milliseconds):
      // looked at again for a moment before it counts as someone else's, to be read as held (outside hunt Q).
      for (let i = 0; mayReserve && owner.kind === 'unknown' && i < HELD_RECORD_POLLS; i++) {
        await pauseUnlessInterrupted(50, opts.signal, this.name);
        const now = (await this.workingStatus()).heldMetadataRoot;
        if (now !== held) return this.openMetadata(opts); // released or replaced meanwhile: decide afresh
        owner = ownerOf(this.name, Number(held));
      }
      // This process's own snapshot is read through, as before (reserving would only find it held).
      const dmthins = owner.kind === 'orphaned' || (owner.kind === 'running' && owner.pid !== process.pid);
      if (held !== null && !dmthins) {
        if (opts.root !== undefined && opts.root !== Number(held)) {
          throw new UsageError(`metadata snapshot at block ${opts.root} does not match the held root ${held} of ${this.name}`);
        }
        const md = await ThinMetadata.open(await this.metadataDevicePath(), { metadataSnap: Number(held), exclusive: false }).catch((e: unknown) => {
          throw releasedAtOpen(this.name, Number(held), e);
        });
        return liveMetadata(this, md);
      }
      if (use === 'held') {
        throw new MetadataSnapError('ENODATA', `thin-pool ${this.name} holds no metadata snapshot (reserve one first)`, { device: this.name });
      }
      if (opts.root !== undefined) throw new UsageError(`${this.name} holds no metadata snapshot (block ${opts.root} was asked for)`);
    }
    const snap = await this.reserveMetadataSnap({ waitMs: opts.waitMs, signal: opts.signal });
    let md: ThinMetadata;
    try {
      md = await snap.open();
    } catch (e) {
      await snap.release();
      throw releasedAtOpen(this.name, snap.root, e);
    }
    return liveMetadata(this, md, snap);
  }

  /** Active dm devices with a thin table on this pool. */
  async activeThins(): Promise<ActiveThin[]> {
    const out: ActiveThin[] = [];
    for (const d of await this.dm.listDevices()) {
      let t: DmTarget[];
      try {
        t = await this.dm.table(d.name);
      } catch {
        continue; // removed meanwhile
      }
      if (t.length !== 1 || t[0].type !== THIN_TARGET) continue;
      const tt = parseThinTable(t[0].params);
      if (tt.poolDev === this.devString) out.push({ name: d.name, devId: tt.devId, dev: d.dev });
    }
    return out;
  }

  /**
   * Waits for the pool's next dm event (e.g. the low-water mark being
   * crossed), then returns the event counter and the status after it.
   * `eventNr` is from a previous waitEvent() or `info()`; without it, the
   * wait is for the next event from now. Returns at once if the counter has
   * already moved past `eventNr`. Aborting `signal` rejects with AbortError
   * (code ABORT_ERR) at once; a pending wait holds no worker thread
   * (DeviceMapper.wait). Rejects with ENXIO if the pool is removed.
   */
  async waitEvent(eventNr?: number, opts: PoolWaitOptions = {}): Promise<PoolWaitResult> {
    const from = eventNr ?? (await this.info()).eventNr;
    const r = await this.dm.wait(this.name, from, { noflush: opts.noflush, signal: opts.signal });
    return { eventNr: r.info.eventNr, status: this.onlyStatus(r.targets) };
  }

  /**
   * The pool's events from now on, typed by what changed (pool/events.ts:
   * low-water-mark, mode, needs-check, metadata-low, other), until `signal`
   * aborts (the loop then ends with AbortError) or the pool is removed
   * (ENXIO). Events that come while the loop body runs are not lost: the
   * next wait starts from the last counter seen. Several changes at one dm
   * event come as several items with the same `eventNr`.
   *
   *   for await (const ev of pool.events({ signal })) if (ev.type === 'low-water-mark') grow();
   */
  async *events(opts: PoolWaitOptions = {}): AsyncGenerator<PoolEvent, void, undefined> {
    throwIfAborted(opts.signal);
    const first = await this.dm.statusWithInfo(this.name, { noflush: opts.noflush });
    let eventNr = first.info.eventNr;
    let previous = this.onlyStatus(first.targets);
    for (;;) {
      const r = await this.dm.wait(this.name, eventNr, { noflush: opts.noflush, signal: opts.signal });
      const status = this.onlyStatus(r.targets);
      const { lowWaterMark } = await this.table();
      for (const ev of derivePoolEvents(previous, status, lowWaterMark, r.info.eventNr)) yield ev;
      eventNr = r.info.eventNr;
      previous = status;
    }
  }

  /** DEV_STATUS of the pool device (event counter, open count, suspended...). */
  info() {
    return this.dm.info(this.name);
  }

  /** Removes the pool device (the pool's thin devices must be removed first). */
  async remove(): Promise<void> {
    await this.dm.remove(this.name);
  }
}

/**
 * A reserved metadata snapshot. Dispose it (`await using`) or call release();
 * it is also released on SIGINT/SIGTERM/SIGHUP and at exit.
 */
export class MetadataSnapshot implements AsyncDisposable, Releasable {
  /** Block number of the held superblock copy. */
  root = 0;
  /** @internal The copy's bytes as reserved (undefined: not read): release() tells another's copy at the same block by them. */
  copy?: Buffer;
  private releasing?: Promise<void>;
  /** The reserve_metadata_snap message: true once it succeeded, false if it failed; undefined before it was sent. */
  private reserved?: Promise<boolean>;
  private reserveFailed = false;

  constructor(
    /** The pool whose metadata snapshot this is. */
    readonly pool: ThinPool,
  ) {}

  /** True once release() was called (or the guard released it). */
  get released(): boolean {
    return this.releasing !== undefined;
  }

  /** @internal Sends reserve_metadata_snap (once). */
  reserve(): Promise<void> {
    const sent = this.pool.message(PoolMessage.reserveMetadataSnap());
    this.reserved = sent.then(
      () => true,
      () => ((this.reserveFailed = true), false),
    );
    return sent;
  }

  /** @internal */
  async readRoot(): Promise<number> {
    const s = await this.pool.workingStatus();
    if (s.heldMetadataRoot === null) throw new MetadataSnapError('EPROTO', `reserved, but ${this.pool.name} reports no held root`, { device: this.pool.name });
    return Number(s.heldMetadataRoot);
  }

  /** The metadata as of the reserve: read-only, O_DIRECT, through the held root. */
  async open(): Promise<ThinMetadata> {
    if (this.released) throw new MetadataSnapError('EINVAL', 'metadata snapshot already released', { device: this.pool.name });
    return ThinMetadata.open(await this.pool.metadataDevicePath(), { metadataSnap: this.root, exclusive: false });
  }

  release(): Promise<void> {
    this.releasing ??= (async () => {
      try {
        // Released while the reserve is still in flight (a signal): wait for it.
        if (this.reserved && !(await this.reserved)) return; // nothing was reserved
        // Released already by something else (then perhaps another reserved since): the
        // message would release that one. Only a copy at our block with other bytes than
        // ours, or a status saying so, skips it. The copy is read first (a device read, slow
        // on a busy disk) and the status last, just before the message: what is left is the
        // gap between one ioctl and the next (the kernel has no release of a given root;
        // outside hunt AB: with the status first, a release and reserve during the copy's
        // read, 1 s under dm-delay, was released 4 times in 4).
        if (this.root !== 0 && !(await this.stillOurs())) {
          forgetHeld(this.pool.name, this.root);
          return;
        }
        try {
          await this.pool.releaseMetadataSnap();
        } catch (e) {
          // EINVAL: none held. Someone else released ours in that gap: nothing is left to release.
          if (!isMessageError(e, 'EINVAL') || (await this.statusSaysOurs())) throw e;
          forgetHeld(this.pool.name, this.root);
        }
      } finally {
        unguard(this);
      }
    })();
    return this.releasing;
  }

  /**
   * Whether the pool still holds this snapshot: its copy as reserved, then
   * the status (true when neither can tell: a status that cannot be read,
   * a copy that was not or cannot be read).
   */
  private async stillOurs(): Promise<boolean> {
    return !(await this.copyChanged()) && (await this.statusSaysOurs());
  }

  /** Whether the status names this snapshot's root held (true when it cannot be read). */
  private async statusSaysOurs(): Promise<boolean> {
    const now = (await this.pool.workingStatus().catch(() => undefined))?.heldMetadataRoot;
    return now === undefined || (now !== null && Number(now) === this.root);
  }

  /** True when the copy at `root` is not the one reserved (false when it cannot be read, or was not). */
  private async copyChanged(): Promise<boolean> {
    if (!this.copy) return false;
    try {
      const [b] = await readBlocksAnew(await this.pool.metadataDevicePath(), [this.root]);
      return !b.data.equals(this.copy);
    } catch {
      return false;
    }
  }

  releaseSync(): void {
    if (this.releasing) return;
    this.releasing = Promise.resolve();
    unguard(this);
    if (this.reserveFailed) return;
    // If the reserve is still in flight (exit during the ioctl) this races
    // with it; best effort, as anything on the exit path.
    this.pool.dm.targetMessageSync(this.pool.name, sectors(0), PoolMessage.releaseMetadataSnap());
    forgetHeld(this.pool.name, this.root);
  }

  /** Releases the snapshot (`await using`). */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.release();
  }
}

async function liveMetadata(pool: ThinPool, metadata: ThinMetadata, snap?: MetadataSnapshot): Promise<LiveMetadata> {
  const release = async (): Promise<void> => {
    try {
      await metadata.close();
    } finally {
      await snap?.release();
    }
  };
  const root = metadata.metadataSnap;
  const verify = async (): Promise<void> => {
    // Not read through a snapshot (a caller's stand-in for the pool): nothing to tell.
    if (root === null) return;
    // The pool's status first (its in-core superblock: a release shows there
    // before it is committed), then the device (block 0's held root, and the
    // copy byte for byte as the reader parsed it at open).
    const now = (await pool.workingStatus()).heldMetadataRoot;
    const held = now === null ? null : Number(now);
    const what = held === root ? await metadata.snapshotChange() : heldNowWords(root, held, false);
    if (what === null) return;
    throw snapshotReleased(`thin-pool ${pool.name}`, root, what, { device: pool.name });
  };
  return { metadata, verify, release, [Symbol.asyncDispose]: release };
}

/**
 * An error of opening the snapshot at `root` that the status named held:
 * the device's superblock holding none (ENODATA) or another (EINVAL) means
 * it was released in between (outside hunt AB: 'metadata snapshot at block
 * 74 does not match the held root 79', of /dev/dm-0, where the user gave
 * no block): said as any release during a read is (ESTALE); else `e`.
 */
function releasedAtOpen(pool: string, root: number, e: unknown): unknown {
  if (!(e instanceof MetadataSnapError) || (e.code !== 'ENODATA' && e.code !== 'EINVAL')) return e;
  const now = e.code === 'ENODATA' ? 0 : Number((e as { heldRoot?: unknown }).heldRoot);
  const x = snapshotReleased(`thin-pool ${pool}`, root, heldNowWords(root, now, false) ?? 'another is held now', { device: pool });
  (x as { cause?: unknown }).cause = e;
  return x;
}

/** True when an error is the kernel's answer `code` to a pool message. */
export function isMessageError(e: unknown, code: string): e is DmIoctlError {
  return e instanceof DmIoctlError && e.code === code;
}

/** How reserveMetadataSnap waits for a snapshot another dmthin process holds. */
export interface ReserveOptions {
  /** The longest wait for another running dmthin process of this host to release it, in ms (default 60,000; 0: no wait). */
  waitMs?: number;
  /** Ends the wait (and the reserve) early. */
  signal?: AbortSignal;
}

const DEFAULT_RESERVE_WAIT_MS = 60_000;
/** Node's timer limit (2^31-1 ms, 24.8 days). */
const MAX_RESERVE_WAIT_MS = 2 ** 31 - 1;
/** Looks (50 ms apart) at a held snapshot without a record before -m reads it as someone else's. */
const HELD_RECORD_POLLS = 4;
/** How often a held snapshot is looked at again while waiting. */
const RESERVE_POLL_MS = 100;
/**
 * How long a snapshot without a record is looked at again before it counts
 * as another program's: a dmthin that has just reserved one writes its
 * record after reading the root (a status ioctl and a file: milliseconds).
 */
const RECORD_GRACE_MS = 1_000;

/** EBUSY: the pool holds a snapshot that stays held; what to do depends on whose it is. */
function heldBy(name: string, held: number, owner: HeldOwner, waitedMs: number, cause: DmIoctlError): MetadataSnapError {
  const advice = 'a pool holds one at a time';
  if (owner.kind === 'running' && owner.pid === process.pid) {
    return new MetadataSnapError('EBUSY', `thin-pool ${name} already holds a metadata snapshot (root ${held}), reserved by this process (${owner.pid}); ${advice}: release that one first, or read through it`, { device: name, cause });
  }
  if (owner.kind === 'running') {
    return new MetadataSnapError(
      'EBUSY',
      `thin-pool ${name}'s metadata snapshot (root ${held}) is held by dmthin process ${owner.pid}, still running after ${Math.round(waitedMs / 1000)} s of waiting; ${advice}: run this again when that command has ended`,
      { device: name, cause },
    );
  }
  // No record of it: another program's, or one a dmthin reserved as it was killed, before it could write its
  // record (the reserve, a status ioctl, then the record: outside hunt AC, 3 of 24 SIGKILLs of replicate).
  return new MetadataSnapError(
    'EBUSY',
    `thin-pool ${name} already holds a metadata snapshot (root ${held}) that no running dmthin holds: another program's (thin_dump -m, a script), or one a dmthin reserved as it was killed; ${advice}: when nothing reads it any more, release it with 'dmthin pool release-metadata-snap ${name}', then run this again`,
    { device: name, cause },
  );
}

/** Why a pool cannot reserve: not writable, said as its status says (read_only is not damage). */
function notWritable(name: string, e: DmIoctlError, status: ThinPoolStatusWorking | null): MetadataSnapError {
  const why =
    status?.needsCheck === true
      ? "its metadata needs checking (needs_check): repair it ('lvconvert --repair' for LVM's, thin_check and thin_repair otherwise) first"
      : status?.mode === 'ro'
        ? "it is in read-only mode: reload its table without 'read_only', or, if the kernel switched it (metadata space ran out, an error: see the kernel log), grow the metadata device or repair the pool"
        : status?.mode
          ? `it is in ${status.mode} mode`
          : 'it is not writable';
  return new MetadataSnapError(e.code, `thin-pool ${name} cannot reserve a metadata snapshot (${e.code}): ${why}; see 'dmthin pool status ${name}'`, { device: name, cause: e });
}

/**
 * Waits `ms`, or rejects at once when `signal` aborts or the process gets
 * SIGINT/SIGTERM/SIGHUP: a waiting command ends as it would have without
 * the wait. A signal nobody else listens for is delivered again once the
 * listeners are gone, so its default action (the process ends) still happens.
 */
function pauseUnlessInterrupted(ms: number, signal: AbortSignal | undefined, device: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const sigs = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
    const end = (err?: unknown): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      for (const s of sigs) process.off(s, onSignal);
      if (err === undefined) resolve();
      else reject(err);
    };
    const onAbort = (): void => end(signal!.reason ?? new AbortError('aborted while waiting for the metadata snapshot', { device }));
    const onSignal = (sig: NodeJS.Signals): void => {
      end(new AbortError(`interrupted by ${sig} while waiting for the metadata snapshot of ${device}`, { device }));
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    };
    const timer = setTimeout(() => end(), ms);
    signal?.addEventListener('abort', onAbort, { once: true });
    for (const s of sigs) process.on(s, onSignal);
  });
}
