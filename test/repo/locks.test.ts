/**
 * Lock objects: garbage collection is refused while a backup session is
 * live, and a backup while a collection is; shared locks coexist; stale
 * locks (old, or of a dead process on this host) are removed; a session whose
 * lock was lost cannot commit.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { seal, parseCompression, unseal } from '../../src/repo/codec';
import { LocalBackend } from '../../src/repo/local-backend';
import { Locks, type LockInfo } from '../../src/repo/locks';
import { Repository } from '../../src/repo/repository';
import { scratchDir } from './scratch';

let dir: string;
let loc: string;
beforeEach(() => {
  dir = scratchDir('dmthin-locks-');
  loc = join(dir, 'repo');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function lockFiles(): string[] {
  return existsSync(join(loc, 'locks')) ? readdirSync(join(loc, 'locks')) : [];
}

/** Writes a lock object as another process would have (unencrypted repository). */
function plantLock(name: string, info: Partial<LockInfo>): void {
  const full: LockInfo = { kind: 'shared', purpose: 'backup other', host: 'some-other-host', pid: 1, createdMs: Date.now(), refreshedMs: Date.now(), ...info };
  mkdirSync(join(loc, 'locks'), { recursive: true });
  writeFileSync(join(loc, 'locks', name), seal(Buffer.from(JSON.stringify(full)), `locks/${name}`, null, parseCompression('none')));
}

const chunk = () => randomBytes(512);
const hdr = (volume: string) => ({ volume, deviceSize: 4096, chunkSize: 512, createdMs: Date.now(), source: {}, base: null });

describe('locks', () => {
  it('refuses garbage collection while a backup session is live, allows it after', async () => {
    await using repo = await Repository.create(loc);
    const s = await repo.beginBackup('v');
    await s.putChunk(chunk());
    await expect(repo.collectGarbage()).rejects.toMatchObject({ reason: 'locked', code: 'EBUSY' });
    expect(lockFiles()).toHaveLength(1); // the refused collection withdrew its own lock
    await s[Symbol.asyncDispose]();
    expect(lockFiles()).toHaveLength(0);
    // The interrupted session's journal protects its chunk.
    expect(await repo.collectGarbage()).toEqual({ deletedChunks: 0, freedBytes: 0, deletedTemporary: 0 });
    expect(lockFiles()).toHaveLength(0);
  });

  it('refuses a backup (and deleteBackups) while an exclusive lock is live; shared locks coexist', async () => {
    await using repo = await Repository.create(loc);
    const a = await repo.beginBackup('a');
    const b = await repo.beginBackup('b');
    expect(lockFiles()).toHaveLength(2);
    await a.commit(hdr('a'), [{ index: 0, id: (await a.putChunk(chunk())).id }]);
    await b[Symbol.asyncDispose]();
    plantLock('00000000000a-ffff', { kind: 'exclusive', purpose: 'gc' });
    await expect(repo.beginBackup('a')).rejects.toMatchObject({ reason: 'locked' });
    const [only] = await repo.listBackups();
    await expect(repo.deleteBackups([only!.id])).rejects.toMatchObject({ reason: 'locked' });
    await expect(repo.collectGarbage()).rejects.toMatchObject({ reason: 'locked' });
    expect(lockFiles()).toEqual(['00000000000a-ffff']);
  });

  it('removes a lock not refreshed for the stale time, and one of a dead process on this host', async () => {
    await using repo = await Repository.create(loc, {});
    plantLock('old', { kind: 'exclusive', purpose: 'gc', refreshedMs: Date.now() - 31 * 60_000 });
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
    plantLock('deadpid', { kind: 'exclusive', host: hostname(), pid: Number(dead.stdout) });
    plantLock('fresh-other-host', { kind: 'shared' });
    const s = await repo.beginBackup('v');
    expect(lockFiles().sort()).toEqual(['fresh-other-host', expect.stringMatching(/^[0-9a-f]{12}-[0-9a-f]{16}$/)].sort());
    await s[Symbol.asyncDispose]();
    // A live lock of another host is respected until it is stale.
    await expect(repo.collectGarbage()).rejects.toMatchObject({ reason: 'locked' });
    plantLock('fresh-other-host', { kind: 'shared', refreshedMs: Date.now() - 31 * 60_000 }); // its host stopped refreshing it
    await expect(repo.collectGarbage()).resolves.toEqual({ deletedChunks: 0, freedBytes: 0, deletedTemporary: 0 });
    expect(lockFiles()).toEqual([]);
  });

  it("a dead pid on this host counts only in this boot's own pid namespace: a lock of another pid namespace or boot with the same host name stays live until stale (hunt T: a prune removed a running container's backup lock and deleted its chunks)", async () => {
    await using repo = await Repository.create(loc, {});
    const mine = await repo.beginBackup('probe');
    const own = JSON.parse(unseal(readFileSync(join(loc, 'locks', lockFiles()[0]!)), `locks/${lockFiles()[0]}`, null, 1 << 20).toString('utf8')) as LockInfo;
    await mine[Symbol.asyncDispose]();
    const bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    expect(own.space).toBe(`${bootId} ${readlinkSync('/proc/self/ns/pid')}`);
    const dead = Number(spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout);
    plantLock('other-ns', { kind: 'shared', host: hostname(), pid: dead, space: `${bootId} pid:[1]` });
    plantLock('other-boot', { kind: 'shared', host: hostname(), pid: dead, space: `00000000-0000-0000-0000-000000000000 ${readlinkSync('/proc/self/ns/pid')}` });
    await expect(repo.collectGarbage()).rejects.toMatchObject({ reason: 'locked' });
    expect(lockFiles().sort()).toEqual(['other-boot', 'other-ns']);
    // In this boot and namespace, its pid gone: stale at once, as before.
    rmSync(join(loc, 'locks'), { recursive: true });
    plantLock('same-space', { kind: 'shared', host: hostname(), pid: dead, space: own.space });
    await expect(repo.collectGarbage()).resolves.toMatchObject({ deletedChunks: 0 });
    expect(lockFiles()).toEqual([]);
  });

  it('an unreadable lock object counts as live until its file is stale', async () => {
    await using repo = await Repository.create(loc);
    mkdirSync(join(loc, 'locks'));
    writeFileSync(join(loc, 'locks', 'garbage'), 'not a lock');
    await expect(repo.collectGarbage()).rejects.toMatchObject({ reason: 'locked' });
    const old = new Date(Date.now() - 31 * 60_000);
    utimesSync(join(loc, 'locks', 'garbage'), old, old);
    await repo.collectGarbage();
    expect(lockFiles()).toEqual([]);
  });

  it('lock timing that is not a whole positive number of ms, or a stale time not longer than the refresh, is refused (outside hunt V: NaN rewrote a lock every ms, -1 made live locks stale)', async () => {
    await (await Repository.create(loc)).close();
    for (const lockTiming of [{ refreshMs: NaN }, { staleMs: -1 }, { refreshMs: 1.5 }, { refreshMs: 0 }, { staleMs: Infinity }, { refreshMs: 200, staleMs: 100 }, { refreshMs: 100, staleMs: 100 }, { refreshMs: 2 ** 31, staleMs: 2 ** 32 }, { staleMs: 2 ** 31 }, 'fast']) {
      await expect(Repository.open(loc, { lockTiming: lockTiming as never })).rejects.toMatchObject({ name: 'UsageError', code: 'EINVAL', message: expect.stringMatching(/lockTiming/) });
    }
    await (await Repository.open(loc, { lockTiming: { refreshMs: 1, staleMs: 2 } })).close();
  });

  it('refreshes a held lock in the background', async () => {
    await using repo = await Repository.open((await Repository.create(loc)).location, { lockTiming: { refreshMs: 40, staleMs: 60_000 } });
    const locks = new Locks(new LocalBackend(loc), null, { refreshMs: 40, staleMs: 60_000 });
    await using s = await repo.beginBackup('v');
    const first = (await locks.scan())[0]!.info!.refreshedMs;
    await sleep(150);
    const later = (await locks.scan())[0]!.info!.refreshedMs;
    expect(later).toBeGreaterThan(first);
    expect(s.id).toMatch(/Z-/);
  });

  it('a session whose lock was removed cannot commit, and writes no backup', async () => {
    await using repo = await Repository.create(loc);
    const s = await repo.beginBackup('v');
    const id = (await s.putChunk(chunk())).id;
    for (const f of lockFiles()) rmSync(join(loc, 'locks', f)); // e.g. judged stale and removed by another host
    await expect(s.commit(hdr('v'), [{ index: 0, id }])).rejects.toMatchObject({ reason: 'locked' });
    expect(await repo.listBackups()).toEqual([]);
    await s[Symbol.asyncDispose]();
  });

  it('a lock not refreshed for half the stale time is given up, never rewritten', async () => {
    await (await Repository.create(loc)).close();
    const locks = new Locks(new LocalBackend(loc), null, { refreshMs: 3_600_000, staleMs: 100 });
    const held = await locks.acquire('shared', 'backup v');
    const before = (await locks.scan())[0]!.info!.refreshedMs;
    await sleep(80); // the process "paused" past staleMs / 2
    await held.refresh();
    expect(() => held.check()).toThrow(expect.objectContaining({ reason: 'locked' }));
    expect((await locks.scan())[0]!.info!.refreshedMs).toBe(before);
    await held.release();
  });

  // Found by an outside hunt: a lock object {} made prune say "Invalid time value [EUNKNOWN]" and was never
  // stale; one refreshed in the year 5138 (a clock far ahead) never went stale either.
  it('a lock object of another shape, or refreshed far in the future: unreadable or judged by its mtime, stale once that is old', async () => {
    await (await Repository.create(loc)).close();
    const locks = new Locks(new LocalBackend(loc), null, { refreshMs: 60_000, staleMs: 60_000 });
    mkdirSync(join(loc, 'locks'), { recursive: true });
    writeFileSync(join(loc, 'locks', 'shapeless'), seal(Buffer.from('{}'), 'locks/shapeless', null, parseCompression('none')));
    plantLock('future', { kind: 'exclusive', refreshedMs: Date.UTC(5138, 10, 16) });
    // Fresh (written now): they refuse, naming themselves, with no raw error.
    await expect(locks.acquire('exclusive', 'gc')).rejects.toMatchObject({ reason: 'locked', message: expect.stringMatching(/locked by (an unreadable lock locks\/shapeless|backup other .*refreshed 5138)/) });
    // Written two minutes ago: both are stale and removed.
    const old = (Date.now() - 120_000) / 1000;
    for (const f of ['shapeless', 'future']) utimesSync(join(loc, 'locks', f), old, old);
    const held = await locks.acquire('exclusive', 'gc');
    expect(lockFiles()).toHaveLength(1);
    await held.release();
  });

  it('two exclusive lockers racing: at most one wins, and no lock is left behind by the loser', async () => {
    await (await Repository.create(loc)).close();
    const backend = new LocalBackend(loc);
    const locks = new Locks(backend, null, { refreshMs: 60_000, staleMs: 60_000 });
    for (let round = 0; round < 10; round++) {
      const r = await Promise.allSettled([locks.acquire('exclusive', 'gc a'), locks.acquire('exclusive', 'gc b')]);
      const won = r.filter((x) => x.status === 'fulfilled');
      expect(won.length).toBeLessThanOrEqual(1);
      expect(lockFiles()).toHaveLength(won.length);
      for (const w of won) await (w as PromiseFulfilledResult<Awaited<ReturnType<Locks['acquire']>>>).value.release();
    }
  });
});
