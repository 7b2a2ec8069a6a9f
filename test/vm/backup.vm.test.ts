/**
 * backup and restore on real dm-thin pools (root-VM suite; skipped on the
 * host by describeVm). A thin volume is written and snapshotted twice while
 * a writer keeps writing to it; each snapshot is backed up from the live
 * pool (the first in full, the second incrementally through the pruning
 * delta) into a local repository, then restored into a thin volume of
 * another pool, which must read exactly like the snapshot. Also: the
 * metadata snapshot is released, no temporary device is left, and the
 * second restore writes only the chunks that differ.
 */
import { spawnSync } from 'node:child_process';
import { sectors } from '../../src/units';
import { DeviceMapper } from '../../src/dm/device-mapper';
import { ThinDevice } from '../../src/pool/thin-device';
import type { ThinPool } from '../../src/pool/thin-pool';
import { BlockWriter } from '../../src/native/block-writer';
import { backup } from '../../src/ops/backup';
import { restore } from '../../src/ops/restore';
import { Repository } from '../../src/repo/repository';
import { describeVm, DmSandbox, MiB } from './helpers';
import { CLI, createTestPool, ddCmd, sh, sha256OfDevice, startWriter } from './pool-helpers';
import { haveLvm, LvmSandbox } from './lvm-helpers';
import { sha256File } from '../stream/helpers';

const VOL = 16 * MiB;
const BS = 64 * 1024;

/** Deterministic content for block `b` of write generation `g`. */
function content(b: number, g: number): Buffer {
  const buf = Buffer.alloc(BS);
  for (let i = 0; i < BS; i += 8) {
    buf.writeUInt32LE(b, i);
    buf.writeUInt32LE(g * 65536 + i / 8, i + 4);
  }
  return buf;
}

const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

describeVm('backup and restore on live thin pools', () => {
  let sb: DmSandbox;
  let src: ThinPool;
  let dst: ThinPool;

  async function activate(pool: ThinPool, devId: number, short: string, readOnly = false): Promise<ThinDevice> {
    return ThinDevice.activate(pool, { name: sb.adopt(short), devId, length: sectors(VOL / 512), readOnly });
  }

  async function snapshotHash(devId: number): Promise<string> {
    const d = await activate(src, devId, `ro${devId}`, true);
    try {
      return await sha256OfDevice(d.path, 0, VOL);
    } finally {
      await d.deactivate();
    }
  }

  async function writeBlocks(path: string, blocks: number[], gen: number): Promise<void> {
    const w = await BlockWriter.open(path, { exclusive: false });
    try {
      await w.write(blocks.map((b) => ({ offset: b * BS, data: content(b, gen) })));
      await w.fsync();
    } finally {
      w.close();
    }
  }

  const leftovers = async (): Promise<string[]> =>
    (await new DeviceMapper().listDevices()).map((d) => d.name).filter((n) => n.startsWith('dmthin-backup-'));

  beforeAll(async () => {
    sb = new DmSandbox('backup');
    ({ pool: src } = await createTestPool(sb, { dataBytes: 256 * MiB, metaBytes: 16 * MiB, blockSectors: BS / 512, label: 'src' }));
    ({ pool: dst } = await createTestPool(sb, { dataBytes: 128 * MiB, metaBytes: 16 * MiB, blockSectors: BS / 512, label: 'dst' }));
  });
  afterAll(() => sb?.cleanup());

  test('snapshots of a volume being written: full then incremental backup, restored into another pool byte for byte', async () => {
    await src.createThin(1);
    const t1 = await activate(src, 1, 't1');
    await writeBlocks(t1.path, [...range(0, 100), ...range(150, 50)], 1);
    // The writer keeps the origin (and the pool's metadata) changing through everything below.
    const writer = startWriter(t1.path, { firstBytes: 220 * BS, chunkBytes: BS, strideBytes: 2 * BS, chunks: 15 });
    try {
      await src.createSnap(2, 1);
      const repoDir = `${sb.dir}/repo`;
      await using repo = await Repository.create(repoDir);
      const a = await backup({ pool: src, snap: 2, deviceSize: VOL, repo, volume: 'vm' });
      expect((await src.workingStatus()).heldMetadataRoot).toBeNull();
      expect(await leftovers()).toEqual([]);
      expect(a.base).toBeNull();
      expect(a.chunksRead).toBeGreaterThanOrEqual(150);

      await writeBlocks(t1.path, [...range(10, 10), ...range(210, 10)], 2);
      const d = await BlockWriter.open(t1.path, { exclusive: false });
      await d.discard(40 * BS, 20 * BS);
      d.close();
      await src.createSnap(3, 1);
      const b = await backup({ pool: src, snap: 3, deviceSize: VOL, repo, volume: 'vm' });
      expect(b.base).toBe(a.id);
      expect((await src.workingStatus()).heldMetadataRoot).toBeNull();
      expect(await leftovers()).toEqual([]);
      // The delta: 10 overwritten + 10 new + what the writer changed between the snapshots; never the unchanged rest.
      expect(b.chunksRead).toBeGreaterThanOrEqual(20);
      expect(b.chunksRead).toBeLessThan(a.chunksRead);
      expect(writer.running).toBe(true);

      await dst.createThin(20);
      const t20 = await activate(dst, 20, 't20');
      const stateDir = `${sb.dir}/restore-state`;
      const r2 = await restore({ repo, backup: a.id, target: t20.path, stateDir });
      expect(r2.stateFile.startsWith(stateDir)).toBe(true);
      expect(await sha256OfDevice(t20.path, 0, VOL)).toBe(await snapshotHash(2));
      const r3 = await restore({ repo, backup: b.id, target: t20.path, stateDir });
      expect(r3.previous).toBe(a.id);
      // Written: the 20 blocks of generation 2 (the writer's blocks are zeros: holes in both backups); zeroed: the 20 discarded.
      expect(r3.chunksWritten).toBe(20);
      expect(r3.chunksZeroed).toBe(20);
      expect(await sha256OfDevice(t20.path, 0, VOL)).toBe(await snapshotHash(3));
      // The holes are unprovisioned on the thin target (discards), not written zeros.
      expect(r3.zeroing).toHaveProperty('blkdiscard');
      await t20.deactivate();
    } finally {
      const err = await writer.stop();
      expect(err).toBe('');
      await t1.deactivate();
    }
  }, 900_000);

  test('an LVM thin snapshot named by LV name, backed up while its origin is written, restored byte for byte', async () => {
    expect(haveLvm()).toBe(true); // lvm2 is installed on the host, whose binaries the guest runs
    const L = new LvmSandbox(sb, { pvCount: 1, pvBytes: 96 * MiB });
    let writer: ReturnType<typeof startWriter> | undefined;
    try {
      const vg = L.vg;
      L.createVg();
      L.lvm(['lvcreate', '-y', '--type', 'thin-pool', '-L', '64M', '--chunksize', '64k', '--poolmetadatasize', '4M', '-Zn', '-n', 'pool', vg]);
      L.lvm(['lvcreate', '-y', '-V', `${VOL / MiB}M`, '-T', `${vg}/pool`, '-n', 'vol']);
      const vol = L.devPath('vol');
      sh(ddCmd(vol, { bs: MiB, seek: 0, count: 12 }));
      L.lvm(['lvcreate', '-y', '--type', 'thin', '-n', 'snap', `${vg}/vol`]);
      writer = startWriter(vol, { firstBytes: 0, chunkBytes: BS, strideBytes: 3 * BS, chunks: 50 });
      const repo = `${sb.dir}/lvm-repo`;
      const dmthin = (args: string[]) => spawnSync(process.execPath, [CLI, ...args], { env: L.env, encoding: 'utf8', timeout: 600_000 });
      expect(dmthin(['backups', 'init', '--repo', repo]).status).toBe(0);
      const args = ['backup', '--pool', `${vg}/pool`, '--snap', `${vg}/snap`, '--repo', repo, '--volume', 'lv', '--json', '-q'];
      // LVM leaves the snapshot inactive, and dmthin does not activate LVM volumes behind its back.
      const refused = dmthin(args);
      expect(refused.status).toBe(1);
      expect(refused.stderr).toMatch(/lvchange -ay -K \S+\/snap/);
      L.lvm(['lvchange', '-ay', '-K', `${vg}/snap`]);
      const r = dmthin(args);
      expect([r.status, r.stderr]).toEqual([0, '']);
      const b = JSON.parse(r.stdout);
      expect(b).toMatchObject({ volume: 'lv', base: null, chunksRead: 192 });
      expect(b.source.pool).toMatch(/^dm-uuid:LVM-/);
      const target = `${sb.dir}/lvm-restore.img`;
      const x = dmthin(['restore', '--repo', repo, '--backup', b.id, '--target', target, '--create', '-q']);
      expect([x.status, x.stderr]).toEqual([0, '']);
      expect(sha256File(target)).toBe(await sha256OfDevice(L.devPath('snap'), 0, VOL));
      expect(writer.running).toBe(true);
    } finally {
      if (writer) expect(await writer.stop()).toBe('');
      L.cleanup();
    }
  }, 900_000);
});
