/**
 * Pool and thin status in every mode a real kernel can be driven into,
 * parsed by the library into the typed status and compared field by field
 * with `dmsetup status` (and the table parsers with `dmsetup table`):
 * rw with each discard and no-space setting; out_of_data_space with the
 * queue and error policies (and back to rw by growing the data device);
 * read_only by a table reload (messages fail with EOPNOTSUPP); ro when
 * out of metadata space (and rw again once the metadata device grows); needs_check
 * (the failure modes, needs_check, Error and Fail, are in
 * status-failure.isolated.vm.test.ts, run in a boot of their own). Also
 * pool.waitEvent() returns when the low-water mark is crossed and when the
 * pool runs out of data space (events.vm.test.ts has the rest of the events).
 *
 * Not reachable: the thin status `Error` (the pool goes to Fail before a
 * thin query can fail) and the thin status `-` (a thin target without its
 * device only exists inside the constructor).
 */
import { sectors } from '../../src/units';
import { parseThinPoolTable, type ThinPoolFeature } from '../../src/dm/targets/thin-pool';
import { parseThinTable } from '../../src/dm/targets/thin';
import { ThinDevice } from '../../src/pool/thin-device';
import { MiB, describeVm, useDmSandbox } from './helpers';
import { type TestPool, ddCmd, after, dmsetupAll, dmsetupFields, oneTarget, sh, sleep, swapTable, waitFor } from './pool-helpers';
import { BLOCK, directWrite, expectMessagesRefused, expectStatusMatches, poolWithThin, reloadPool, spawnDd, t3Origin } from './status-helpers';

describeVm('pool and thin status in every reachable mode, against dmsetup', () => {
  const sandbox = useDmSandbox('status');

  test('rw: typed status and table of pools with each discard and no-space setting, and of thin devices, equal dmsetup', async () => {
    const sb = sandbox();
    // Discard passdown needs a data device that takes discards (a loop; `zero` does not).
    const variants: { label: string; features: ThinPoolFeature[]; blockSectors: number; lowWaterMark: number; data?: 'loop' }[] = [
      { label: 'a', features: [], blockSectors: 128, lowWaterMark: 0, data: 'loop' },
      { label: 'b', features: ['skip_block_zeroing', 'no_discard_passdown', 'error_if_no_space'], blockSectors: 256, lowWaterMark: 7 },
      { label: 'c', features: ['ignore_discard'], blockSectors: 1024, lowWaterMark: 3 },
    ];
    const pools: { tp: TestPool; thins: ThinDevice[] }[] = [];
    for (const v of variants) {
      const { tp, thin } = await poolWithThin(sb, { ...v, thinBlocks: 100 });
      await tp.pool.createThin(2);
      const empty = await ThinDevice.activate(tp.pool, { name: sb.adopt(`${v.label}-t2`), devId: 2, length: sectors(50 * tp.blockSectors) });
      const thins = [thin, empty];
      if (v.label === 'a') {
        // A thin device with an external (read-only) origin: a third table field.
        const ext = sb.adopt('a-ext');
        await tp.dm.createWithTable(ext, oneTarget(50 * tp.blockSectors, 'zero', ''), { readOnly: true });
        await tp.pool.createThin(3);
        thins.push(await ThinDevice.activate(tp.pool, { name: sb.adopt('a-t3'), devId: 3, length: sectors(50 * tp.blockSectors), externalOrigin: `${tp.dm.devDir}/${ext}` }));
      }
      pools.push({ tp, thins });
    }
    // Blocks 3 and 40..41 of each pool's thin 1 (whole blocks of that pool's size).
    sh(
      pools
        .map(({ tp, thins: [t] }) => {
          const bs = tp.blockSectors * 512;
          return `${ddCmd(t.path, { bs, seek: 3, count: 1, src: '/dev/zero' })} && ${ddCmd(t.path, { bs, seek: 40, count: 2, src: '/dev/zero' })}`;
        })
        .join(' && '),
    );
    const tables = dmsetupAll('table');
    for (const [i, { tp, thins }] of pools.entries()) {
      const v = variants[i];
      const s = await expectStatusMatches(tp, thins);
      expect(s).toMatchObject({
        kind: 'working',
        usedData: 3,
        totalData: (64 * MiB) / 512 / tp.blockSectors,
        mode: 'rw',
        discard: v.features.includes('ignore_discard') ? 'ignore_discard' : v.features.includes('no_discard_passdown') ? 'no_discard_passdown' : 'discard_passdown',
        noSpacePolicy: v.features.includes('error_if_no_space') ? 'error' : 'queue',
        needsCheck: false,
      });
      expect(await tp.pool.status({ noflush: true })).toEqual(s); // nothing left to commit
      expect(await thins[0].status()).toEqual({ kind: 'working', mappedSectors: 3 * tp.blockSectors, highestMappedSector: 42 * tp.blockSectors - 1 });
      expect(await thins[1].status()).toEqual({ kind: 'working', mappedSectors: 0, highestMappedSector: null });

      // Tables: the library's parse of the kernel's table vs dmsetup table.
      const f = dmsetupFields(tables.get(tp.name)!);
      const table = await tp.pool.table();
      expect(table).toEqual({
        metadataDev: f[0],
        dataDev: f[1],
        dataBlockSize: Number(f[2]),
        lowWaterMark: Number(f[3]),
        features: f.slice(5, 5 + Number(f[4])),
        extra: [],
        length: (64 * MiB) / 512,
      });
      expect({ ...parseThinPoolTable(f.join(' ')), length: table.length }).toEqual(table);
      expect([...table.features].sort()).toEqual([...v.features].sort());
      if (thins[2]) {
        const ext = (await t3Origin(thins[2]))!;
        expect(dmsetupFields(tables.get(thins[2].name)!)[2]).toBe(ext);
        expect(await thins[2].status()).toEqual({ kind: 'working', mappedSectors: 0, highestMappedSector: null });
      }
      for (const t of thins) {
        const tf = dmsetupFields(tables.get(t.name)!);
        const [kt] = await t.dm.table(t.name);
        expect(parseThinTable(kt.params)).toEqual({ poolDev: tf[0], devId: Number(tf[1]), ...(tf[2] ? { externalOriginDev: tf[2] } : {}) });
        expect(tf[0]).toBe(tp.pool.devString);
        expect((await ThinDevice.open(t.name)).devId).toBe(t.devId);
      }
    }
  });

  test('out_of_data_space: queued writes (queue_if_no_space), failed writes (error_if_no_space by reload), rw again after growing the data device', async () => {
    const sb = sandbox();
    // 16 data blocks on a `zero` device; thin 1 has room for 64.
    const { tp, thin } = await poolWithThin(sb, { dataBytes: 16 * BLOCK, thinBlocks: 64 });
    const dd = spawnDd(thin.path, 0, 24);
    try {
      await waitFor('out_of_data_space', async () => (await tp.pool.workingStatus()).mode === 'out_of_data_space', 60_000, 200);
      const s = await expectStatusMatches(tp, [thin]);
      expect(s).toMatchObject({ usedData: 16, totalData: 16, mode: 'out_of_data_space', noSpacePolicy: 'queue' });
      await sleep(200);
      expect(dd.child.exitCode).toBeNull(); // its writes are queued, not failed

      // Switch to error_if_no_space: the queued writes fail.
      await reloadPool(tp, { features: ['error_if_no_space'] });
      expect(await Promise.race([dd.exit, after(30_000, 'still running')])).toBe(1);
      expect(await expectStatusMatches(tp, [thin])).toMatchObject({ mode: 'out_of_data_space', noSpacePolicy: 'error', usedData: 16 });
      // And new writes fail at once.
      const r = sh(ddCmd(thin.path, { bs: BLOCK, seek: 40, count: 1, src: '/dev/zero' }), [], { allowFail: true, timeoutMs: 30_000 });
      expect(r.status).not.toBe(0);
      expect(r.stderr).toMatch(/Input\/output error|No space left/);
    } finally {
      dd.child.kill('SIGKILL');
    }

    // Grow the data device (a `zero` target: just a longer table) and the pool: rw again.
    await swapTable(tp.dm, tp.dataPath.split('/').pop()!, oneTarget(64 * tp.blockSectors, 'zero', ''));
    await reloadPool(tp, { features: [], blocks: 64 });
    const grown = await expectStatusMatches(tp, [thin]);
    expect(grown).toMatchObject({ mode: 'rw', noSpacePolicy: 'queue', usedData: 16, totalData: 64 });
    sh(ddCmd(thin.path, { bs: BLOCK, seek: 40, count: 1, src: '/dev/zero' }));
    expect(await expectStatusMatches(tp, [thin])).toMatchObject({ mode: 'rw', usedData: 17 });
  });

  test('waitEvent returns when the low-water mark is crossed, and again when data space runs out', async () => {
    const sb = sandbox();
    const { tp, thin } = await poolWithThin(sb, { dataBytes: 64 * BLOCK, thinBlocks: 128, lowWaterMark: 16, features: ['error_if_no_space'] });
    const ev0 = (await tp.pool.info()).eventNr;
    let settled = false;
    const first = tp.pool.waitEvent(ev0).finally(() => (settled = true));

    sh(ddCmd(thin.path, { bs: BLOCK, seek: 0, count: 32, src: '/dev/zero' }));
    expect((await tp.pool.workingStatus()).usedData).toBe(32);
    await sleep(500);
    expect(settled).toBe(false); // 32 free blocks: above the mark

    sh(ddCmd(thin.path, { bs: BLOCK, seek: 32, count: 20, src: '/dev/zero' }));
    const got = await Promise.race([first, after(30_000, null)]);
    expect(got).not.toBeNull();
    expect(got!.eventNr).toBeGreaterThan(ev0);
    expect(got!.status).toMatchObject({ kind: 'working', mode: 'rw' });
    if (got!.status.kind === 'working') expect(got!.status.usedData).toBeGreaterThanOrEqual(48); // free <= 16
    expect(await expectStatusMatches(tp, [thin])).toMatchObject({ usedData: 52, totalData: 64 });

    // A stale event number returns at once.
    const again = await Promise.race([tp.pool.waitEvent(ev0), after(10_000, null)]);
    expect(again?.eventNr).toBe(got!.eventNr);

    // Running out of data space is an event too (mode change).
    const second = tp.pool.waitEvent(got!.eventNr);
    const r = sh(ddCmd(thin.path, { bs: BLOCK, seek: 52, count: 20, src: '/dev/zero' }), [], { allowFail: true, timeoutMs: 30_000 });
    expect(r.status).not.toBe(0); // error_if_no_space
    const out = await Promise.race([second, after(30_000, null)]);
    expect(out?.status).toMatchObject({ kind: 'working', mode: 'out_of_data_space', usedData: 64 });

    // A pending wait does not pin the pool; removing it ends the wait with ENXIO.
    const third = tp.pool.waitEvent(out!.eventNr);
    third.catch(() => undefined);
    await thin.deactivate(); // an event of another device: the wait goes on
    await tp.pool.remove();
    const gone = await Promise.race([third.catch((e: unknown) => e), after(30_000, null)]);
    expect(gone).toMatchObject({ code: 'ENXIO', ioctl: 'DM_DEV_STATUS', device: tp.name });
  });

  test('read_only by table reload: ro, every message EOPNOTSUPP, writes to unprovisioned blocks fail, reads work; rw again', async () => {
    const sb = sandbox();
    const { tp, thin } = await poolWithThin(sb);
    sh(ddCmd(thin.path, { bs: BLOCK, seek: 0, count: 4, src: '/dev/zero' }));
    await reloadPool(tp, { features: ['read_only'] });
    expect(await expectStatusMatches(tp, [thin])).toMatchObject({ mode: 'ro', needsCheck: false, usedData: 4 });
    expect((await tp.pool.table()).features).toEqual(['read_only']);
    await expectMessagesRefused(tp);
    const r = sh(
      `${ddCmd(thin.path, { bs: BLOCK, seek: 100, count: 1, src: '/dev/zero' })} 2>&1; echo "write=$?"; dd if="$1" of=/dev/null bs=65536 count=4 iflag=direct status=none; echo "read=$?"`,
      [thin.path],
      { timeoutMs: 30_000 },
    );
    expect(r.stdout).toMatch(/write=1/);
    expect(r.stdout).toMatch(/read=0/);

    await reloadPool(tp, { features: [] });
    expect(await expectStatusMatches(tp, [thin])).toMatchObject({ mode: 'rw', needsCheck: false });
    await tp.pool.createThin(2);
  });

  test('ro, out of metadata space: snapshots and rewrites fill a 1 MiB metadata device; messages EOPNOTSUPP; rw again after growing it', async () => {
    const sb = sandbox();
    // 8,000 mappings written in random 1 MiB chunks (about 50 leaves), on `zero` data.
    const { tp, thin } = await poolWithThin(sb, { metaBytes: MiB, dataBytes: 1024 * MiB, thinBlocks: 16384, features: ['skip_block_zeroing'] });
    let seed = 7; // xorshift32
    const rand = (n: number) => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return (seed >>> 0) % n;
    };
    const slots = new Set<number>();
    while (slots.size < 500) slots.add(rand(1024));
    directWrite(thin.path, [...slots].map((c) => [c * 16 * BLOCK, 16 * BLOCK]));
    const mapped = [...slots].flatMap((c) => Array.from({ length: 16 }, (_, i) => c * 16 + i));
    const start = await expectStatusMatches(tp, [thin]);
    expect(start).toMatchObject({ mode: 'rw', usedData: 8000, totalMetadata: 256 });

    // Each round: a snapshot, then one rewrite in most leaves (each copies its leaf).
    let mode = 'rw';
    for (let round = 0; round < 12 && mode === 'rw'; round++) {
      await tp.pool.createSnap(100 + round, 1);
      directWrite(thin.path, Array.from({ length: 60 }, () => [mapped[rand(mapped.length)] * BLOCK, BLOCK] as [number, number]), true);
      const st = await tp.pool.workingStatus();
      mode = st.mode!;
    }
    const full = await expectStatusMatches(tp, [thin]);
    expect(full).toMatchObject({ kind: 'working', mode: 'ro', needsCheck: false, totalMetadata: 256 });
    await expectMessagesRefused(tp);

    // Grow the metadata device (the loop's file, then the pool's table reloaded): rw again.
    sh('truncate -s 4M "$1" && losetup -c "$2"', [tp.metaLoop.file, tp.metaLoop.path]);
    await reloadPool(tp, {});
    expect(await expectStatusMatches(tp, [thin])).toMatchObject({ mode: 'rw', needsCheck: false, totalMetadata: 1024 });
    await tp.pool.createThin(2);
  }, 480_000); // thousands of small writes under emulation: 60-190 s depending on host load
});
