/**
 * Every thin target in every active dm table, whatever pool it belongs to.
 * A merge must know who else uses what it is about to change: a thin id of
 * its pool that is active somewhere (its writes would race the merge), and
 * an external origin that other thins read through (they would see it
 * change under them). ThinPool.activeThins() answers for one pool and
 * single-target tables only; this looks at all of them.
 */
import type { DeviceMapper } from '../dm/device-mapper';
import type { DmTarget } from '../dm/ioctl';
import { parseThinTable, THIN_TARGET } from '../dm/targets/thin';

export interface ThinTableUse {
  /** dm name of the device whose table holds the thin target. */
  device: string;
  /** The pool device, `major:minor`. */
  poolDev: string;
  devId: number;
  /** The external origin, `major:minor`, if any. */
  externalOriginDev?: string;
}

/** The thin targets of every dm device's live table (devices removed meanwhile are skipped). */
export async function thinTableUses(dm: DeviceMapper): Promise<ThinTableUse[]> {
  const out: ThinTableUse[] = [];
  for (const d of await dm.listDevices()) {
    let t: DmTarget[];
    try {
      t = await dm.table(d.name);
    } catch {
      continue; // removed meanwhile
    }
    for (const x of t) {
      if (x.type !== THIN_TARGET) continue;
      const tt = parseThinTable(x.params);
      out.push({ device: d.name, poolDev: tt.poolDev, devId: tt.devId, ...(tt.externalOriginDev ? { externalOriginDev: tt.externalOriginDev } : {}) });
    }
  }
  return out;
}
