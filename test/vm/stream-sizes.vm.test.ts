/**
 * Stream sizes on real pools (root-VM suite; skipped on the host):
 *
 * - a live pool: a snapshot whose highest mapped block lies below its
 *   base's (the end of the volume discarded between the two snapshots),
 *   sent incrementally while INACTIVE: refused without a size (the end of
 *   its highest mapped block is not its size); with the size, the target
 *   equals the snapshot after receive; and a second receive onto a thin
 *   device being received into (another node, another state file) is
 *   refused at once by the O_EXCL open;
 * - an LVM-made pool (pvcreate on loops, thin pool, thin volume, thin
 *   snapshots, which LVM leaves inactive): a send of an inactive snapshot is
 *   refused with the `lvchange -ay -K VG/LV` to run, and dmthin activates
 *   nothing; after that lvchange, full + incremental through the LVs LVM
 *   activated equal the snapshot; LVM then still works (lvs, lvremove,
 *   vgchange -an/-ay) and its transaction id equals the kernel's.
 */
import { sectors } from '../../src/units';
import { spawnSync } from 'node:child_process';
import { copyFileSync, readFileSync } from 'node:fs';
import { DeviceMapper } from '../../src/dm/device-mapper';
import { ThinDevice } from '../../src/pool/thin-device';
import { BlockWriter } from '../../src/native/block-writer';
import { receive, receiveStream } from '../../src/ops/receive';
import { junkFile, sha256File } from '../stream/helpers';
import { describeVm, DmSandbox, MiB, parsePoolStatus, run } from './helpers';
import { haveLvm, LvmSandbox } from './lvm-helpers';
import { CLI, createTestPool, ddCmd, sh, sha256OfDevice } from './pool-helpers';

const VOL = 16 * MiB; // small: written, streamed and hashed under emulation
const BS = 64 * 1024;

function dmthin(args: string[], env: NodeJS.ProcessEnv = process.env): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { env, encoding: 'utf8', timeout: 300_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

async function tempDevices(): Promise<string[]> {
  return (await new DeviceMapper().listDevices()).map((d) => d.name).filter((n) => n.startsWith('dmthin-send-'));
}

describeVm('a live pool: a snapshot that ends below its base, sent while inactive', () => {
  let sb: DmSandbox;
  afterEach(() => sb?.cleanup());

  test('refused without a size; with it, the target equals the snapshot', async () => {
    sb = new DmSandbox('sizes-live');
    const { pool, name } = await createTestPool(sb, { dataBytes: 128 * MiB, blockSectors: BS / 512 });
    await pool.createThin(1);
    const t1 = await ThinDevice.activate(pool, { name: sb.adopt('t1'), devId: 1, length: sectors(VOL / 512) });
    sh(ddCmd(t1.path, { bs: MiB, seek: 0, count: VOL / MiB }));
    await pool.createSnap(2, 1);
    // The last 8 MiB discarded, a little rewritten in the middle.
    const w = await BlockWriter.open(t1.path);
    expect(await w.discard(VOL - 8 * MiB, 8 * MiB)).toBe('blkdiscard');
    w.close();
    sh(ddCmd(t1.path, { bs: BS, seek: 100, count: 4 }));
    await pool.createSnap(3, 1);
    await t1.deactivate();

    // The case: snapshot 3 maps nothing past 8 MiB, its base maps up to 16 MiB.
    {
      await using snap = await pool.reserveMetadataSnap();
      await using md = await snap.open();
      const end = async (id: number) => {
        let e = 0;
        for await (const r of md.mappings(id)) e = Number(r.originBegin) + r.length;
        return e * BS;
      };
      expect([await end(2), await end(3)]).toEqual([VOL, VOL - 8 * MiB]);
    }

    const dir = sb.dir;
    let r = dmthin(['send', '--pool', name, '--snap', '3', '--base', '2', '-o', `${dir}/nosize.s`]);
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^dmthin send: thin device 3 of pool \S+ is not active, so its size is unknown: activate it, or give its size in bytes \(--size BYTES.*\[EINVAL\]\n$/);

    const target = `${dir}/target`;
    junkFile(target, VOL, 31);
    r = dmthin(['send', '--pool', name, '--snap', '2', '--size', '16M', '-o', `${dir}/full2.s`, '-q']);
    expect([r.status, r.stderr]).toEqual([0, '']);
    r = dmthin(['receive', '--target', target, '-i', `${dir}/full2.s`, '-q']);
    expect([r.status, r.stderr]).toEqual([0, '']);
    copyFileSync(target, `${dir}/target.full2`);
    r = dmthin(['send', '--pool', name, '--snap', '3', '--base', '2', '--size', '16M', '-o', `${dir}/inc3.s`, '-q', '--json']);
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stderr)).toMatchObject({ dataBlocks: 4, discardBlocks: (8 * MiB) / BS });
    r = dmthin(['receive', '--target', target, '-i', `${dir}/inc3.s`, '-q']);
    expect([r.status, r.stderr]).toEqual([0, '']);

    const ro = await ThinDevice.activate(pool, { name: sb.adopt('ro3'), devId: 3, length: sectors(VOL / 512), readOnly: true });
    expect(sha256File(target)).toBe(await sha256OfDevice(ro.path, 0, VOL));
    await ro.deactivate();
    expect(await tempDevices()).toEqual([]);
    expect((await pool.workingStatus()).heldMetadataRoot).toBeNull();

    // One receive per block device: a second one, through another node and with another state file, is refused at once (O_EXCL).
    await pool.createThin(10);
    const t10 = await ThinDevice.activate(pool, { name: sb.adopt('t10'), devId: 10, length: sectors(VOL / 512) });
    const full = readFileSync(`${dir}/full2.s`);
    const first = receiveStream(t10.path, { stateDir: `${dir}/state-a`, spoolDir: dir });
    await new Promise<void>((res, rej) => first.write(full.subarray(0, 4096), (e) => (e ? rej(e) : res())));
    const other = `/dev/dm-${t10.dev.minor}`;
    const e = await receive({ target: other, input: `${dir}/full2.s`, stateDir: `${dir}/state-b` }).catch((x: unknown) => x);
    expect(e).toMatchObject({ code: 'EBUSY', path: other });
    first.end(full.subarray(4096));
    await first.result;
    expect(await sha256OfDevice(t10.path, 0, VOL)).toBe(sha256File(`${dir}/target.full2`));
    await receive({ target: other, input: `${dir}/full2.s`, stateDir: `${dir}/state-b` }); // free again
    await t10.deactivate();
  });
});

describeVm('an LVM-made thin pool', () => {
  let sb: DmSandbox | undefined;
  let lvm: LvmSandbox | undefined;
  afterEach(() => {
    try {
      lvm?.cleanup();
    } finally {
      lvm = undefined;
      sb?.cleanup();
      sb = undefined;
    }
  });

  test('an inactive snapshot is refused with the lvchange advice; after it, full + incremental equal the snapshot; LVM stays in step', async () => {
    expect(haveLvm()).toBe(true); // lvm2 is installed on the host, whose binaries the guest runs
    sb = new DmSandbox('sizes-lvm');
    lvm = new LvmSandbox(sb, { pvCount: 2, pvBytes: 48 * MiB });
    const L = lvm;
    const vg = L.vg;
    L.createVg();
    L.lvm(['lvcreate', '-y', '--type', 'thin-pool', '-L', '64M', '--chunksize', '64k', '--poolmetadatasize', '4M', '-Zn', '-n', 'pool', vg]);
    L.lvm(['lvcreate', '-y', '-V', '16M', '-T', `${vg}/pool`, '-n', 'vol']);
    const vol = L.devPath('vol');
    sh(ddCmd(vol, { bs: MiB, seek: 0, count: VOL / MiB }));
    L.lvm(['lvcreate', '-y', '--type', 'thin', '-n', 'snap1', `${vg}/vol`]); // a thin snapshot (plain -s also wants the dm-snapshot target)
    // The end of the volume discarded (as an fstrim would), then a few writes.
    run('blkdiscard', ['-o', String(VOL - 8 * MiB), '-l', String(8 * MiB), vol]);
    sh(ddCmd(vol, { bs: BS, seek: 64, count: 3 }));
    L.lvm(['lvcreate', '-y', '--type', 'thin', '-n', 'snap2', `${vg}/vol`]);

    const poolDm = L.dmName('pool', '-tpool');
    expect(run('dmsetup', ['info', '-c', '--noheadings', '-o', 'uuid', poolDm]).stdout.trim()).toMatch(/^LVM-.*-tpool$/);
    const id1 = Number(L.lvField('snap1', 'thin_id'));
    const id2 = Number(L.lvField('snap2', 'thin_id'));
    expect(L.lvField('snap2', 'lv_active').trim()).toBe(''); // LVM left the snapshot inactive

    // Inactive: refused, with or without a size, naming the LV; nothing activated.
    for (const size of [[], ['--size', '16M']]) {
      const r = dmthin(['send', '--pool', poolDm, '--snap', String(id2), '--base', String(id1), ...size, '-o', `${sb.dir}/refused.s`], L.env);
      expect(r.status).toBe(1);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toContain(`thin device ${id2} of LVM pool ${poolDm} is not active`);
      expect(r.stderr).toContain(`\`lvchange -ay -K ${vg}/snap2\``);
      expect(r.stderr).toMatch(/\[EINVAL\]\n$/);
    }
    expect(await tempDevices()).toEqual([]);

    L.lvm(['lvchange', '-ay', '-K', `${vg}/snap1`]);
    L.lvm(['lvchange', '-ay', '-K', `${vg}/snap2`]);
    const snap2 = L.devPath('snap2');
    L.devPath('snap1');

    const target = `${sb.dir}/target`;
    let r = dmthin(['send', '--pool', poolDm, '--snap', String(id1), '-o', `${sb.dir}/full1.s`, '-q'], L.env);
    expect([r.status, r.stderr]).toEqual([0, '']);
    r = dmthin(['receive', '--target', target, '-i', `${sb.dir}/full1.s`, '--create', '-q', '--json']);
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ header: { deviceSize: VOL, target: { pool: expect.stringMatching(/^dm-uuid:LVM-/) } } });
    r = dmthin(['send', '--pool', poolDm, '--snap', String(id2), '--base', String(id1), '-o', `${sb.dir}/inc2.s`, '-q', '--json'], L.env);
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stderr)).toMatchObject({ dataBlocks: 3, discardBlocks: (8 * MiB) / BS });
    r = dmthin(['receive', '--target', target, '-i', `${sb.dir}/inc2.s`, '-q']);
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(sha256File(target)).toBe(await sha256OfDevice(snap2, 0, VOL));
    expect(await tempDevices()).toEqual([]);

    // LVM is still in charge and in step with the kernel.
    const inStep = (): void => {
      const kernel = parsePoolStatus(run('dmsetup', ['status', poolDm]).stdout).transactionId;
      expect(Number(L.lvField('pool', 'transaction_id'))).toBe(kernel);
    };
    inStep();
    expect(L.lvs(['lv_name']).map((x) => x.lv_name)).toEqual(expect.arrayContaining(['pool', 'vol', 'snap1', 'snap2']));
    L.lvm(['lvremove', '-y', '-f', `${vg}/snap1`]);
    inStep();
    L.lvm(['vgchange', '-an', vg]);
    expect(run('dmsetup', ['info', poolDm], { allowFail: true }).status).not.toBe(0);
    L.lvm(['vgchange', '-ay', vg]);
    inStep();
    expect(L.lvs(['lv_name']).map((x) => x.lv_name)).not.toContain('snap1');
  }, 480_000); // some 40 LVM commands, each seconds under emulation
});
