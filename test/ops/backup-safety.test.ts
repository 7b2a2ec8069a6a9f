/**
 * The safety promises of backups (issue 12): prune keeps what it keeps
 * byte-identical and removes the rest; a damaged or missing chunk is caught
 * by verify and by restore, which names the backup and the byte range and
 * leaves the target recorded as incomplete; a backup killed with SIGKILL
 * leaves no backup, and the rerun uploads no chunk twice, nor trusts a
 * journaled chunk that is gone since (uploads it again); an encrypted
 * repository refuses a wrong key before writing anything and its object
 * names reveal no plaintext hash. Objects are reached through the backend
 * (openBackend), so the same tests run on every repository location.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { AbortError, RepoError, SystemCallError } from '../../src/errors';
import { BlockWriter } from '../../src/native/block-writer';
import { backup, type BackupResult } from '../../src/ops/backup';
import { prune } from '../../src/ops/prune';
import { restore } from '../../src/ops/restore';
import type { Backend } from '../../src/repo/backend';
import { openBackend, Repository } from '../../src/repo/repository';
import { CLI } from '../cli/run-cli';
import { patternBlock, scratch, withStateWritesFull, type Scratch } from '../stream/helpers';
import { deviceBytes, edit, makePool, runs, sha256, type PoolImages } from './backup-fixture';
import { describeEachRepo } from './repo-locations';

const BS = 128;
const BLOCK = BS * 512;
const SIZE = 200 * BLOCK;
const dev1 = runs([0, 0, 150]);
const dev2 = edit(dev1, runs([20, 300, 20]));
const dev3 = edit(dev2, runs([100, 400, 30]), [0, 1, 2, 3]);

let s: Scratch;
let pool: PoolImages;
beforeAll(() => {
  s = scratch();
  pool = makePool(s.dir, 'pool', {
    dataBlockSize: BS,
    nrDataBlocks: 1024,
    devices: new Map([
      [1, dev1],
      [2, dev2],
      [3, dev3],
    ]),
    zeroBlocks: new Set(),
  });
});
afterAll(() => s.cleanup());

const image = () => ({ metadata: pool.metadata, data: pool.data, deviceSize: SIZE });
const chunkKey = (id: string) => `chunks/${id.slice(0, 2)}/${id}`;

/** Ids of a backup's chunks, in index order. */
async function idsOf(repo: Repository, id: string): Promise<{ index: number; id: string }[]> {
  const out: { index: number; id: string }[] = [];
  for await (const e of (await repo.readManifest(id)).entries) out.push({ ...e });
  return out;
}

async function keys(b: Backend, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  for await (const o of b.list(prefix)) out.push(o.key);
  return out.sort();
}

/**
 * The keys under `prefix` once they stop changing: a SIGKILLed client's
 * uploads whose bodies had reached the server may still be stored after it
 * died (radosgw finishes such requests), and a listing taken at once missed
 * them (CI under load, 2026-12-06: 11 of 106 chunks appeared after it, and
 * the rerun rightly found them stored). The same listing for 1.5 s (four
 * listings 500 ms apart), within ~20 s.
 */
async function settledKeys(b: Backend, prefix: string): Promise<string[]> {
  let last = (await keys(b, prefix)).join('\n');
  let same = 0;
  for (let i = 0; i < 40; i++) {
    await new Promise((r) => setTimeout(r, 500));
    const now = (await keys(b, prefix)).join('\n');
    same = now === last ? same + 1 : 0;
    if (same === 3) return now === '' ? [] : now.split('\n');
    last = now;
  }
  throw new Error(`the keys under ${prefix} were still changing after ~20 s`);
}

/** A backend that counts the puts of each key. */
function counting(b: Backend): Backend & { puts: Map<string, number> } {
  const puts = new Map<string, number>();
  return {
    puts,
    location: b.location,
    put: (key, body, opts) => {
      puts.set(key, (puts.get(key) ?? 0) + 1);
      return b.put(key, body, opts);
    },
    get: (key, opts) => b.get(key, opts),
    getStream: (key, opts) => b.getStream(key, opts),
    stat: (key, opts) => b.stat(key, opts),
    list: (prefix, opts) => b.list(prefix, opts),
    delete: (k, opts) => b.delete(k, opts),
    close: () => b.close(),
    [Symbol.asyncDispose]: () => b.close(),
  };
}

describeEachRepo('backups', (loc) => {
  const fresh = async (name: string, opts = {}): Promise<{ location: string; repo: Repository; backend: Backend }> => {
    const location = await loc.make(s.dir);
    const repo = await Repository.create(location, opts);
    const backend = await openBackend(location);
    void name;
    return { location, repo, backend };
  };

  test('prune keeps the kept backups restorable byte for byte and removes the others and their chunks', async () => {
    const { repo, backend } = await fresh('prune');
    const b: BackupResult[] = [];
    for (const snap of [1, 2, 3]) b.push(await backup({ ...image(), repo, volume: 'v', snap }));
    const other = await backup({ ...image(), repo, volume: 'w', snap: 3 });
    const before = new Set((await idsOf(repo, b[2].id)).map((e) => e.id));
    for (const e of await idsOf(repo, other.id)) before.add(e.id);
    // Chunks only the first two backups of v name (their data was overwritten by 3).
    const onlyOld = [...new Set([...(await idsOf(repo, b[0].id)), ...(await idsOf(repo, b[1].id))].map((e) => e.id))].filter((x) => !before.has(x));
    expect(onlyOld.length).toBeGreaterThan(0);

    const r = await prune({ repo, keepLast: 1 });
    expect(r.deleted.sort()).toEqual([b[0].id, b[1].id].sort());
    expect(r.kept.sort()).toEqual([b[2].id, other.id].sort());
    expect(r.deletedChunks).toBe(onlyOld.length);
    expect((await repo.listBackups()).map((x) => x.id).sort()).toEqual([b[2].id, other.id].sort());
    for (const x of onlyOld) expect(await backend.stat(chunkKey(x))).toBeNull();
    await expect(repo.readManifest(b[0].id)).rejects.toMatchObject({ reason: 'not-found' });
    for (const [id, dev] of [
      [b[2].id, 3],
      [other.id, 3],
    ] as const) {
      const target = s.path(`${loc.name}-pruned-${dev}.img`);
      await restore({ repo, backup: id, target, create: true });
      expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(pool, dev, SIZE)));
    }
    expect((await repo.verify({ data: true })).problems).toEqual([]);
    await repo.close();
    await backend.close();
  });

  test('prune tells of each backup as it deletes it: one interrupted after the first says which (hunt M item 7)', async () => {
    const { repo, backend } = await fresh('prune-abort');
    const b: BackupResult[] = [];
    for (const snap of [1, 2, 3]) b.push(await backup({ ...image(), repo, volume: 'v', snap }));
    const ac = new AbortController();
    const told: string[] = [];
    const onDeleted = (id: string) => {
      told.push(id);
      ac.abort(new AbortError('interrupted by SIGINT'));
    };
    await expect(prune({ repo, keepLast: 1, signal: ac.signal, onDeleted })).rejects.toMatchObject({ code: 'ABORT_ERR' });
    expect(told).toHaveLength(1);
    const left = (await repo.listBackups()).map((x) => x.id);
    expect(left).not.toContain(told[0]);
    expect(left).toHaveLength(2);
    // The next prune completes the work.
    const r = await prune({ repo, keepLast: 1, onDeleted: (id) => told.push(id) });
    expect(told).toHaveLength(2);
    expect(r.deleted).toEqual([told[1]]);
    expect((await repo.listBackups()).map((x) => x.id)).toEqual([b[2].id]);
    await repo.close();
    await backend.close();
  });

  /** The chunk of backup `id` with the most bytes (one that holds data), one byte of it flipped in place: its id. */
  async function damageDataChunk(repo: Repository, backend: Backend, id: string): Promise<string> {
    let victim = '';
    let size = -1;
    for (const e of await idsOf(repo, id)) {
      const st = await backend.stat(chunkKey(e.id));
      if (st && st.size > size) [victim, size] = [e.id, st.size];
    }
    const obj = await backend.get(chunkKey(victim));
    obj[obj.length >> 1] ^= 0x10;
    await backend.delete([chunkKey(victim)]);
    await backend.put(chunkKey(victim), obj);
    return victim;
  }

  test('a repair between a backup\'s plan and its lock: the base naming the removed chunk is dropped, not copied (outside hunt R: exit 0, unrestorable)', async () => {
    const { repo, backend } = await fresh('repair-race');
    const first = await backup({ ...image(), repo, volume: 'v', snap: 2 });
    const victim = await damageDataChunk(repo, backend, first.id);
    // The repair runs after the backup listed the markers (none then): the first listing is made to see none.
    const real = repo.removedChunks.bind(repo);
    let calls = 0;
    repo.removedChunks = async (o) => (calls++ === 0 ? new Set<string>() : real(o));
    await expect(repo.removeDamagedChunks([victim])).resolves.toMatchObject({ removed: [victim] });
    const warnings: string[] = [];
    const second = await backup({ ...image(), repo, volume: 'v', snap: 2, onWarning: (m) => warnings.push(m) });
    expect(second.base).toBeNull();
    expect(warnings.join('\n')).toMatch(new RegExp(`backup ${first.id} names a chunk that verify --repair removed`));
    const target = s.path(`${loc.name}-race.img`);
    await restore({ repo, backup: second.id, target, create: true });
    expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(pool, 2, SIZE)));
    expect(await repo.removedChunks()).toEqual(new Set()); // stored again: its marker is gone
    await repo.close();
    await backend.close();
  });

  test('a repair killed between its marker and the delete (the damaged chunk still there): the next backup writes the chunk over it, and only then drops the marker (outside hunt R)', async () => {
    const { repo, backend } = await fresh('repair-killed');
    const first = await backup({ ...image(), repo, volume: 'v', snap: 2 });
    const victim = await damageDataChunk(repo, backend, first.id);
    await backend.put(`removed/${victim}`, new Uint8Array(0)); // what the killed repair left
    const second = await backup({ ...image(), repo, volume: 'v', snap: 2 });
    expect(second.base).toBeNull();
    expect((await repo.verify({ data: true })).problems).toEqual([]); // the damaged copy was written over
    for (const id of [first.id, second.id]) {
      const target = s.path(`${loc.name}-killed-${id}.img`);
      await restore({ repo, backup: id, target, create: true });
      expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(pool, 2, SIZE)));
    }
    expect(await repo.removedChunks()).toEqual(new Set());
    await repo.close();
    await backend.close();
  });

  test('a marker no backup needs (its backups pruned, or a chunk never named) is dropped by garbage collection: backups do not read every manifest for ever (outside hunt R)', async () => {
    const { repo, backend } = await fresh('stale-marker');
    await backup({ ...image(), repo, volume: 'v', snap: 2 });
    await backend.put(`removed/${'ab'.repeat(32)}`, new Uint8Array(0));
    await repo.collectGarbage();
    expect(await repo.removedChunks()).toEqual(new Set());
    await repo.close();
    await backend.close();
  });

  test('a flipped chunk and a missing chunk: verify and restore name the backup and the range', async () => {
    const { repo, backend } = await fresh('damage');
    const r = await backup({ ...image(), repo, volume: 'v', snap: 1 });
    const entries = await idsOf(repo, r.id);
    const flipped = entries[7];
    const missing = entries[42];
    const obj = await backend.get(chunkKey(flipped.id));
    obj[obj.length >> 1] ^= 0x10;
    await backend.delete([chunkKey(flipped.id)]);
    await backend.put(chunkKey(flipped.id), obj);

    // Existence only: the flipped chunk is there.
    expect((await repo.verify()).problems).toEqual([]);
    const v = await repo.verify({ data: true });
    expect(v.problems).toEqual([{ backup: r.id, index: 7, offset: 7 * BLOCK, id: flipped.id, reason: 'corrupt' }]);

    const target = s.path(`${loc.name}-damaged.img`);
    const err = await restore({ repo, backup: r.id, target, create: true }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RepoError);
    expect(err).toMatchObject({ reason: 'corrupt', backup: r.id, index: 7, offset: 7 * BLOCK, length: BLOCK });
    expect((err as Error).message).toContain(`backup ${r.id}: chunk 7 (device bytes ${7 * BLOCK}..${8 * BLOCK - 1})`);
    const state = JSON.parse(readFileSync(`${target}.dmthin-restore.json`, 'utf8'));
    expect(state.current).toBeNull();
    expect(state.pending.backup).toBe(r.id);

    await backend.delete([chunkKey(missing.id)]);
    const v2 = await repo.verify();
    expect(v2.problems).toEqual([{ backup: r.id, index: 42, offset: 42 * BLOCK, id: missing.id, reason: 'missing' }]);
    const err2 = await restore({ repo, backup: r.id, target: s.path(`${loc.name}-missing.img`), create: true, concurrency: 1 }).catch((e: unknown) => e);
    // The flipped chunk comes first in the device.
    expect(err2).toMatchObject({ reason: 'corrupt', index: 7 });
    // A restore that never reaches the damage succeeds: a backup with both chunks rewritten (full re-read stores them again).
    await backend.delete([chunkKey(flipped.id)]);
    const again = await backup({ ...image(), repo, volume: 'v', snap: 1, full: true });
    expect(again.chunksNew).toBe(2);
    const target2 = s.path(`${loc.name}-repaired.img`);
    await restore({ repo, backup: r.id, target: target2, create: true });
    expect(sha256(readFileSync(target2))).toBe(sha256(deviceBytes(pool, 1, SIZE)));
    await repo.close();
    await backend.close();
  });

  test('SIGKILL mid-backup: no backup is visible; the rerun completes it without uploading any chunk twice', async () => {
    const { location, repo } = await fresh('kill');
    await repo.close();
    const killAt = 40;
    const run = spawnSync(
      process.execPath,
      [CLI, 'backup', '--metadata', pool.metadata, '--data', pool.data, '--snap', '1', '--size', String(SIZE), '--repo', location, '--volume', 'v', '--json'],
      { encoding: 'utf8', env: { ...process.env, DMTHIN_TEST_KILL_AT: String(killAt) }, timeout: 60_000 },
    );
    expect({ signal: run.signal, stderr: run.stderr }).toEqual({ signal: 'SIGKILL', stderr: '' });
    const backend = await openBackend(location);
    const storedBefore = new Set((await settledKeys(backend, 'chunks/')).filter((k) => !k.includes('.tmp')));
    expect(storedBefore.size).toBeGreaterThanOrEqual(killAt);
    expect(storedBefore.size).toBeLessThan(dev1.size);
    const c = counting(backend);
    const repo2 = await Repository.openBackend(c);
    expect(await repo2.listBackups()).toEqual([]);
    const r = await backup({ ...image(), repo: repo2, volume: 'v', snap: 1 });
    const chunkPuts = [...c.puts].filter(([k]) => k.startsWith('chunks/'));
    expect(chunkPuts.filter(([, n]) => n > 1)).toEqual([]);
    expect(chunkPuts.filter(([k]) => storedBefore.has(k))).toEqual([]);
    expect(r.chunksNew).toBe(dev1.size - storedBefore.size);
    expect(chunkPuts.length).toBe(r.chunksNew);
    expect((await repo2.listBackups()).map((x) => x.id)).toEqual([r.id]);
    const target = s.path(`${loc.name}-killed.img`);
    await restore({ repo: repo2, backup: r.id, target, create: true });
    expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(pool, 1, SIZE)));
    await repo2.close();
    await backend.close();
  });

  test('an interrupted backup whose journaled chunks are lost since: the rerun uploads them again, and its backup verifies and restores', async () => {
    const { repo, backend } = await fresh('resume-lost');
    // Interrupted part-way: the session's close writes its journal (a SIGKILLed run has written a
    // segment only after 4096 ids or 5 s, more than this volume takes).
    const ac = new AbortController();
    const interrupted = backup({ ...image(), repo, volume: 'v', snap: 1, batchBytes: 16 * BLOCK, concurrency: 1, signal: ac.signal, onProgress: (p) => p.chunksRead >= 64 && ac.abort() });
    await expect(interrupted).rejects.toBeInstanceOf(AbortError);
    expect(await repo.listBackups()).toEqual([]);
    const storedBefore = (await keys(backend, 'chunks/')).filter((k) => !k.includes('.tmp'));
    const journaled = await (async () => {
      await using peek = await repo.beginBackup('v');
      return [...peek.resumedIds];
    })();
    expect(journaled.length).toBeGreaterThanOrEqual(64);
    expect(journaled.length).toBeLessThan(dev1.size);
    // Lost since: a repository copied while the backup ran (chunks/ before journals/), a file deleted, an S3 object lost.
    const lost = journaled.filter((_, i) => i % 3 === 0);
    await backend.delete(lost.map(chunkKey));
    const warnings: string[] = [];
    const r = await backup({ ...image(), repo, volume: 'v', snap: 1, onWarning: (m) => warnings.push(m) });
    expect((await repo.verify({ data: true })).problems).toEqual([]);
    const target = s.path(`${loc.name}-resume-lost.img`);
    await restore({ repo, backup: r.id, target, create: true });
    expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(pool, 1, SIZE)));
    // Uploaded again as new chunks, and said once.
    expect(r.chunksNew).toBe(dev1.size - (storedBefore.length - lost.length));
    expect(warnings).toEqual([`${lost.length} chunks an interrupted backup of v stored are no longer in the repository (was it copied while that backup ran, or were chunks deleted?): they are uploaded again`]);
    await repo.close();
    await backend.close();
  });

  test('SIGKILL mid-restore: the target is recorded as incomplete, and the next restore writes it whole', async () => {
    const { location, repo, backend } = await fresh('restore-kill');
    await backend.close();
    const b1 = await backup({ ...image(), repo, volume: 'v', snap: 1 });
    const b3 = await backup({ ...image(), repo, volume: 'v', snap: 3 });
    const target = s.path(`${loc.name}-restore-killed.img`);
    const first = await restore({ repo, backup: b3.id, target, create: true });
    expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(pool, 3, SIZE)));
    await repo.close();
    // A full restore of b1 killed after its first 8 MiB write batch (chunks 0-127 of 150; 128-129 still hold b3's data): neither b1 nor b3.
    const run = spawnSync(process.execPath, [CLI, 'restore', '--repo', location, '--backup', b1.id, '--target', target, '--full'], {
      encoding: 'utf8',
      env: { ...process.env, DMTHIN_TEST_KILL_AT: '1' },
      timeout: 60_000,
    });
    expect({ signal: run.signal, stderr: run.stderr }).toEqual({ signal: 'SIGKILL', stderr: '' });
    const mixed = sha256(readFileSync(target));
    expect(mixed).not.toBe(sha256(deviceBytes(pool, 1, SIZE)));
    expect(mixed).not.toBe(sha256(deviceBytes(pool, 3, SIZE)));
    const state = JSON.parse(readFileSync(first.stateFile, 'utf8')) as { current: unknown; pending: { backup: string } | null };
    expect(state.current).toBeNull();
    expect(state.pending?.backup).toBe(b1.id);
    // Restoring b3 again must not trust the target to hold b3 (as the state said before the killed restore): everything is written.
    const repo2 = await Repository.open(location);
    const again = await restore({ repo: repo2, backup: b3.id, target });
    expect(again.previous).toBeNull();
    expect(again.chunksWritten).toBe(dev3.size);
    expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(pool, 3, SIZE)));
    // Complete again: the next restore is differential.
    const diff = await restore({ repo: repo2, backup: b1.id, target });
    expect(diff.previous).toBe(b3.id);
    expect(diff.chunksWritten).toBeLessThan(dev1.size);
    expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(pool, 1, SIZE)));
    await repo2.close();
  });

  test('encryption: a wrong key is refused before anything is written; object names reveal no plaintext hash', async () => {
    const { location, repo, backend } = await fresh('enc', { key: { passphrase: 'right horse battery' }, scrypt: { N: 1 << 14, r: 8, p: 1 } });
    expect(repo.encrypted).toBe(true);
    const r = await backup({ ...image(), repo, volume: 'v', snap: 2 });
    await repo.close();
    const before = await keys(backend);

    const wrong = { passphrase: 'wrong horse' };
    await expect(Repository.open(location, { key: wrong })).rejects.toMatchObject({ reason: 'bad-key' });
    await expect(backup({ ...image(), repo: location, key: wrong, volume: 'v', snap: 3 })).rejects.toMatchObject({ reason: 'bad-key' });
    const target = s.path(`${loc.name}-enc.img`);
    await expect(restore({ repo: location, key: wrong, backup: r.id, target, create: true })).rejects.toMatchObject({ reason: 'bad-key' });
    expect(existsSync(target)).toBe(false);
    expect(await keys(backend)).toEqual(before);

    // No object name holds the SHA-256 of any chunk's plaintext (or of its data block).
    const plainHashes = new Set<string>();
    for (const d of new Set(dev2.values())) plainHashes.add(createHash('sha256').update(patternBlock(d, BLOCK)).digest('hex'));
    const names = before.join('\n');
    expect([...plainHashes].filter((h) => names.includes(h) || names.includes(h.slice(0, 16)))).toEqual([]);
    // Nor does any stored chunk hold plaintext.
    const sample = patternBlock(dev2.get(0)!, BLOCK).subarray(0, 64);
    for (const k of before.filter((x) => x.startsWith('chunks/')).slice(0, 20)) expect((await backend.get(k)).includes(sample)).toBe(false);

    await restore({ repo: location, key: { passphrase: 'right horse battery' }, backup: r.id, target, create: true });
    expect(sha256(readFileSync(target))).toBe(sha256(deviceBytes(pool, 2, SIZE)));
    await backend.close();
  });
});

describe('restore: what it refuses leaves nothing behind', () => {
  let repo: Repository;
  let id: string;
  beforeAll(async () => {
    repo = await Repository.create(s.path('refusals-repo'));
    id = (await backup({ ...image(), repo, volume: 'v', snap: 1 })).id;
  });
  afterAll(() => repo.close());

  test('--state naming a file that is not a restore state: refused, the file unchanged, no target made', async () => {
    const precious = s.path('precious.bin');
    writeFileSync(precious, readFileSync(pool.metadata));
    const target = s.path('state-refused.img');
    const e = await restore({ repo, backup: id, target, create: true, stateFile: precious }).catch((x: unknown) => x);
    expect(e).toMatchObject({ code: 'EEXIST', path: precious });
    expect((e as Error).message).toMatch(/^the restore state file .*precious\.bin exists and is not a dmthin-restore-state file \(it would be replaced\): choose another path, or remove the file if it is a damaged state$/);
    expect(readFileSync(precious).equals(readFileSync(pool.metadata))).toBe(true);
    expect(existsSync(target)).toBe(false);
    // A state of its own it replaces as before.
    const ok = await restore({ repo, backup: id, target, create: true, stateFile: s.path('own-state.json') });
    const again = await restore({ repo, backup: id, target, stateFile: ok.stateFile });
    expect(again.previous).toBe(id);
  });

  test('missing directories are not made: the target\'s (with create) and an explicit state file\'s', async () => {
    const missing = s.path('no-such-dir');
    await expect(restore({ repo, backup: id, target: `${missing}/t.img`, create: true })).rejects.toMatchObject({
      code: 'ENOENT',
      message: `the directory ${missing} of the target does not exist: create it first (restore makes files, not directories)`,
    });
    await expect(restore({ repo, backup: id, target: s.path('dirs.img'), create: true, stateFile: `${missing}/s.json` })).rejects.toMatchObject({ code: 'ENOENT' });
    expect([existsSync(missing), existsSync(s.path('dirs.img'))]).toEqual([false, false]);
  });

  test('a created target the filesystem cannot size (EFBIG) is removed again: nothing written, no state, one typed error', async () => {
    const target = s.path('efbig.img');
    const extend = jest.spyOn(BlockWriter.prototype, 'extend').mockRejectedValue(new SystemCallError('EFBIG', "EFBIG: File too large, ftruncate 'x'", { syscall: 'ftruncate' }));
    let e: unknown;
    try {
      e = await restore({ repo, backup: id, target, create: true }).catch((x: unknown) => x);
    } finally {
      extend.mockRestore();
    }
    expect(e).toMatchObject({ code: 'EFBIG', path: target });
    expect((e as Error).message).toMatch(/^cannot make the target .* bytes, backup .*'s device size: its filesystem does not take a file that large; nothing was written and the file this restore created was removed$/);
    expect([existsSync(target), existsSync(`${target}.dmthin-restore.json`), existsSync(`${target}.dmthin-restore.json.lock`)]).toEqual([false, false, false]);
  });

  test('the closing record that cannot be written (ENOSPC) once the target is complete: says so, and the same restore completes it', async () => {
    const target = s.path('nospace-final.img');
    const stateFile = `${target}.dmthin-restore.json`;
    // The pending record is written; the closing one fails.
    const e = await withStateWritesFull(stateFile, () => restore({ repo, backup: id, target, create: true }), 2);
    expect(e).toMatchObject({ code: 'ENOSPC', path: stateFile });
    expect((e as Error).message).toBe(
      `the target ${target} is written, but recording that in ${stateFile} failed (cannot write ${stateFile}: no space left on device): it still records this restore as pending; make room (the state file is replaced through a copy beside it), then run the same restore again to complete it`,
    );
    expect(JSON.parse(readFileSync(stateFile, 'utf8')).pending).not.toBeNull();
    await restore({ repo, backup: id, target, create: true });
    expect(JSON.parse(readFileSync(stateFile, 'utf8')).pending).toBeNull();
  });

  test('a state file that cannot be written (ENOSPC) before the first write: the created target removed, one line that says so', async () => {
    const target = s.path('nospace-state.img');
    const stateFile = `${target}.dmthin-restore.json`;
    const e = await withStateWritesFull(stateFile, () => restore({ repo, backup: id, target, create: true }));
    expect(e).toMatchObject({ code: 'ENOSPC', path: stateFile });
    expect((e as Error).message).toBe(
      `cannot record this restore in ${stateFile} (cannot write ${stateFile}: no space left on device), so the target ${target} this restore created was removed: make room, then run the same restore again`,
    );
    expect([existsSync(target), existsSync(stateFile), existsSync(`${stateFile}.lock`)]).toEqual([false, false, false]);
    // As it says: the same restore again completes.
    await restore({ repo, backup: id, target, create: true });
    expect(JSON.parse(readFileSync(stateFile, 'utf8')).pending).toBeNull();
  });
});

test('a restore whose backup a prune deletes while it runs says so, not that the repository is damaged', async () => {
  const repo = await Repository.create(s.path('deleted-meanwhile-repo'));
  const b = await backup({ ...image(), repo, volume: 'v', snap: 1 });
  const target = s.path('deleted-meanwhile.img');
  const get = repo.getChunk.bind(repo);
  let first = true;
  // The first chunk fetch finds the backup gone: a prune took it and its chunks in between.
  const spy = jest.spyOn(repo, 'getChunk').mockImplementation(async (id, opts) => {
    if (first) {
      first = false;
      await repo.collectGarbage({ deleteBackups: [b.id] });
    }
    return get(id, opts);
  });
  let e: unknown;
  try {
    e = await restore({ repo, backup: b.id, target, create: true }).catch((x: unknown) => x);
  } finally {
    spy.mockRestore();
    await repo.close();
  }
  expect(e).toMatchObject({ reason: 'not-found', code: 'ENOENT' });
  expect((e as Error).message).toMatch(new RegExp(`^backup ${b.id} was deleted while this restore ran \\(by a prune or 'dmthin backups delete'\\), and with it chunks the restore still needed; target .* is incomplete`));
});

test('progress: no event repeats the one before it, and the last one has the final counts', async () => {
  const repo = await Repository.create(s.path('progress-repo'));
  const seen: { chunksRead: number; bytesRead: number; bytesUploaded: number }[] = [];
  const b = await backup({ ...image(), repo, volume: 'v', snap: 3, onProgress: (p) => p.phase === 'data' && seen.push({ chunksRead: p.chunksRead, bytesRead: p.bytesRead, bytesUploaded: p.bytesUploaded }) });
  expect(seen.length).toBeGreaterThan(0);
  for (let i = 1; i < seen.length; i++) expect(seen[i]).not.toEqual(seen[i - 1]);
  expect(seen.at(-1)!.chunksRead).toBe(b.chunksRead);
  const target = s.path('progress.img');
  const got: string[] = [];
  const r = await restore({ repo, backup: b.id, target, create: true, onProgress: (p) => got.push(`${p.chunks}/${p.totalChunks}/${p.bytesWritten}`) });
  expect(got.length).toBeGreaterThan(0);
  expect(new Set(got).size).toBe(got.length);
  expect(got.at(-1)).toBe(`${got.at(-1)!.split('/')[1]}/${got.at(-1)!.split('/')[1]}/${r.bytesWritten}`);
});
