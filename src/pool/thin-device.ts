/**
 * ThinDevice: an activated thin volume (a dm device with a `thin` table).
 */
import { check, DmIoctlError, DmthinError } from '../errors';
import { DeviceMapper } from '../dm/device-mapper';
import type { DevNum } from '../dm/ioctl';
import { parseThinStatus, parseThinTable, thinTarget, THIN_TARGET, type ThinStatus } from '../dm/targets/thin';
import { type Sectors, sectors } from '../units';
import { ThinPool } from './thin-pool';

/** What ThinDevice.activate makes: the dm device of one thin volume. */
export interface ActivateOptions {
  /** dm name of the new device. */
  name: string;
  /** Thin id in the pool (create it first with pool.createThin / createSnap). */
  devId: number;
  /** Virtual size in sectors. */
  length: Sectors;
  /** Read-only device that supplies unprovisioned blocks. */
  externalOrigin?: string | DevNum;
  /** Make the dm device read-only. */
  readOnly?: boolean;
}

/** An active thin volume: a dm device with a `thin` table over a pool. */
export class ThinDevice {
  private constructor(
    /** Its dm name. */
    readonly name: string,
    /** The DeviceMapper it is driven through. */
    readonly dm: DeviceMapper,
    /** Its device number. */
    readonly dev: DevNum,
    /** Its thin device id in the pool. */
    readonly devId: number,
  ) {}

  /** Activates thin `devId` of `pool` as /dev/mapper/<name>. */
  static async activate(pool: ThinPool, o: ActivateOptions): Promise<ThinDevice> {
    check.instance(pool, ThinPool, 'pool');
    check.required(o, 'ThinDevice.activate');
    check.string(o.name, 'name');
    const target = thinTarget(sectors(Number(o.length)), { poolDev: pool.dev, devId: o.devId, externalOriginDev: o.externalOrigin });
    try {
      const info = await pool.dm.createWithTable(o.name, [target], { readOnly: o.readOnly });
      return new ThinDevice(o.name, pool.dm, info.dev, Number(o.devId));
    } catch (e) {
      throw await explainRefusedActivation(pool, o, e);
    }
  }

  /** An active thin device by dm name. */
  static async open(name: string, opts: { dm?: DeviceMapper } = {}): Promise<ThinDevice> {
    opts ??= {}; // null, as Node's own APIs take it
    const dm = opts.dm ?? new DeviceMapper();
    const info = await dm.info(name);
    const t = await dm.table(name);
    if (t.length !== 1 || t[0].type !== THIN_TARGET) throw new DmthinError('EINVAL', `${name} is not a thin device`, { device: name });
    return new ThinDevice(name, dm, info.dev, parseThinTable(t[0].params).devId);
  }

  /** /dev/mapper/<name>. */
  get path(): string {
    return `${this.dm.devDir}/${this.name}`;
  }

  /** Mapped sectors and the highest mapped sector, or fail/error. */
  async status(opts: { noflush?: boolean } = {}): Promise<ThinStatus> {
    const [t] = await this.dm.status(this.name, { noflush: opts.noflush });
    return parseThinStatus(t.params);
  }

  /** Suspends the device (I/O is queued until resume). */
  suspend(opts: { noflush?: boolean; skipLockfs?: boolean } = {}) {
    return this.dm.suspend(this.name, opts);
  }

  /** Resumes a suspended device. */
  resume() {
    return this.dm.resume(this.name);
  }

  /** Removes the dm device (the thin volume and its data stay in the pool). */
  async deactivate(opts: { deferred?: boolean } = {}): Promise<void> {
    await this.dm.remove(this.name, opts);
  }
}

/**
 * The kernel says why it refused a thin table only in dmesg; the ioctl's
 * EINVAL alone reads as a bad table. The two refusals a caller can act on,
 * a suspended pool and a pool in fail mode, are told apart here by asking
 * the pool; anything else is passed on as it came.
 */
async function explainRefusedActivation(pool: ThinPool, o: ActivateOptions, e: unknown): Promise<unknown> {
  if (!(e instanceof DmIoctlError) || e.code !== 'EINVAL' || e.ioctl !== 'DM_TABLE_LOAD') return e;
  let why: string | undefined;
  try {
    if ((await pool.info()).suspended) {
      why = `pool ${pool.name} is suspended, and the kernel activates no thin device on a suspended pool. Resume the pool (dmsetup resume ${pool.name}, or let whoever suspended it finish), then run again`;
    } else if ((await pool.status({ noflush: true })).kind === 'fail') {
      why = `pool ${pool.name} is in fail mode (see dmesg; its metadata needs thin_check/thin_repair), and the kernel activates no thin device on it`;
    }
  } catch {
    return e; // the pool itself cannot be asked: the kernel's answer is all there is
  }
  if (!why) return e;
  return new DmIoctlError('EINVAL', `cannot activate thin ${o.devId} of pool ${pool.name}: ${why}`, { ioctl: e.ioctl, device: pool.name, cause: e });
}
