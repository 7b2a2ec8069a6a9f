/**
 * LVM-managed thin pools. LVM records thin ids, sizes and the pool's
 * transaction id in its own metadata and expects to be the only one that
 * activates its volumes; a dm device it did not make is invisible to it (an
 * `lvremove` then half-fails). So dmthin never activates a thin volume of an
 * LVM pool: it reads one LVM activated, and otherwise says which `lvchange`
 * to run. The names come from `lvs` when lvm2 is installed; without it the
 * advice stays generic.
 *
 * LVM names its dm devices `VG-LV[-layer]` with every dash inside VG and LV
 * doubled (`my-vg`/`a-b` -> `my--vg-a--b`), and gives them the uuid
 * `LVM-<vg uuid><lv uuid>[-layer]` (32 characters each, no dashes). A thin
 * pool LV `vg/pool` is the thin-pool target `vg-pool-tpool` over
 * `vg-pool_tmeta` and `vg-pool_tdata`, and (on most versions) a linear device
 * `vg-pool` over `-tpool`.
 */
import { execFile } from 'node:child_process';
import { NameLookupError } from '../errors';

/** dm uuid of a device LVM made (the pool's `-tpool` device among them). */
export function isLvmUuid(uuid: string | undefined): boolean {
  return uuid !== undefined && uuid.startsWith('LVM-');
}

/** `LVM-<vg uuid><lv uuid>`: the part of an LVM dm uuid shared by every layer of one LV. */
export function lvmUuidPrefix(uuid: string | undefined): { vgUuid: string; lvUuid: string } | undefined {
  const m = /^LVM-([A-Za-z0-9]{32})([A-Za-z0-9]{32})(?:-.*)?$/.exec(uuid ?? '');
  return m ? { vgUuid: m[1], lvUuid: m[2] } : undefined;
}

/** A VG or LV name as LVM accepts it (letters, digits, `+_.-`, not starting with `-`). */
export function isLvmName(s: string): boolean {
  return /^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$/.test(s) && s !== '.' && s !== '..' && s.length <= 127;
}

/** LVM's dm name of VG/LV (and a layer such as `tpool`): dashes inside names doubled. */
export function lvmDmName(vg: string, lv: string, layer?: string): string {
  const m = (s: string) => s.replace(/-/g, '--');
  return `${m(vg)}-${m(lv)}${layer ? `-${layer}` : ''}`;
}

/**
 * VG, LV and layer of an LVM dm name (the inverse of lvmDmName): the first
 * single dash ends the VG, the next one the LV. Undefined when the name has
 * no single dash.
 */
export function splitLvmDmName(name: string): { vg: string; lv: string; layer?: string } | undefined {
  const cut = (s: string): [string, string | undefined] => {
    for (let i = 0; i < s.length; i++) {
      if (s[i] !== '-') continue;
      if (s[i + 1] === '-') {
        i++;
        continue;
      }
      return [s.slice(0, i), s.slice(i + 1)];
    }
    return [s, undefined];
  };
  const [vg, rest] = cut(name);
  if (rest === undefined || vg === '') return undefined;
  const [lv, layer] = cut(rest);
  if (lv === '') return undefined;
  const un = (s: string) => s.replace(/--/g, '-');
  return layer === undefined ? { vg: un(vg), lv: un(lv) } : { vg: un(vg), lv: un(lv), layer };
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
  pool_lv?: string;
  pool_lv_uuid?: string;
  vg_uuid?: string;
  lv_size?: string;
  segtype?: string;
}

type LvsResult = { rows: LvsRow[] } | { error: 'lvm-missing' | 'lvm-failed' | 'no-vg'; detail: string };

const LVS_FIELDS = 'vg_name,lv_name,thin_id,pool_lv,pool_lv_uuid,vg_uuid,lv_size,segtype';

/** `lvs` as JSON rows (of one VG, or all); execFile, no shell. */
function lvsJson(timeoutMs: number, vg?: string): Promise<LvsResult> {
  return new Promise((resolve) => {
    execFile(
      'lvs',
      ['--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', LVS_FIELDS, ...(vg ? [vg] : [])],
      // lvs complains about every descriptor it inherits; they are not its business.
      { timeout: timeoutMs, env: { ...process.env, LVM_SUPPRESS_FD_WARNINGS: '1' }, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        if (err) {
          const e = err as NodeJS.ErrnoException & { killed?: boolean };
          if (e.code === 'ENOENT') return resolve({ error: 'lvm-missing', detail: 'lvs is not installed (lvm2)' });
          const line = String(stderr).split('\n').map((l) => l.trim()).find((l) => l !== '');
          if (vg && /Volume group .* not found/i.test(String(stderr))) return resolve({ error: 'no-vg', detail: `no volume group ${vg} (lvs: ${line})` });
          return resolve({ error: 'lvm-failed', detail: e.killed ? `lvs did not answer within ${timeoutMs} ms` : `lvs failed: ${line ?? e.message}` });
        }
        try {
          const j = JSON.parse(stdout) as { report?: { lv?: LvsRow[] }[] };
          resolve({ rows: (j.report ?? []).flatMap((r) => r.lv ?? []) });
        } catch {
          resolve({ error: 'lvm-failed', detail: 'lvs printed something that is not its JSON report' });
        }
      },
    );
  });
}

const strip = (u: string | undefined): string => (u ?? '').replace(/-/g, '');

/**
 * The LV that is thin `thinId` of the LVM pool whose thin-pool dm uuid is
 * `poolUuid` (`LVM-<vg uuid><pool lv uuid>-tpool`), from `lvs`; undefined
 * when lvm2 is not installed, fails, or lists no such volume.
 */
export async function findLvmThin(poolUuid: string, thinId: number, opts: { timeoutMs?: number } = {}): Promise<LvmThinVolume | undefined> {
  const id = lvmUuidPrefix(poolUuid);
  if (!id) return undefined;
  const r = await lvsJson(opts.timeoutMs ?? 15_000);
  if (!('rows' in r)) return undefined;
  const row = r.rows.find((x) => strip(x.vg_uuid) === id.vgUuid && strip(x.pool_lv_uuid) === id.lvUuid && x.thin_id !== undefined && x.thin_id !== '' && Number(x.thin_id) === thinId);
  if (!row?.vg_name || !row.lv_name) return undefined;
  const size = Number(row.lv_size);
  return { vg: row.vg_name, lv: row.lv_name, sizeBytes: Number.isSafeInteger(size) && size > 0 ? size : undefined };
}

/** An LVM thin pool: its VG/LV and the dm uuid of its thin-pool device. */
export interface LvmPoolName {
  /** Volume group name. */
  vg: string;
  /** The thin-pool LV's name. */
  lv: string;
  /** dm uuid of the thin-pool device (`LVM-…-tpool`). */
  uuid: string;
}

/**
 * The thin id of thin volume `name` (`VG/LV`, or `LV` in the pool's VG) of
 * LVM pool `pool`, from `lvs` (lvm2 must be installed). Refused with a
 * NameLookupError when lvs is missing or fails, the LV does not exist, is not
 * a thin volume, or belongs to another pool.
 */
export async function lvmThinId(pool: LvmPoolName, name: string, opts: { timeoutMs?: number } = {}): Promise<number> {
  const parts = name.split('/');
  const [vg, lv] = parts.length === 2 ? parts : [pool.vg, name];
  if (parts.length > 2 || !isLvmName(vg) || !isLvmName(lv)) {
    throw new NameLookupError('not-a-thin', `'${name}' is not an LV name (give VG/LV, or LV in the pool's VG ${pool.vg})`, { given: name });
  }
  const r = await lvsJson(opts.timeoutMs ?? 15_000, vg);
  if (!('rows' in r)) {
    throw new NameLookupError(r.error === 'no-vg' ? 'not-found' : r.error, `cannot look up the thin id of LV ${vg}/${lv}: ${r.detail}${r.error === 'lvm-missing' ? '; give the thin id instead' : ''}`, {
      given: name,
    });
  }
  const row = r.rows.find((x) => x.vg_name === vg && x.lv_name === lv);
  if (!row) throw new NameLookupError('not-found', `no LV ${vg}/${lv} (lvs lists none by that name)`, { given: name });
  if (row.thin_id === undefined || row.thin_id === '' || !/^[0-9]+$/.test(String(row.thin_id).trim())) {
    throw new NameLookupError('not-a-thin', `LV ${vg}/${lv} is not a thin volume (segment type ${row.segtype || 'unknown'})`, { given: name, found: row.segtype });
  }
  const id = lvmUuidPrefix(pool.uuid);
  if (!id || strip(row.vg_uuid) !== id.vgUuid || strip(row.pool_lv_uuid) !== id.lvUuid) {
    const other = row.pool_lv ? `${vg}/${row.pool_lv}` : 'another pool';
    throw new NameLookupError('not-a-thin', `LV ${vg}/${lv} is a thin volume of ${other}, not of ${pool.vg}/${pool.lv}`, { given: name, found: other });
  }
  return Number(String(row.thin_id).trim());
}
