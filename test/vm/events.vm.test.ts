/**
 * Pool events on a real kernel: waits through DM_DEV_ARM_POLL and the
 * addon's uv_poll, no worker thread held.
 * - An aborted wait settles at once (well under a second) with AbortError and
 *   leaves no descriptor on the control node open.
 * - Eight waits pending on one pool while another pool's metadata snapshot is
 *   read through the library (thread-pool reads: with DM_DEV_WAIT, four waits
 *   would have blocked all of them) and compared with thin_dump of the same
 *   snapshot; the global events those reads cause (reserve/release messages)
 *   wake the waiters, which look again and keep waiting.
 * - pool.events() yields low-water-mark when writes cross the mark, then a
 *   mode event to out_of_data_space, then to ro on a read_only reload, and
 *   ends with AbortError when aborted; `dmthin pool events --json --count 2`
 *   prints the first two and exits 0.
 */
import { spawn } from 'node:child_process';
import { readdirSync, readlinkSync } from 'node:fs';
import { BlockReader } from '../../src/native/block-reader';
import type { PoolEvent } from '../../src/pool/events';
import { MiB, describeVm, haveProgram, run, useDmSandbox } from './helpers';
import { CLI, after, ddCmd, libraryView, parseThinDumpXml, sh, sleep, waitFor } from './pool-helpers';
import { BLOCK, directWrite, poolWithThin, reloadPool } from './status-helpers';

/** Descriptors of a process (default: this one) open on the dm control node. */
function controlFds(pid: number | 'self' = 'self'): number {
  let n = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`) === '/dev/mapper/control') n++;
    } catch {
      // closed meanwhile (readdir's own descriptor)
    }
  }
  return n;
}

describeVm('pool events: cancellable waits without a worker thread, typed events', () => {
  const sandbox = useDmSandbox('events');

  test('an aborted wait rejects at once with AbortError and closes its descriptor', async () => {
    const sb = sandbox();
    const { tp } = await poolWithThin(sb);
    const before = controlFds();
    const ac = new AbortController();
    let settled = false;
    const p = tp.pool.waitEvent(undefined, { signal: ac.signal }).finally(() => (settled = true));
    p.catch(() => undefined);
    await sleep(300);
    expect(settled).toBe(false);
    expect(controlFds()).toBe(before + 1); // the wait's own armed descriptor
    const t0 = performance.now();
    ac.abort();
    const err = await p.catch((e: unknown) => e);
    const ms = performance.now() - t0;
    expect(err).toMatchObject({ name: 'AbortError', code: 'ABORT_ERR' });
    expect(ms).toBeLessThan(1000);
    expect(controlFds()).toBe(before);
    // The pool is untouched and a new wait still sees real events.
    const ev0 = (await tp.pool.info()).eventNr;
    const next = tp.pool.waitEvent(ev0);
    await reloadPool(tp, { features: ['read_only'] }); // the mode change is an event of the pool (a plain table swap is not)
    const got = await Promise.race([next, after(30_000, null)]);
    expect(got?.eventNr).toBeGreaterThan(ev0);
  });

  test('eight pending waits: block reads of another pool (a metadata snapshot through the library, raw reads) complete and equal thin_dump', async () => {
    const sb = sandbox();
    const a = await poolWithThin(sb, { label: 'a' });
    const b = await poolWithThin(sb, { label: 'b', data: 'loop', thinBlocks: 512, features: ['skip_block_zeroing'] });
    // 150 scattered one-block writes: 150 separate mapping runs to read back.
    directWrite(
      b.thin.path,
      Array.from({ length: 150 }, (_, i) => [((i * 37) % 500) * BLOCK, BLOCK] as [number, number]),
    );
    const ac = new AbortController();
    const ev0 = (await a.tp.pool.info()).eventNr;
    let settled = 0;
    const waits = Array.from({ length: 8 }, () => a.tp.pool.waitEvent(ev0, { signal: ac.signal }).finally(() => settled++));
    for (const w of waits) w.catch(() => undefined);
    await sleep(200);
    try {
      const t0 = performance.now();
      // Library reads of b's metadata through a reserved snapshot.
      const live = await b.tp.pool.openMetadata();
      let view;
      try {
        view = await Promise.race([libraryView(live.metadata), after(30_000, null)]);
      } finally {
        await live.release();
      }
      expect(view).not.toBeNull();
      // Raw O_DIRECT reads of every block of b's metadata device, 16 batches at once.
      const reader = await BlockReader.open(b.tp.metaPath);
      try {
        const nr = (8 * MiB) / 4096;
        const batches = Array.from({ length: 16 }, (_, k) => Array.from({ length: nr / 16 }, (_, i) => k * (nr / 16) + i));
        const reads = await Promise.race([Promise.all(batches.map((blocks) => reader.read(4096, blocks))), after(30_000, null)]);
        expect(reads?.map((r) => r.data.length)).toEqual(Array(16).fill((nr / 16) * 4096));
      } finally {
        reader.close();
      }
      expect(performance.now() - t0).toBeLessThan(30_000);
      expect(settled).toBe(0); // a's counter never moved: still waiting

      // The snapshot's content, from thin_dump of b's metadata (its own reserve).
      if (haveProgram('thin_dump')) {
        await b.tp.pool.message('reserve_metadata_snap');
        try {
          const oracle = parseThinDumpXml(run('thin_dump', ['-m', b.tp.metaPath]).stdout);
          // thin_dump 0.9.0 prints nr_data_blocks="0" with -m; the library has the true size.
          expect({ ...view!, superblock: { ...view!.superblock, nrDataBlocks: 0 } }).toEqual(oracle);
        } finally {
          await b.tp.pool.message('release_metadata_snap');
        }
      } else if (process.env.DMTHIN_REQUIRE_ORACLE === '1') {
        throw new Error('thin_dump (thin-provisioning-tools) is not installed, and DMTHIN_REQUIRE_ORACLE=1');
      } else {
        console.warn('thin_dump not installed: the snapshot read is not cross-checked');
      }
      expect(view!.devices.find((d) => d.devId === 1)?.mappedBlocks).toBe(150);
    } finally {
      ac.abort();
    }
    const results = await Promise.allSettled(waits);
    expect(results.map((r) => (r.status === 'rejected' ? (r.reason as { code?: string }).code : 'resolved'))).toEqual(Array(8).fill('ABORT_ERR'));
   }, 300_000); // two pools and 150 writes under TCG on a loaded host: 40-100 s seen

  test('pool.events(): low-water-mark, then out_of_data_space, then ro on a read_only reload; abort ends the loop', async () => {
    const sb = sandbox();
    // 64 data blocks on a `zero` device, the mark at 16 free, writes fail when full.
    const { tp, thin } = await poolWithThin(sb, { dataBytes: 64 * BLOCK, thinBlocks: 128, lowWaterMark: 16, features: ['error_if_no_space'] });
    const ac = new AbortController();
    const seen: PoolEvent[] = [];
    const loop = (async () => {
      for await (const ev of tp.pool.events({ signal: ac.signal })) seen.push(ev);
    })();
    loop.catch(() => undefined);
    // The CLI too, once it waits (its armed descriptor is open).
    const cli = spawn(process.execPath, [CLI, 'pool', 'events', tp.name, '--json', '--count', '2', '--timeout', '120'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let cliOut = '';
    let cliErr = '';
    cli.stdout.on('data', (d: Buffer) => (cliOut += d.toString()));
    cli.stderr.on('data', (d: Buffer) => (cliErr += d.toString()));
    const cliExit = new Promise<number | null>((res) => cli.on('exit', (code) => res(code)));
    await waitFor('the CLI waiting', () => cli.exitCode !== null || controlFds(cli.pid!) > 0, 60_000, 100);
    await waitFor('the iterator waiting', () => controlFds() > 0, 10_000, 20);
    const waitSeen = async (what: string, pred: (e: PoolEvent) => boolean) => {
      const end = Date.now() + 30_000;
      while (!seen.some(pred)) {
        if (Date.now() > end) throw new Error(`no ${what} event; saw ${JSON.stringify(seen.map((e) => e.type))}`);
        await sleep(50);
      }
      return seen.find(pred)!;
    };

    sh(ddCmd(thin.path, { bs: BLOCK, seek: 0, count: 32, src: '/dev/zero' })); // 32 free: above the mark
    await sleep(500);
    expect(seen.filter((e) => e.type === 'low-water-mark')).toEqual([]);

    sh(ddCmd(thin.path, { bs: BLOCK, seek: 32, count: 20, src: '/dev/zero' })); // 12 free
    const lwm = await waitSeen('low-water-mark', (e) => e.type === 'low-water-mark');
    expect(lwm).toMatchObject({ type: 'low-water-mark', lowWaterMark: 16, status: { kind: 'working', mode: 'rw' } });
    if (lwm.type === 'low-water-mark') expect(lwm.freeDataBlocks).toBeLessThanOrEqual(16);
    // The CLI reports it before the next write (else it may see both changes at one status).
    await waitFor('the CLI printing the low-water-mark', () => cliOut.includes('\n') || cli.exitCode !== null, 60_000, 50);

    const r = sh(ddCmd(thin.path, { bs: BLOCK, seek: 52, count: 20, src: '/dev/zero' }), [], { allowFail: true, timeoutMs: 30_000 });
    expect(r.status).not.toBe(0); // error_if_no_space
    const ood = await waitSeen('out_of_data_space', (e) => e.type === 'mode' && e.to === 'out_of_data_space');
    expect(ood).toMatchObject({ from: 'rw', status: { kind: 'working', usedData: 64 } });

    expect(await Promise.race([cliExit, after(60_000, 'still running')])).toBe(0);
    expect(cliErr).toBe('');
    const printed = cliOut.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(printed).toHaveLength(2);
    expect(printed[0]).toMatchObject({ pool: tp.name, type: 'low-water-mark', lowWaterMark: 16, eventNr: lwm.eventNr, status: { kind: 'working', mode: 'rw' } });
    expect(printed[1]).toMatchObject({ pool: tp.name, type: 'mode', from: 'rw', to: 'out_of_data_space', eventNr: ood.eventNr });

    await reloadPool(tp, { features: ['error_if_no_space', 'read_only'] });
    const ro = await waitSeen('ro', (e) => e.type === 'mode' && e.to === 'ro');
    expect(ro).toMatchObject({ from: 'out_of_data_space' });
    // Counters only grow along the sequence.
    const nrs = seen.map((e) => e.eventNr);
    expect([...nrs].sort((x, y) => x - y)).toEqual(nrs);

    const t0 = performance.now();
    ac.abort();
    await expect(loop).rejects.toMatchObject({ code: 'ABORT_ERR' });
    expect(performance.now() - t0).toBeLessThan(1000);
  });
});
