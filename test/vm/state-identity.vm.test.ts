/**
 * Receive and restore states of LVM thin LVs, kept per device and not per
 * path (root-VM suite; skipped on the host by describeVm). An LV has three
 * names in the guest, /dev/VG/LV, /dev/mapper/VG-LV and /dev/dm-N: a job
 * through any of them reads the state another wrote (its file is named by
 * the LV's dm uuid), and an LV removed and made again under its name is
 * another device, so that a state written for the old one is never taken as
 * the new one's:
 *
 * - receive: a full stream through /dev/VG/LV, then the incremental through
 *   /dev/mapper/VG-LV is applied (before: no state under that name, refused);
 *   after lvremove + lvcreate, an incremental through the same path is
 *   refused (base-mismatch; before: applied onto the new, empty LV with
 *   exit 0), with the default state and with one state file given;
 * - restore: A through /dev/VG/LV, then B through /dev/mapper/VG-LV writes
 *   only the differences; after lvremove + lvcreate, B and A are restored in
 *   full (before: the differences only, onto the new LV).
 *
 * The states are kept in the sandbox (stateDir), named as under
 * /var/lib/dmthin. LVM objects are made and removed with lvm commands only.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { StreamError } from '../../src/errors';
import { receive } from '../../src/ops/receive';
import { restore } from '../../src/ops/restore';
import { describeVm, DmSandbox, MiB, run } from './helpers';
import { haveLvm, LvmSandbox } from './lvm-helpers';
import { CLI, ddCmd, sh, sha256OfDevice } from './pool-helpers';

const VOL = 4 * MiB;
const BS = 64 * 1024;

describeVm('receive and restore states of LVM thin LVs: one per device, whichever name', () => {
  let sb: DmSandbox;
  let L: LvmSandbox;
  let vg: string;
  let dir: string;
  let recvDir: string;
  let restDir: string;
  /** sha256 of snapshots s1 and s2. */
  let h1: string;
  let h2: string;
  /** Backups of s1 (A) and s2 (B, incremental). */
  let A: string;
  let B: string;

  const dmthin = (args: string[]) => {
    const r = spawnSync(process.execPath, [CLI, ...args], { env: L.env, encoding: 'utf8', timeout: 300_000 });
    expect([args[0], r.status, r.stderr]).toEqual([args[0], 0, '']);
    return r.stdout;
  };
  const vgPath = (lv: string) => `/dev/${vg}/${lv}`;
  const dmUuid = (lv: string) => run('dmsetup', ['info', '-c', '--noheadings', '-o', 'uuid', L.dmName(lv)]).stdout.trim();
  const dmNode = (lv: string) => `/dev/dm-${run('dmsetup', ['info', '-c', '--noheadings', '-o', 'minor', L.dmName(lv)]).stdout.trim()}`;
  /** The state file of a dm device with a uuid, as defaultJobStateFile names it. */
  const stateOf = (stateDir: string, lv: string) => join(stateDir, `${encodeURIComponent(`dm-uuid:${dmUuid(lv)}`)}.json`);
  /** The LV removed and made again under its name and size: another device. */
  const remake = (lv: string) => {
    const before = dmUuid(lv);
    L.lvm(['lvremove', '-y', '-f', `${vg}/${lv}`]);
    L.lvm(['lvcreate', '-y', '-V', `${VOL / MiB}M`, '-T', `${vg}/pool`, '-n', lv]);
    L.devPath(lv);
    expect(dmUuid(lv)).not.toBe(before);
  };

  beforeAll(async () => {
    expect(haveLvm()).toBe(true); // lvm2 is installed on the host, whose binaries the guest runs
    sb = new DmSandbox('state-identity');
    dir = sb.dir;
    recvDir = join(dir, 'receive-state');
    restDir = join(dir, 'restore-state');
    mkdirSync(recvDir);
    mkdirSync(restDir);
    L = new LvmSandbox(sb, { pvCount: 1, pvBytes: 64 * MiB });
    vg = L.vg;
    L.createVg();
    L.lvm(['lvcreate', '-y', '--type', 'thin-pool', '-L', '32M', '--chunksize', '64k', '--poolmetadatasize', '4M', '-Zn', '-n', 'pool', vg]);
    for (const lv of ['src', 'dst', 'rst']) L.lvm(['lvcreate', '-y', '-V', `${VOL / MiB}M`, '-T', `${vg}/pool`, '-n', lv]);
    const src = L.devPath('src');
    sh(ddCmd(src, { bs: MiB, seek: 0, count: VOL / MiB }));
    L.lvm(['lvcreate', '-y', '--type', 'thin', '-n', 's1', `${vg}/src`]);
    // s2 differs from s1 in 3 written blocks and 16 discarded ones.
    sh(ddCmd(src, { bs: BS, seek: 10, count: 3 }));
    run('blkdiscard', ['-o', String(VOL - MiB), '-l', String(MiB), src]);
    L.lvm(['lvcreate', '-y', '--type', 'thin', '-n', 's2', `${vg}/src`]);
    // LVM leaves snapshots inactive; send and backup read them in place.
    L.lvm(['lvchange', '-ay', '-K', `${vg}/s1`, `${vg}/s2`]);
    for (const lv of ['dst', 'rst']) L.devPath(lv);
    h1 = await sha256OfDevice(L.devPath('s1'), 0, VOL);
    h2 = await sha256OfDevice(L.devPath('s2'), 0, VOL);
    expect(h1).not.toBe(h2);
    dmthin(['send', '--pool', `${vg}/pool`, '--snap', `${vg}/s1`, '-o', `${dir}/full1.s`, '-q']);
    dmthin(['send', '--pool', `${vg}/pool`, '--snap', `${vg}/s2`, '--base', `${vg}/s1`, '-o', `${dir}/inc2.s`, '-q']);
    const repo = `${dir}/repo`;
    dmthin(['backups', 'init', '--repo', repo]);
    A = JSON.parse(dmthin(['backup', '--pool', `${vg}/pool`, '--snap', `${vg}/s1`, '--repo', repo, '--volume', 'v', '--json', '-q'])).id;
    const b = JSON.parse(dmthin(['backup', '--pool', `${vg}/pool`, '--snap', `${vg}/s2`, '--repo', repo, '--volume', 'v', '--json', '-q']));
    expect(b.base).toBe(A);
    B = b.id;
  }, 600_000);

  afterAll(() => {
    try {
      L?.cleanup();
    } finally {
      sb?.cleanup();
    }
  });

  test('receive: the incremental through /dev/mapper/VG-LV and /dev/dm-N finds the state the full one wrote through /dev/VG/LV', async () => {
    const state = stateOf(recvDir, 'dst');
    expect(state).toContain(encodeURIComponent('dm-uuid:LVM-'));
    const full = await receive({ input: `${dir}/full1.s`, target: vgPath('dst'), stateDir: recvDir });
    const inc = await receive({ input: `${dir}/inc2.s`, target: L.devPath('dst'), stateDir: recvDir });
    expect(inc.dataBlocks).toBe(3);
    expect([full.stateFile, inc.stateFile]).toEqual([state, state]);
    expect(await sha256OfDevice(vgPath('dst'), 0, VOL)).toBe(h2);
    // The same stream again through the kernel's name: the state says the LV holds it already.
    const again = await receive({ input: `${dir}/inc2.s`, target: dmNode('dst'), stateDir: recvDir });
    expect(again.stateFile).toBe(state);
    expect(await sha256OfDevice(vgPath('dst'), 0, VOL)).toBe(h2);
  }, 300_000);

  test('receive: an LV made again under its name does not hold the base; incrementals are refused, a full stream is taken', async () => {
    const given = join(dir, 'dst-given-state.json');
    await receive({ input: `${dir}/full1.s`, target: vgPath('dst'), stateDir: recvDir });
    await receive({ input: `${dir}/full1.s`, target: vgPath('dst'), stateFile: given });
    remake('dst');
    const fresh = await sha256OfDevice(vgPath('dst'), 0, VOL);
    expect(fresh).not.toBe(h1);
    // The default state is the new device's own: none yet.
    const byDefault = receive({ input: `${dir}/inc2.s`, target: vgPath('dst'), stateDir: recvDir });
    await expect(byDefault).rejects.toBeInstanceOf(StreamError);
    await expect(byDefault).rejects.toMatchObject({ reason: 'base-mismatch', message: expect.stringMatching(/records no completed receive/) });
    // A state file given for the path: it was written for the LV removed.
    const byGiven = receive({ input: `${dir}/inc2.s`, target: vgPath('dst'), stateFile: given });
    await expect(byGiven).rejects.toMatchObject({ reason: 'base-mismatch', message: expect.stringMatching(/is not the device or file the receive state/) });
    expect(await sha256OfDevice(vgPath('dst'), 0, VOL)).toBe(fresh);
    // A full stream starts the new LV's state, through any of its names.
    await receive({ input: `${dir}/full1.s`, target: L.devPath('dst'), stateDir: recvDir });
    expect(await sha256OfDevice(vgPath('dst'), 0, VOL)).toBe(h1);
    const inc = await receive({ input: `${dir}/inc2.s`, target: vgPath('dst'), stateDir: recvDir });
    expect(inc.stateFile).toBe(stateOf(recvDir, 'dst'));
    expect(await sha256OfDevice(vgPath('dst'), 0, VOL)).toBe(h2);
  }, 300_000);

  test('restore: B through /dev/mapper/VG-LV after A through /dev/VG/LV writes the differences; onto the LV made again, in full', async () => {
    const repo = `${dir}/repo`;
    const given = join(dir, 'rst-given-state.json');
    const a = await restore({ repo, backup: A, target: vgPath('rst'), stateDir: restDir });
    expect(a.previous).toBeNull();
    expect(await sha256OfDevice(vgPath('rst'), 0, VOL)).toBe(h1);
    const b = await restore({ repo, backup: B, target: L.devPath('rst'), stateDir: restDir });
    expect(b.previous).toBe(A);
    expect([b.chunksWritten, b.chunksZeroed]).toEqual([3, 16]);
    expect([a.stateFile, b.stateFile]).toEqual([stateOf(restDir, 'rst'), stateOf(restDir, 'rst')]);
    expect(await sha256OfDevice(vgPath('rst'), 0, VOL)).toBe(h2);
    // A state file given for the path, recording A on the LV about to be removed.
    expect((await restore({ repo, backup: A, target: vgPath('rst'), stateFile: given })).previous).toBeNull();

    remake('rst');
    // The new LV's default state: none, so in full (not the differences from A or B onto an empty LV).
    const b2 = await restore({ repo, backup: B, target: vgPath('rst'), stateDir: restDir });
    expect(b2.previous).toBeNull();
    expect(b2.stateFile).not.toBe(a.stateFile);
    expect(await sha256OfDevice(vgPath('rst'), 0, VOL)).toBe(h2);
    // The given state records A for another device: in full, not "A already there, nothing to write".
    const a2 = await restore({ repo, backup: A, target: vgPath('rst'), stateFile: given });
    expect(a2.previous).toBeNull();
    expect(await sha256OfDevice(vgPath('rst'), 0, VOL)).toBe(h1);
  }, 300_000);
});
