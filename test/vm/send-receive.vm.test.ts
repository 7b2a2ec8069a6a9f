/**
 * send/receive on a real thin pool (loop devices, dm-thin), for the root-VM
 * suite (helpers from test/vm; skipped on the host by describeVm).
 *
 * A thin volume is written, snapshotted, changed (overwrites, a discard, new
 * blocks) and snapshotted again; the snapshots are sent from the pool (full,
 * then incremental) and received into a file and into another thin volume of
 * the pool, which must then read exactly like the snapshot. Also: no
 * metadata snapshot stays held, no temporary dm device is left behind, an
 * active snapshot is read in place, and the CLI pipeline.
 */
import { sectors } from '../../src/units';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, constants, createReadStream, existsSync, openSync, readFileSync } from 'node:fs';
import { DeviceMapper } from '../../src/dm/device-mapper';
import { ThinDevice } from '../../src/pool/thin-device';
import type { ThinPool } from '../../src/pool/thin-pool';
import { BlockWriter } from '../../src/native/block-writer';
import { receive } from '../../src/ops/receive';
import { send } from '../../src/ops/send';
import { describeVm, DmSandbox, MiB, run } from './helpers';
import { CLI, DIST, createTestPool, sha256OfDevice, waitFor } from './pool-helpers';
import { junkFile, sha256File } from '../stream/helpers';

const VOL = 32 * MiB;
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

describeVm('send/receive on a live thin pool', () => {
  let sb: DmSandbox;
  let pool: ThinPool;
  let poolName: string;

  async function activate(devId: number, short: string, readOnly = false): Promise<ThinDevice> {
    return ThinDevice.activate(pool, { name: sb.adopt(short), devId, length: sectors(VOL / 512), readOnly });
  }

  /** What thin `devId` reads as (activated read-only for the occasion). */
  async function snapshotHash(devId: number): Promise<string> {
    const d = await activate(devId, `ro${devId}`, true);
    try {
      return await sha256OfDevice(d.path, 0, VOL);
    } finally {
      await d.deactivate();
    }
  }

  async function leftovers(): Promise<string[]> {
    return (await new DeviceMapper().listDevices()).map((d) => d.name).filter((n) => n.startsWith('dmthin-send-'));
  }

  async function writeBlocks(path: string, blocks: number[], gen: number): Promise<void> {
    const w = await BlockWriter.open(path);
    try {
      await w.write(blocks.map((b) => ({ offset: b * BS, data: content(b, gen) })));
      await w.fsync();
    } finally {
      w.close();
    }
  }

  beforeAll(async () => {
    sb = new DmSandbox('send-recv');
    ({ pool, name: poolName } = await createTestPool(sb, { dataBytes: 256 * MiB, metaBytes: 16 * MiB, blockSectors: BS / 512 }));
    await pool.createThin(1);
    const t1 = await activate(1, 't1');
    // Generation 1: blocks 0-99 and 200-249, a hole between.
    await writeBlocks(t1.path, [...Array(100).keys(), ...Array.from({ length: 50 }, (_, i) => 200 + i)], 1);
    await pool.createSnap(2, 1);
    // Generation 2: overwrite 10-19, new 300-309, discard 40-59.
    await writeBlocks(t1.path, [...Array.from({ length: 10 }, (_, i) => 10 + i), ...Array.from({ length: 10 }, (_, i) => 300 + i)], 2);
    const w = await BlockWriter.open(t1.path);
    expect(await w.discard(40 * BS, 20 * BS)).toBe('blkdiscard');
    w.close();
    await pool.createSnap(3, 1);
    await t1.deactivate(); // sends of thin 1 below activate it themselves
  });

  afterAll(() => sb?.cleanup());

  test('full then incremental into a file; the metadata snapshot is released; no temporary device left', async () => {
    const target = `${sb.dir}/file-target`;
    junkFile(target, VOL, 3);
    const full = `${sb.dir}/s2.stream`;
    const a = await send({ pool, snap: 2, output: full, deviceSize: VOL });
    expect((await pool.workingStatus()).heldMetadataRoot).toBeNull();
    expect(await leftovers()).toEqual([]);
    expect({ data: a.dataBlocks, zero: a.discardBlocks }).toEqual({ data: 150, zero: VOL / BS - 150 });
    await receive({ target, input: full });
    expect(sha256File(target)).toBe(await snapshotHash(2));

    const inc = `${sb.dir}/s3from2.stream`;
    const b = await send({ pool, snap: 3, base: 2, output: inc, deviceSize: VOL });
    expect({ data: b.dataBlocks, zero: b.discardBlocks }).toEqual({ data: 20, zero: 20 });
    expect((await pool.workingStatus()).heldMetadataRoot).toBeNull();
    expect(await leftovers()).toEqual([]);
    await receive({ target, input: inc });
    expect(sha256File(target)).toBe(await snapshotHash(3));
  });

  test('into a thin volume of the pool: discards unprovision, the content is exact', async () => {
    await pool.createThin(10);
    const t = await activate(10, 't10');
    const stateDir = `${sb.dir}/state`;
    const r1 = await receive({ target: t.path, input: `${sb.dir}/s2.stream`, stateDir });
    expect(r1.stateFile.startsWith(stateDir)).toBe(true);
    const r2 = await receive({ target: t.path, input: `${sb.dir}/s3from2.stream`, stateDir });
    expect(r2.zeroing).toHaveProperty('blkdiscard');
    expect(await sha256OfDevice(t.path, 0, VOL)).toBe(await snapshotHash(3));
    const st = await t.status();
    // 150 + 10 new - 20 discarded blocks are provisioned, not the whole volume.
    expect(st.kind === 'working' ? Number(st.mappedSectors) / (BS / 512) : -1).toBe(140);
  });

  test('the CLI: send from the pool piped into receive; an active snapshot is read where it is', async () => {
    const target = `${sb.dir}/cli-target`;
    const dmthin = `'${process.execPath}' '${CLI}'`;
    let r = spawnSync('sh', ['-c', `${dmthin} send --pool ${poolName} --snap 2 --size ${VOL} | ${dmthin} receive --target '${target}' --create`], { encoding: 'utf8' });
    expect([r.status, r.stderr]).toEqual([0, '']);
    const active = await activate(3, 'active3', true);
    r = spawnSync('sh', ['-c', `${dmthin} send --pool ${poolName} --snap 3 --base 2 | ${dmthin} receive --target '${target}'`], { encoding: 'utf8' });
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(sha256File(target)).toBe(await sha256OfDevice(active.path, 0, VOL));
    await active.deactivate();
    expect(await leftovers()).toEqual([]);
    expect((await pool.workingStatus()).heldMetadataRoot).toBeNull();
  });

  test('two dmthin processes on one pool take turns with its metadata snapshot: a send while another process holds it waits, then succeeds (hunt L item 4: EBUSY, and advice to release what the other still read)', async () => {
    // The holder: a process of ours (the library) that reserved the snapshot and keeps it until SIGUSR2.
    const script = `const { ThinPool } = require(${JSON.stringify(DIST)});
      (async () => {
        const pool = await ThinPool.open(${JSON.stringify(poolName)});
        const snap = await pool.reserveMetadataSnap();
        process.on('SIGUSR2', () => snap.release().then(() => process.exit(0)));
        console.log('held ' + snap.root);
        setInterval(() => undefined, 1000);
      })();`;
    // The guest's /var/lib is the host's, read-only: records go to /run/dmthin/held (hunt L item 7: none was written, and a killed dmthin's snapshot stayed held).
    const env = { ...process.env, DMTHIN_HELD_DIR: '' };
    const holder = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'], env });
    try {
      const [line] = (await once(holder.stdout!, 'data')) as [Buffer];
      expect(line.toString()).toMatch(/^held \d+/);
      const record = `/run/dmthin/held/${encodeURIComponent(poolName)}.json`;
      expect(JSON.parse(readFileSync(record, 'utf8'))).toMatchObject({ pid: holder.pid, pool: poolName });
      const out = `${sb.dir}/turns.stream`;
      const t0 = Date.now();
      const sender = spawn(process.execPath, [CLI, 'send', '--pool', poolName, '--snap', '2', '--size', String(VOL), '-o', out, '-q'], { stdio: ['ignore', 'ignore', 'pipe'], env });
      let stderr = '';
      sender.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      // Long enough for the sender to start under emulation and find the snapshot held (it failed at once before).
      await new Promise((r) => setTimeout(r, 8000));
      expect([sender.exitCode, stderr]).toEqual([null, '']); // waiting, not failed
      holder.kill('SIGUSR2');
      expect([await exitOf(sender), stderr]).toEqual([0, '']);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(8000);
      expect(existsSync(record)).toBe(false);
      const r = spawnSync(process.execPath, [CLI, 'receive', '--target', `${sb.dir}/turns-target`, '--create', '-i', out], { encoding: 'utf8' });
      expect([r.status, r.stderr]).toEqual([0, '']);
      expect(sha256File(`${sb.dir}/turns-target`)).toBe(await snapshotHash(2));
      expect((await pool.workingStatus()).heldMetadataRoot).toBeNull();
    } finally {
      holder.kill('SIGKILL');
    }
  });

  /**
   * `dmthin send` of thin 1 into a FIFO this process holds open without
   * reading: the copy stops with the temporary device open. `drain()` then
   * reads the FIFO to its end, so that a write blocked in the child returns.
   */
  async function stalledSend(fifo: string): Promise<{ child: ReturnType<typeof spawn>; drain: () => void; name: string }> {
    spawnSync('mkfifo', [fifo]);
    const reader = createReadStream(fifo);
    reader.pause();
    const opened = once(reader, 'open');
    const child = spawn(process.execPath, [CLI, 'send', '--pool', poolName, '--snap', '1', '--size', String(VOL), '-o', fifo, '-q'], { stdio: 'ignore' });
    try {
      // Copying: the device is marked for deferred removal, and the output is open.
      const name = await waitFor('a temporary device marked for deferred removal', async () => {
        const [n] = await leftovers();
        return n !== undefined && (await new DeviceMapper().info(n)).deferredRemove ? n : '';
      });
      await opened;
      return { child, name, drain: () => reader.on('data', () => undefined).on('error', () => undefined).resume() };
    } catch (e) {
      child.kill('SIGKILL');
      // Our open of the FIFO may still wait for a writer: be that writer, so it returns.
      try {
        closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK));
      } catch {
        // no reader waiting
      }
      reader.destroy();
      throw e;
    }
  }

  const exitOf = (c: ReturnType<typeof spawn>): Promise<number | null> => new Promise((r) => (c.exitCode !== null ? r(c.exitCode) : c.on('close', (code) => r(code))));

  test('SIGTERM during a send: exit 143, temporary device removed, the FIFO it wrote into left alone', async () => {
    const fifo = `${sb.dir}/fifo-term`;
    const { child, drain } = await stalledSend(fifo);
    child.kill('SIGTERM');
    drain();
    expect(await exitOf(child)).toBe(143);
    expect(await leftovers()).toEqual([]);
    // A FIFO (or device) output is written in place and is not the send's to remove.
    expect(existsSync(fifo)).toBe(true);
    expect((await pool.workingStatus()).heldMetadataRoot).toBeNull();
  });

  test("temporary devices a killed send left (no table yet, or a thin of the pool not yet marked for deferred removal) are removed by the next send; a live process's, another pool's and an open one are left (outside hunt AC: one stayed for good)", async () => {
    const dm = new DeviceMapper();
    // A pid that is gone: a child that has exited.
    const dead = spawnSync('true').pid!;
    const stale = [`dmthin-send-${dead}-1-aaaaaa`, `dmthin-send-${dead}-2-bbbbbb`];
    const kept = [`dmthin-send-${process.ppid}-1-cccccc`, `dmthin-send-${dead}-3-dddddd`];
    run('dmsetup', ['create', '--notable', stale[0]]);
    run('dmsetup', ['create', stale[1]], { input: `0 ${VOL / 512} thin ${pool.devString} 1\n` });
    // A live process's (the test runner's parent), and a dead one's whose table is not a thin of this pool.
    run('dmsetup', ['create', kept[0]], { input: `0 ${VOL / 512} thin ${pool.devString} 1\n` });
    run('dmsetup', ['create', kept[1]], { input: `0 8 zero\n` });
    try {
      await send({ pool, snap: 2, output: `${sb.dir}/stale.stream`, deviceSize: VOL });
      const names = (await dm.listDevices()).map((d) => d.name);
      expect(stale.filter((n) => names.includes(n))).toEqual([]);
      expect(kept.filter((n) => names.includes(n))).toEqual(kept);
    } finally {
      for (const n of [...stale, ...kept]) run('dmsetup', ['remove', n], { allowFail: true });
      for (const n of [...stale, ...kept]) spawnSync('rm', ['-f', `/dev/mapper/${n}`]);
    }
    expect(await leftovers()).toEqual([]);
  });

  test('SIGKILL during a send: the kernel removes the temporary device (deferred removal)', async () => {
    const fifo = `${sb.dir}/fifo-kill`;
    const { child, drain, name } = await stalledSend(fifo);
    child.kill('SIGKILL');
    drain();
    await exitOf(child);
    await waitFor('the temporary device to go', async () => (await leftovers()).length === 0);
    // Without udev the node the child made stays behind; it names no device any more.
    spawnSync('rm', ['-f', `/dev/mapper/${name}`]);
    expect((await pool.workingStatus()).heldMetadataRoot).toBeNull();
  });
});
