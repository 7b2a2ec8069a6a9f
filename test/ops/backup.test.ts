/**
 * backup() and restore() end to end on offline pools made by thin_restore
 * (backup-fixture.ts): full then incremental backups of a chain of
 * snapshots, each restored into a file and compared with what the model
 * says the snapshot reads; differential restores; dedup across volumes;
 * large blocks split into chunks. The repository location is a parameter
 * (repo-locations.ts): a local directory always, S3 when a cluster is there.
 */
import { copyFileSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { backup, chunkSizeFor, type BackupResult } from '../../src/ops/backup';
import { restore } from '../../src/ops/restore';
import type { Backend } from '../../src/repo/backend';
import { Repository } from '../../src/repo/repository';
import { scratch, type Scratch } from '../stream/helpers';
import { deviceBytes, edit, makePool, runs, sha256, type PoolImages } from './backup-fixture';
import { describeEachRepo } from './repo-locations';

const BS = 128; // sectors: 64 KiB blocks
const BLOCK = BS * 512;
// Not a whole number of blocks: the last chunk is short.
const SIZE = 255 * BLOCK + 8192;

const dev2 = runs([0, 0, 100], [150, 200, 50]);
// Changed 10..19, unmapped 150..159, new 220..229.
const dev3 = edit(dev2, runs([10, 300, 10], [220, 400, 10]), [150, 151, 152, 153, 154, 155, 156, 157, 158, 159]);
// Changed 0..4, the last (partial) block, and a block whose data is all zeros (a hole in the backup).
const dev4 = edit(dev3, runs([0, 500, 5], [255, 600, 1], [240, 900, 1]));
// Another volume sharing dev2's first 100 blocks, plus 10 of its own.
const dev5 = runs([0, 0, 100], [100, 700, 10]);

/** Blocks two maps differ in (what an incremental must read), and the chunks a device stores. */
function changed(a: Map<number, number>, b: Map<number, number>): number {
  let n = 0;
  for (const [v, d] of b) if (a.get(v) !== d) n++;
  return n;
}

let s: Scratch;
let pool: PoolImages;
beforeAll(() => {
  s = scratch();
  pool = makePool(s.dir, 'pool', {
    dataBlockSize: BS,
    nrDataBlocks: 1024,
    devices: new Map([
      [1, dev4],
      [2, dev2],
      [3, dev3],
      [4, dev4],
      [5, dev5],
    ]),
    zeroBlocks: new Set([900]),
  });
});
afterAll(() => s.cleanup());

const image = () => ({ metadata: pool.metadata, data: pool.data, deviceSize: SIZE });

describeEachRepo('backups', (loc) => {
  let repoPath: string;
  let repo: Repository;
  const done: Record<string, BackupResult> = {};
  beforeAll(async () => {
    repoPath = await loc.make(s.dir);
    repo = await Repository.create(repoPath);
  });
  afterAll(async () => {
    await repo?.close();
  });

  test('full backup of the first snapshot reads every mapped block, and restores byte for byte', async () => {
    const r = await backup({ ...image(), repo, volume: 'vol-a', snap: 2 });
    done.b2 = r;
    expect(r.base).toBeNull();
    expect(r.chunkSize).toBe(BLOCK);
    expect(r.chunksRead).toBe(dev2.size);
    expect(r.chunksNew).toBe(dev2.size);
    expect(r.chunks).toBe(dev2.size);
    const target = s.path(`${loc.name}-r2.img`);
    const x = await restore({ repo, backup: r.id, target, create: true });
    expect(x.created).toBe(true);
    expect(statSync(target).size).toBe(SIZE);
    expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(pool, 2, SIZE)));
  });

  test('incrementals read only the pruning delta and restore byte for byte', async () => {
    const r3 = await backup({ ...image(), repo, volume: 'vol-a', snap: 3 });
    done.b3 = r3;
    expect(r3.base).toBe(done.b2.id);
    expect(r3.chunksRead).toBe(changed(dev2, dev3));
    expect(r3.chunksNew).toBe(changed(dev2, dev3));
    expect(r3.chunks).toBe(dev3.size);
    const r4 = await backup({ ...image(), repo, volume: 'vol-a', snap: 4 });
    done.b4 = r4;
    expect(r4.base).toBe(r3.id);
    expect(r4.chunksRead).toBe(changed(dev3, dev4));
    expect(r4.zeroChunks).toBe(1); // block 240 reads as zeros: a hole
    expect(r4.chunks).toBe(dev4.size - 1);
    for (const [dev, r] of [
      [3, r3],
      [4, r4],
    ] as const) {
      const target = s.path(`${loc.name}-r${dev}.img`);
      await restore({ repo, backup: r.id, target, create: true });
      expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(pool, dev, SIZE)));
    }
  });

  test('the same snapshot again: nothing read, an identical backup, no chunk looked up', async () => {
    // Every entry is the base's, passed to commit as read: none needs a stat.
    const backend = (repo as unknown as { backend: Backend }).backend;
    const stat = jest.spyOn(backend, 'stat');
    const r = await backup({ ...image(), repo, volume: 'vol-a', snap: 4 }).finally(() => stat.mockRestore());
    expect(stat.mock.calls.filter(([key]) => key.startsWith('chunks/'))).toEqual([]);
    expect(r.base).toBe(done.b4.id);
    expect(r.chunksRead).toBe(0);
    expect(r.chunksNew).toBe(0);
    expect(r.chunks).toBe(done.b4.chunks);
  });

  test('another pool whose metadata is byte-identical but whose data differ (a copied pool): not the same snapshot, its data read and restored (found by an outside hunt: nothing read, the first pool\'s bytes restored, exit 0)', async () => {
    const meta2 = s.path('clone-meta.bin');
    const data2 = s.path('clone-data.bin');
    copyFileSync(pool.metadata, meta2);
    const other = readFileSync(pool.data);
    for (let i = 0; i < other.length; i++) other[i] ^= 0x5a;
    writeFileSync(data2, other);
    const r = await backup({ metadata: meta2, data: data2, deviceSize: SIZE, repo, volume: 'vol-a', snap: 4 });
    expect(r.base).toBeNull();
    expect(r.chunksRead).toBeGreaterThan(0);
    const want = Buffer.alloc(SIZE);
    for (const [v, d] of pool.model.devices.get(4)!) {
      if (v * pool.blockBytes < SIZE) other.copy(want, v * pool.blockBytes, d * pool.blockBytes, Math.min((d + 1) * pool.blockBytes, d * pool.blockBytes + SIZE - v * pool.blockBytes));
    }
    const target = s.path(`clone-restored-${loc.name}`);
    await restore({ repo, backup: r.id, target, create: true });
    expect(sha256(readFileSync(target))).toBe(sha256(want));
    // The first pool's image again: its own backup is the base once more (nothing read).
    const again = await backup({ ...image(), repo, volume: 'vol-a', snap: 4 });
    expect(again.chunksRead).toBe(0);
  });

  test('full: ignores the bases and stores nothing new', async () => {
    const r = await backup({ ...image(), repo, volume: 'vol-a', snap: 3, full: true });
    expect(r.base).toBeNull();
    expect(r.chunksRead).toBe(dev3.size);
    expect(r.chunksNew).toBe(0);
  });

  test('dedup: a second volume sharing data adds only its own chunks', async () => {
    const r = await backup({ ...image(), repo, volume: 'vol-b', snap: 5 });
    expect(r.base).toBeNull();
    expect(r.chunksRead).toBe(110);
    expect(r.chunksNew).toBe(10);
    expect(r.chunksDeduplicated).toBe(100);
    const target = s.path(`${loc.name}-r5.img`);
    await restore({ repo, backup: r.id, target, create: true });
    expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(pool, 5, SIZE)));
  });

  test('restore onto a target holding another backup of the volume writes only the differing chunks', async () => {
    const target = s.path(`${loc.name}-diff.img`);
    await restore({ repo, backup: done.b2.id, target, create: true });
    const x = await restore({ repo, backup: done.b4.id, target });
    expect(x.previous).toBe(done.b2.id);
    // Written: chunks mapped in 4 with another content than in 2; zeroed: mapped in 2, a hole in 4.
    let writes = 0;
    let zeroes = 0;
    for (const [v, d] of dev4) if (d !== 900 && dev2.get(v) !== d) writes++;
    for (const v of dev2.keys()) if (!dev4.has(v) || dev4.get(v) === 900) zeroes++;
    expect(x.chunksWritten).toBe(writes);
    expect(x.chunksZeroed).toBe(zeroes);
    expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(pool, 4, SIZE)));
    // And back.
    const y = await restore({ repo, backup: done.b2.id, target });
    expect(y.previous).toBe(done.b4.id);
    expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(pool, 2, SIZE)));
  });

  test('a file target written since its last restore is restored in full', async () => {
    const target = s.path(`${loc.name}-touched.img`);
    await restore({ repo, backup: done.b2.id, target, create: true });
    const b = readFileSync(target);
    b.fill(0xee, 0, 4096);
    b.fill(0xee, 120 * BLOCK, 120 * BLOCK + 4096); // a hole in both backups
    writeFileSync(target, b);
    const x = await restore({ repo, backup: done.b3.id, target });
    expect(x.previous).toBeNull();
    expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(pool, 3, SIZE)));
  });

  test("a state file given for another target is not taken as this target's: restored in full", async () => {
    const a = s.path(`${loc.name}-state-a.img`);
    const b = s.path(`${loc.name}-state-b.img`);
    const stateFile = s.path(`${loc.name}-shared-state.json`);
    await restore({ repo, backup: done.b2.id, target: a, create: true, stateFile });
    // b: other bytes, and a stamp the state's matches (as a block device, which has none, would).
    writeFileSync(b, Buffer.alloc(SIZE, 0x33));
    const st = statSync(b);
    const state = JSON.parse(readFileSync(stateFile, 'utf8'));
    expect(state.target).toBe(a);
    writeFileSync(stateFile, JSON.stringify({ ...state, file: { size: st.size, mtimeMs: st.mtimeMs } }));
    const x = await restore({ repo, backup: done.b4.id, target: b, stateFile });
    expect(x.previous).toBeNull();
    expect(sha256(readFileSync(b))).toBe(sha256(deviceBytes(pool, 4, SIZE)));
  });

  test('the same path, another file than the state was written for (made again; its stamp matching, as a block device has none): restored in full', async () => {
    const target = s.path(`${loc.name}-remade.img`);
    await restore({ repo, backup: done.b2.id, target, create: true });
    const stateFile = `${target}.dmthin-restore.json`;
    const state = JSON.parse(readFileSync(stateFile, 'utf8'));
    expect(state.targetId).toMatch(/^file:/);
    rmSync(target);
    writeFileSync(target, Buffer.alloc(SIZE, 0x44));
    // A stamp the new file matches (as a block device, which has none, would: an LV made again).
    const st = statSync(target);
    writeFileSync(stateFile, JSON.stringify({ ...state, file: { size: st.size, mtimeMs: st.mtimeMs } }));
    const x = await restore({ repo, backup: done.b4.id, target });
    expect(x.previous).toBeNull();
    expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(pool, 4, SIZE)));
  });

  test('a state written by a dmthin before stop 40 (no targetId; its stamp matching, as a block device has none): restored in full (outside hunt: only the differences were written to another file)', async () => {
    const target = s.path(`${loc.name}-legacy.img`);
    await restore({ repo, backup: done.b2.id, target, create: true });
    const stateFile = `${target}.dmthin-restore.json`;
    const state = JSON.parse(readFileSync(stateFile, 'utf8'));
    delete state.targetId;
    rmSync(target);
    writeFileSync(target, Buffer.alloc(SIZE, 0x45));
    const st = statSync(target);
    writeFileSync(stateFile, JSON.stringify({ ...state, file: { size: st.size, mtimeMs: st.mtimeMs } }));
    const x = await restore({ repo, backup: done.b4.id, target });
    expect(x.previous).toBeNull();
    expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(pool, 4, SIZE)));
  });

  test('a target that already holds junk is made equal (holes zeroed)', async () => {
    const target = s.path(`${loc.name}-junk.img`);
    writeFileSync(target, Buffer.alloc(SIZE, 0x5a));
    const x = await restore({ repo, backup: done.b3.id, target });
    expect(x.previous).toBeNull();
    expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(pool, 3, SIZE)));
  });

  test('a smaller file target that cannot grow (EFBIG) with create: nothing written, the restore state as it was (found by an outside hunt: left pending)', async () => {
    const target = s.path(`${loc.name}-nogrow.img`);
    await restore({ repo, backup: done.b2.id, target, create: true });
    const { truncateSync } = await import('node:fs');
    truncateSync(target, SIZE / 2);
    const stateFile = `${target}.dmthin-restore.json`;
    const stateBefore = readFileSync(stateFile, 'utf8');
    const bytesBefore = readFileSync(target);
    const { BlockWriter } = await import('../../src/native/block-writer');
    const { SystemCallError } = await import('../../src/errors');
    const spy = jest.spyOn(BlockWriter.prototype, 'extend').mockRejectedValue(new SystemCallError('EFBIG', 'File too large', { syscall: 'ftruncate', path: target }));
    let e: unknown;
    try {
      e = await restore({ repo, backup: done.b3.id, target, create: true }).catch((x: unknown) => x);
    } finally {
      spy.mockRestore();
    }
    expect(e).toMatchObject({ code: 'EFBIG', message: expect.stringMatching(/^cannot grow the target .* to \d+ bytes, backup .*'s device size: its filesystem does not take a file that large; nothing was written and its restore state is as it was$/) });
    expect(readFileSync(stateFile, 'utf8')).toBe(stateBefore);
    expect(readFileSync(target).equals(bytesBefore)).toBe(true);
  });

  test('a base deleted (pruned) after it was chosen: the backup plans again against what is left', async () => {
    const b2 = await backup({ ...image(), repo, volume: 'vol-gone', snap: 2 });
    const b3 = await backup({ ...image(), repo, volume: 'vol-gone', snap: 3 });
    // Another process prunes the volume's newest backup (the base just chosen) while the backup opens its session, `n` times.
    const begin = repo.beginBackup.bind(repo);
    const race = (n: number) => {
      const calls = { n: 0 };
      const spy = jest.spyOn(repo, 'beginBackup').mockImplementation(async (...a) => {
        if (calls.n++ < n) {
          const newest = (await repo.listBackups({ volume: 'vol-gone' })).at(-1)!;
          await repo.deleteBackups([newest.id]);
        }
        return begin(...a);
      });
      return { calls, spy };
    };
    const one = race(1);
    try {
      const r4 = await backup({ ...image(), repo, volume: 'vol-gone', snap: 4 });
      expect(one.calls.n).toBe(2); // the first session found its base (b3) gone
      expect(r4.base).toBe(b2.id);
      expect(r4.chunksRead).toBe(changed(dev2, dev4));
      const target = s.path(`${loc.name}-gone4.img`);
      await restore({ repo, backup: r4.id, target, create: true });
      expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(pool, 4, SIZE)));
    } finally {
      one.spy.mockRestore();
    }
    expect((await repo.listBackups({ volume: 'vol-gone' })).map((b) => b.id)).not.toContain(b3.id);
    // Both remaining bases pruned in turn: the third attempt is a full backup.
    const two = race(2);
    try {
      const r3 = await backup({ ...image(), repo, volume: 'vol-gone', snap: 3 });
      expect(two.calls.n).toBe(3);
      expect(r3.base).toBeNull();
      expect(r3.chunksRead).toBe(dev3.size);
      const target = s.path(`${loc.name}-gone3.img`);
      await restore({ repo, backup: r3.id, target, create: true });
      expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(pool, 3, SIZE)));
    } finally {
      two.spy.mockRestore();
    }
  });
});

describe('blocks above 4 MiB', () => {
  test('an 8 MiB block is two 4 MiB chunks; an incremental re-reads only the changed block', async () => {
    const big = makePool(s.dir, 'big', {
      dataBlockSize: 16384,
      nrDataBlocks: 16,
      devices: new Map([
        [1, runs([0, 0, 3])],
        [2, runs([0, 0, 2], [3, 5, 1])],
      ]),
      zeroBlocks: new Set(),
    });
    const size = 4 * 8 * 1024 * 1024;
    const repoPath = s.path('big-repo');
    await using repo = await Repository.create(repoPath);
    const a = await backup({ metadata: big.metadata, data: big.data, deviceSize: size, repo, volume: 'big', snap: 1 });
    expect(a.chunkSize).toBe(4 << 20);
    expect(a.chunks).toBe(6);
    const b = await backup({ metadata: big.metadata, data: big.data, deviceSize: size, repo, volume: 'big', snap: 2 });
    expect(b.base).toBe(a.id);
    expect(b.chunksRead).toBe(2); // block 3 (new): its two chunks; block 2 became a hole, blocks 0-1 are copied
    expect(b.chunks).toBe(6);
    for (const [dev, r] of [
      [1, a],
      [2, b],
    ] as const) {
      const target = s.path(`big-${dev}.img`);
      await restore({ repo, backup: r.id, target, create: true });
      expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(big, dev, size)));
    }
  });
});

describe('a backed-up snapshot written afterwards', () => {
  // Device 1 is backed up, then written (block 5 provisioned anew, block 7
  // discarded), then snapshotted as device 2. With --pool-id (as from a live
  // pool) its identity is unchanged; only its mapping-tree root tells. Before
  // dmthin recorded the root, device 1 was the base and block 5 was taken
  // from its old chunk: the backup of device 2 restored wrong, exit 0.
  test('is no base (a warning says why): the next backup restores what the new snapshot reads', async () => {
    const before = runs([0, 0, 10]);
    const written = edit(before, runs([5, 50, 1]), [7]);
    const then = makePool(s.dir, 'then', { dataBlockSize: BS, nrDataBlocks: 64, devices: new Map([[1, before]]), zeroBlocks: new Set() });
    // The same pool later: device 1 as written (same creation time and transaction), device 2 its snapshot.
    const now = makePool(s.dir, 'now', {
      dataBlockSize: BS,
      nrDataBlocks: 64,
      devices: new Map([
        [1, written],
        [2, edit(written, runs([9, 60, 1]))],
      ]),
      zeroBlocks: new Set(),
    });
    const size = 16 * BLOCK;
    await using repo = await Repository.create(s.path('written-repo'));
    const common = { repo, volume: 'w', deviceSize: size, poolId: 'dm-uuid:the-pool' };
    const b1 = await backup({ ...common, metadata: then.metadata, data: then.data, snap: 1 });
    const warnings: string[] = [];
    const b2 = await backup({ ...common, metadata: now.metadata, data: now.data, snap: 2, onWarning: (w) => warnings.push(w) });
    expect(warnings).toEqual([expect.stringMatching(new RegExp(`^thin 1, the snapshot backup ${b1.id} was taken from, has been written since .*not used as a base`))]);
    expect(b2.base).toBeNull();
    const target = s.path('written-2.img');
    await restore({ repo, backup: b2.id, target, create: true });
    expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(now, 2, size)));
    // An unwritten snapshot is still a base: device 2 again reads nothing.
    const again = await backup({ ...common, metadata: now.metadata, data: now.data, snap: 2 });
    expect([again.base, again.chunksRead]).toEqual([b2.id, 0]);
  });
});

describe('chunkSizeFor', () => {
  test.each([
    [64 << 10, 64 << 10],
    [192 << 10, 192 << 10],
    [4 << 20, 4 << 20],
    [8 << 20, 4 << 20],
    [5 << 20, 2.5 * (1 << 20)],
    [65 * 65536, 13 * 65536], // 65 = 5 x 13: the largest divisor up to 64 is 13
    [1 << 30, 4 << 20],
  ])('a %i-byte block: %i-byte chunks', (block, chunk) => {
    expect(chunkSizeFor(block)).toBe(chunk);
    expect(block % chunkSizeFor(block)).toBe(0);
  });
});
