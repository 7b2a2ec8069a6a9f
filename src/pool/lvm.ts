/**
 * LVM-managed thin pools. LVM records thin ids, sizes and the pool's
 * transaction id in its own metadata and expects to be the only one that
 * activates its volumes; a dm device it did not make is invisible to it (an
 * `lvremove` then half-fails). So dmthin never activates a thin volume of an
 * LVM pool: it reads one LVM activated, and otherwise says which `lvchange`
 * to run. The names come from `lvs` when lvm2 is installed; without it the
 * advice stays generic.
 */
import { execFile } from 'node:child_process';

/** dm uuid of a device LVM made (the pool's `-tpool` device among them). */
export function isLvmUuid(uuid: string | undefined): boolean {
  return uuid !== undefined && uuid.startsWith('LVM-');
}

/** An LVM thin volume: its volume group and logical volume names. */
export interface LvmThinVolume {
  /** Volume group name. */
  vg: string;
  /** Logical volume name. */
  lv: string;
  /** LV size in bytes. */
  sizeBytes?: number;
}

interface LvsRow {
  vg_name?: string;
  lv_name?: string;
  thin_id?: string;
  pool_lv_uuid?: string;
  vg_uuid?: string;
  lv_size?: string;
}

function lvsJson(timeoutMs: number): Promise<LvsRow[] | undefined> {
  return new Promise((resolve) => {
    execFile(
      'lvs',
      ['--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', 'vg_name,lv_name,thin_id,pool_lv_uuid,vg_uuid,lv_size'],
      // lvs complains about every descriptor it inherits; they are not its business.
      { timeout: timeoutMs, env: { ...process.env, LVM_SUPPRESS_FD_WARNINGS: '1' }, maxBuffer: 16 << 20 },
      (err, stdout) => {
        if (err) return resolve(undefined);
        try {
          const j = JSON.parse(stdout) as { report?: { lv?: LvsRow[] }[] };
          resolve((j.report ?? []).flatMap((r) => r.lv ?? []));
        } catch {
          resolve(undefined);
        }
      },
    );
  });
}

/**
 * The LV that is thin `thinId` of the LVM pool whose thin-pool dm uuid is
 * `poolUuid` (`LVM-<vg uuid><pool lv uuid>-tpool`), from `lvs`; undefined
 * when lvm2 is not installed, fails, or lists no such volume.
 */
export async function findLvmThin(poolUuid: string, thinId: number, opts: { timeoutMs?: number } = {}): Promise<LvmThinVolume | undefined> {
  const m = /^LVM-([A-Za-z0-9]{32})([A-Za-z0-9]{32})(?:-.*)?$/.exec(poolUuid);
  if (!m) return undefined;
  const rows = await lvsJson(opts.timeoutMs ?? 15_000);
  const strip = (u: string | undefined): string => (u ?? '').replace(/-/g, '');
  const row = rows?.find((r) => strip(r.vg_uuid) === m[1] && strip(r.pool_lv_uuid) === m[2] && r.thin_id !== undefined && Number(r.thin_id) === thinId);
  if (!row?.vg_name || !row.lv_name) return undefined;
  const size = Number(row.lv_size);
  return { vg: row.vg_name, lv: row.lv_name, sizeBytes: Number.isSafeInteger(size) && size > 0 ? size : undefined };
}
