/**
 * The promise that a reserved metadata snapshot is released, kept on a real
 * kernel by other processes:
 * - a library user that dies of an uncaught exception or an unhandled
 *   rejection while holding one (released at exit, synchronously);
 * - one killed by SIGTERM or SIGHUP (released, then the signal's default
 *   action: the process still dies of that signal);
 * - `dmthin dump -m POOL` interrupted by Ctrl-C (SIGINT) or SIGTERM while
 *   it reads (dm-delay under the metadata device slows every read): exit
 *   130 / 143, snapshot released;
 * - SIGKILL cannot be caught: the root stays held (documented), and
 *   `dmthin pool release-metadata-snap` frees it.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ThinPool } from '../../src/pool/thin-pool';
import { withMetadataSnapshot } from '../../src/pool/live-metadata';
import { DmSandbox, MiB, cleanupAllSandboxes, describeVm, run } from './helpers';
import { CLI, DIST, type TestPool, after, createTestPool, ddCmd, oneTarget, sh, swapTable, waitFor } from './pool-helpers';

interface Child {
  child: ChildProcess;
  /** Resolves with the held root the child printed ("held N"). */
  held: Promise<number>;
  /** The child printed "reserving" (it is about to send reserve_metadata_snap). */
  reserving: Promise<void>;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stdout: () => string;
  stderr: () => string;
}

function spawnNode(args: string[]): Child {
  // The test's environment explicitly: jest's process.env is the test file's own copy.
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env } });
  let out = '';
  let err = '';
  let onHeld: (n: number) => void;
  let onReserving: () => void;
  const held = new Promise<number>((res) => (onHeld = res));
  const reserving = new Promise<void>((res) => (onReserving = res));
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
    if (out.includes('reserving')) onReserving();
    const m = /held (\d+)/.exec(out);
    if (m) onHeld(Number(m[1]));
  });
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => child.on('exit', (code, signal) => res({ code, signal })));
  return { child, held, reserving, exit, stdout: () => out, stderr: () => err };
}

/**
 * A library user: reserves the pool's metadata snapshot, prints "held N",
 * then does `then` ('throw', 'reject', or 'wait' to be signalled).
 */
function holder(pool: string, then: 'throw' | 'reject' | 'wait'): Child {
  const script = `
    const { ThinPool } = require(${JSON.stringify(join(DIST, 'pool', 'thin-pool.js'))});
    (async () => {
      const pool = await ThinPool.open(${JSON.stringify(pool)});
      process.stdout.write('reserving\\n');
      const snap = await pool.reserveMetadataSnap();
      process.stdout.write('held ' + snap.root + '\\n');
      ${
        then === 'throw'
          ? "setImmediate(() => { throw new Error('boom: uncaught'); });"
          : then === 'reject'
            ? "throw new Error('boom: unhandled rejection');"
            : 'setInterval(() => {}, 1000);'
      }
    })();
  `;
  return spawnNode(['-e', script]);
}

describeVm('metadata snapshots are released when the holder dies (library and CLI)', () => {
  let sb: DmSandbox;
  let tp: TestPool;
  let pool: ThinPool;
  const heldRoot = async () => (await pool.workingStatus()).heldMetadataRoot;

  beforeAll(async () => {
    sb = new DmSandbox('release');
    // The records of held snapshots (pool/held-record.ts): the guest's /var/lib is the host's, read-only.
    process.env.DMTHIN_HELD_DIR = join(sb.dir, 'held');
    // Metadata through a linear dm device (swapped for dm-delay later), data on `zero`.
    tp = await createTestPool(sb, { metaVia: 'dm', data: 'zero', dataBytes: 1024 * MiB, features: ['skip_block_zeroing'] });
    pool = tp.pool;
    // Origin with 320 mappings (a two-level tree), seven snapshots of it.
    await pool.createThin(1);
    const origin = sb.adopt('origin');
    await tp.dm.createWithTable(origin, oneTarget(64 * MiB / 512, 'thin', `${pool.devString} 1`));
    sh(ddCmd(`${tp.dm.devDir}/${origin}`, { bs: MiB, seek: 0, count: 20, src: '/dev/zero' }));
    await tp.dm.remove(origin);
    for (let id = 2; id <= 8; id++) await pool.createSnap(id, 1);
    expect(await heldRoot()).toBeNull();
  });
  afterAll(() => {
    sb?.cleanup();
    cleanupAllSandboxes();
  });

  test.each([
    ['an uncaught exception', 'throw', /boom: uncaught/],
    ['an unhandled rejection', 'reject', /boom: unhandled rejection/],
  ] as const)('a library process that dies of %s releases its snapshot at exit', async (_what, mode, message) => {
    const c = holder(tp.name, mode);
    const { code, signal } = await c.exit;
    expect(c.stdout()).toMatch(/^reserving\nheld \d+$/m);
    expect(c.stderr()).toMatch(message);
    expect({ code, signal }).toEqual({ code: 1, signal: null });
    expect(await heldRoot()).toBeNull();
  });

  test.each(['SIGTERM', 'SIGHUP'] as const)('a library process killed by %s releases its snapshot, then dies of the signal', async (sig) => {
    const c = holder(tp.name, 'wait');
    const root = await Promise.race([c.held, c.exit.then(() => -1)]);
    expect(root).toBeGreaterThan(0);
    expect(await heldRoot()).toBe(root);
    c.child.kill(sig);
    expect(await c.exit).toEqual({ code: null, signal: sig });
    expect(c.stderr()).toBe('');
    expect(await heldRoot()).toBeNull();
  });

  test('SIGTERM while the reserve ioctl is in flight (metadata writes slowed by dm-delay): the root is released once reserved, the process dies of SIGTERM', async () => {
    const meta = tp.metaLoop.path;
    // The reserve commits the pool's metadata (two rounds of writes): with each write delayed by 0.5 s it stays in the kernel a while.
    await swapTable(tp.dm, tp.metaName!, oneTarget(tp.metaSectors, 'delay', `${meta} 0 0 ${meta} 0 500`));
    try {
      const c = holder(tp.name, 'wait');
      await Promise.race([c.reserving, c.exit]);
      await new Promise((r) => setTimeout(r, 150));
      expect(c.stdout()).toBe('reserving\n'); // still inside the reserve
      c.child.kill('SIGTERM');
      expect(await c.exit).toEqual({ code: null, signal: 'SIGTERM' });
      expect(c.stdout()).toBe('reserving\n');
    } finally {
      await swapTable(tp.dm, tp.metaName!, oneTarget(tp.metaSectors, 'linear', `${meta} 0`));
    }
    expect(await heldRoot()).toBeNull();
  });

  test('SIGKILL leaves the root held (nothing can run); dmthin pool release-metadata-snap frees it', async () => {
    const c = holder(tp.name, 'wait');
    const root = await Promise.race([c.held, c.exit.then(() => -1)]);
    expect(root).toBeGreaterThan(0);
    c.child.kill('SIGKILL');
    expect(await c.exit).toEqual({ code: null, signal: 'SIGKILL' });
    expect(await heldRoot()).toBe(root);
    const r = run(process.execPath, [CLI, 'pool', 'release-metadata-snap', tp.name], { allowFail: true });
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
    expect(await heldRoot()).toBeNull();
  });

  test('SIGKILL: the next dmthin reserve releases the root a killed dmthin left held, and reserves afresh; a root someone else holds is refused with one clear EBUSY', async () => {
    const c = holder(tp.name, 'wait');
    const root = await Promise.race([c.held, c.exit.then(() => -1)]);
    expect(root).toBeGreaterThan(0);
    c.child.kill('SIGKILL');
    expect(await c.exit).toEqual({ code: null, signal: 'SIGKILL' });
    expect(await heldRoot()).toBe(root);
    try {
      const snap = await pool.reserveMetadataSnap();
      try {
        expect(await heldRoot()).toBe(snap.root);
      } finally {
        await snap.release();
      }
    } finally {
      // Whatever happened above, the next tests start with nothing held.
      if ((await heldRoot()) !== null) await pool.releaseMetadataSnap();
    }
    expect(await heldRoot()).toBeNull();
    // Reserved by hand (no dmthin process holds it): left alone, and the refusal says how to free it.
    run('dmsetup', ['message', tp.name, '0', 'reserve_metadata_snap']);
    try {
      const held = await heldRoot();
      await expect(pool.reserveMetadataSnap()).rejects.toMatchObject({
        code: 'EBUSY',
        message: `thin-pool ${tp.name} already holds a metadata snapshot (root ${held}) that no running dmthin holds: another program's (thin_dump -m, a script), or one a dmthin reserved as it was killed; a pool holds one at a time: when nothing reads it any more, release it with 'dmthin pool release-metadata-snap ${tp.name}', then run this again`,
      });
      expect(await heldRoot()).toBe(held);
    } finally {
      run('dmsetup', ['message', tp.name, '0', 'release_metadata_snap']);
    }
  });

  test.each([
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ] as const)('dmthin dump -m POOL interrupted by %s while reading (dm-delay under the metadata device): exit %d, snapshot released', async (sig, status) => {
    // Every read of the metadata device now takes 400 ms; writes are not delayed.
    const meta = tp.metaLoop.path;
    await swapTable(tp.dm, tp.metaName!, oneTarget(tp.metaSectors, 'delay', `${meta} 0 400 ${meta} 0 0`));
    try {
      const out = join(sb.dir, `dump-${sig}.xml`);
      const c = spawnNode([CLI, 'dump', '-m', tp.name, '-o', out]);
      const root = await waitFor('the CLI to reserve the metadata snapshot', async () => (await heldRoot()) ?? (c.child.exitCode !== null ? -1 : null), 60_000, 50);
      expect(root).toBeGreaterThan(0);
      await new Promise((r) => setTimeout(r, 600)); // reading now: each read takes 400 ms
      expect(c.child.exitCode).toBeNull();
      c.child.kill(sig);
      const done = await Promise.race([c.exit, after(60_000, 'still running' as const)]);
      expect(done).toEqual({ code: status, signal: null });
      expect(c.stderr()).toMatch(/^dmthin dump: interrupted/m);
      expect(await heldRoot()).toBeNull();
      // Stopped in the middle: -o FILE is written through a temporary file
      // renamed over FILE only when complete, so no FILE and no temporary.
      expect(existsSync(out)).toBe(false);
      expect(readdirSync(sb.dir).filter((n) => n.includes(`dump-${sig}.xml`))).toEqual([]);
    } finally {
      await swapTable(tp.dm, tp.metaName!, oneTarget(tp.metaSectors, 'linear', `${meta} 0`));
    }
  });

  // Found by an outside test on a real pool: a snapshot another program held and released while
  // `delta -m` read it (the pool then reused its blocks) gave a wrong delta with exit 0.
  describe('a snapshot released by something else while it is read: ESTALE, not what was read', () => {
    const dmsetup = (msg: string) => run('dmsetup', ['message', tp.name, '0', msg]);
    /** A write to device 1 (through a thin device made for it): the pool's roots move on. */
    const writeOrigin = async (seekMiB: number) => {
      const origin = sb.adopt(`origin-w${seekMiB}`);
      await tp.dm.createWithTable(origin, oneTarget((64 * MiB) / 512, 'thin', `${pool.devString} 1`));
      try {
        sh(ddCmd(`${tp.dm.devDir}/${origin}`, { bs: MiB, seek: seekMiB, count: 1 }));
      } finally {
        await tp.dm.remove(origin);
      }
    };

    test("library: someone else's held snapshot, released and another reserved after a write: verify() rejects with ESTALE; release() of what dmthin did not reserve sends nothing", async () => {
      dmsetup('reserve_metadata_snap');
      try {
        const live = await pool.openMetadata({ snapshot: 'held' });
        try {
          expect((await live.metadata.devices()).size).toBe(8);
          await live.verify();
          dmsetup('release_metadata_snap');
          await expect(live.verify()).rejects.toMatchObject({ name: 'MetadataSnapError', code: 'ESTALE', message: expect.stringMatching(/was released while it was being read \(none is held now\)/) });
          await writeOrigin(30);
          dmsetup('reserve_metadata_snap');
          await expect(live.verify()).rejects.toMatchObject({ code: 'ESTALE' });
        } finally {
          await live.release();
        }
        expect(await heldRoot()).not.toBeNull();
      } finally {
        if ((await heldRoot()) !== null) dmsetup('release_metadata_snap');
      }
    });

    test("library: dmthin's own snapshot released by someone else, who then reserves one: withMetadataSnapshot rejects with ESTALE, and its release leaves that one held", async () => {
      try {
        const p = withMetadataSnapshot(pool, async (md) => {
          const n = (await md.devices()).size;
          dmsetup('release_metadata_snap');
          await writeOrigin(31);
          dmsetup('reserve_metadata_snap');
          return n;
        });
        await expect(p).rejects.toMatchObject({ code: 'ESTALE' });
        const held = await heldRoot();
        expect(held).not.toBeNull();
      } finally {
        if ((await heldRoot()) !== null) dmsetup('release_metadata_snap');
      }
    });

    test('dmthin dump -m TMETA, dump -m POOL and rmap -m POOL with the snapshot held throughout: exit 0, output whole (as thin_dump -m; rmap as of the snapshot restored offline)', async () => {
      const tmeta = tp.metaPath;
      dmsetup('reserve_metadata_snap');
      try {
        const theirs = run('thin_dump', ['-m', tmeta]).stdout;
        const nrData = (x: string) => x.replace(/ nr_data_blocks="\d+"/, ' nr_data_blocks="0"'); // 0.9.0 prints 0 with -m (ORACLE-NOTES)
        const viaDevice = spawnNode([CLI, 'dump', '-m', tmeta]);
        expect({ exit: await viaDevice.exit, stderr: viaDevice.stderr() }).toEqual({ exit: { code: 0, signal: null }, stderr: '' });
        expect(nrData(viaDevice.stdout())).toBe(theirs);
        const viaPool = spawnNode([CLI, 'dump', '-m', tp.name]);
        expect({ exit: await viaPool.exit, stderr: viaPool.stderr() }).toEqual({ exit: { code: 0, signal: null }, stderr: '' });
        expect(nrData(viaPool.stdout())).toBe(theirs);
        // rmap -m closes its reader before the sort: its check at the end read the device anew (it failed EBADF before).
        const xml = join(sb.dir, 'snap.xml');
        // thin_restore writes with O_DIRECT, which the guest's tmpfs refuses: onto a loop device.
        const img = sb.loop(tp.metaSectors * 512, 'restored-snap').path;
        writeFileSync(xml, viaPool.stdout()); // with the data device's size (thin_restore needs it)
        run('thin_restore', ['-i', xml, '-o', img]);
        const offline = spawnNode([CLI, 'rmap', '--region', '0..400', img]);
        const rm = spawnNode([CLI, 'rmap', '-m', '--region', '0..400', tp.name]);
        expect({ exit: await rm.exit, stderr: rm.stderr() }).toEqual({ exit: { code: 0, signal: null }, stderr: '' });
        expect((await offline.exit).code).toBe(0);
        expect(rm.stdout()).toBe(offline.stdout());
        expect(rm.stdout().split('\n').length).toBeGreaterThan(8);
      } finally {
        if ((await heldRoot()) !== null) dmsetup('release_metadata_snap');
      }
    });

    // Outside hunt AB: dmthin's release looked at the status, then read its copy (1 s under dm-delay),
    // then sent the message: a release and a new reserve by someone else in that second was released.
    test("dmthin dump -m POOL -o FILE, its snapshot released and another reserved by someone else as FILE appears: exit 0, FILE whole, the other's snapshot left held", async () => {
      const meta = tp.metaLoop.path;
      await swapTable(tp.dm, tp.metaName!, oneTarget(tp.metaSectors, 'delay', `${meta} 0 1000 ${meta} 0 0`));
      const out = join(sb.dir, 'released-after-commit.xml');
      try {
        const c = spawnNode([CLI, 'dump', '-m', tp.name, '-q', '-o', out]);
        await waitFor('the output file', async () => (existsSync(out) ? true : c.child.exitCode !== null ? false : null), 120_000, 10);
        dmsetup('release_metadata_snap');
        dmsetup('reserve_metadata_snap');
        const theirs = await heldRoot();
        expect(theirs).not.toBeNull();
        const done = await Promise.race([c.exit, after(60_000, 'still running' as const)]);
        expect({ done, stderr: c.stderr() }).toEqual({ done: { code: 0, signal: null }, stderr: '' });
        expect(readFileSync(out, 'utf8')).toMatch(/<\/superblock>\n$/);
        expect(await heldRoot()).toBe(theirs);
      } finally {
        await swapTable(tp.dm, tp.metaName!, oneTarget(tp.metaSectors, 'linear', `${meta} 0`));
        if ((await heldRoot()) !== null) dmsetup('release_metadata_snap');
      }
    });

    // Outside hunt AB: released between the status and the open, it said 'metadata snapshot at block N
    // does not match the held root M' or 'no current metadata snapshot in /dev/dm-0' (EINVAL, ENODATA).
    test.each(['none held', 'another reserved'] as const)('dmthin dump -m POOL, the snapshot someone else holds released as dmthin opens it (%s): exit 1, ESTALE naming the pool', async (then) => {
      const meta = tp.metaLoop.path;
      dmsetup('reserve_metadata_snap');
      await swapTable(tp.dm, tp.metaName!, oneTarget(tp.metaSectors, 'delay', `${meta} 0 1000 ${meta} 0 0`));
      const metaDev = statSync(tp.metaPath).rdev;
      try {
        const c = spawnNode([CLI, 'dump', '-m', tp.name]);
        // Once it has the metadata device open, its first read (block 0, 1 s under dm-delay) is on its way.
        const opened = () => {
          try {
            return readdirSync(`/proc/${c.child.pid}/fd`).some((f) => {
              try {
                const st = statSync(`/proc/${c.child.pid}/fd/${f}`);
                return st.isBlockDevice() && st.rdev === metaDev;
              } catch {
                return false;
              }
            });
          } catch {
            return false;
          }
        };
        const seen = await waitFor('dmthin to open the metadata device', async () => (opened() ? 'opened' : c.child.exitCode !== null ? 'exited' : null), 60_000, 5);
        expect(seen).toBe('opened');
        dmsetup('release_metadata_snap');
        // At once, while its read waits in dm-delay (a reserve commits: the copy goes elsewhere).
        if (then === 'another reserved') dmsetup('reserve_metadata_snap');
        const done = await Promise.race([c.exit, after(60_000, 'still running' as const)]);
        expect({ done, stderr: c.stderr(), stdout: c.stdout() }).toEqual({
          done: { code: 1, signal: null },
          stderr: expect.stringMatching(new RegExp(`^dmthin dump: the metadata snapshot of thin-pool ${tp.name} at block \\d+ was released while it was being read \\(${then === 'none held' ? 'none is held now' : 'block \\d+ is held now'}\\).* \\[ESTALE\\]\n$`)),
          stdout: '',
        });
      } finally {
        await swapTable(tp.dm, tp.metaName!, oneTarget(tp.metaSectors, 'linear', `${meta} 0`));
        if ((await heldRoot()) !== null) dmsetup('release_metadata_snap');
      }
    });

    test.each([
      ['dump -m POOL -o FILE', 'held by someone else'],
      ['dump -m POOL -o FILE', 'reserved by dmthin'],
      ['dump -m TMETA -o FILE', 'held by someone else'],
      ['dump -m POOL', 'reserved by dmthin'],
      ['rmap -m --region 0..400 POOL -o FILE', 'reserved by dmthin'],
      ['ls -m POOL -o DEV,EXCLUSIVE_BLOCKS', 'reserved by dmthin'],
      ['check POOL', 'held by someone else'],
    ] as const)('dmthin %s, the snapshot (%s) released during the read (reads slowed by dm-delay): exit 1 ESTALE, no output file, stdout cut short, no verdict', async (cmd, whose) => {
      const meta = tp.metaLoop.path;
      if (whose === 'held by someone else') dmsetup('reserve_metadata_snap');
      // Each read takes 1 s: opening (the superblocks, the snapshot's copy) ~3 s, the walk of 8 devices many more.
      await swapTable(tp.dm, tp.metaName!, oneTarget(tp.metaSectors, 'delay', `${meta} 0 1000 ${meta} 0 0`));
      const out = join(sb.dir, `released-${cmd.length}-${whose.length}.out`);
      const name = cmd.split(' ')[0];
      const args = cmd.split(' ').map((a) => (a === 'POOL' ? tp.name : a === 'TMETA' ? tp.metaPath : a === 'FILE' ? out : a));
      const whoseSnap = cmd.includes('TMETA') ? tp.metaPath : `thin-pool ${tp.name}`;
      try {
        const c = spawnNode([CLI, ...args]);
        await waitFor('the CLI to hold the metadata snapshot', async () => (await heldRoot()) ?? (c.child.exitCode !== null ? -1 : null), 60_000, 50);
        await new Promise((r) => setTimeout(r, 4500)); // walking the trees now
        expect(c.child.exitCode).toBeNull();
        dmsetup('release_metadata_snap');
        await swapTable(tp.dm, tp.metaName!, oneTarget(tp.metaSectors, 'linear', `${meta} 0`));
        const done = await Promise.race([c.exit, after(60_000, 'still running' as const)]);
        const escaped = whoseSnap.replace(/[/.]/g, (ch) => `\\${ch}`);
        expect({ done, stderr: c.stderr() }).toEqual({
          done: { code: 1, signal: null },
          stderr: expect.stringMatching(new RegExp(`^dmthin ${name}: the metadata snapshot of ${escaped} at block \\d+ was released while it was being read \\(none is held now\\).* \\[ESTALE\\]\n$`)),
        });
        if (args.includes(out)) expect(existsSync(out)).toBe(false);
        // To stdout: dump ends short of its closing tags (the last chunk held back), rmap and ls print nothing.
        if (name === 'dump') expect(c.stdout()).not.toMatch(/<\/superblock>\n$/);
        if (name === 'ls' || name === 'rmap') expect(c.stdout()).toBe('');
        if (name === 'check') expect(c.stdout()).not.toMatch(/problem|no problems|found/);
        expect(await heldRoot()).toBeNull();
      } finally {
        await swapTable(tp.dm, tp.metaName!, oneTarget(tp.metaSectors, 'linear', `${meta} 0`));
        if ((await heldRoot()) !== null) dmsetup('release_metadata_snap');
      }
    });
  });
});
