/**
 * `dmthin merge` on a real kernel (root VM; skipped on the host):
 *
 * - into an external origin: a loop device holds the origin, a thin reads
 *   through it and is written (whole blocks, partial blocks, a discard);
 *   after the merge the origin reads exactly what the thin read. Each
 *   refusal (origin open, origin shared by another active thin, thin
 *   active, blocks beyond the origin's end) leaves the origin
 *   byte-identical. A merge killed with SIGKILL in the middle of its copy
 *   is finished by a re-run (and refused onto another origin meanwhile).
 * - in the pool: an origin written in rounds with snapshots between; an
 *   older snapshot merged back: the origin reads what the snapshot read and
 *   maps as many blocks; refusals while either is active; SIGKILL + re-run.
 * - a suspended pool: refused before anything is recorded (and send, which
 *   also activates a thin, says why instead of the table load's EINVAL).
 * - an LVM-made pool: refused, naming lvconvert --merge; nothing changed.
 *
 * The expected contents are always read from the devices themselves (the
 * thin before the merge), never computed by dmthin.
 */
import { sectors } from '../../src/units';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { DeviceMapper } from '../../src/dm/device-mapper';
import { BlockWriter } from '../../src/native/block-writer';
import { withMetadataSnapshot } from '../../src/pool/live-metadata';
import { ThinDevice } from '../../src/pool/thin-device';
import type { ThinPool } from '../../src/pool/thin-pool';
import { DmSandbox, MiB, describeVm, run } from './helpers';
import { LvmSandbox, haveLvm } from './lvm-helpers';
import { CLI, createTestPool, ddCmd, sh, sha256OfDevice, waitFor } from './pool-helpers';

const BS = 64 * 1024;

function dmthin(args: string[], env: NodeJS.ProcessEnv = process.env): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, 'merge', ...args], { env, encoding: 'utf8', timeout: 300_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

async function tempDevices(): Promise<string[]> {
  return (await new DeviceMapper().listDevices()).map((d) => d.name).filter((n) => n.startsWith('dmthin-merge-'));
}

/** Thin id -> mapped blocks, from the pool's metadata (through a metadata snapshot). */
async function mappedCounts(pool: ThinPool): Promise<Map<number, number>> {
  return withMetadataSnapshot(pool, async (md) => new Map([...(await md.devices())].map(([id, d]) => [id, d.mappedBlocks])));
}

/** A refusal: exit 1, one line on stderr matching `re`. */
function expectRefused(r: { status: number | null; stderr: string }, re: RegExp): void {
  expect({ status: r.status, lines: r.stderr.trim().split('\n').length }).toEqual({ status: 1, lines: 1 });
  expect(r.stderr.trim()).toMatch(re);
}

describeVm('dmthin merge', () => {
  let sb: DmSandbox;
  let pool: ThinPool;
  let poolName: string;
  const stateFile = (n: string) => `${sb.dir}/merge-${n}.json`;

  beforeAll(async () => {
    sb = new DmSandbox('merge');
    ({ pool, name: poolName } = await createTestPool(sb, { dataBytes: 192 * MiB, metaBytes: 8 * MiB, blockSectors: BS / 512 }));
  });
  afterAll(() => sb?.cleanup());

  /** A loop device full of random data, and thin `id` with it as external origin (`thinBytes` long), active. */
  async function withOrigin(id: number, originBytes: number, thinBytes = originBytes): Promise<{ origin: string; thin: ThinDevice }> {
    const origin = sb.loop(originBytes, `origin${id}`).path;
    sh(ddCmd(origin, { bs: MiB, seek: 0, count: originBytes / MiB }));
    await pool.createThin(id);
    const thin = await ThinDevice.activate(pool, { name: sb.adopt(`t${id}`), devId: id, length: sectors(thinBytes / 512), externalOrigin: origin });
    return { origin, thin };
  }

  async function activate(id: number, short: string, bytes: number, readOnly = false): Promise<ThinDevice> {
    return ThinDevice.activate(pool, { name: sb.adopt(short), devId: id, length: sectors(bytes / 512), readOnly });
  }

  async function thinHash(id: number, bytes: number): Promise<string> {
    const d = await activate(id, `ro${id}`, bytes, true);
    try {
      return await sha256OfDevice(d.path, 0, bytes);
    } finally {
      await d.deactivate();
    }
  }

  async function clean(): Promise<void> {
    await waitFor('temporary merge devices to go', async () => (await tempDevices()).length === 0, 30_000);
    expect((await pool.workingStatus()).heldMetadataRoot).toBeNull();
  }

  test('into an external origin: the origin then reads what the thin read; the thin is deleted', async () => {
    const SIZE = 16 * MiB;
    const { origin, thin } = await withOrigin(1, SIZE);
    // Whole blocks 0-9 and 30-39, partial blocks (4 KiB into 20 and 100: the rest comes from the origin), a discard of 5-6.
    sh([ddCmd(thin.path, { bs: BS, seek: 0, count: 10 }), ddCmd(thin.path, { bs: BS, seek: 30, count: 10 }), ddCmd(thin.path, { bs: 4096, seek: 20 * 16 + 2, count: 1 }), ddCmd(thin.path, { bs: 4096, seek: 100 * 16 + 15, count: 1 }), `blkdiscard -o ${5 * BS} -l ${2 * BS} ${thin.path}`].join(' && '));
    const want = await sha256OfDevice(thin.path, 0, SIZE);
    const before = await sha256OfDevice(origin, 0, SIZE);
    expect(want).not.toBe(before);
    await thin.deactivate();
    const mapped = (await mappedCounts(pool)).get(1);
    expect(mapped).toBe(20); // 10 + 10 + 2 partial - 2 discarded

    const t0 = Date.now();
    const r = dmthin(['--pool', poolName, '--snap', '1', '--external-origin', origin, '--state', stateFile('ext'), '--json', '-q']);
    expect([r.status, r.stderr]).toEqual([0, '']);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({ kind: 'external', snap: 1, copiedBlocks: 20, discardedBlocks: 0, bytes: 20 * BS, snapDeleted: true, resumed: false });
    process.stdout.write(`merge external: ${SIZE} B origin, ${j.copiedBlocks} blocks of ${BS} B, ${j.seconds} s in the merge, ${Date.now() - t0} ms with the CLI\n`);
    expect(await sha256OfDevice(origin, 0, SIZE)).toBe(want);
    expect((await mappedCounts(pool)).has(1)).toBe(false);
    expect(existsSync(stateFile('ext'))).toBe(false);
    await clean();
  }, 300_000);

  test('an external origin given as major:minor, as the thin\'s table names it (no udev, so no /dev/block link): merged through the kernel\'s node (hunt L item 9: "no such file")', async () => {
    const SIZE = 4 * MiB;
    const { origin, thin } = await withOrigin(40, SIZE);
    sh(ddCmd(thin.path, { bs: BS, seek: 3, count: 2 }));
    const want = await sha256OfDevice(thin.path, 0, SIZE);
    await thin.deactivate();
    const majMin = run('sh', ['-c', `printf '%d:%d' 0x$(stat -c %t ${origin}) 0x$(stat -c %T ${origin})`]).stdout;
    expect(existsSync(`/dev/block/${majMin}`)).toBe(false);
    const r = dmthin(['--pool', poolName, '--snap', '40', '--external-origin', majMin, '--state', stateFile('majmin'), '--json', '-q']);
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(JSON.parse(r.stdout)).toMatchObject({ kind: 'external', snap: 40, copiedBlocks: 2, snapDeleted: true });
    expect(await sha256OfDevice(origin, 0, SIZE)).toBe(want);
    await clean();
  }, 300_000);

  test('refusals (origin open, shared, thin active, beyond the end) leave the origin byte-identical', async () => {
    const SIZE = 8 * MiB;
    const { origin, thin } = await withOrigin(2, SIZE);
    sh(ddCmd(thin.path, { bs: BS, seek: 3, count: 4 }));
    await thin.deactivate();
    const h0 = await sha256OfDevice(origin, 0, SIZE);
    const args = (snap: number) => ['--pool', poolName, '--snap', String(snap), '--external-origin', origin, '--state', stateFile(`refuse${snap}`), '-q'];
    const unchanged = async () => {
      expect(await sha256OfDevice(origin, 0, SIZE)).toBe(h0);
      expect(existsSync(stateFile('refuse2'))).toBe(false);
      await clean();
    };

    // Open (O_EXCL) by someone else.
    const holder = await BlockWriter.open(origin, { exclusive: true });
    try {
      expectRefused(dmthin(args(2)), /open by someone else.*\[EBUSY\]$/);
    } finally {
      holder.close();
    }
    await unchanged();

    // Read-only (blockdev --setro; a read-only loop device): refused before the state file is written
    // (outside hunt AC: pwritev's EPERM, and a state file left that refused the next merge of the snapshot).
    sh(`blockdev --setro ${origin}`);
    try {
      expectRefused(dmthin(args(2)), /is read-only .*blockdev --setrw.*\[EROFS\]$/);
    } finally {
      sh(`blockdev --setrw ${origin}`);
    }
    await unchanged();
    const roLoop = run('losetup', ['-r', '-f', '--show', origin]).stdout.trim();
    try {
      expectRefused(dmthin(['--pool', poolName, '--snap', '2', '--external-origin', roLoop, '--state', stateFile('refuse2'), '-q']), /is read-only .*\[EROFS\]$/);
    } finally {
      run('losetup', ['-d', roLoop]);
    }
    await unchanged();

    // The external origin of another active thin.
    await pool.createThin(3);
    const other = await ThinDevice.activate(pool, { name: sb.adopt('t3'), devId: 3, length: sectors(SIZE / 512), externalOrigin: origin });
    expectRefused(dmthin(args(2)), /also the external origin of thin 3 .*\[EBUSY\]$/);
    await other.deactivate();
    await unchanged();

    // The thin itself active.
    const active = await ThinDevice.activate(pool, { name: sb.adopt('t2b'), devId: 2, length: sectors(SIZE / 512), externalOrigin: origin });
    expectRefused(dmthin(args(2)), /snapshot thin 2 of pool .* is active as dm device .*\[EBUSY\]$/);
    await active.deactivate();
    await unchanged();

    // Active with another external origin in its table: told apart from a plain active thin.
    const elsewhere = sb.loop(SIZE, 'elsewhere').path;
    const wrong = await ThinDevice.activate(pool, { name: sb.adopt('t2c'), devId: 2, length: sectors(SIZE / 512), externalOrigin: elsewhere });
    expectRefused(dmthin(args(2)), /thin 2 is active as dm device .* with external origin \d+:\d+, not .*\[EINVAL\]$/);
    await wrong.deactivate();
    await unchanged();

    // Mapped blocks beyond the origin's end (a thin longer than its origin).
    await pool.createThin(4);
    const long = await ThinDevice.activate(pool, { name: sb.adopt('t4'), devId: 4, length: sectors((SIZE + 4 * BS) / 512), externalOrigin: origin });
    sh(ddCmd(long.path, { bs: BS, seek: SIZE / BS + 1, count: 1 }));
    await long.deactivate();
    expectRefused(dmthin(args(4)), new RegExp(`thin 4 maps block ${SIZE / BS + 1} .*beyond the end of .*\\[ENOSPC\\]$`));
    await unchanged();

    // A suspended pool: refused before any state is recorded (the kernel activates no thin of it, which the copy needs).
    // send, which also reads through a temporarily activated thin, says the same instead of the load's bare EINVAL.
    const dm = new DeviceMapper();
    await dm.suspend(poolName);
    try {
      expectRefused(dmthin(args(2)), new RegExp(`pool ${poolName} is suspended: .*dmsetup resume ${poolName}.*\\[EBUSY\\]$`));
      const send = spawnSync(process.execPath, [CLI, 'send', '--pool', poolName, '--snap', '2', '--size', String(SIZE), '-o', `${sb.dir}/suspended.stream`], { encoding: 'utf8', timeout: 120_000 });
      expectRefused(send, new RegExp(`cannot activate thin 2 of pool ${poolName}: pool ${poolName} is suspended, .*\\[EINVAL\\]$`));
    } finally {
      await dm.resume(poolName);
    }
    await unchanged();

    // Nothing was deleted by a refusal.
    const ids = await mappedCounts(pool);
    expect([ids.has(2), ids.has(3), ids.has(4)]).toEqual([true, true, true]);
  }, 300_000);

  /** Spawns `dmthin merge` slowed down (test hook), kills it with SIGKILL once its state says it is copying. */
  async function killMidCopy(args: string[], state: string, devices: number): Promise<void> {
    const child: ChildProcess = spawn(process.execPath, [CLI, 'merge', ...args, '--state', state, '-q'], {
      env: { ...process.env, DMTHIN_TEST_MERGE_STEP_DELAY_MS: '300' },
      stdio: 'ignore',
    });
    const exit = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      await waitFor('the merge to record that it is copying', () => existsSync(state) && readFileSync(state, 'utf8').includes('"copying"'), 120_000, 50);
      // Copying: its temporary devices are open and marked for deferred removal.
      const dm = new DeviceMapper();
      await waitFor(
        'the temporary devices to be open and marked for deferred removal',
        async () => {
          const names = await tempDevices();
          return names.length === devices && (await Promise.all(names.map(async (n) => (await dm.info(n).catch(() => null))?.deferredRemove))).every(Boolean);
        },
        120_000,
        50,
      );
      await new Promise((r) => setTimeout(r, 900)); // a few 1 MiB steps in
      expect(child.exitCode).toBeNull();
    } finally {
      child.kill('SIGKILL');
    }
    expect(await exit).toBeNull();
    expect(JSON.parse(readFileSync(state, 'utf8'))).toMatchObject({ phase: 'copying' });
    await clean(); // the kernel removed the temporary device (deferred removal); the metadata snapshot was released before the copy
  }

  test('SIGKILL mid-merge into an external origin: another origin is refused, a re-run finishes it', async () => {
    const SIZE = 24 * MiB;
    const { origin, thin } = await withOrigin(5, SIZE);
    sh(ddCmd(thin.path, { bs: MiB, seek: 0, count: 20 }));
    const want = await sha256OfDevice(thin.path, 0, SIZE);
    await thin.deactivate();
    const state = stateFile('kill-ext');
    await killMidCopy(['--pool', poolName, '--snap', '5', '--external-origin', origin], state, 1);

    const other = sb.loop(SIZE, 'other').path;
    const otherHash = await sha256OfDevice(other, 0, SIZE);
    expectRefused(dmthin(['--pool', poolName, '--snap', '5', '--external-origin', other, '--state', state, '-q']), /interrupted merge of thin 5 into external origin .*\[EINVAL\]$/);
    expect(await sha256OfDevice(other, 0, SIZE)).toBe(otherHash);

    const r = dmthin(['--pool', poolName, '--snap', '5', '--external-origin', origin, '--state', state, '--json', '-q']);
    expect([r.status, r.stderr]).toEqual([0, '']);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({ copiedBlocks: 20 * (MiB / BS), resumed: true, snapDeleted: true });
    process.stdout.write(`merge external after SIGKILL: ${j.copiedBlocks} blocks, ${j.seconds} s\n`);
    expect(await sha256OfDevice(origin, 0, SIZE)).toBe(want);
    expect(existsSync(state)).toBe(false);
    expect((await mappedCounts(pool)).has(5)).toBe(false);
    await clean();
  }, 300_000);

  test('SIGTERM mid-merge: exit 143, state kept, temporary device removed, metadata snapshot released; a re-run finishes', async () => {
    const SIZE = 8 * MiB;
    const { origin, thin } = await withOrigin(7, SIZE);
    sh(ddCmd(thin.path, { bs: MiB, seek: 1, count: 6 }));
    const want = await sha256OfDevice(thin.path, 0, SIZE);
    await thin.deactivate();
    const state = stateFile('term');
    const child = spawn(process.execPath, [CLI, 'merge', '--pool', poolName, '--snap', '7', '--external-origin', origin, '--state', state, '-q'], {
      env: { ...process.env, DMTHIN_TEST_MERGE_STEP_DELAY_MS: '300' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exit = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    await waitFor('the merge to record that it is copying', () => existsSync(state) && readFileSync(state, 'utf8').includes('"copying"'), 120_000, 50);
    await new Promise((r) => setTimeout(r, 600));
    child.kill('SIGTERM');
    expect(await exit).toBe(143);
    expect(stderr).toMatch(/^dmthin merge: interrupted/);
    expect(JSON.parse(readFileSync(state, 'utf8'))).toMatchObject({ phase: 'copying' });
    await clean();
    const r = dmthin(['--pool', poolName, '--snap', '7', '--external-origin', origin, '--state', state, '--json', '-q']);
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(JSON.parse(r.stdout)).toMatchObject({ copiedBlocks: 6 * (MiB / BS), resumed: true });
    expect(await sha256OfDevice(origin, 0, SIZE)).toBe(want);
    await clean();
  }, 300_000);

  test('a crash after the delete (state still says deleting): the re-run sees the merge done', async () => {
    const SIZE = 4 * MiB;
    const { origin, thin } = await withOrigin(6, SIZE);
    sh(ddCmd(thin.path, { bs: BS, seek: 1, count: 2 }));
    await thin.deactivate();
    const state = stateFile('after-delete');
    const r1 = dmthin(['--pool', poolName, '--snap', '6', '--external-origin', origin, '--state', state, '--keep-snap', '--json', '-q']);
    expect(r1.status).toBe(0);
    expect(JSON.parse(r1.stdout)).toMatchObject({ copiedBlocks: 2, snapDeleted: false });
    const merged = await sha256OfDevice(origin, 0, SIZE);
    // What the state file holds between the delete and its removal (docs/merge.md), written as a crash would leave it.
    const d = await withMetadataSnapshot(pool, async (md) => (await md.devices()).get(6)!);
    writeFileSync(
      state,
      JSON.stringify({
        format: 'dmthin-merge-state',
        version: 1,
        pool: `dm-name:${poolName}`,
        snap: { devId: 6, creationTime: d.creationTime, transactionId: String(d.transactionId) },
        origin: { kind: 'external', path: origin, dev: run('sh', ['-c', `printf '%d:%d' 0x$(stat -c %t ${origin}) 0x$(stat -c %T ${origin})`]).stdout },
        phase: 'deleting',
        at: new Date().toISOString(),
      }),
    );
    await pool.delete(6);
    const r2 = dmthin(['--pool', poolName, '--snap', '6', '--external-origin', origin, '--state', state, '--json', '-q']);
    expect([r2.status, r2.stderr]).toEqual([0, '']);
    expect(JSON.parse(r2.stdout)).toMatchObject({ copiedBlocks: 0, resumed: true, snapDeleted: true });
    expect(existsSync(state)).toBe(false);
    expect(await sha256OfDevice(origin, 0, SIZE)).toBe(merged);
  }, 300_000);

  test('in the pool: an older snapshot merged back; refusals while active; SIGKILL then re-run', async () => {
    const VOL = 32 * MiB;
    await pool.createThin(10);
    let t = await activate(10, 't10', VOL);
    // Round 1: blocks 0-199; snapshot 11.
    sh(ddCmd(t.path, { bs: BS, seek: 0, count: 200 }));
    await pool.createSnap(11, 10);
    // Round 2: overwrite 0-119, new 300-309, discard 150-169; snapshot 12.
    sh([ddCmd(t.path, { bs: BS, seek: 0, count: 120 }), ddCmd(t.path, { bs: BS, seek: 300, count: 10 }), `blkdiscard -o ${150 * BS} -l ${20 * BS} ${t.path}`].join(' && '));
    await pool.createSnap(12, 10);
    // Round 3: overwrite 100-139 and a partial block 400.
    sh([ddCmd(t.path, { bs: BS, seek: 100, count: 40 }), ddCmd(t.path, { bs: 4096, seek: 400 * 16 + 3, count: 1 })].join(' && '));
    await t.deactivate();

    const want = await thinHash(11, VOL);
    const snap12 = await thinHash(12, VOL);
    const h10 = await thinHash(10, VOL);
    expect(h10).not.toBe(want);
    const counts = await mappedCounts(pool);
    const args = ['--pool', poolName, '--snap', '11', '--origin', '10'];

    // Refused while ORIGIN or SNAP is active; nothing changes.
    t = await activate(10, 't10b', VOL);
    expectRefused(dmthin([...args, '--state', stateFile('inpool'), '-q']), /origin thin 10 of pool .* is active .*\[EBUSY\]$/);
    await t.deactivate();
    t = await activate(11, 't11', VOL, true);
    expectRefused(dmthin([...args, '--state', stateFile('inpool'), '-q']), /snapshot thin 11 of pool .* is active .*\[EBUSY\]$/);
    await t.deactivate();
    expect(await thinHash(10, VOL)).toBe(h10);
    await clean();

    // A temporary device left by a merge killed before it could mark it for deferred removal: removed by the next merge.
    const dead = spawnSync('true').pid!;
    const stale = await ThinDevice.activate(pool, { name: `dmthin-merge-${dead}-10-zzzzzz`, devId: 10, length: sectors(VOL / 512) });
    expect((await tempDevices()).includes(stale.name)).toBe(true);

    // Killed mid-copy, then finished by a re-run.
    const state = stateFile('inpool');
    await killMidCopy(args, state, 2);
    const r = dmthin([...args, '--state', state, '--json', '-q']);
    expect([r.status, r.stderr]).toEqual([0, '']);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({ kind: 'in-pool', resumed: true, snapDeleted: true, discardMethod: 'discard', discardedBlocks: 11 });
    process.stdout.write(`merge in-pool after SIGKILL: ${j.copiedBlocks} blocks copied, ${j.discardedBlocks} discarded, ${j.seconds} s\n`);
    expect(await thinHash(10, VOL)).toBe(want);
    const after = await mappedCounts(pool);
    expect(after.get(10)).toBe(counts.get(11));
    expect(after.has(11)).toBe(false);
    expect(await thinHash(12, VOL)).toBe(snap12); // the other snapshot of the origin is untouched
    expect(existsSync(state)).toBe(false);
    await clean();
  }, 400_000);

  test('two merges into one origin at once: the second is refused (one merge a pool), the origin ends as the first snapshot; a state file of another pool is refused (found by an outside hunt: both exited 0, the origin matched neither; a "deleting" state of another pool was taken as done)', async () => {
    // Snapshot 31 differs in 24 MiB (a slowed-down copy of many seconds), 32 in 512 KiB elsewhere.
    const VOL = 32 * MiB;
    await pool.createThin(30);
    let t = await activate(30, 't30', VOL);
    sh(ddCmd(t.path, { bs: BS, seek: 0, count: 64 }));
    await t.deactivate();
    await pool.createSnap(31, 30);
    await pool.createSnap(32, 30);
    t = await activate(31, 't31', VOL);
    sh(ddCmd(t.path, { bs: BS, seek: 0, count: 384 }));
    await t.deactivate();
    t = await activate(32, 't32', VOL);
    sh(ddCmd(t.path, { bs: BS, seek: 448, count: 8 }));
    await t.deactivate();
    const want31 = await thinHash(31, VOL);
    const h32 = await thinHash(32, VOL);

    // The first merge, slowed down, is copying; the second, from the other snapshot with its own state file, is refused.
    const s1 = stateFile('two-1');
    const first: ChildProcess = spawn(process.execPath, [CLI, 'merge', '--pool', poolName, '--snap', '31', '--origin', '30', '--state', s1, '-q'], {
      env: { ...process.env, DMTHIN_TEST_MERGE_STEP_DELAY_MS: '300' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err1 = '';
    first.stderr!.on('data', (d: Buffer) => (err1 += d.toString()));
    const exit1 = new Promise<number | null>((r) => first.on('exit', (code) => r(code)));
    await waitFor('the first merge to record that it is copying', () => existsSync(s1) && readFileSync(s1, 'utf8').includes('"copying"'), 120_000, 50);
    const second = dmthin(['--pool', poolName, '--snap', '32', '--origin', '30', '--state', stateFile('two-2'), '-q']);
    expect(first.exitCode).toBeNull(); // the first was still copying: the two overlapped
    expectRefused(second, /another dmthin merge is running in pool .*\[EBUSY\]$/);
    expect([await exit1, err1]).toEqual([0, '']);
    expect(await thinHash(30, VOL)).toBe(want31);
    expect(await thinHash(32, VOL)).toBe(h32);
    expect(existsSync(stateFile('two-2'))).toBe(false);
    await clean();

    // A state of another pool's merge, in the phase after its copy: not taken as this merge done.
    const other = stateFile('other-pool');
    await killMidCopy(['--pool', poolName, '--snap', '32', '--origin', '30'], other, 2);
    const recorded = JSON.parse(readFileSync(other, 'utf8'));
    writeFileSync(other, JSON.stringify({ ...recorded, pool: 'dm-name:some-other-pool', phase: 'deleting' }));
    expectRefused(dmthin(['--pool', poolName, '--snap', '32', '--origin', '30', '--state', other, '-q']), /records a merge in pool dm-name:some-other-pool, not this one .*\[EUCLEAN\]$/);
    expect((await mappedCounts(pool)).has(32)).toBe(true);
    // Put back, the interrupted merge finishes.
    writeFileSync(other, JSON.stringify(recorded));
    const r = dmthin(['--pool', poolName, '--snap', '32', '--origin', '30', '--state', other, '-q']);
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(await thinHash(30, VOL)).toBe(h32);
    await clean();
  }, 400_000);

  test('in the pool: a snapshot id deleted and made again while a merge from it was interrupted is refused, not merged (its mappings differ)', async () => {
    const VOL = 16 * MiB;
    await pool.createThin(20);
    const t = await activate(20, 't20', VOL);
    sh(ddCmd(t.path, { bs: BS, seek: 0, count: 200 }));
    await pool.createSnap(21, 20);
    sh(ddCmd(t.path, { bs: BS, seek: 0, count: 150 }));
    await t.deactivate();
    const args = ['--pool', poolName, '--snap', '21', '--origin', '20'];
    const state = stateFile('reused');
    await killMidCopy(args, state, 2);
    // The same id, and (create_thin does not move the pool's time) the same creation time and transaction.
    // The kernel closes thin 21 when it destroys the killed merge's temporary device, which it does
    // (deferred removal) a moment after the name is gone: until then the delete is EBUSY (a CI run).
    await waitFor('thin 21 to be closed by the kernel and deleted', () => pool.delete(21).then(() => true, (e: { code?: string }) => (e.code === 'EBUSY' ? false : Promise.reject(e))), 30_000, 50);
    await pool.createThin(21);
    const half = await thinHash(20, VOL);
    const mapped = (await mappedCounts(pool)).get(20);
    // Before the merge state recorded the snapshot's mapping root, this discarded all 200 blocks of thin 20, exit 0.
    expectRefused(dmthin([...args, '--state', state, '-q']), /thin 21 it was copying from is gone \(a thin with its id and creation time is there, with other mappings/);
    expect(await thinHash(20, VOL)).toBe(half);
    expect((await mappedCounts(pool)).get(20)).toBe(mapped);
    await pool.delete(21);
    await pool.delete(20);
    await clean();
  }, 300_000);

  test('in the pool, out of data space (error_if_no_space): the error names the origin thin and the full pool, not a temporary device; the state stays for a re-run', async () => {
    const { pool: full, name: fullName } = await createTestPool(sb, { label: 'full', dataBytes: 64 * BS, metaBytes: 4 * MiB, blockSectors: BS / 512, features: ['error_if_no_space'] });
    const VOL = 64 * BS;
    await full.createThin(1);
    await full.createSnap(2, 1); // an empty origin and its snapshot
    const t2 = await ThinDevice.activate(full, { name: sb.adopt('full-t2'), devId: 2, length: sectors(VOL / 512) });
    sh(ddCmd(t2.path, { bs: BS, seek: 0, count: 40 })); // 40 of the pool's 64 blocks; the merge needs 40 more
    await t2.deactivate();
    const state = stateFile('full');
    const r = dmthin(['--pool', fullName, '--snap', '2', '--origin', '1', '--state', state, '-q']);
    expectRefused(r, new RegExp(`thin 1 of pool ${fullName} \\(through temporary device /dev/mapper/dmthin-merge-[^)]*\\): pool ${fullName} is out of data space .*\\[(ENOSPC|EIO)\\]$`));
    expect(JSON.parse(readFileSync(state, 'utf8'))).toMatchObject({ phase: 'copying' });
    await waitFor('temporary merge devices to go', async () => (await tempDevices()).length === 0, 30_000);
    expect((await full.workingStatus()).heldMetadataRoot).toBeNull();
    // The pool is now out of data space: a re-run is refused before it writes (hunt L item 9: under
    // queue_if_no_space its writes waited 64 s, silent), naming the pool's state, not a temporary device.
    expect((await full.workingStatus()).mode).toBe('out_of_data_space');
    const again = dmthin(['--pool', fullName, '--snap', '2', '--origin', '1', '--state', state, '-q']);
    expectRefused(again, new RegExp(`^dmthin merge: pool ${fullName} is out of data space \\(\\d+ of 64 blocks used\\): the merge writes up to \\d+ blocks into thin 1, which would wait or fail\\. Grow the pool's data device \\(or free space\\), then merge again \\[ENOSPC\\]$`));
    expect(JSON.parse(readFileSync(state, 'utf8'))).toMatchObject({ phase: 'copying' });
    expect(await tempDevices()).toEqual([]);
  }, 300_000);

  test("in the pool, a pool in read-only mode: refused as pool-read-only (EROFS) before anything is recorded (outside hunt AC: the metadata snapshot's reserve refused first, ENOTSUP, and docs/merge.md's reason was never seen)", async () => {
    const { pool: ro, name: roName } = await createTestPool(sb, { label: 'ro', dataBytes: 64 * BS, metaBytes: 4 * MiB, blockSectors: BS / 512 });
    await ro.createThin(1);
    await ro.createSnap(2, 1);
    const table = run('dmsetup', ['table', roName]).stdout.trim().split(/\s+/);
    // thin-pool's seven fixed fields, then its features: read_only alone.
    run('dmsetup', ['reload', roName], { input: `${[...table.slice(0, 7), '1', 'read_only'].join(' ')}\n` });
    run('dmsetup', ['resume', roName]);
    expect((await ro.workingStatus()).mode).toBe('ro');
    const state = stateFile('ro');
    const r = dmthin(['--pool', roName, '--snap', '2', '--origin', '1', '--state', state, '-q']);
    expectRefused(r, new RegExp(`^dmthin merge: pool ${roName} is in read-only mode: the merge writes into thin 1\\. .*\\[EROFS\\]$`));
    expect(existsSync(state)).toBe(false);
    expect(await tempDevices()).toEqual([]);
  }, 300_000);

  test('in the pool, blocks of 192 KiB (no power of two): the origin ends mapping as many blocks as the snapshot, or says which it kept (found by an outside hunt: one dropped discard zeroed, reported as discarded)', async () => {
    const sb2 = new DmSandbox('merge-192k');
    try {
      const B = 192 * 1024;
      const { pool: p2, name: n2 } = await createTestPool(sb2, { blockSectors: B / 512, dataBytes: 96 * MiB });
      const SZ = 64 * B;
      const act = (id: number, short: string, readOnly = false) => ThinDevice.activate(p2, { name: sb2.adopt(short), devId: id, length: sectors(SZ / 512), readOnly });
      const hash = async (id: number, short: string) => {
        const d = await act(id, short, true);
        try {
          return await sha256OfDevice(d.path, 0, SZ);
        } finally {
          await d.deactivate();
        }
      };
      const mapped = async () => withMetadataSnapshot(p2, async (md) => new Map([...(await md.devices())].map(([id, d]) => [id, d.mappedBlocks])));
      await p2.createThin(1);
      let t = await act(1, 'o1');
      sh(ddCmd(t.path, { bs: B, seek: 0, count: 20 }));
      await t.deactivate();
      await p2.createSnap(2, 1);
      await p2.createSnap(3, 1);
      t = await act(1, 'o1b');
      // After the snapshots: blocks 0-4 rewritten, 30-39 new (only the origin has them), 10-11 discarded.
      sh([ddCmd(t.path, { bs: B, seek: 0, count: 5 }), ddCmd(t.path, { bs: B, seek: 30, count: 10 }), `blkdiscard -o ${10 * B} -l ${2 * B} ${t.path}`].join(' && '));
      await t.deactivate();
      const [want2, want3] = [await hash(2, 'h2'), await hash(3, 'h3')];
      const snapMapped = (await mapped()).get(2);
      const r = spawnSync(process.execPath, [CLI, 'merge', '--pool', n2, '--snap', '2', '--origin', '1', '--state', `${sb2.dir}/m.json`, '--json', '-q'], { encoding: 'utf8', timeout: 240_000 });
      expect([r.status, r.stderr.replace(/^.*note: .*\n/gm, '')]).toEqual([0, '']);
      const j = JSON.parse(r.stdout) as { discardedBlocks: number; undiscardedBlocks: number; discardMethod: string };
      expect([j.discardMethod, j.discardedBlocks]).toEqual(['discard', 10]);
      expect(await hash(1, 'h1')).toBe(want2);
      expect(await hash(3, 'h3b')).toBe(want3);
      // Block for block what the snapshot maps, but for the blocks the result says the pool kept (and says on stderr).
      process.stdout.write(`merge on 192 KiB blocks: undiscardedBlocks ${j.undiscardedBlocks}\n`);
      expect((await mapped()).get(1)).toBe(snapMapped! + j.undiscardedBlocks);
      if (j.undiscardedBlocks > 0) expect(r.stderr).toMatch(/note: pool .* kept \d+ of the 10 blocks only the origin had although discarded/);
    } finally {
      sb2.cleanup();
    }
  }, 400_000);

  test('an LVM-made pool is refused (lvconvert --merge suggested); LVM and the volumes are unchanged', async () => {
    expect(haveLvm()).toBe(true);
    const lsb = new DmSandbox('merge-lvm');
    const L = new LvmSandbox(lsb, { pvCount: 1, pvBytes: 96 * MiB });
    try {
      const vg = L.vg;
      L.createVg();
      L.lvm(['lvcreate', '-y', '--type', 'thin-pool', '-L', '48M', '--chunksize', '64k', '--poolmetadatasize', '4M', '-Zn', '-n', 'pool', vg]);
      L.lvm(['lvcreate', '-y', '-V', '16M', '-T', `${vg}/pool`, '-n', 'vol']);
      sh(ddCmd(L.devPath('vol'), { bs: MiB, seek: 0, count: 4 }));
      L.lvm(['lvcreate', '-y', '--type', 'thin', '-n', 'snap1', `${vg}/vol`]);
      const poolDm = L.dmName('pool', '-tpool');
      const volId = L.lvField('vol', 'thin_id');
      const snapId = L.lvField('snap1', 'thin_id');
      const tx = L.lvField('pool', 'transaction_id');
      const r = spawnSync(process.execPath, [CLI, 'merge', '--pool', poolDm, '--snap', snapId, '--origin', volId, '--state', `${lsb.dir}/m.json`, '-q'], { env: L.env, encoding: 'utf8' });
      expectRefused({ status: r.status, stderr: r.stderr }, new RegExp(`managed by LVM.*lvconvert --merge ${vg}/snap1 \\[EOPNOTSUPP\\]$`));
      const origin = lsb.loop(16 * MiB, 'ext').path;
      const e = spawnSync(process.execPath, [CLI, 'merge', '--pool', poolDm, '--snap', snapId, '--external-origin', origin, '--state', `${lsb.dir}/e.json`, '-q'], { env: L.env, encoding: 'utf8' });
      expectRefused({ status: e.status, stderr: e.stderr }, /managed by LVM.*\[EOPNOTSUPP\]$/);
      expect(L.lvField('pool', 'transaction_id')).toBe(tx);
      expect(L.lvs(['lv_name']).map((x) => x.lv_name)).toEqual(expect.arrayContaining(['vol', 'snap1']));
      expect(await tempDevices()).toEqual([]);
    } finally {
      L.cleanup();
      lsb.cleanup();
    }
  }, 480_000);
});
