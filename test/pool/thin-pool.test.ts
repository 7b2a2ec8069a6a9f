/**
 * ThinPool and MetadataSnapshot over a scripted dm transport (no kernel):
 * the reserve/release protocol and the release guard, in particular a
 * signal that arrives while the reserve ioctl is still in flight (found with
 * the root-VM suite's review: without a guard installed before the message,
 * the default action killed the process and left the root held).
 */
import { DeviceMapper } from '../../src/dm/device-mapper';
import { Cmd, Flag, IOCTL, TARGET_MSG, align8, decodeHeader, encodeDev, encodeRequest } from '../../src/dm/ioctl';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DmIoctlError, MetadataSnapError, SystemCallError } from '../../src/errors';
import { guardedCount } from '../../src/pool/release-guard';
import { activateTemporarily } from '../../src/pool/temporary-activation';
import { ThinDevice } from '../../src/pool/thin-device';
import { ThinPool } from '../../src/pool/thin-pool';
import { sectors } from '../../src/units';
import { statusResults } from '../dm/helpers/kernel-replies';

// Records of held snapshots (pool/held-record.ts) go to a scratch directory, not /var/lib/dmthin.
const heldDir = mkdtempSync(join(tmpdir(), 'dmthin-held-'));
const savedHeldDir = process.env.DMTHIN_HELD_DIR;
process.env.DMTHIN_HELD_DIR = heldDir;
afterAll(() => {
  if (savedHeldDir === undefined) delete process.env.DMTHIN_HELD_DIR;
  else process.env.DMTHIN_HELD_DIR = savedHeldDir;
  rmSync(heldDir, { recursive: true, force: true });
});

/** dm_name_list records (interface 4.47: event_nr and flags after each name); `next` is relative, 0 on the last. */
function nameList(devices: { name: string; dev: { major: number; minor: number } }[]): Buffer {
  const recs = devices.map(({ name, dev }) => {
    const b = Buffer.alloc(align8(12 + Buffer.byteLength(name) + 1) + 8);
    b.writeBigUInt64LE(encodeDev(dev), 0);
    b.write(name, 12);
    return b;
  });
  recs.forEach((b, i) => b.writeUInt32LE(i < recs.length - 1 ? b.length : 0, 8));
  return Buffer.concat(recs);
}

function reply(name: string, results?: Buffer, targetCount = 0, flags = Flag.ACTIVE_PRESENT): Buffer {
  const b = encodeRequest({ version: [4, 47, 0], flags, targetCount, name, dev: encodeDev({ major: 253, minor: 5 }) }, results);
  b.writeUInt32LE(results ? IOCTL.size + results.length : IOCTL.data, IOCTL.data_size);
  return b;
}

function errno(code: string, n: number): Error {
  return Object.assign(new Error(`${code}: kernel said no, ioctl (DM_TARGET_MSG)`), { code, errno: -n, syscall: 'ioctl' });
}

/**
 * A fake kernel for one pool: answers DEV_STATUS, the pool's table and
 * status (with the held root it tracks), and pool messages. `gate` lets a
 * test hold the reserve message in flight.
 */
function fakePool(o: { metaDev?: string } = {}) {
  const messages: string[] = [];
  /** Suspends and resumes sent, as "suspend NAME" / "resume NAME". */
  const suspends: string[] = [];
  const state = { held: 0, nextRoot: 23, releasedFirst: false, releaseFails: false, originActive: false, originSuspended: false, poolSuspended: false, poolFailed: false, badTable: false, mode: 'rw' };
  /** dm devices created through this fake (DEV_CREATE), by name; removed ones are dropped. */
  const created = new Set<string>();
  /** Every name ever created. */
  const activated: string[] = [];
  let gate: Promise<void> | undefined;
  const transport = async (cmd: number, req: Buffer): Promise<Buffer> => {
    const h = decodeHeader(req);
    if (h.name === 'origin') {
      // An active thin device of the pool (thin id 1).
      if (cmd === Cmd.DEV_STATUS) return reply(h.name, undefined, 0, Flag.ACTIVE_PRESENT | (state.originSuspended ? Flag.SUSPEND : 0));
      if (cmd === Cmd.TABLE_STATUS) return reply(h.name, statusResults([{ start: 0, length: 2048, type: 'thin', params: '253:5 1' }]), 1);
      if (cmd === Cmd.DEV_SUSPEND) {
        const suspend = !!(h.flags & Flag.SUSPEND);
        suspends.push(`${suspend ? 'suspend' : 'resume'} origin`);
        state.originSuspended = suspend;
        return reply(h.name, undefined, 0, Flag.ACTIVE_PRESENT | (suspend ? Flag.SUSPEND : 0));
      }
    }
    if (h.name !== 'pool' && h.name !== 'origin' && h.name !== '') {
      // A thin being activated: the kernel's thin constructor refuses a suspended or failed pool with EINVAL.
      if (cmd === Cmd.DEV_CREATE) {
        created.add(h.name);
        activated.push(h.name);
      }
      else if (cmd === Cmd.DEV_REMOVE) created.delete(h.name);
      else if (cmd === Cmd.TABLE_LOAD && (state.poolSuspended || state.poolFailed || state.badTable)) throw errno('EINVAL', 22);
      return reply(h.name);
    }
    if (cmd === Cmd.LIST_DEVICES) {
      const devices = [{ name: 'pool', dev: { major: 253, minor: 5 } }];
      if (state.originActive) devices.push({ name: 'origin', dev: { major: 253, minor: 7 } });
      return reply('', nameList(devices));
    }
    if (cmd === Cmd.DEV_STATUS) return reply(h.name, undefined, 0, Flag.ACTIVE_PRESENT | (state.poolSuspended ? Flag.SUSPEND : 0));
    if (cmd === Cmd.TABLE_STATUS) {
      const working = `0 200/2048 0/1024 ${state.held || '-'} ${state.mode} discard_passdown queue_if_no_space - 512`;
      const params = h.flags & Flag.STATUS_TABLE ? `${o.metaDev ?? '7:0'} 7:1 128 0 0` : state.poolFailed ? 'Fail' : working;
      return reply(h.name, statusResults([{ start: 0, length: 131072, type: 'thin-pool', params }]), 1);
    }
    if (cmd === Cmd.TARGET_MSG) {
      const at = IOCTL.size + TARGET_MSG.message;
      const text = req.toString('utf8', at, req.indexOf(0, at));
      messages.push(text);
      if (text === 'reserve_metadata_snap') {
        if (gate) await gate;
        // The kernel serves no message in read-only or fail mode (pool_message: EOPNOTSUPP).
        if (state.mode === 'ro') throw errno('ENOTSUP', 95);
        if (state.held) throw errno('EBUSY', 16);
        state.held = state.nextRoot++;
      } else if (text === 'release_metadata_snap') {
        // Someone else's release reached the kernel just before this one.
        if (state.releasedFirst) state.held = 0;
        if (state.releaseFails) throw errno('EIO', 5);
        if (!state.held) throw errno('EINVAL', 22);
        state.held = 0;
      } else if (text.startsWith('create_snap')) {
        messages[messages.length - 1] += state.originActive ? ` (origin ${state.originSuspended ? 'suspended' : 'running'})` : '';
      }
      return reply(h.name);
    }
    throw new Error(`unexpected ioctl ${cmd}`);
  };
  const dm = new DeviceMapper({ nodes: 'never', transport, syncTransport: () => Buffer.alloc(IOCTL.size) });
  return {
    dm,
    messages,
    suspends,
    state,
    created,
    activated,
    hold(): () => void {
      let open!: () => void;
      gate = new Promise((r) => (open = r));
      return () => {
        gate = undefined;
        open();
      };
    },
  };
}

const tick = () => new Promise((r) => setImmediate(r));

describe('MetadataSnapshot and the release guard', () => {
  // A listener of our own, so the guard never re-raises a signal at jest.
  const keepAlive = () => undefined;
  beforeAll(() => process.on('SIGTERM', keepAlive));
  afterAll(() => process.off('SIGTERM', keepAlive));

  test('reserve: guarded while held, released on dispose, guard removed', async () => {
    const k = fakePool();
    const pool = await ThinPool.open('pool', { dm: k.dm });
    {
      await using snap = await pool.reserveMetadataSnap();
      expect(snap.root).toBe(23);
      expect(guardedCount()).toBe(1);
    }
    expect(k.messages).toEqual(['reserve_metadata_snap', 'release_metadata_snap']);
    expect(guardedCount()).toBe(0);
  });

  // The copy's bytes read at reserve (to tell another's copy at the same block at release) are best
  // effort: a metadata device whose path cannot be found (review: the reserve failed) changes nothing.
  test('reserve and release with a metadata device whose path cannot be found (no /sys/dev/block entry)', async () => {
    const k = fakePool({ metaDev: '7:1048575' });
    const pool = await ThinPool.open('pool', { dm: k.dm });
    {
      await using snap = await pool.reserveMetadataSnap();
      expect(snap.root).toBe(23);
      expect(snap.copy).toBeUndefined();
    }
    expect(k.messages).toEqual(['reserve_metadata_snap', 'release_metadata_snap']);
    expect(k.state.held).toBe(0);
    expect(guardedCount()).toBe(0);
  });

  // Outside hunt AB: the release message failed with EINVAL (someone released ours between the
  // last look at the status and the message) and the command, its work done, printed a cleanup failure.
  test('released by someone else just before our release message (EINVAL): nothing left to release, no error', async () => {
    const k = fakePool({ metaDev: '7:1048575' });
    const pool = await ThinPool.open('pool', { dm: k.dm });
    const snap = await pool.reserveMetadataSnap();
    k.state.releasedFirst = true;
    await snap.release();
    expect(k.messages).toEqual(['reserve_metadata_snap', 'release_metadata_snap']);
    expect(k.state.held).toBe(0);
    expect(guardedCount()).toBe(0);
  });

  test('a release message refused for another reason still fails the release', async () => {
    const k = fakePool({ metaDev: '7:1048575' });
    const pool = await ThinPool.open('pool', { dm: k.dm });
    const snap = await pool.reserveMetadataSnap();
    k.state.releaseFails = true; // the message fails (EIO): the snapshot is still held
    const msg = k.messages.length;
    await expect(snap.release()).rejects.toMatchObject({ code: 'EIO' });
    expect(k.messages.slice(msg)).toEqual(['release_metadata_snap']);
    expect(k.state.held).toBe(23);
  });

  test('a failed reserve (EBUSY) leaves no guard and sends no release', async () => {
    const k = fakePool();
    k.state.held = 9; // someone else holds one
    const pool = await ThinPool.open('pool', { dm: k.dm });
    const e = await pool.reserveMetadataSnap().catch((x: unknown) => x);
    expect(e).toBeInstanceOf(MetadataSnapError);
    expect(e).toMatchObject({
      code: 'EBUSY',
      message: "thin-pool pool already holds a metadata snapshot (root 9) that no running dmthin holds: another program's (thin_dump -m, a script), or one a dmthin reserved as it was killed; a pool holds one at a time: when nothing reads it any more, release it with 'dmthin pool release-metadata-snap pool', then run this again",
    });
    expect((e as Error).cause).toBeInstanceOf(DmIoctlError);
    expect(guardedCount()).toBe(0);
    expect(k.messages).toEqual(['reserve_metadata_snap']);
    expect(k.state.held).toBe(9);
  });

  test('a root a killed dmthin left held (its record names a process that is gone): released, then reserved afresh', async () => {
    const k = fakePool();
    k.state.held = 9;
    const gone = spawnSync('true').pid!;
    const bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    writeFileSync(join(heldDir, 'pool.json'), JSON.stringify({ format: 'dmthin-held-metadata-snap', version: 1, pool: 'pool', root: 9, pid: gone, startTime: '1', bootId }));
    const pool = await ThinPool.open('pool', { dm: k.dm });
    const snap = await pool.reserveMetadataSnap();
    expect(k.messages).toEqual(['reserve_metadata_snap', 'release_metadata_snap', 'reserve_metadata_snap']);
    expect(k.state.held).toBe(snap.root);
    // Its own record now, removed with the release.
    expect(JSON.parse(readFileSync(join(heldDir, 'pool.json'), 'utf8'))).toMatchObject({ root: snap.root, pid: process.pid });
    await snap.release();
    expect(existsSync(join(heldDir, 'pool.json'))).toBe(false);
    expect(guardedCount()).toBe(0);
  });

  /** A record of `root` held by a live process (a `sleep`), as a running dmthin's. */
  function runningHolder(root: number): { pid: number; kill(): void } {
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    const stat = readFileSync(`/proc/${child.pid}/stat`, 'utf8');
    const startTime = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
    const bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    writeFileSync(join(heldDir, 'pool.json'), JSON.stringify({ format: 'dmthin-held-metadata-snap', version: 1, pool: 'pool', root, pid: child.pid, startTime, bootId }));
    return { pid: child.pid!, kill: () => child.kill('SIGKILL') };
  }

  test('a root another running dmthin holds is waited for, then reserved (hunt L item 4: overlapping commands on one pool failed with EBUSY)', async () => {
    const k = fakePool();
    k.state.held = 9;
    const holder = runningHolder(9);
    try {
      const pool = await ThinPool.open('pool', { dm: k.dm });
      setTimeout(() => (k.state.held = 0), 350); // the other command ends and releases it
      const snap = await pool.reserveMetadataSnap();
      expect(k.messages.filter((m) => m === 'reserve_metadata_snap').length).toBeGreaterThanOrEqual(2);
      expect(k.messages).not.toContain('release_metadata_snap'); // never the other's
      expect(k.state.held).toBe(snap.root);
      await snap.release();
    } finally {
      holder.kill();
    }
  });

  test('a second reserve by the process that holds one: EBUSY at once (no wait that only its own release could end)', async () => {
    const k = fakePool();
    const pool = await ThinPool.open('pool', { dm: k.dm });
    const snap = await pool.reserveMetadataSnap();
    const t0 = Date.now();
    const e = await pool.reserveMetadataSnap().catch((x: unknown) => x);
    expect(Date.now() - t0).toBeLessThan(500);
    expect(e).toMatchObject({ code: 'EBUSY', message: `thin-pool pool already holds a metadata snapshot (root ${snap.root}), reserved by this process (${process.pid}); a pool holds one at a time: release that one first, or read through it` });
    await snap.release();
  });

  test('waited for up to waitMs: then EBUSY naming the process, not advice to release what it still reads', async () => {
    const k = fakePool();
    k.state.held = 9;
    const holder = runningHolder(9);
    try {
      const pool = await ThinPool.open('pool', { dm: k.dm });
      const e = await pool.reserveMetadataSnap({ waitMs: 300 }).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(MetadataSnapError);
      expect((e as Error).message).toMatch(new RegExp(`^thin-pool pool's metadata snapshot \\(root 9\\) is held by dmthin process ${holder.pid}, still running after 0 s of waiting; a pool holds one at a time: run this again when that command has ended$`));
      expect(k.state.held).toBe(9);
      expect(guardedCount()).toBe(0);
    } finally {
      holder.kill();
    }
  });

  test('the wait ends at once on an abort and on SIGTERM (the snapshot stays the other\'s)', async () => {
    const k = fakePool();
    k.state.held = 9;
    const holder = runningHolder(9);
    try {
      const pool = await ThinPool.open('pool', { dm: k.dm });
      const ac = new AbortController();
      const t0 = Date.now();
      setTimeout(() => ac.abort(), 150);
      await expect(pool.reserveMetadataSnap({ signal: ac.signal })).rejects.toMatchObject({ name: 'AbortError' });
      setTimeout(() => process.emit('SIGTERM', 'SIGTERM'), 150);
      await expect(pool.reserveMetadataSnap()).rejects.toMatchObject({ code: 'ABORT_ERR', message: 'interrupted by SIGTERM while waiting for the metadata snapshot of pool' });
      expect(Date.now() - t0).toBeLessThan(5000);
      expect(k.state.held).toBe(9);
      expect(process.listenerCount('SIGINT')).toBe(0);
    } finally {
      holder.kill();
    }
  });

  test('held-or-reserve: a snapshot a running dmthin holds is not read (it may be released mid-read): reserved after it, waiting', async () => {
    const k = fakePool();
    k.state.held = 9;
    const holder = runningHolder(9);
    try {
      const pool = await ThinPool.open('pool', { dm: k.dm });
      setTimeout(() => (k.state.held = 0), 250);
      const live = pool.openMetadata({ snapshot: 'held-or-reserve' }).catch((e: unknown) => e);
      // The fake has no metadata device to open: what matters is that it reserved one of its own first.
      await live;
      expect(k.messages[k.messages.length - 1]).toBe('release_metadata_snap');
      expect(k.messages.filter((m) => m === 'reserve_metadata_snap').length).toBeGreaterThanOrEqual(2);
    } finally {
      holder.kill();
    }
  });

  test("held-or-reserve by the process that holds the snapshot reads through it, as documented (review: it reserved, and failed with EBUSY)", async () => {
    const k = fakePool();
    const pool = await ThinPool.open('pool', { dm: k.dm });
    const snap = await pool.reserveMetadataSnap();
    const e = await pool.openMetadata({ snapshot: 'held-or-reserve' }).then(
      () => undefined,
      (x: unknown) => x,
    );
    // The fake has no metadata device to open: what matters is that no second reserve was sent.
    expect((e as { code?: string } | undefined)?.code).not.toBe('EBUSY');
    expect(k.messages.filter((m) => m === 'reserve_metadata_snap')).toHaveLength(1);
    await snap.release();
  });

  test('two reserves that find the same orphan: the second never fails releasing what the first released (EINVAL), nor releases its new snapshot (review)', async () => {
    const k = fakePool();
    k.state.held = 9;
    const gone = spawnSync('true').pid!;
    const bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    writeFileSync(join(heldDir, 'pool.json'), JSON.stringify({ format: 'dmthin-held-metadata-snap', version: 1, pool: 'pool', root: 9, pid: gone, startTime: '1', bootId }));
    const [a, b] = [await ThinPool.open('pool', { dm: k.dm }), await ThinPool.open('pool', { dm: k.dm })];
    const [x, y] = await Promise.allSettled([a.reserveMetadataSnap({ waitMs: 0 }), b.reserveMetadataSnap({ waitMs: 0 })]);
    const won = [x, y].filter((r) => r.status === 'fulfilled');
    expect(won).toHaveLength(1);
    const snap = (won[0] as PromiseFulfilledResult<Awaited<ReturnType<ThinPool['reserveMetadataSnap']>>>).value;
    expect(k.state.held).toBe(snap.root); // the winner's snapshot is still held
    // In one process the other finds its own process holding it (two processes would wait): EBUSY, not EINVAL.
    const lost = [x, y].find((r) => r.status === 'rejected') as PromiseRejectedResult;
    expect(lost.reason).toMatchObject({ code: 'EBUSY' });
    await snap.release();
  });

  test('a pool out of data space still serves messages: the wait for another dmthin ends in a reserve (review: "cannot reserve ... in out_of_data_space mode")', async () => {
    const k = fakePool();
    k.state.held = 9;
    k.state.mode = 'out_of_data_space';
    const holder = runningHolder(9);
    try {
      const pool = await ThinPool.open('pool', { dm: k.dm });
      setTimeout(() => (k.state.held = 0), 300);
      const snap = await pool.reserveMetadataSnap();
      expect(k.state.held).toBe(snap.root);
      await snap.release();
    } finally {
      holder.kill();
    }
  });

  test("changedBlocks' signal ends the wait for another dmthin's snapshot (review: it was not passed on)", async () => {
    const k = fakePool();
    k.state.held = 9;
    const holder = runningHolder(9);
    try {
      const pool = await ThinPool.open('pool', { dm: k.dm });
      const ac = new AbortController();
      setTimeout(() => ac.abort(), 100);
      const t0 = Date.now();
      await expect(pool.changedBlocks(1, 2, { signal: ac.signal }).next()).rejects.toMatchObject({ name: 'AbortError' });
      expect(Date.now() - t0).toBeLessThan(3000);
    } finally {
      holder.kill();
    }
  });

  test('the holder waited for releases and another dmthin reserves before it writes its record: still waited for, not "another program" (outside hunt Q)', async () => {
    const k = fakePool();
    k.state.held = 9;
    const first = runningHolder(9);
    let second: { kill(): void } | undefined;
    try {
      const pool = await ThinPool.open('pool', { dm: k.dm });
      setTimeout(() => {
        first.kill();
        k.state.held = 30; // another waiter's reserve: its record comes a moment later
      }, 1300);
      setTimeout(() => (second = runningHolder(30)), 1600);
      setTimeout(() => (k.state.held = 0), 2000);
      const snap = await pool.reserveMetadataSnap();
      expect(k.state.held).toBe(snap.root);
      await snap.release();
    } finally {
      first.kill();
      second?.kill();
    }
  });

  test('held-or-reserve: a held snapshot without a record is looked at again for a moment (a dmthin that has just reserved it writes its record after): then waited for, not read through (outside hunt Q)', async () => {
    const k = fakePool();
    k.state.held = 9;
    let holder: { kill(): void } | undefined;
    try {
      const pool = await ThinPool.open('pool', { dm: k.dm });
      setTimeout(() => (holder = runningHolder(9)), 60);
      setTimeout(() => (k.state.held = 0), 400);
      const t0 = Date.now();
      await pool.openMetadata({ snapshot: 'held-or-reserve' }).catch(() => undefined); // no metadata device in the fake
      expect(Date.now() - t0).toBeGreaterThanOrEqual(350); // waited for the other's release (read through at once before)
      expect(k.messages).toContain('reserve_metadata_snap'); // then its own
    } finally {
      holder?.kill();
    }
  });

  test('not writable: read_only mode is said as such, not as damage to repair', async () => {
    const k = fakePool();
    k.state.mode = 'ro';
    const pool = await ThinPool.open('pool', { dm: k.dm });
    const e = await pool.reserveMetadataSnap().catch((x: unknown) => x);
    expect(e).toMatchObject({ code: 'ENOTSUP' });
    expect((e as Error).message).toMatch(/^thin-pool pool cannot reserve a metadata snapshot \(ENOTSUP\): it is in read-only mode: reload its table without 'read_only', or, if the kernel switched it/);
    expect(k.messages).toEqual(['reserve_metadata_snap']);
  });

  test('a root recorded with another root than the one held is not released (someone else reserved since)', async () => {
    const k = fakePool();
    k.state.held = 9;
    const gone = spawnSync('true').pid!;
    writeFileSync(join(heldDir, 'pool.json'), JSON.stringify({ format: 'dmthin-held-metadata-snap', version: 1, pool: 'pool', root: 8, pid: gone, startTime: '1', bootId: 'x' }));
    const pool = await ThinPool.open('pool', { dm: k.dm });
    await expect(pool.reserveMetadataSnap()).rejects.toMatchObject({ code: 'EBUSY' });
    expect(k.messages).toEqual(['reserve_metadata_snap']);
    expect(k.state.held).toBe(9);
  });

  test('a signal during the reserve ioctl: the guard is already there, waits for the reserve, then releases', async () => {
    const k = fakePool();
    const pool = await ThinPool.open('pool', { dm: k.dm });
    const open = k.hold();
    const reserving = pool.reserveMetadataSnap();
    const outcome = reserving.then(
      () => 'resolved',
      (e: { code?: string }) => e.code,
    );
    await tick();
    expect(k.messages).toEqual(['reserve_metadata_snap']); // in flight
    expect(guardedCount()).toBe(1); // a handler is installed already
    process.emit('SIGTERM', 'SIGTERM');
    await tick();
    expect(k.messages).toEqual(['reserve_metadata_snap']); // no release before the reserve settles
    open();
    expect(await outcome).toBe('ABORT_ERR');
    expect(k.messages).toEqual(['reserve_metadata_snap', 'release_metadata_snap']);
    expect(k.state.held).toBe(0);
    expect(guardedCount()).toBe(0);
  });

  test('a signal during a reserve that then fails sends no release', async () => {
    const k = fakePool();
    k.state.held = 9;
    const pool = await ThinPool.open('pool', { dm: k.dm });
    const open = k.hold();
    const outcome = pool.reserveMetadataSnap().then(
      () => 'resolved',
      (e: { code?: string }) => e.code,
    );
    await tick();
    process.emit('SIGTERM', 'SIGTERM');
    open();
    expect(await outcome).toBe('EBUSY');
    await tick();
    expect(k.messages).toEqual(['reserve_metadata_snap']);
    expect(k.state.held).toBe(9);
    expect(guardedCount()).toBe(0);
  });
});

describe('createSnap and active origins', () => {
  test('an active origin is suspended around create_snap and resumed', async () => {
    const k = fakePool();
    k.state.originActive = true;
    const pool = await ThinPool.open('pool', { dm: k.dm });
    await pool.createSnap(2, 1);
    expect(k.messages).toEqual(['create_snap 2 1 (origin suspended)']);
    expect(k.suspends).toEqual(['suspend origin', 'resume origin']);
    expect(k.state.originSuspended).toBe(false);
  });

  test('an origin the caller suspended stays suspended (it was resumed behind the caller\'s back)', async () => {
    const k = fakePool();
    k.state.originActive = true;
    k.state.originSuspended = true;
    const pool = await ThinPool.open('pool', { dm: k.dm });
    await pool.createSnap(2, 1);
    expect(k.messages).toEqual(['create_snap 2 1 (origin suspended)']);
    expect(k.suspends).toEqual([]);
    expect(k.state.originSuspended).toBe(true);
  });

  test('suspendOrigin: false sends no suspend', async () => {
    const k = fakePool();
    k.state.originActive = true;
    const pool = await ThinPool.open('pool', { dm: k.dm });
    await pool.createSnap(2, 1, { suspendOrigin: false });
    expect(k.messages).toEqual(['create_snap 2 1 (origin running)']);
    expect(k.suspends).toEqual([]);
  });
});

describe('activating a thin on a pool the kernel refuses it on', () => {
  // The kernel's EINVAL for the table load says nothing; its reason goes to dmesg only.
  test('a suspended pool: the error says so and how to go on; nothing is left created', async () => {
    const k = fakePool();
    k.state.poolSuspended = true;
    const pool = await ThinPool.open('pool', { dm: k.dm });
    const e = await ThinDevice.activate(pool, { name: 'tmp-1', devId: 1, length: sectors(2048) }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(DmIoctlError);
    expect(e).toMatchObject({ code: 'EINVAL', ioctl: 'DM_TABLE_LOAD', device: 'pool' });
    expect((e as Error).message).toMatch(/^cannot activate thin 1 of pool pool: pool pool is suspended, .*dmsetup resume pool/);
    expect((e as Error).cause).toMatchObject({ code: 'EINVAL' });
    expect([...k.created]).toEqual([]);
  });

  test('a pool in fail mode: said so', async () => {
    const k = fakePool();
    k.state.poolFailed = true;
    const pool = await ThinPool.open('pool', { dm: k.dm });
    await expect(ThinDevice.activate(pool, { name: 'tmp-2', devId: 1, length: sectors(2048) })).rejects.toThrow(/pool pool is in fail mode/);
  });

  test('any other refusal is passed on as the kernel gave it; a working pool activates', async () => {
    const k = fakePool();
    const pool = await ThinPool.open('pool', { dm: k.dm });
    k.state.badTable = true;
    const e = await ThinDevice.activate(pool, { name: 'tmp-3', devId: 1, length: sectors(2048) }).catch((x: unknown) => x);
    expect(e).toMatchObject({ code: 'EINVAL', ioctl: 'DM_TABLE_LOAD' });
    expect((e as Error).message).not.toMatch(/cannot activate/);
    k.state.badTable = false;
    expect((await ThinDevice.activate(pool, { name: 'tmp-4', devId: 1, length: sectors(2048) })).name).toBe('tmp-4');
  });
});

describe('an IO error on a temporary activation', () => {
  const ioError = (path: string, code = 'EIO', errno = -5) =>
    Object.assign(new Error(`${code}: Input/output error, pread '${path}'`), { code, errno, syscall: 'pread', path, offset: 65536 });

  test('names the thin and the pool, not the temporary device, and what the pool status says', async () => {
    const k = fakePool();
    const pool = await ThinPool.open('pool', { dm: k.dm });
    const tmp = await activateTemporarily(pool, { prefix: 'dmthin-test', devId: 7, length: sectors(2048) }, async () => ({ close: () => undefined }));
    const path = `${k.dm.devDir}/${k.activated[0]}`;
    expect(path).toMatch(/dmthin-test-\d+-7-/);
    const plain = await tmp.explain(ioError(path));
    expect(plain).toBeInstanceOf(SystemCallError);
    expect(plain).toMatchObject({ code: 'EIO', errno: -5, syscall: 'pread', device: 'pool', devId: 7, offset: 65536 });
    expect((plain as Error).message).toBe(`EIO: Input/output error, pread thin 7 of pool pool (through temporary device ${path})`);
    k.state.mode = 'out_of_data_space';
    expect(((await tmp.explain(ioError(path, 'ENOSPC', -28))) as Error).message).toMatch(/, pread thin 7 of pool pool \(.*\): pool pool is out of data space \(extend its data device/);
    k.state.poolFailed = true;
    expect(((await tmp.explain(ioError(path))) as Error).message).toMatch(/: pool pool has failed \(see dmesg/);
    // Errors about other paths, or no path, pass as they are.
    const other = ioError('/dev/sdz');
    expect(await tmp.explain(other)).toBe(other);
    const usage = new Error('nothing to do with it');
    expect(await tmp.explain(usage)).toBe(usage);
    await tmp.dispose();
  });
});
