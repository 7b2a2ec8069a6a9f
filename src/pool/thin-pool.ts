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
import { AbortError, DmIoctlError, DmthinError, MetadataSnapError, UsageError } from '../errors';
import { DeviceMapper } from '../dm/device-mapper';
import { formatDev, type DevNum, type DmTarget } from '../dm/ioctl';
import {
  PoolMessage,
  THIN_POOL_TARGET,
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
import { ThinMetadata } from '../thin/metadata';
import { type DataBlocks, type Sectors, dataBlocks, sectors } from '../units';
import { devNumOf, devPathOf, sizeInSectors } from '../dm/block-devices';
import { guard, unguard, type Releasable } from './release-guard';

export interface ThinPoolCreateOptions {
  name: string;
  /** Metadata device: a block device path or 'major:minor'. */
  metadataDev: string;
  /** Data device: a block device path or 'major:minor'. */
  dataDev: string;
  /** In 512-byte sectors: 128 (64 KiB) .. 2097152 (1 GiB), a multiple of 128. */
  dataBlockSize: Sectors;
  /** Free data blocks below which the pool raises a dm event. */
  lowWaterMark: DataBlocks;
  features?: ThinPoolFeature[];
  /** Pool length in sectors; default: the whole data device, whole blocks only. */
  length?: Sectors;
  uuid?: string;
  dm?: DeviceMapper;
}

export interface CreateSnapOptions {
  /**
   * Suspend active thin devices of the origin around the message so the
   * snapshot is consistent (default true). Pass false if you suspended them.
   */
  suspendOrigin?: boolean;
}

/** An active thin device of the pool (a dm device with a `thin` table). */
/** Which metadata snapshot openMetadata() reads through. */
export type MetadataSnapshotUse = 'reserve' | 'held' | 'held-or-reserve';

export interface OpenMetadataOptions {
  /**
   * 'reserve' (default): reserve one now, released with the handle; 'held':
   * the one someone else holds (left held); 'held-or-reserve': the held one
   * if any, else reserve.
   */
  snapshot?: MetadataSnapshotUse;
  /** The held snapshot must be at this block (refused otherwise). */
  root?: number;
}

/** A live pool's metadata and what reading it holds. */
export interface LiveMetadata extends AsyncDisposable {
  readonly metadata: ThinMetadata;
  /** Closes the metadata, then releases the snapshot if it was reserved for it. Idempotent. */
  release(): Promise<void>;
}

export interface ActiveThin {
  name: string;
  devId: number;
  dev: DevNum;
}

export class ThinPool {
  private constructor(
    readonly name: string,
    readonly dm: DeviceMapper,
    /** The pool's own device number (thin table lines refer to it). */
    readonly dev: DevNum,
  ) {}

  /** Creates and activates a pool (DEV_CREATE, TABLE_LOAD, resume; removed again if a step fails). */
  static async create(o: ThinPoolCreateOptions): Promise<ThinPool> {
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

  /** An existing pool by dm name; fails with ENXIO if absent, EINVAL if not a thin-pool. */
  static async open(name: string, opts: { dm?: DeviceMapper } = {}): Promise<ThinPool> {
    const dm = opts.dm ?? new DeviceMapper();
    const info = await dm.info(name);
    const t = await dm.table(name);
    if (t.length !== 1 || t[0].type !== THIN_POOL_TARGET) {
      throw new DmthinError('EINVAL', `${name} is not a thin-pool (table: ${t.map((x) => x.type).join(', ') || 'none'})`, { device: name });
    }
    return new ThinPool(name, dm, info.dev);
  }

  /** `major:minor` of the pool, for thin table lines. */
  get devString(): string {
    return formatDev(this.dev);
  }

  /** The active table: metadata and data devices, block size, low-water mark, features. */
  async table(): Promise<ThinPoolTable & { length: Sectors }> {
    const [t] = await this.dm.table(this.name);
    return { ...parseThinPoolTable(t.params), length: t.length };
  }

  /**
   * Typed status. The kernel commits metadata before reporting unless
   * `noflush` is set.
   */
  async status(opts: { noflush?: boolean } = {}): Promise<ThinPoolStatus> {
    const t = await this.dm.status(this.name, { noflush: opts.noflush });
    if (t.length !== 1) throw new DmthinError('EPROTO', `thin-pool ${this.name} has ${t.length} targets`, { device: this.name });
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
   */
  async reserveMetadataSnap(): Promise<MetadataSnapshot> {
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
   */
  async *changedBlocks(baseId: number, snapId: number, opts: DeltaOptions = {}): AsyncGenerator<DeltaExtent> {
    await using live = await this.openMetadata();
    yield* live.metadata.delta(baseId, snapId, { includeSame: false, ...opts });
  }

  /** Releases a held metadata snapshot (EINVAL if none). Prefer disposing the handle. */
  async releaseMetadataSnap(): Promise<void> {
    await this.message(PoolMessage.releaseMetadataSnap());
  }

  /** Path of the pool's metadata device (from its table, via sysfs). */
  async metadataDevicePath(): Promise<string> {
    const t = await this.table();
    return devPathOf(await devNumOf(t.metadataDev));
  }

  /**
   * The pool's metadata through the held metadata snapshot (its root must be
   * held: reserve one first). Opened read-only, O_DIRECT, without O_EXCL.
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
      if (held !== null) {
        if (opts.root !== undefined && opts.root !== Number(held)) {
          throw new UsageError(`metadata snapshot at block ${opts.root} does not match the held root ${held} of ${this.name}`);
        }
        const md = await ThinMetadata.open(await this.metadataDevicePath(), { metadataSnap: Number(held), exclusive: false });
        return liveMetadata(md);
      }
      if (use === 'held') {
        throw new MetadataSnapError('ENODATA', `thin-pool ${this.name} holds no metadata snapshot (reserve one first)`, { device: this.name });
      }
      if (opts.root !== undefined) throw new UsageError(`${this.name} holds no metadata snapshot (block ${opts.root} was asked for)`);
    }
    const snap = await this.reserveMetadataSnap();
    let md: ThinMetadata;
    try {
      md = await snap.open();
    } catch (e) {
      await snap.release();
      throw e;
    }
    return liveMetadata(md, snap);
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
   * crossed), then returns the new status. `eventNr` is from a previous
   * `info()`; the wait occupies one libuv pool thread.
   */
  async waitEvent(eventNr: number, opts: { noflush?: boolean } = {}): Promise<{ eventNr: number; status: ThinPoolStatus }> {
    const r = await this.dm.wait(this.name, eventNr, { noflush: opts.noflush });
    return { eventNr: r.info.eventNr, status: parseThinPoolStatus(r.targets[0].params) };
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
  private releasing?: Promise<void>;
  /** The reserve_metadata_snap message: true once it succeeded, false if it failed; undefined before it was sent. */
  private reserved?: Promise<boolean>;
  private reserveFailed = false;

  constructor(readonly pool: ThinPool) {}

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
        await this.pool.releaseMetadataSnap();
      } finally {
        unguard(this);
      }
    })();
    return this.releasing;
  }

  releaseSync(): void {
    if (this.releasing) return;
    this.releasing = Promise.resolve();
    unguard(this);
    if (this.reserveFailed) return;
    // If the reserve is still in flight (exit during the ioctl) this races
    // with it; best effort, as anything on the exit path.
    this.pool.dm.targetMessageSync(this.pool.name, sectors(0), PoolMessage.releaseMetadataSnap());
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.release();
  }
}

/** True when an error is the kernel's answer `code` to a pool message. */
function liveMetadata(metadata: ThinMetadata, snap?: MetadataSnapshot): LiveMetadata {
  const release = async (): Promise<void> => {
    try {
      await metadata.close();
    } finally {
      await snap?.release();
    }
  };
  return { metadata, release, [Symbol.asyncDispose]: release };
}

export function isMessageError(e: unknown, code: string): e is DmIoctlError {
  return e instanceof DmIoctlError && e.code === code;
}
