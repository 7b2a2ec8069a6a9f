// The repository (src/repo/repository.ts) on S3 through `s3://bucket/prefix`,
// on a real Ceph cluster: the pinned API end to end, encryption, and a backup
// through a radosgw that crashes mid-way (ridden out by retries; or, past
// them, failed and resumed by the next run without re-uploading). Expected
// values come from the test's own chunks, never from the repository's output.
import { createHash, randomBytes } from 'node:crypto';
import { RepoError } from '../../src/errors';
import { Repository, type ManifestEntry } from '../../src/repo/repository';
import { createS3Backend } from '../../src/repo/s3-backend';
import { describeS3 } from '../helpers/ceph';
import { throughLossyProxy } from '../helpers/tcp-proxy';

const CS = 64 * 1024;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const hdr = (volume: string, chunks: number, base: string | null = null) => ({
  volume,
  deviceSize: chunks * CS,
  chunkSize: CS,
  createdMs: Date.now(),
  source: { test: 'repository-s3' },
  base,
});
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error('expected a rejection');
}

describeS3('Repository on S3 (Ceph radosgw)', (s3) => {
  it('the pinned API end to end: create, two backups sharing chunks, list, read, verify, damage found, delete, collect', async () => {
    const loc = s3.location();
    const chunksA = Array.from({ length: 12 }, () => randomBytes(CS));
    const chunksB = [...chunksA.slice(0, 6), ...Array.from({ length: 6 }, () => randomBytes(CS))];
    {
      await using repo = await Repository.create(loc.url);
      expect(repo.location).toBe(loc.url);
      expect(repo.encrypted).toBe(false);
      expect(await rejection(Repository.create(loc.url))).toMatchObject({ reason: 'exists' });
    }
    await using repo = await Repository.open(loc.url);
    const ids: string[] = [];
    for (const [vol, chunks] of [['vol', chunksA], ['vol', chunksB]] as const) {
      await using s = await repo.beginBackup(vol);
      const entries: ManifestEntry[] = [];
      for (let i = 0; i < chunks.length; i++) {
        const r = await s.putChunk(chunks[i]!);
        expect(r.id).toBe(sha(chunks[i]!));
        entries.push({ index: i * 2, id: r.id }); // every other chunk a hole
      }
      const sum = await s.commit(hdr(vol, chunks.length * 2, ids[0] ?? null), entries);
      expect(sum.chunks).toBe(chunks.length);
      // The second backup shares 6 chunks with the first: 6 new.
      expect(sum.newChunks).toBe(ids.length === 0 ? 12 : 6);
      ids.push(sum.id);
    }
    const list = await repo.listBackups();
    expect(list.map((b) => b.id)).toEqual(ids);
    expect(list[1]!.base).toBe(ids[0]);
    const m = await repo.readManifest(ids[1]!);
    const entries = await collect(m.entries);
    expect(entries.map((e) => e.index)).toEqual(chunksB.map((_, i) => i * 2));
    for (let i = 0; i < chunksB.length; i++) expect(sha(await repo.getChunk(entries[i]!.id))).toBe(sha(chunksB[i]!));
    expect((await repo.verify({ data: true })).problems).toEqual([]);

    // Damage behind the repository's back: one chunk of B gone, one replaced.
    const raw = await createS3Backend(loc.bucket, loc.prefix);
    const all = (await collect(raw.list('chunks/'))).map((o) => o.key);
    const keyOf = (id: string): string => all.find((k) => k.endsWith(id))!;
    const gone = sha(chunksB[8]!);
    const bad = sha(chunksB[10]!);
    const badKey = keyOf(bad);
    const original = await raw.get(badKey);
    await raw.delete([keyOf(gone)]);
    const flipped = Buffer.from(original);
    flipped[flipped.length - 1]! ^= 1;
    await raw.put(badKey, flipped);
    const rep = await repo.verify({ data: true });
    expect(rep.problems.map((p) => [p.backup, p.index, p.offset, p.id, p.reason]).sort()).toEqual(
      [
        [ids[1], 16, 16 * CS, gone, 'missing'],
        [ids[1], 20, 20 * CS, bad, 'corrupt'],
      ].sort(),
    );
    expect(await rejection(repo.getChunk(gone))).toMatchObject({ reason: 'not-found' });
    expect(await rejection(repo.getChunk(bad))).toMatchObject({ reason: 'corrupt' });
    // The damaged one is removed (so that a backup can store it again); the missing one is said to be absent.
    expect(rep.damagedChunks).toEqual([bad]);
    expect(await repo.removeDamagedChunks([...rep.damagedChunks, gone])).toEqual({ removed: [bad], sound: [], absent: [gone] });
    expect(await rejection(repo.getChunk(bad))).toMatchObject({ reason: 'not-found' });
    await raw.put(badKey, original);

    // Prune the first backup: its 6 own chunks go, B's stay readable.
    await repo.deleteBackups([ids[0]!]);
    const gc = await repo.collectGarbage();
    expect(gc.deletedChunks).toBe(6);
    expect((await repo.listBackups()).map((b) => b.id)).toEqual([ids[1]]);
    const left = new Set((await collect(raw.list('chunks/'))).map((o) => o.key.split('/').pop()));
    expect(left).toEqual(new Set(chunksB.map(sha).filter((x) => x !== gone)));
    for (const c of chunksA.slice(6)) expect(left.has(sha(c))).toBe(false);
    await raw.close();
  });

  it.each([
    ['plain', undefined],
    ['encrypted', { passphrase: 'lost answers' }],
  ])('%s: chunks whose PUT answers were lost after they landed count as new, once (newChunks, storedBytes)', async (_kind, key) => {
    const loc = s3.location();
    const chunks = Array.from({ length: 10 }, () => randomBytes(CS));
    // Three answers lost: the first chunk PUTs land on the server, their
    // replies never reach the writer, which retries into its own objects.
    await throughLossyProxy(s3.endpoint, async (proxy) => {
      for (let i = 0; i < 3; i++) proxy.loseNext(/^PUT \S*\/chunks\//);
      const backend = await createS3Backend(loc.bucket, loc.prefix, { baseDelayMs: 20, maxDelayMs: 20 });
      await using repo = await Repository.openBackend(backend, { create: key ? { key } : {}, key });
      await using s = await repo.beginBackup('vol');
      const results = [];
      for (const c of chunks) results.push(await s.putChunk(c));
      expect(proxy.applied).toBe(3);
      expect(results.map((r) => r.stored)).toEqual(Array(10).fill(true));
      const sum = await s.commit(hdr('vol', chunks.length), results.map((r, index) => ({ index, id: r.id })));
      expect(sum.newChunks).toBe(10);
      // Listed through the proxy, whose rules are used up: it only forwards now.
      const objects = await collect(backend.list('chunks/'));
      expect(objects).toHaveLength(10);
      expect(sum.storedBytes).toBe(objects.reduce((n, o) => n + o.size, 0));
      const got = await collect((await repo.readManifest(sum.id)).entries);
      for (let i = 0; i < chunks.length; i++) expect(sha(await repo.getChunk(got[i]!.id))).toBe(sha(chunks[i]!));
      await repo.close();
      await backend.close();
    });
  });

  it('create and commit whose answers were lost after they landed: create succeeds, the commit resolves and the backup is listed once', async () => {
    const loc = s3.location();
    const chunks = Array.from({ length: 3 }, () => randomBytes(CS));
    await throughLossyProxy(s3.endpoint, async (proxy) => {
      proxy.loseNext(/^PUT \S*\/config[ ?]/);
      const backend = await createS3Backend(loc.bucket, loc.prefix, { baseDelayMs: 20, maxDelayMs: 20 });
      // Before the fix: "a repository already exists" for the config this call had just written.
      await using repo = await Repository.openBackend(backend, { create: {} });
      expect(proxy.applied).toBe(1);
      await using s = await repo.beginBackup('vol');
      const entries: ManifestEntry[] = [];
      for (let i = 0; i < chunks.length; i++) entries.push({ index: i, id: (await s.putChunk(chunks[i]!)).id });
      proxy.loseNext(/^PUT \S*\/backups\//);
      const sum = await s.commit(hdr('vol', chunks.length), entries);
      expect(proxy.applied).toBe(2);
      expect(sum.newChunks).toBe(3);
      expect((await repo.listBackups()).map((b) => b.id)).toEqual([sum.id]);
      const got = await collect((await repo.readManifest(sum.id)).entries);
      for (let i = 0; i < chunks.length; i++) expect(sha(await repo.getChunk(got[i]!.id))).toBe(sha(chunks[i]!));
      await repo.close();
      await backend.close();
    });
  });

  it('encrypted on S3: a wrong passphrase is refused with nothing written; names reveal no plaintext hash', async () => {
    const loc = s3.location();
    const plain = randomBytes(CS);
    {
      await using repo = await Repository.create(loc.url, { key: { passphrase: 'right horse battery' } });
      expect(repo.encrypted).toBe(true);
      await using s = await repo.beginBackup('secret-volume');
      const r = await s.putChunk(plain);
      expect(r.id).not.toBe(sha(plain));
      await s.commit(hdr('secret-volume', 1), [{ index: 0, id: r.id }]);
    }
    const raw = await createS3Backend(loc.bucket, loc.prefix);
    const before = await collect(raw.list(''));
    expect(before.some((o) => o.key.includes(sha(plain)) || o.key.includes('secret-volume'))).toBe(false);
    const e = await rejection(Repository.open(loc.url, { key: { passphrase: 'wrong horse' } }));
    expect(e).toBeInstanceOf(RepoError);
    expect(e).toMatchObject({ reason: 'bad-key' });
    expect(await collect(raw.list(''))).toEqual(before);
    await using repo = await Repository.open(loc.url, { key: { passphrase: 'right horse battery' } });
    const [b] = await repo.listBackups();
    const [entry] = await collect((await repo.readManifest(b!.id)).entries);
    expect(sha(await repo.getChunk(entry!.id))).toBe(sha(plain));
    await raw.close();
  });
});

describeS3(
  'Repository on S3: radosgw crashes mid-backup',
  (s3) => {
    it('a backup rides out a gateway crash and restart, and commits whole', async () => {
      const loc = s3.location();
      const chunks = Array.from({ length: 40 }, () => randomBytes(CS));
      let retries = 0;
      const backend = await createS3Backend(loc.bucket, loc.prefix, { onRetry: () => retries++ });
      await using repo = await Repository.openBackend(backend, { create: {} });
      await using s = await repo.beginBackup('vol');
      const entries: ManifestEntry[] = [];
      let outage: Promise<void> | undefined;
      let killed = false;
      for (let i = 0; i < chunks.length; i++) {
        if (i === 10) {
          outage = (async () => {
            await s3.stopGateway();
            killed = true;
            await sleep(1000);
            await s3.startGateway();
          })();
        }
        // Slowed until the gateway is dead, so the crash lands mid-backup.
        if (outage && !killed) await sleep(100);
        entries.push({ index: i, id: (await s.putChunk(chunks[i]!)).id });
      }
      await outage;
      expect(retries).toBeGreaterThan(0);
      const sum = await s.commit(hdr('vol', chunks.length), entries);
      expect(sum.newChunks).toBe(40);
      const m = await repo.readManifest(sum.id);
      const got = await collect(m.entries);
      for (let i = 0; i < chunks.length; i++) expect(sha(await repo.getChunk(got[i]!.id))).toBe(sha(chunks[i]!));
      expect((await repo.verify({ data: true })).problems).toEqual([]);
      await repo.close();
      await backend.close();
    });

    it('an outage past the retries fails the backup, leaves no backup visible, and the next run resumes without re-uploading', async () => {
      const loc = s3.location();
      const chunks = Array.from({ length: 20 }, () => randomBytes(CS));
      {
        await using r0 = await Repository.create(loc.url);
      }
      // A writer with a small retry budget (2 attempts) so the outage outlasts it.
      const impatient = await createS3Backend(loc.bucket, loc.prefix, { maxAttempts: 2, baseDelayMs: 50, maxDelayMs: 50 });
      const repo1 = await Repository.openBackend(impatient);
      const s1 = await repo1.beginBackup('vol');
      for (let i = 0; i < 10; i++) await s1.putChunk(chunks[i]!);
      await s3.stopGateway();
      const e = await rejection(s1.putChunk(chunks[10]!));
      expect(e).toBeInstanceOf(RepoError);
      expect(e).toMatchObject({ reason: 'backend', key: expect.stringMatching(/^chunks\//) });
      // The session cannot write its journal or drop its lock either.
      await Promise.resolve(s1[Symbol.asyncDispose]()).catch(() => undefined);
      await repo1.close().catch(() => undefined);
      await impatient.close();
      await s3.startGateway();

      await using repo = await Repository.open(loc.url);
      expect(await repo.listBackups()).toEqual([]);
      await using s2 = await repo.beginBackup('vol');
      const results = [];
      for (const c of chunks) results.push(await s2.putChunk(c));
      // The ten stored before the outage are not uploaded again.
      expect(results.slice(0, 10).map((r) => r.stored)).toEqual(Array(10).fill(false));
      expect(results.slice(10).map((r) => r.stored)).toEqual(Array(10).fill(true));
      const sum = await s2.commit(
        hdr('vol', chunks.length),
        results.map((r, i) => ({ index: i, id: r.id })),
      );
      expect(sum.newChunks).toBe(10);
      expect((await repo.listBackups()).map((b) => b.id)).toEqual([sum.id]);
      expect((await repo.verify({ data: true })).problems).toEqual([]);
    });
  },
  { ownGateway: true },
);
