/**
 * `dmthin check` on a real kernel:
 * - on a live pool by name, while a writer keeps changing it: read through
 *   the metadata snapshot (exit 0, says the space maps were not checked),
 *   and the snapshot is released afterwards;
 * - after the pool is removed, on its metadata device: the same verdict as
 *   thin_check 0.9.0 (0, with both space maps recounted), and on copies with
 *   a fault thin_check sees, both fail;
 * - on the metadata of a pool whose table was loaded and never resumed: the
 *   kernel formatted it with an empty data space map (nr_data_blocks 0),
 *   which is not a fault: thin_check and dmthin check both exit 0.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { corrupt } from '../helpers/corrupt';
import { DmSandbox, MiB, cleanupAllSandboxes, describeVm, run } from './helpers';
import { CLI, type TestPool, createTestPool, ddCmd, oneTarget, sh, startWriter } from './pool-helpers';

const dmthin = (args: string[]) => run(process.execPath, [CLI, 'check', ...args], { allowFail: true, timeoutMs: 120_000 });

describeVm('dmthin check on a live pool and on its metadata device', () => {
  let sb: DmSandbox;
  let tp: TestPool;
  let thin: string;

  beforeAll(async () => {
    sb = new DmSandbox('check');
    tp = await createTestPool(sb, { dataBytes: 128 * MiB });
    await tp.pool.createThin(1);
    thin = sb.adopt('thin1');
    await tp.dm.createWithTable(thin, oneTarget((64 * MiB) / 512, 'thin', `${tp.pool.devString} 1`));
    sh(ddCmd(`${tp.dm.devDir}/${thin}`, { bs: MiB, seek: 0, count: 24 }));
    await tp.pool.createSnap(2, 1);
    sh(ddCmd(`${tp.dm.devDir}/${thin}`, { bs: 64 * 1024, seek: 7, count: 5 }));
    await tp.pool.createSnap(3, 2);
  });
  afterAll(() => {
    sb?.cleanup();
    cleanupAllSandboxes();
  });

  test('check POOL under a writer: through the metadata snapshot, exit 0, snapshot released', async () => {
    const w = startWriter(`${tp.dm.devDir}/${thin}`, { firstBytes: 32 * MiB, chunkBytes: 64 * 1024, strideBytes: 192 * 1024, chunks: 80 });
    try {
      for (let i = 0; i < 3; i++) {
        const r = dmthin([tp.name]);
        expect([r.status, r.stderr]).toEqual([0, '']);
        expect(r.stdout).toMatch(/^reading the metadata snapshot at block \d+$/m);
        expect(r.stdout).toMatch(/^space maps not checked \(read through the metadata snapshot/m);
        expect(r.stdout).toMatch(/^3 devices, \d+ mappings/m);
        expect(r.stdout).toMatch(/no problems found\n$/);
        const j = JSON.parse(dmthin(['--json', tp.name]).stdout);
        expect([j.fatal, j.nonFatal, j.spaceMapsChecked, j.counts.devices]).toEqual([0, 0, false, 3]);
        expect((await tp.pool.workingStatus()).heldMetadataRoot).toBeNull();
      }
      expect(w.running).toBe(true);
      expect(w.writes).toBeGreaterThan(0);
    } finally {
      expect(await w.stop()).toBe('');
    }
  });

  test('after the pool is removed: the same verdict as thin_check, and both fail on a corrupted copy', async () => {
    await tp.dm.remove(thin);
    await tp.pool.remove();
    const meta = tp.metaPath;
    const tc = run('thin_check', [meta], { allowFail: true });
    expect(tc.status).toBe(0);
    const r = dmthin([meta]);
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(r.stdout).toMatch(/^space maps checked: \d+ of \d+ metadata blocks and \d+ of \d+ data blocks in use$/m);
    const j = JSON.parse(dmthin(['--json', meta]).stdout);
    expect([j.fatal, j.nonFatal, j.spaceMapsChecked, j.counts.devices]).toEqual([0, 0, true, 3]);

    const image = readFileSync(tp.metaLoop.file);
    for (const kind of ['metadata-sm-in-use-free', 'node-checksum', 'underfull-leaf-0'] as const) {
      let bad: Buffer;
      try {
        bad = corrupt(image, kind).image;
      } catch (e) {
        throw new Error(`${kind}: ${(e as Error).message}`);
      }
      const copy = join(sb.dir, `${kind}.bin`);
      writeFileSync(copy, bad);
      for (const flags of [[], ['--ignore-non-fatal-errors']]) {
        expect([kind, flags, run('thin_check', [...flags, copy], { allowFail: true }).status]).toEqual([kind, flags, 1]);
        expect([kind, flags, dmthin([...flags, copy]).status]).toEqual([kind, flags, 1]);
      }
    }
  });

  test('a pool loaded and never resumed: nr_data_blocks 0 on disk, thin_check and dmthin check exit 0', () => {
    const meta = sb.loop(4 * MiB, 'fresh-meta');
    const data = sb.loop(16 * MiB, 'fresh-data');
    const name = sb.adopt('fresh-pool');
    // The inactive table's constructor opens the pool and formats the zeroed metadata device.
    run('dmsetup', ['create', '--notable', name]);
    run('dmsetup', ['load', name], { input: `0 ${(16 * MiB) / 512} thin-pool ${meta.path} ${data.path} 128 0\n` });
    sb.remove('fresh-pool');
    expect(run('thin_dump', [meta.path]).stdout).toMatch(/^<superblock [^>]*nr_data_blocks="0">\n<\/superblock>\n$/);
    expect(run('thin_check', [meta.path], { allowFail: true }).status).toBe(0);
    const r = dmthin(['--json', meta.path]);
    expect([r.status, r.stderr]).toEqual([0, '']);
    const j = JSON.parse(r.stdout);
    expect([j.fatal, j.nonFatal, j.spaceMapsChecked, j.counts.devices, j.counts.dataBlocks]).toEqual([0, 0, true, 0, 0]);
  });
});
