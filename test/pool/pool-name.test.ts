/**
 * Pool names as LVM users give them, resolved over a scripted dm transport
 * (no kernel): the devices are laid out as LVM 2.03 makes them (dm names
 * `VG-LV[-layer]` with dashes inside names doubled, uuids
 * `LVM-<vg uuid><lv uuid>[-layer]`, the pool LV a linear layer over its
 * `-tpool`), and `lvs` is a script printing LVM's JSON report.
 */
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeviceMapper } from '../../src/dm/device-mapper';
import { Cmd, Flag, IOCTL, decodeHeader, encodeDev, encodeRequest, type DevNum } from '../../src/dm/ioctl';
import { NameLookupError } from '../../src/errors';
import { lvmDmName, splitLvmDmName } from '../../src/pool/lvm';
import { poolNameShape } from '../../src/pool/pool-name';
import { ThinPool } from '../../src/pool/thin-pool';
import { statusResults } from '../dm/helpers/kernel-replies';

const V = 'Vv'.repeat(16); // a VG uuid (32 characters)
const P = 'Pp'.repeat(16); // the pool LV's uuid
const T = 'Tt'.repeat(16); // a thin LV's uuid
const M = 'Mm'.repeat(16);
const W = 'Ww'.repeat(16); // another VG

interface FakeDev {
  name: string;
  dev: DevNum;
  uuid?: string;
  table: { type: string; params: string }[];
}

const DEVICES: FakeDev[] = [
  { name: 'plain', dev: { major: 253, minor: 1 }, table: [{ type: 'thin-pool', params: '7:0 7:1 128 0 0' }] },
  // VG "my-vg", thin pool LV "a-pool" with a thin LV "thin-1" (thin id 1).
  { name: 'my--vg-a--pool_tmeta', dev: { major: 253, minor: 2 }, uuid: `LVM-${V}${M}-tmeta`, table: [{ type: 'linear', params: '7:2 2048' }] },
  { name: 'my--vg-a--pool-tpool', dev: { major: 253, minor: 4 }, uuid: `LVM-${V}${P}-tpool`, table: [{ type: 'thin-pool', params: '253:2 253:3 128 0 0' }] },
  { name: 'my--vg-a--pool', dev: { major: 253, minor: 5 }, uuid: `LVM-${V}${P}-pool`, table: [{ type: 'linear', params: '253:4 0' }] },
  { name: 'my--vg-thin--1', dev: { major: 253, minor: 6 }, uuid: `LVM-${V}${T}`, table: [{ type: 'thin', params: '253:4 1' }] },
  // VG "vg2": a pool LV "p" with only its -tpool device active.
  { name: 'vg2-p-tpool', dev: { major: 253, minor: 7 }, uuid: `LVM-${W}${P}-tpool`, table: [{ type: 'thin-pool', params: '7:3 7:4 128 0 0' }] },
  // Named like an LV, but not LVM's.
  { name: 'vgx-lv', dev: { major: 253, minor: 8 }, table: [{ type: 'thin-pool', params: '7:5 7:6 128 0 0' }] },
  // Not LVM's: a linear device over a pool is not followed.
  { name: 'alias', dev: { major: 253, minor: 9 }, table: [{ type: 'linear', params: '253:1 0' }] },
];

function fakeDm(): DeviceMapper {
  const same = (a: DevNum, b: DevNum) => a.major === b.major && a.minor === b.minor;
  const transport = async (cmd: number, req: Buffer): Promise<Buffer> => {
    const h = decodeHeader(req);
    const d = DEVICES.find((x) => (h.name ? x.name === h.name : same(x.dev, h.dev)));
    if (!d) throw Object.assign(new Error('ENXIO: No such device or address, ioctl'), { code: 'ENXIO', errno: -6, syscall: 'ioctl' });
    const results = cmd === Cmd.TABLE_STATUS ? statusResults(d.table.map((t) => ({ start: 0, length: 2048, ...t }))) : undefined;
    const b = encodeRequest({ version: [4, 47, 0], flags: Flag.ACTIVE_PRESENT, targetCount: d.table.length, name: d.name, uuid: d.uuid, dev: encodeDev(d.dev) }, results);
    b.writeUInt32LE(results ? IOCTL.size + results.length : IOCTL.data, IOCTL.data_size);
    if (cmd !== Cmd.DEV_STATUS && cmd !== Cmd.TABLE_STATUS) throw new Error(`unexpected ioctl ${cmd}`);
    return b;
  };
  return new DeviceMapper({ nodes: 'never', transport });
}

const open = (name: string) => ThinPool.open(name, { dm: fakeDm() });
const lookupError = (p: Promise<unknown>) => p.then(() => undefined, (e: unknown) => e as NameLookupError);

describe('LVM dm names', () => {
  test('dashes inside VG and LV names are doubled; the split inverts it', () => {
    expect(lvmDmName('my-vg', 'a-b')).toBe('my--vg-a--b');
    expect(lvmDmName('vg', 'pool', 'tpool')).toBe('vg-pool-tpool');
    expect(splitLvmDmName('my--vg-a--b')).toEqual({ vg: 'my-vg', lv: 'a-b' });
    expect(splitLvmDmName('vg-pool-tpool')).toEqual({ vg: 'vg', lv: 'pool', layer: 'tpool' });
    expect(splitLvmDmName('vg-pool_tmeta')).toEqual({ vg: 'vg', lv: 'pool_tmeta' });
    expect(splitLvmDmName('vg---x')).toEqual({ vg: 'vg-', lv: 'x' }); // a VG name ending in a dash
    expect(splitLvmDmName('plain')).toBeUndefined();
  });

  test('shapes of pool names that are no file', () => {
    expect(poolNameShape('pool')).toBe('dm-name');
    expect(poolNameShape('my-vg/a-pool')).toBe('vg/lv');
    expect(poolNameShape('/dev/my-vg/a-pool')).toBe('dev-path');
    expect(poolNameShape('/dev/mapper/my--vg-a--pool')).toBe('dev-path');
    expect(poolNameShape('./meta.bin')).toBeUndefined();
    expect(poolNameShape('a/b/c')).toBeUndefined();
    expect(poolNameShape('/tmp/x/y')).toBeUndefined();
  });
});

describe('ThinPool.open by name', () => {
  test('a plain dm name', async () => {
    const p = await open('plain');
    expect([p.name, p.lvm]).toEqual(['plain', undefined]);
  });

  test.each(['my-vg/a-pool', '/dev/my-vg/a-pool', 'my--vg-a--pool', '/dev/mapper/my--vg-a--pool', 'my--vg-a--pool-tpool'])(
    'LVM pool as %s: the -tpool device, with its VG/LV',
    async (given) => {
      const p = await open(given);
      expect(p.name).toBe('my--vg-a--pool-tpool');
      expect(p.dev).toEqual({ major: 253, minor: 4 });
      expect(p.lvm).toEqual({ vg: 'my-vg', lv: 'a-pool', uuid: `LVM-${V}${P}-tpool` });
    },
  );

  test.each(['vg2/p', 'vg2-p'])('an LVM pool with no linear layer, as %s', async (given) => {
    expect((await open(given)).name).toBe('vg2-p-tpool');
  });

  test('a thin LV: refused, naming the pool', async () => {
    const e = await lookupError(open('my-vg/thin-1'));
    expect(e).toBeInstanceOf(NameLookupError);
    expect(e).toMatchObject({ reason: 'not-a-pool', code: 'EINVAL', device: 'my--vg-thin--1' });
    expect(e!.message).toBe('my-vg/thin-1 (dm device my--vg-thin--1) is not a thin pool: it is thin device 1 of pool my-vg/a-pool (dm device my--vg-a--pool-tpool); name the pool');
  });

  test("LVM's metadata sub-LV: refused, saying what it is", async () => {
    const e = await lookupError(open('my--vg-a--pool_tmeta'));
    expect(e).toMatchObject({ reason: 'not-a-pool', code: 'EINVAL', found: 'table linear' });
  });

  test('a linear device over a pool that LVM did not make is not followed', async () => {
    expect(await lookupError(open('alias'))).toMatchObject({ reason: 'not-a-pool', found: 'table linear' });
  });

  test('absent names: ENXIO, saying where it looked', async () => {
    expect(await lookupError(open('nope'))).toMatchObject({ reason: 'not-found', code: 'ENXIO', message: 'no thin pool nope: no dm device named nope' });
    const e = await lookupError(open('my-vg/gone'));
    expect(e).toMatchObject({ reason: 'not-found', code: 'ENXIO' });
    expect(e!.message).toContain('no dm device my--vg-gone-tpool or my--vg-gone: is LV my-vg/gone active?');
    // vgx-lv exists, but LVM did not make it: VG/LV means LVM's.
    expect(await lookupError(open('vgx/lv'))).toMatchObject({ reason: 'not-found' });
    expect(await lookupError(open('a/b/c'))).toMatchObject({ reason: 'not-found' });
  });

  test('an existing file is not a pool', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dmthin-poolname-'));
    try {
      writeFileSync(join(dir, 'f'), 'x');
      expect(await lookupError(open(join(dir, 'f')))).toMatchObject({ reason: 'not-a-pool', message: expect.stringContaining('not a block device') });
    } finally {
      rmSync(dir, { recursive: true });
    }
  });
});

describe('thin ids by LV name (lvs)', () => {
  let dir: string;
  let savedPath: string | undefined;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'dmthin-lvs-'));
    savedPath = process.env.PATH;
  });
  afterEach(() => {
    process.env.PATH = savedPath;
    rmSync(dir, { recursive: true });
  });

  /** An `lvs` that prints `report` (LVM's JSON report shape) and logs its arguments. */
  function fakeLvs(report: object, status = 0, stderr = ''): void {
    writeFileSync(join(dir, 'report.json'), JSON.stringify(report));
    writeFileSync(
      join(dir, 'lvs'),
      `#!/bin/sh\necho "$@" > "${dir}/args"\n${stderr ? `echo '${stderr}' >&2\n` : ''}cat "${dir}/report.json"\nexit ${status}\n`,
    );
    chmodSync(join(dir, 'lvs'), 0o755);
    process.env.PATH = `${dir}:${savedPath}`;
  }

  const dashed = (u: string) => `${u.slice(0, 6)}-${u.slice(6, 10)}-${u.slice(10, 14)}-${u.slice(14, 18)}-${u.slice(18, 22)}-${u.slice(22, 26)}-${u.slice(26)}`;
  const row = (lv: string, thinId: string, pool = 'a-pool', poolUuid = P, vg = 'my-vg', vgUuid = V) => ({
    vg_name: vg,
    lv_name: lv,
    thin_id: thinId,
    pool_lv: pool,
    pool_lv_uuid: pool ? dashed(poolUuid) : '',
    vg_uuid: dashed(vgUuid),
    lv_size: '33554432',
    segtype: thinId ? 'thin' : 'linear',
  });

  test('VG/LV and a bare LV of the pool\'s VG give the thin id; ids pass through', async () => {
    fakeLvs({ report: [{ lv: [row('a-pool', '', '', '', 'my-vg'), row('thin-1', '1'), row('snap-7', '7')] }] });
    const p = await open('my-vg/a-pool');
    expect(await p.thinId('my-vg/snap-7')).toBe(7);
    expect(await p.thinId('thin-1')).toBe(1);
    expect(await p.thinId('12')).toBe(12);
  });

  test('refusals: no such LV, not a thin LV, a thin LV of another pool', async () => {
    fakeLvs({ report: [{ lv: [{ ...row('a-pool', ''), pool_lv: '', segtype: 'thin-pool' }, row('other', '3', 'b-pool', M)] }] });
    const p = await open('my-vg/a-pool');
    expect(await lookupError(p.thinId('missing'))).toMatchObject({ reason: 'not-found', message: 'no LV my-vg/missing (lvs lists none by that name)' });
    expect(await lookupError(p.thinId('a-pool'))).toMatchObject({ reason: 'not-a-thin', message: 'LV my-vg/a-pool is not a thin volume (segment type thin-pool)' });
    expect(await lookupError(p.thinId('other'))).toMatchObject({ reason: 'not-a-thin', message: 'LV my-vg/other is a thin volume of my-vg/b-pool, not of my-vg/a-pool' });
  });

  test('lvm2 missing, lvs failing, a missing VG', async () => {
    const p = await open('my-vg/a-pool');
    process.env.PATH = dir; // no lvs here
    expect(await lookupError(p.thinId('thin-1'))).toMatchObject({ reason: 'lvm-missing', code: 'ENOENT', message: expect.stringContaining('lvs is not installed (lvm2); give the thin id instead') });
    fakeLvs({}, 5, '  Volume group "nov" not found');
    expect(await lookupError(p.thinId('nov/x'))).toMatchObject({ reason: 'not-found', message: expect.stringContaining('no volume group nov') });
    fakeLvs({}, 3, '  Some locking failure');
    expect(await lookupError(p.thinId('thin-1'))).toMatchObject({ reason: 'lvm-failed', code: 'EIO', message: expect.stringContaining('lvs failed: Some locking failure') });
  });

  test('a pool that LVM did not make has no LV names', async () => {
    const p = await open('plain');
    expect(await lookupError(p.thinId('thin-1'))).toMatchObject({ reason: 'not-a-thin' });
  });
});
