/**
 * An LVM-made thin pool named as LVM users name it (root-VM suite; skipped
 * on the host). The VG and the LVs have dashes in their names, so every dm
 * name has doubled dashes (`dmtN-vg-1` / `my-pool` -> `dmtN--vg--1-my--pool`).
 *
 * - pool status through VG/LV, /dev/VG/LV, LVM's own pool device (`vg-pool`,
 *   a linear layer over `-tpool`, as node and as dm name) and the -tpool
 *   device: all the same pool, with LVM's transaction id; a thin LV, a
 *   sub-LV and an absent LV are refused with one line saying what was found;
 *   a pool message that would change thin ids is refused on LVM's pool;
 * - dump/ls/delta -m through `VG/LV` (delta's and dump's devices given as LV
 *   names) equal thin_dump/thin_ls/thin_delta -m on the pool's `_tmeta`;
 * - send of LVM snapshots named by LV name (full, then incremental), through
 *   VG/LV and through LVM's pool device, received onto a file equal to the
 *   snapshot; an LV name without lvm2 installed is refused;
 * - afterwards LVM still works (lvs, lvremove, vgchange -an/-ay), its
 *   transaction id equals the kernel's, and an inactive pool reads as such.
 *
 * Nothing here changes the pool behind LVM's back: the only pool messages
 * sent by hand are reserve/release_metadata_snap, which LVM does not record.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { sha256File } from '../stream/helpers';
import { describeVm, DmSandbox, haveProgram, MiB, parsePoolStatus, run } from './helpers';
import { haveLvm, LvmSandbox } from './lvm-helpers';
import { CLI, ddCmd, sh, sha256OfDevice } from './pool-helpers';

const VOL = 16 * MiB;
const BS = 64 * 1024;

function dmthin(args: string[], env: NodeJS.ProcessEnv): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { env, encoding: 'utf8', timeout: 300_000, maxBuffer: 64 * MiB });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A failed command: exit 1 and exactly one line on stderr. */
function expectOneLineError(r: { status: number | null; stderr: string }, pattern: RegExp): void {
  expect(r.status).toBe(1);
  expect(r.stderr.trim().split('\n')).toHaveLength(1);
  expect(r.stderr).toMatch(pattern);
}

describeVm('an LVM-made thin pool, named as LVM users name it', () => {
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

  test('status, dump/ls/delta -m equal to the reference tools, send/receive by LV name; LVM stays in charge and in step', async () => {
    expect(haveLvm()).toBe(true); // lvm2 is installed on the host, whose binaries the guest runs
    for (const t of ['thin_dump', 'thin_ls', 'thin_delta']) expect(haveProgram(t)).toBe(true);
    sb = new DmSandbox('lvm-names');
    lvm = new LvmSandbox(sb, { pvCount: 2, pvBytes: 48 * MiB, dashed: true });
    const L = lvm;
    const vg = L.vg;
    expect(vg).toContain('-');
    const env = L.env;
    L.createVg();
    L.lvm(['lvcreate', '-y', '--type', 'thin-pool', '-L', '64M', '--chunksize', '64k', '--poolmetadatasize', '4M', '-Zn', '-n', 'my-pool', vg]);
    L.lvm(['lvcreate', '-y', '-V', String(VOL / MiB) + 'M', '-T', `${vg}/my-pool`, '-n', 'vol-a']);
    const vol = L.devPath('vol-a');
    sh(ddCmd(vol, { bs: MiB, seek: 0, count: VOL / MiB }));
    L.lvm(['lvcreate', '-y', '--type', 'thin', '-n', 'snap-1', `${vg}/vol-a`]);
    run('blkdiscard', ['-o', String(VOL - 4 * MiB), '-l', String(4 * MiB), vol]);
    sh(ddCmd(vol, { bs: BS, seek: 32, count: 5 }));
    L.lvm(['lvcreate', '-y', '--type', 'thin', '-n', 'snap-2', `${vg}/vol-a`]);
    const id1 = Number(L.lvField('snap-1', 'thin_id'));
    const id2 = Number(L.lvField('snap-2', 'thin_id'));
    expect(id1).not.toBe(id2);

    // What LVM made: the thin-pool target on -tpool; its own pool device, if
    // this version makes one, a linear layer over it; dashes doubled.
    const tpool = L.dmName('my-pool', '-tpool');
    const layer = L.dmName('my-pool');
    const tmeta = L.dmName('my-pool', '_tmeta');
    expect(tpool).toBe(`${vg.replace(/-/g, '--')}-my--pool-tpool`);
    expect(run('dmsetup', ['table', tpool]).stdout).toMatch(/^0 \d+ thin-pool /);
    const tpoolDev = run('dmsetup', ['info', '-c', '--noheadings', '-o', 'major,minor', tpool]).stdout.trim();
    const layerTable = run('dmsetup', ['table', layer], { allowFail: true });
    const haveLayer = layerTable.status === 0;
    if (haveLayer) expect(layerTable.stdout.trim()).toMatch(new RegExp(`^0 \\d+ linear ${tpoolDev} 0$`));
    else console.warn(`this LVM makes no ${layer} device for a pool used only by thin volumes`);
    run('dmsetup', ['mknodes']);

    const kernelTransaction = () => parsePoolStatus(run('dmsetup', ['status', tpool]).stdout).transactionId;
    const inStep = (): void => expect(Number(L.lvField('my-pool', 'transaction_id'))).toBe(kernelTransaction());
    inStep();

    // pool status, by every name a user may give.
    const names = [`${vg}/my-pool`, `/dev/${vg}/my-pool`, layer, `/dev/mapper/${layer}`, tpool];
    for (const name of names) {
      const r = dmthin(['pool', 'status', '--json', name], env);
      expect([name, r.status, r.stderr]).toEqual([name, 0, '']);
      // Number(): whichever JSON type the 64-bit policy gives the transaction id.
      const j = JSON.parse(r.stdout) as { pool: string; transactionId: number | string };
      expect([j.pool, Number(j.transactionId)]).toEqual([name, kernelTransaction()]);
      expect(Number(L.lvField('my-pool', 'transaction_id'))).toBe(Number(j.transactionId));
      const text = dmthin(['pool', 'status', name], env);
      expect([text.status, text.stdout.split('\n')[0]]).toEqual([0, name]);
    }

    // Not pools: one line saying what the name found.
    expectOneLineError(dmthin(['pool', 'status', `${vg}/vol-a`], env), new RegExp(`is not a thin pool: it is thin device \\d+ of pool ${vg}/my-pool .*\\[EINVAL\\]\\n$`));
    expectOneLineError(dmthin(['pool', 'status', tmeta], env), /is not a thin pool \(table linear\) \[EINVAL\]\n$/);
    expectOneLineError(dmthin(['pool', 'status', `${vg}/no-such`], env), new RegExp(`no thin pool ${vg}/no-such: .*is LV ${vg}/no-such active\\?.*\\[ENXIO\\]\\n$`));
    // A message that changes thin ids is LVM's to send.
    const before = kernelTransaction();
    expectOneLineError(dmthin(['pool', 'delete', `${vg}/my-pool`, String(id1)], env), new RegExp(`is LVM's thin pool ${vg}/my-pool: .*lvcreate/lvremove.*\\[EINVAL\\]\\n$`));
    expect(kernelTransaction()).toBe(before);
    expect(Number(L.lvField('snap-1', 'thin_id'))).toBe(id1);
    // The raw message command too (without --force): nothing is sent.
    expectOneLineError(dmthin(['message', tpool, '0', 'create_thin', '4242'], env), new RegExp(`^dmthin message: ${tpool} was made by LVM: create_thin behind LVM's back .*--force.*\\[EINVAL\\]\\n$`));
    expectOneLineError(dmthin(['message', tpool, '0', 'delete', String(id1)], env), /was made by LVM: delete behind LVM's back .*\[EINVAL\]\n$/);
    // However the words are given (as the kernel splits them: one argument, a leading space or tab, any case,
    // a backslash), and through the pool's device nodes (found by an outside hunt: these reached the kernel).
    for (const args of [[tpool, '0', 'create_thin 4243'], [tpool, '0', ' create_thin', '4244'], [tpool, '0', '\tCREATE_THIN 4245'], [tpool, '0', 'create\\_thin', '4246'], [`/dev/mapper/${tpool}`, '0', 'create_thin', '4247']]) {
      expectOneLineError(dmthin(['message', ...args], env), /was made by LVM: create_thin behind LVM's back .*\[EINVAL\]\n$/);
    }
    expect(kernelTransaction()).toBe(before);
    expect(Number(L.lvField('snap-1', 'thin_id'))).toBe(id1);

    // dump/ls/delta -m through VG/LV against the reference tools on _tmeta, through one held snapshot.
    const dir = sb.dir;
    const meta = `/dev/mapper/${tmeta}`;
    run('dmsetup', ['message', tpool, '0', 'reserve_metadata_snap']);
    const fields = 'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS,TRANSACTION,CREATE_TIME,SNAP_TIME';
    try {
      const nrData = (s: string) => s.replace(/ nr_data_blocks="\d+"/, ' nr_data_blocks="0"'); // 0.9.0 prints 0 with -m (ORACLE-NOTES)
      const mineDump = dmthin(['dump', '-m', `${vg}/my-pool`], env);
      expect([mineDump.status, mineDump.stderr]).toEqual([0, '']);
      const theirDump = run('thin_dump', ['-m', meta]).stdout;
      expect(theirDump).toMatch(/<device dev_id=/);
      expect(nrData(mineDump.stdout)).toBe(theirDump);

      const mineOne = dmthin(['dump', '-m', '--dev-id', 'snap-2', `${vg}/my-pool`], env);
      expect([mineOne.status, mineOne.stderr]).toEqual([0, '']);
      expect(nrData(mineOne.stdout)).toBe(run('thin_dump', ['-m', '--dev-id', String(id2), meta]).stdout);

      const mineLs = dmthin(['ls', '-m', '-o', fields, `${vg}/my-pool`], env);
      expect([mineLs.status, mineLs.stderr]).toEqual([0, '']);
      expect(mineLs.stdout).toBe(run('thin_ls', ['-m', '-o', fields, meta]).stdout);
      expect(mineLs.stdout).not.toMatch(/^\s*424[2-7] /m); // none of the refused create_thin messages reached the pool

      const mineDelta = dmthin(['delta', '-m', '--snap1', `${vg}/snap-1`, '--snap2', 'snap-2', `${vg}/my-pool`], env);
      expect([mineDelta.status, mineDelta.stderr]).toEqual([0, '']);
      const theirDelta = run('thin_delta', ['-m', '--snap1', String(id1), '--snap2', String(id2), meta]).stdout;
      expect(theirDelta).toMatch(/<different |<right_only |<left_only /);
      expect(nrData(mineDelta.stdout)).toBe(theirDelta);
    } finally {
      run('dmsetup', ['message', tpool, '0', 'release_metadata_snap']);
    }
    // None held: through LVM's pool device node, dmthin reserves and releases its own.
    const viaNode = dmthin(['ls', '-m', '-o', fields, haveLayer ? `/dev/mapper/${layer}` : `/dev/${vg}/my-pool`], env);
    expect([viaNode.status, viaNode.stderr]).toEqual([0, '']);
    expect(parsePoolStatus(run('dmsetup', ['status', tpool]).stdout).heldMetadataRoot).toBeNull();
    inStep();

    // send/receive of LVM snapshots named by LV name. LVM leaves snapshots inactive; it activates them.
    L.lvm(['lvchange', '-ay', '-K', `${vg}/snap-1`]);
    L.lvm(['lvchange', '-ay', '-K', `${vg}/snap-2`]);
    const snap2 = L.devPath('snap-2');
    const target = `${dir}/target`;
    let r = dmthin(['send', '--pool', `${vg}/my-pool`, '--snap', `${vg}/snap-1`, '-o', `${dir}/full1.s`, '-q'], env);
    expect([r.status, r.stderr]).toEqual([0, '']);
    r = dmthin(['receive', '--target', target, '-i', `${dir}/full1.s`, '--create', '-q'], env);
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(sha256File(target)).toBe(await sha256OfDevice(L.devPath('snap-1'), 0, VOL));
    r = dmthin(['send', '--pool', haveLayer ? layer : tpool, '--snap', 'snap-2', '--base', 'snap-1', '-o', `${dir}/inc2.s`, '-q', '--json'], env);
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stderr)).toMatchObject({ dataBlocks: 5, discardBlocks: (4 * MiB) / BS });
    r = dmthin(['receive', '--target', target, '-i', `${dir}/inc2.s`, '-q'], env);
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(sha256File(target)).toBe(await sha256OfDevice(snap2, 0, VOL));
    // The stream's header names the pool by its dm uuid (LVM's), whichever name was given.
    expect(readFileSync(`${dir}/inc2.s`).includes(Buffer.from('dm-uuid:LVM-'))).toBe(true);

    // An LV name needs lvs: without lvm2 on PATH, refused in one line; ids still work.
    const noLvm = { ...env, PATH: '/nonexistent' };
    expectOneLineError(dmthin(['send', '--pool', `${vg}/my-pool`, '--snap', 'snap-1', '-o', `${dir}/x.s`], noLvm), /lvs is not installed \(lvm2\); give the thin id instead \[ENOENT\]\n$/);
    r = dmthin(['send', '--pool', `${vg}/my-pool`, '--snap', String(id1), '-o', `${dir}/x.s`, '-q'], noLvm);
    expect([r.status, r.stderr]).toEqual([0, '']);
    // Not a thin volume of this pool.
    expectOneLineError(dmthin(['send', '--pool', `${vg}/my-pool`, '--snap', 'my-pool', '-o', `${dir}/x.s`], env), /LV \S+\/my-pool is not a thin volume .*\[EINVAL\]\n$/);

    // LVM is still in charge and in step with the kernel.
    inStep();
    expect(L.lvs(['lv_name']).map((x) => x.lv_name)).toEqual(expect.arrayContaining(['my-pool', 'vol-a', 'snap-1', 'snap-2']));
    L.lvm(['lvremove', '-y', '-f', `${vg}/snap-1`]);
    inStep();
    L.lvm(['vgchange', '-an', vg]);
    expect(run('dmsetup', ['info', tpool], { allowFail: true }).status).not.toBe(0);
    expectOneLineError(dmthin(['pool', 'status', `${vg}/my-pool`], env), /is LV \S+\/my-pool active\?.*\[ENXIO\]\n$/);
    L.lvm(['vgchange', '-ay', vg]);
    inStep();
    r = dmthin(['pool', 'status', '--json', `${vg}/my-pool`], env);
    expect(r.status).toBe(0);
    expect(Number(JSON.parse(r.stdout).transactionId)).toBe(Number(L.lvField('my-pool', 'transaction_id')));
    expect(L.lvs(['lv_name']).map((x) => x.lv_name)).not.toContain('snap-1');
  }, 900_000); // some 30 LVM commands, each seconds under emulation (520 s measured on a 2-core host)
});
