/**
 * A thin device of a live pool as send and backup read it: the pool's id,
 * the device's size (from its active table, or given), and its data through
 * the active device or a read-only temporary activation. LVM pools are never
 * changed behind LVM's back: an inactive LVM thin is refused with the
 * lvchange that activates it.
 */
import { UsageError } from '../errors';
import { findLvmThin, isLvmUuid } from '../pool/lvm';
import { activateTemporarily, removeStaleTemporaries } from '../pool/temporary-activation';
import type { ActiveThin, ThinPool } from '../pool/thin-pool';
import { SECTOR_SIZE, sectors } from '../units';
import { NativeDataSource, type DataSource } from '../stream/send/data-source';

/** What the pool says of the thin device to read. */
export interface LiveThin {
  /** The pool's identity in stream headers and backups: `dm-uuid:...` or `dm-name:...` unless given. */
  poolId: string;
  /** Its active dm device, if any. */
  active: ActiveThin | undefined;
  /** Its size in bytes. */
  deviceSize: number;
}

/**
 * Finds `snap`'s size and active device. `again` completes "activate it and
 * ... again" in the LVM refusal (e.g. 'send', 'back up'); `unknownSize` is
 * the caller's error for an inactive device of unknown size.
 */
export async function liveThin(
  pool: ThinPool,
  snap: number,
  o: { poolId?: string; deviceSize?: number; again: string; unknownSize: () => Error },
): Promise<LiveThin> {
  const info = await pool.info();
  const poolId = o.poolId ?? (info.uuid ? `dm-uuid:${info.uuid}` : `dm-name:${pool.name}`);
  const active = (await pool.activeThins()).find((t) => t.devId === snap);
  if (active) {
    const tableSize = (await pool.dm.table(active.name)).reduce((n, t) => n + Number(t.length), 0) * SECTOR_SIZE;
    if (o.deviceSize !== undefined && o.deviceSize !== tableSize) {
      throw new UsageError(`the device size given (${o.deviceSize} bytes) differs from the size of active thin device ${active.name} (${tableSize} bytes)`, {
        devId: snap,
        device: active.name,
      });
    }
    return { poolId, active, deviceSize: tableSize };
  }
  if (isLvmUuid(info.uuid)) {
    // A temporary activation would be invisible to LVM (lvremove, vgchange -an and its transaction id then go wrong).
    const lv = await findLvmThin(info.uuid!, snap);
    const name = lv ? `${lv.vg}/${lv.lv}` : 'VG/LV';
    throw new UsageError(
      `thin device ${snap} of LVM pool ${pool.name} is not active, and dmthin does not activate LVM volumes behind LVM's back: ` +
        `activate it with \`lvchange -ay -K ${name}\` and ${o.again} again${lv ? '' : ' (find the LV: `lvs -o vg_name,lv_name,thin_id`)'}`,
      { devId: snap, device: pool.name, ...(lv ? { lv: name } : {}) },
    );
  }
  if (o.deviceSize === undefined) throw o.unknownSize();
  return { poolId, active: undefined, deviceSize: o.deviceSize };
}

/**
 * Runs `fn` on the device's data: the active device, or a read-only
 * temporary activation (named `prefix-...`, removed on every path); `nothing`
 * instead when nothing is to be read.
 */
export async function withThinData<T>(
  pool: ThinPool,
  snap: number,
  thin: LiveThin,
  o: { prefix: string; readNothing: boolean; nothing: DataSource },
  fn: (source: DataSource) => Promise<T>,
): Promise<T> {
  if (thin.active || o.readNothing) {
    const source = thin.active ? await NativeDataSource.open(`${pool.dm.devDir}/${thin.active.name}`, { addressing: 'virtual' }) : o.nothing;
    try {
      return await fn(source);
    } finally {
      await source.close?.();
    }
  }
  await removeStaleTemporaries(pool, o.prefix);
  const tmp = await activateTemporarily(pool, { prefix: o.prefix, devId: snap, length: sectors(thin.deviceSize / SECTOR_SIZE) }, (path) =>
    NativeDataSource.open(path, { addressing: 'virtual' }),
  );
  try {
    return await fn(tmp.handle);
  } catch (e) {
    throw await tmp.explain(e);
  } finally {
    await tmp.dispose();
  }
}
