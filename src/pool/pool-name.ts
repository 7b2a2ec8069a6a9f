/**
 * Which dm device a pool name means. Accepted: a dm name (`pool`,
 * `vg-pool-tpool`), LVM's `VG/LV`, a device node (`/dev/mapper/NAME`,
 * `/dev/VG/LV`, `/dev/dm-N`), and LVM's own pool device `vg-pool`, a linear
 * layer over the thin-pool device `vg-pool-tpool`, which is followed. Only
 * dm tables and uuids are read (lvm2 need not be installed), so an LV is
 * found only while it is active.
 */
import { stat } from 'node:fs/promises';
import { DmIoctlError, NameLookupError } from '../errors';
import type { DeviceMapper, DmDeviceInfo } from '../dm/device-mapper';
import { devNumOf } from '../dm/block-devices';
import { formatDev, type DevNum, type DmTarget } from '../dm/ioctl';
import { THIN_POOL_TARGET } from '../dm/targets/thin-pool';
import { parseThinTable, THIN_TARGET } from '../dm/targets/thin';
import { isLvmName, isLvmUuid, lvmDmName, lvmUuidPrefix, splitLvmDmName, type LvmPoolName } from './lvm';

/** A resolved pool: the dm device with the thin-pool table. */
export interface ResolvedPool {
  /** dm name of the thin-pool device (every ioctl goes to it). */
  name: string;
  dev: DevNum;
  uuid?: string;
  /** Set when LVM made the pool. */
  lvm?: LvmPoolName;
}

/**
 * The shape of a pool name that names no file: a dm name (no slash), `VG/LV`,
 * `/dev/mapper/NAME` or `/dev/VG/LV`. Undefined for anything else (then it
 * can only be a path).
 */
export function poolNameShape(arg: string): 'dm-name' | 'vg/lv' | 'dev-path' | undefined {
  if (arg === '') return undefined;
  if (!arg.includes('/')) return 'dm-name';
  if (/^\/dev\/mapper\/[^/]+$/.test(arg)) return 'dev-path';
  const m = /^(\/dev\/)?([^/]+)\/([^/]+)$/.exec(arg);
  if (m && isLvmName(m[2]) && isLvmName(m[3]) && m[2] !== 'mapper') return m[1] ? 'dev-path' : 'vg/lv';
  return undefined;
}

async function infoOrUndefined(dm: DeviceMapper, ref: string | { dev: DevNum }): Promise<DmDeviceInfo | undefined> {
  try {
    return await dm.info(ref);
  } catch (e) {
    if (e instanceof DmIoctlError && e.code === 'ENXIO') return undefined;
    throw e;
  }
}

function lvmIdentity(name: string, uuid: string | undefined): LvmPoolName | undefined {
  if (!isLvmUuid(uuid)) return undefined;
  const s = splitLvmDmName(name);
  return s ? { vg: s.vg, lv: s.lv, uuid: uuid! } : undefined;
}

/** How a device is called in messages: `vg/lv` for LVM's, else its dm name. */
function label(name: string, uuid: string | undefined): string {
  const s = isLvmUuid(uuid) ? splitLvmDmName(name) : undefined;
  return s ? `${s.vg}/${s.lv}${s.layer ? ` (dm device ${name})` : ''}` : name;
}

const one = (t: DmTarget[]): DmTarget | undefined => (t.length === 1 ? t[0] : undefined);

/** Resolves a pool name (see the file comment) to its thin-pool dm device. */
export async function resolvePool(given: string, dm: DeviceMapper): Promise<ResolvedPool> {
  if (given.startsWith('/')) {
    const st = await stat(given).catch(() => undefined);
    if (st) {
      if (!st.isBlockDevice()) throw new NameLookupError('not-a-pool', `${given} is not a thin pool: not a block device`, { given, path: given });
      const dev = await devNumOf(given);
      const info = await infoOrUndefined(dm, { dev });
      if (!info) throw new NameLookupError('not-a-pool', `${given} is not a thin pool: block device ${formatDev(dev)} is not a device-mapper device`, { given, path: given });
      return inspect(given, info, dm);
    }
  }
  const shape = poolNameShape(given);
  let candidates: string[];
  let where: string;
  let lvmOnly = false;
  if (shape === 'dm-name' || (shape === 'dev-path' && given.startsWith('/dev/mapper/'))) {
    const name = shape === 'dm-name' ? given : given.slice('/dev/mapper/'.length);
    // LVM's pool LV may have no `vg-pool` device (only its -tpool): accept the LV's dm name for it.
    const lv = splitLvmDmName(name);
    candidates = lv && lv.layer === undefined ? [name, `${name}-tpool`] : [name];
    where = `no dm device named ${name}${candidates.length > 1 ? ` or ${candidates[1]}` : ''}`;
  } else if (shape !== undefined) {
    const [vg, lv] = given.replace(/^\/dev\//, '').split('/');
    const n = lvmDmName(vg, lv);
    candidates = [`${n}-tpool`, n];
    lvmOnly = true;
    where = `no dm device ${n}-tpool or ${n}: is LV ${vg}/${lv} active? (\`lvs ${vg}/${lv}\`, \`lvchange -ay ${vg}/${lv}\`)`;
  } else {
    throw new NameLookupError('not-found', `no thin pool '${given}': give its dm name, VG/LV, or its device node (/dev/mapper/NAME)`, { given });
  }
  for (const c of candidates) {
    const info = await infoOrUndefined(dm, c);
    // A name dmthin made up from LVM's rules must be LVM's device (its uuid says so), not a stranger's.
    const madeUp = lvmOnly || c !== candidates[0];
    if (info && (!madeUp || isLvmUuid(info.uuid))) return inspect(given, info, dm);
  }
  throw new NameLookupError('not-found', `no thin pool ${given}: ${where}`, { given });
}

/** The device's table decides: a thin-pool, LVM's linear layer over one, or a refusal saying what it is. */
async function inspect(given: string, info: DmDeviceInfo, dm: DeviceMapper): Promise<ResolvedPool> {
  const all = await dm.table(info.name);
  const t = one(all);
  const named = given === info.name ? given : `${given} (dm device ${info.name})`;
  if (t?.type === THIN_POOL_TARGET) return { name: info.name, dev: info.dev, uuid: info.uuid, lvm: lvmIdentity(info.name, info.uuid) };
  if (t?.type === 'linear' && isLvmUuid(info.uuid)) {
    // LVM's `vg-pool`: one linear target over the start of the LV's own -tpool.
    const m = /^(\d+):(\d+) 0$/.exec(t.params.trim());
    const lower = m ? await infoOrUndefined(dm, { dev: { major: Number(m[1]), minor: Number(m[2]) } }) : undefined;
    const same = lower && lvmUuidPrefix(lower.uuid) && lower.uuid!.slice(0, 68) === info.uuid!.slice(0, 68);
    if (lower && same && one(await dm.table(lower.name))?.type === THIN_POOL_TARGET) {
      return { name: lower.name, dev: lower.dev, uuid: lower.uuid, lvm: lvmIdentity(lower.name, lower.uuid) };
    }
  }
  if (t?.type === THIN_TARGET) {
    const tt = parseThinTable(t.params);
    const p = await infoOrUndefined(dm, { dev: await devNumOf(tt.poolDev) }).catch(() => undefined);
    const of = p ? label(p.name, p.uuid) : tt.poolDev;
    throw new NameLookupError('not-a-pool', `${named} is not a thin pool: it is thin device ${tt.devId} of pool ${of}; name the pool`, {
      given,
      device: info.name,
      found: `thin device ${tt.devId} of ${of}`,
    });
  }
  const found = all.length ? `table ${all.map((x) => x.type).join(', ')}` : 'no table';
  throw new NameLookupError('not-a-pool', `${named} is not a thin pool (${found})`, { given, device: info.name, found });
}
