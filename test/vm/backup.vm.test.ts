/**
 * dmthin backup / restore on real pools, for the root-VM suite (skipped on
 * the host by describeVm), through the CLI as users run it:
 * - a live thin is snapshotted while a writer runs; each snapshot is backed
 *   up from the pool (the first in full, the next incrementally: only what
 *   changed is read), then restored into a thin of ANOTHER pool, which must
 *   read exactly like the snapshot; restoring the older backup onto it
 *   afterwards writes only what differs and again equals its snapshot;
 * - an LVM thin snapshot named by its LV name is backed up and restored
 *   into a file; LVM's pool is left as LVM knows it (transaction id), and no
 *   metadata snapshot stays held.
 */
import { spawnSync } from 'node:child_process';
import { sectors } from '../../src/units';
import { ThinDevice } from '../../src/pool/thin-device';
import type { ThinPool } from '../../src/pool/thin-pool';
import { describeVm, DmSandbox, haveProgram, MiB, parsePoolStatus, run } from './helpers';
import { LvmSandbox } from './lvm-helpers';
import { CLI, createTestPool, ddCmd, sh, sha256OfDevice, startWriter } from './pool-helpers';
import { sha256File } from '../stream/helpers';

const VOL = 16 * MiB;
const BS = 64 * 1024;

function dmthin(args: string[], env: NodeJS.ProcessEnv = {}): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 300_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Runs a CLI command that must succeed with --json output; returns the parsed JSON. */
function dmthinJson<T>(args: string[], env: NodeJS.ProcessEnv = {}): T {
  const r = dmthin([...args, '--json'], env);
  expect([args.join(' '), r.status, r.stderr]).toEqual([args.join(' '), 0, '']);
  return JSON.parse(r.stdout) as T;
}

interface BackupJson {
  id: string;
  base: string | null;
  chunks: number;
  chunksRead: number;
  chunksNew: number;
  bytesUploaded: number;
}

describeVm('backup and restore through a repository', () => {
  let sb: DmSandbox;
  let A: ThinPool;
  let B: ThinPool;
  let aName: string;

  beforeAll(async () => {
    sb = new DmSandbox('backup');
    ({ pool: A, name: aName } = await createTestPool(sb, { label: 'pa', dataBytes: 96 * MiB, metaBytes: 8 * MiB, blockSectors: BS / 512 }));
    ({ pool: B } = await createTestPool(sb, { label: 'pb', dataBytes: 48 * MiB, metaBytes: 8 * MiB, blockSectors: BS / 512 }));
  }, 120_000);
  afterAll(() => sb?.cleanup());

  async function snapshotHash(pool: ThinPool, devId: number): Promise<string> {
    const d = await ThinDevice.activate(pool, { name: sb.adopt(`ro${devId}-${Date.now() % 100000}`), devId, length: sectors(VOL / 512), readOnly: true });
    try {
      return await sha256OfDevice(d.path, 0, VOL);
    } finally {
      await d.deactivate();
    }
  }

  test('snapshots of a thin taken while a writer runs: full then incremental backups; restores into another pool equal the snapshots', async () => {
    const repo = `${sb.dir}/repo`;
    dmthinJson(['backups', 'init', '--repo', repo]);
    await A.createThin(1);
    const src = await ThinDevice.activate(A, { name: sb.adopt('bsrc'), devId: 1, length: sectors(VOL / 512) });
    // Random data in the first 6 MiB, so that chunks are not zero and do not compress away.
    sh(ddCmd(src.path, { bs: MiB, seek: 0, count: 6 }));
    const w = startWriter(src.path, { firstBytes: 8 * MiB, chunkBytes: BS, strideBytes: 2 * BS, chunks: 24 });
    let full: BackupJson;
    let inc: BackupJson;
    try {
      // The library's createSnap suspends the active origin around the message.
      await A.createSnap(2, 1);
      full = dmthinJson<BackupJson>(['backup', '--pool', aName, '--snap', '2', '--size', String(VOL), '--repo', repo, '--volume', 'vol', '-q']);
      sh(ddCmd(src.path, { bs: BS, seek: 40, count: 8 })); // 8 blocks rewritten with new random data
      await A.createSnap(3, 1);
      inc = dmthinJson<BackupJson>(['backup', '--pool', aName, '--snap', '3', '--size', String(VOL), '--repo', repo, '--volume', 'vol', '-q']);
    } finally {
      await w.stop();
    }
    expect(w.writes).toBeGreaterThan(0);
    expect(full.base).toBeNull();
    expect(full.chunksNew).toBeGreaterThanOrEqual(96); // 6 MiB of random data in 64 KiB chunks
    expect(inc.base).toBe(full.id);
    // Incremental: only what changed between the snapshots is read (the 8 blocks and the writer's few), not the 6 MiB.
    expect(inc.chunksRead).toBeGreaterThanOrEqual(8);
    expect(inc.chunksRead).toBeLessThan(60);
    await src.deactivate();
    expect(parsePoolStatus(run('dmsetup', ['status', aName]).stdout).heldMetadataRoot).toBeNull();

    const list = dmthinJson<{ id: string }[]>(['backups', 'list', '--repo', repo]);
    expect(list.map((b) => b.id)).toEqual([full.id, inc.id]);
    const verify = dmthin(['backups', 'verify', '--repo', repo, '--data', '-q']);
    expect([verify.status, verify.stderr]).toEqual([0, '']);

    // Restore into a thin of another pool: the newest, then the older one over it (only the differing chunks).
    await B.createThin(7);
    const tgt = await ThinDevice.activate(B, { name: sb.adopt('btgt'), devId: 7, length: sectors(VOL / 512) });
    try {
      const state = `${sb.dir}/restore-state.json`;
      let r = dmthin(['restore', '--repo', repo, '--backup', inc.id, '--target', tgt.path, '--state', state, '-q']);
      expect([r.status, r.stderr]).toEqual([0, '']);
      expect(await sha256OfDevice(tgt.path, 0, VOL)).toBe(await snapshotHash(A, 3));
      r = dmthin(['restore', '--repo', repo, '--backup', full.id, '--target', tgt.path, '--state', state, '-q', '--json']);
      expect([r.status, r.stderr]).toEqual([0, '']);
      const back = JSON.parse(r.stdout) as { previous: string | null; chunksWritten: number };
      expect(await sha256OfDevice(tgt.path, 0, VOL)).toBe(await snapshotHash(A, 2));
      // Differential: far fewer chunks written than the full backup holds.
      expect(back.previous).toBe(inc.id);
      expect(back.chunksWritten).toBeLessThan(60);
    } finally {
      await tgt.deactivate();
    }
    expect(parsePoolStatus(run('dmsetup', ['status', aName]).stdout).heldMetadataRoot).toBeNull();
  }, 600_000);

  test('an LVM thin snapshot named by its LV name: backed up, restored into a file equal to it; LVM left in step', async () => {
    expect(haveProgram('lvcreate')).toBe(true);
    const lvm = new LvmSandbox(sb, { pvCount: 1, pvBytes: 80 * MiB });
    try {
      const L = lvm;
      const vg = L.vg;
      L.createVg();
      L.lvm(['lvcreate', '-y', '--type', 'thin-pool', '-L', '48M', '--chunksize', '64k', '--poolmetadatasize', '4M', '-Zn', '-n', 'pool', vg]);
      L.lvm(['lvcreate', '-y', '-V', '16M', '-T', `${vg}/pool`, '-n', 'data']);
      sh(ddCmd(L.devPath('data'), { bs: MiB, seek: 2, count: 4 }));
      L.lvm(['lvcreate', '-y', '--type', 'thin', '-n', 'data-snap', `${vg}/data`]);
      const tpool = L.dmName('pool', '-tpool');
      const txBefore = Number(L.lvField('pool', 'transaction_id'));
      // LVM leaves thin snapshots inactive; dmthin reads an LVM thin only where LVM activated it.
      L.lvm(['lvchange', '-ay', '-K', `${vg}/data-snap`]);
      const repo = `${sb.dir}/lvm-repo`;
      dmthinJson(['backups', 'init', '--repo', repo], L.env);
      const b = dmthinJson<BackupJson>(['backup', '--pool', `${vg}/pool`, '--snap', `${vg}/data-snap`, '--size', String(16 * MiB), '--repo', repo, '--volume', 'lvm-data', '-q'], L.env);
      expect(b.chunksNew).toBeGreaterThanOrEqual(64);
      // Nothing changed behind LVM's back: same transaction id, no metadata snapshot held.
      expect(Number(L.lvField('pool', 'transaction_id'))).toBe(txBefore);
      expect(parsePoolStatus(run('dmsetup', ['status', tpool]).stdout).heldMetadataRoot).toBeNull();
      const target = `${sb.dir}/lvm-restored.img`;
      const r = dmthin(['restore', '--repo', repo, '--backup', b.id, '--target', target, '--create', '-q'], L.env);
      expect([r.status, r.stderr]).toEqual([0, '']);
      expect(sha256File(target)).toBe(await sha256OfDevice(L.devPath('data-snap'), 0, 16 * MiB));
      L.lvm(['lvchange', '-an', `${vg}/data-snap`]);
    } finally {
      lvm.cleanup();
    }
  }, 600_000);
});
