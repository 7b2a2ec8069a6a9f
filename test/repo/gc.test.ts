/**
 * Garbage collection and session journals: a property test (fast-check) that
 * collection keeps every chunk a kept manifest or a journal names and deletes
 * the rest; interrupted sessions are resumed from their journals; verify names
 * backup, index and offset of missing and damaged chunks.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import fc from 'fast-check';
import { LocalBackend } from '../../src/repo/local-backend';
import { Repository, type ManifestEntry } from '../../src/repo/repository';
import { scratchDir } from './scratch';

let dir: string;
beforeEach(() => {
  dir = scratchDir('dmthin-gc-');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const CS = 512;
/** Chunk content number n (distinct for distinct n). */
const content = (n: number) => Buffer.from(`chunk ${n} `.padEnd(CS, '.'));
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const hdr = (volume: string, n: number) => ({ volume, deviceSize: n * CS, chunkSize: CS, createdMs: Date.now(), source: {}, base: null });

function chunkFiles(loc: string): Set<string> {
  const out = new Set<string>();
  const root = join(loc, 'chunks');
  if (!existsSync(root)) return out;
  for (const d of readdirSync(root)) for (const f of readdirSync(join(root, d))) out.add(f);
  return out;
}

type Op =
  | { kind: 'backup'; volume: number; chunks: number[] }
  | { kind: 'interrupt'; volume: number; chunks: number[] }
  | { kind: 'delete'; which: number }
  | { kind: 'gc' };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('backup' as const), volume: fc.nat(2), chunks: fc.array(fc.nat(15), { maxLength: 6 }) }),
  fc.record({ kind: fc.constant('interrupt' as const), volume: fc.nat(2), chunks: fc.array(fc.nat(15), { maxLength: 4 }) }),
  fc.record({ kind: fc.constant('delete' as const), which: fc.nat(10) }),
  fc.constant({ kind: 'gc' as const }),
);

describe('collectGarbage', () => {
  it('keeps every chunk a kept manifest or a journal references, deletes every other (property)', async () => {
    let run = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 12 }), async (ops) => {
        const loc = join(dir, `r${run++}`);
        const repo = await Repository.create(loc, { compression: 'none' });
        // The model: what each committed backup and each pending journal (per volume) references.
        const backups = new Map<string, Set<string>>();
        const journals = new Map<number, Set<string>>();
        try {
          for (const op of [...ops, { kind: 'gc' } as Op]) {
            if (op.kind === 'backup' || op.kind === 'interrupt') {
              const s = await repo.beginBackup(`vol${op.volume}`);
              const ids = op.chunks.map((n) => sha(content(n)));
              const before = journals.get(op.volume) ?? new Set();
              // Resumed ids are exactly what the model's journals of that volume hold.
              expect([...s.resumedIds].sort()).toEqual([...before].sort());
              for (const n of op.chunks) await s.putChunk(content(n));
              if (op.kind === 'backup') {
                const sum = await s.commit(hdr(`vol${op.volume}`, op.chunks.length), ids.map((id, index) => ({ index, id })));
                backups.set(sum.id, new Set(ids));
                journals.delete(op.volume); // a commit ends the journals it adopted
              } else {
                await s[Symbol.asyncDispose]();
                journals.set(op.volume, new Set([...before, ...ids]));
              }
            } else if (op.kind === 'delete') {
              const ids = [...backups.keys()];
              if (!ids.length) continue;
              const victim = ids[op.which % ids.length]!;
              await repo.deleteBackups([victim]);
              backups.delete(victim);
            } else {
              const present = chunkFiles(loc);
              const needed = new Set([...[...backups.values()].flatMap((s) => [...s]), ...[...journals.values()].flatMap((s) => [...s])]);
              const r = await repo.collectGarbage();
              const after = chunkFiles(loc);
              for (const id of needed) expect(after.has(id)).toBe(true);
              for (const id of after) expect(needed.has(id)).toBe(true);
              expect(r.deletedChunks).toBe(present.size - after.size);
            }
          }
          // Every kept backup restores: each chunk reads back and re-hashes.
          const v = await repo.verify({ data: true });
          expect(v.problems).toEqual([]);
          expect(v.backups).toBe(backups.size);
        } finally {
          await repo.close();
          rmSync(loc, { recursive: true, force: true });
        }
      }),
      { numRuns: 25 },
    );
  });

  it('deletes chunk maps left by a commit that crashed before its header, and keeps committed ones', async () => {
    const loc = join(dir, 'r');
    await using repo = await Repository.create(loc);
    const s = await repo.beginBackup('v');
    const { id } = await s.putChunk(content(1));
    const sum = await s.commit(hdr('v', 1), [{ index: 0, id }]);
    writeFileSync(join(loc, 'maps', '20000101T000000Z-0000abcd'), readFileSync(join(loc, 'maps', sum.id)));
    await repo.collectGarbage();
    expect(readdirSync(join(loc, 'maps'))).toEqual([sum.id]);
    expect(chunkFiles(loc)).toEqual(new Set([id]));
  });

  it('stops before deleting anything when a manifest cannot be read', async () => {
    const loc = join(dir, 'r');
    await using repo = await Repository.create(loc);
    const s = await repo.beginBackup('v');
    const { id } = await s.putChunk(content(1));
    const sum = await s.commit(hdr('v', 1), [{ index: 0, id }]);
    const s2 = await repo.beginBackup('v');
    await s2.putChunk(content(2));
    await s2.commit(hdr('v', 0), []);
    rmSync(join(loc, 'maps', sum.id));
    const before = chunkFiles(loc);
    await expect(repo.collectGarbage()).rejects.toMatchObject({ reason: 'not-found', message: expect.stringContaining(sum.id) });
    expect(chunkFiles(loc)).toEqual(before);
    expect(readdirSync(join(loc, 'locks'))).toEqual([]);
  });
});

describe('journals and resume', () => {
  it('an interrupted session is resumed: its chunks are not uploaded again, and the commit clears the journal', async () => {
    const loc = join(dir, 'r');
    await using repo = await Repository.create(loc);
    const s1 = await repo.beginBackup('v');
    const first = [];
    for (let n = 0; n < 5; n++) first.push(await s1.putChunk(content(n)));
    expect(first.every((r) => r.stored)).toBe(true);
    await s1[Symbol.asyncDispose]();
    const s2 = await repo.beginBackup('v');
    expect([...s2.resumedIds].sort()).toEqual(first.map((r) => r.id).sort());
    const second = [];
    for (let n = 0; n < 7; n++) second.push(await s2.putChunk(content(n)));
    expect(second.map((r) => r.stored)).toEqual([false, false, false, false, false, true, true]);
    const sum = await s2.commit(hdr('v', 7), second.map((r, index) => ({ index, id: r.id })));
    expect(sum.newChunks).toBe(2);
    expect(existsSync(join(loc, 'journals')) ? readdirSync(join(loc, 'journals'), { recursive: true, withFileTypes: true }).filter((e) => e.isFile()) : []).toEqual([]);
    const s3 = await repo.beginBackup('v');
    expect(s3.resumedIds.size).toBe(0);
    await s3[Symbol.asyncDispose]();
  });

  it('a dead journal older than 7 days is deleted by GC before its chunks; a younger one keeps them', async () => {
    const loc = join(dir, 'r');
    await using repo = await Repository.create(loc);
    for (const vol of ['old', 'young']) {
      const s = await repo.beginBackup(vol);
      await s.putChunk(content(vol === 'old' ? 1 : 2));
      await s[Symbol.asyncDispose]();
    }
    const eightDaysAgo = new Date(Date.now() - 8 * 24 * 3600 * 1000);
    const oldDir = join(loc, 'journals', 'old');
    for (const f of readdirSync(oldDir, { recursive: true, withFileTypes: true })) if (f.isFile()) utimesSync(join(f.parentPath ?? f.path, f.name), eightDaysAgo, eightDaysAgo);
    expect(await repo.collectGarbage()).toMatchObject({ deletedChunks: 1 });
    expect(chunkFiles(loc)).toEqual(new Set([sha(content(2))]));
    const o = await repo.beginBackup('old');
    expect(o.resumedIds.size).toBe(0);
    await o[Symbol.asyncDispose]();
    const y = await repo.beginBackup('young');
    expect([...y.resumedIds]).toEqual([sha(content(2))]);
    await y[Symbol.asyncDispose]();
  });

  it("removes a killed writer's temporary files, however young, except in locks/", async () => {
    const loc = join(dir, 'r');
    await using repo = await Repository.create(loc);
    const s = await repo.beginBackup('v');
    await s.putChunk(content(1));
    await s[Symbol.asyncDispose]();
    const id = sha(content(1));
    const chunkDir = join(loc, 'chunks', id.slice(0, 2));
    // What a SIGKILL mid-put leaves: the temporary file of a chunk, of a map, and of a lock being taken.
    const dead = [join(chunkDir, `${sha(content(2))}~tmp~1234-abcd`), join(loc, 'maps', 'x~tmp~1234-abce')];
    const lockTemp = join(loc, 'locks', 'y~tmp~1234-abcf');
    for (const f of [...dead, lockTemp]) {
      mkdirSync(dirname(f), { recursive: true });
      writeFileSync(f, 'partial');
    }
    expect(await repo.collectGarbage()).toEqual({ deletedChunks: 0, freedBytes: 0, deletedTemporary: 2 });
    expect([...dead, lockTemp].map(existsSync)).toEqual([false, false, true]);
    expect(readdirSync(chunkDir)).toEqual([id]);
  });

  it("another volume's journal and a live session's journal are not resumed", async () => {
    const loc = join(dir, 'r');
    await using repo = await Repository.create(loc);
    const a = await repo.beginBackup('a');
    await a.putChunk(content(1));
    await a[Symbol.asyncDispose]();
    const live = await repo.beginBackup('b');
    await live.putChunk(content(2));
    await (live as unknown as { flushJournal(): Promise<void> }).flushJournal();
    const other = await repo.beginBackup('b');
    expect(other.resumedIds.size).toBe(0);
    await other[Symbol.asyncDispose]();
    await live[Symbol.asyncDispose]();
  });
});

describe('verify', () => {
  it('names backup, chunk index and byte offset of missing and damaged chunks', async () => {
    const loc = join(dir, 'r');
    await using repo = await Repository.create(loc);
    const s = await repo.beginBackup('v');
    const ids = [];
    for (let n = 0; n < 4; n++) ids.push((await s.putChunk(content(n))).id);
    const sum = await s.commit(hdr('v', 10), [
      { index: 1, id: ids[0]! },
      { index: 4, id: ids[1]! },
      { index: 7, id: ids[2]! },
      { index: 9, id: ids[3]! },
    ]);
    rmSync(join(loc, 'chunks', ids[1]!.slice(0, 2), ids[1]!));
    const p = join(loc, 'chunks', ids[2]!.slice(0, 2), ids[2]!);
    const b = readFileSync(p);
    b[b.length >> 1]! ^= 4;
    writeFileSync(p, b);
    const progress: number[] = [];
    const quick = await repo.verify({ onProgress: (x) => progress.push(x.chunks) });
    expect(quick).toEqual({ backups: 1, chunks: 4, problems: [{ backup: sum.id, index: 4, offset: 4 * CS, id: ids[1], reason: 'missing' }], problemsOmitted: 0, damagedChunks: [] });
    expect(progress.at(-1)).toBe(4);
    const full = await repo.verify({ data: true });
    expect(full.problems).toEqual([
      { backup: sum.id, index: 4, offset: 4 * CS, id: ids[1], reason: 'missing' },
      { backup: sum.id, index: 7, offset: 7 * CS, id: ids[2], reason: 'corrupt' },
    ]);
    expect(full.damagedChunks).toEqual([ids[2]]); // present but damaged: what removeDamagedChunks takes (not the missing one)
    await expect(repo.getChunk(ids[2]!)).rejects.toMatchObject({ reason: 'corrupt', key: `chunks/${ids[2]!.slice(0, 2)}/${ids[2]}` });
  });
});

describe('commit names only chunks the repository holds', () => {
  it('refuses an entry naming a chunk never stored: no backup, and the session can still commit', async () => {
    const loc = join(dir, 'r');
    await using repo = await Repository.create(loc);
    await using s = await repo.beginBackup('v');
    const { id } = await s.putChunk(content(1));
    const never = sha(content(2));
    const e = await s.commit(hdr('v', 3), [{ index: 0, id }, { index: 2, id: never }]).then(
      () => null,
      (err: unknown) => err,
    );
    expect(e).toMatchObject({ name: 'RepoError', reason: 'not-found', code: 'ENOENT', key: `chunks/${never.slice(0, 2)}/${never}` });
    expect((e as Error).message).toBe(`manifest entry 2 names chunk ${never}, which the repository does not hold: store each chunk with putChunk() before commit() names it`);
    expect(await repo.listBackups()).toEqual([]);
    // Nothing was committed: the same session commits what it did store.
    const sum = await s.commit(hdr('v', 3), [{ index: 0, id }]);
    expect(sum.chunks).toBe(1);
    await repo.collectGarbage();
    expect((await repo.verify()).problems).toEqual([]);
  });

  it("takes entries read from the base's manifest as they are, and other stored chunks after a look-up; the first absent one (by index) is named", async () => {
    const loc = join(dir, 'r');
    // Counts the chunk look-ups.
    const backend = new LocalBackend(loc);
    const stat = backend.stat.bind(backend);
    let lookUps = 0;
    backend.stat = (key, opts) => {
      if (key.startsWith('chunks/')) lookUps++;
      return stat(key, opts);
    };
    await using repo = await Repository.openBackend(backend, { create: {} });
    const ids: string[] = [];
    let base: string;
    {
      await using s = await repo.beginBackup('v');
      for (let n = 0; n < 40; n++) ids.push((await s.putChunk(content(n))).id);
      base = (await s.commit(hdr('v', 40), ids.map((id, index) => ({ index, id })))).id;
    }
    // Entries read before the session began are looked up: nothing held their chunks meanwhile.
    const early: ManifestEntry[] = [];
    for await (const e of (await repo.readManifest(base)).entries) early.push(e);
    await using s = await repo.beginBackup('v');
    const fresh = (await s.putChunk(content(100))).id;
    const read: ManifestEntry[] = [];
    for await (const e of (await repo.readManifest(base)).entries) read.push(e);
    expect(read).toEqual(ids.map((id, index) => ({ index, id })));
    expect(read.every((e) => Object.isFrozen(e))).toBe(true);
    // The base's entries as read, one of its chunks at another index (looked up), a new one.
    const entries = read.map((e) => (e.index === 5 ? { index: 5, id: fresh } : e.index === 6 ? { index: 6, id: ids[30]! } : e));
    // Among many look-ups in flight, two absent ones: the lower index is named.
    const absent = [sha(content(200)), sha(content(201))];
    const bad = entries.map((x) => ({ ...x, id: x.index >= 10 && x.index < 30 ? ids[39 - x.index]! : x.id }));
    bad[33] = { index: 33, id: absent[1]! };
    bad[31] = { index: 31, id: absent[0]! };
    await expect(s.commit({ ...hdr('v', 40), base }, bad)).rejects.toMatchObject({ reason: 'not-found', message: expect.stringMatching(/^manifest entry 31 names chunk /) });
    lookUps = 0;
    const sum = await s.commit({ ...hdr('v', 40), base }, entries);
    expect(sum.chunks).toBe(40);
    expect(lookUps).toBe(1); // ids[30] at index 6; the rest are the base's
    await using s2 = await repo.beginBackup('v2');
    lookUps = 0;
    await s2.commit({ ...hdr('v2', 40), base: null }, early);
    expect(lookUps).toBe(40);
    // One chunk named at many indexes is looked up once (found by an outside hunt: once per entry).
    await using s3 = await repo.beginBackup('v3');
    lookUps = 0;
    await s3.commit({ ...hdr('v3', 40), base: null }, early.map((e) => ({ index: e.index, id: ids[0]! })));
    expect(lookUps).toBeLessThanOrEqual(16); // at most the look-ups already in flight
    expect((await repo.verify({ data: true })).problems).toEqual([]);
  });

  it('an aborted commit rejects with AbortError and commits nothing', async () => {
    const loc = join(dir, 'r');
    await using repo = await Repository.create(loc);
    await using s = await repo.beginBackup('v');
    const { id } = await s.putChunk(content(1));
    const ac = new AbortController();
    ac.abort();
    await expect(s.commit(hdr('v', 1), [{ index: 0, id }], { signal: ac.signal })).rejects.toMatchObject({ name: 'AbortError' });
    expect(await repo.listBackups()).toEqual([]);
  });
});
