/**
 * Manifests stream both ways: a manifest of 1M entries is written from a
 * generator and read back with the heap staying far below what holding the
 * entries would take; early exit from the reader closes the stream.
 */
import { rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { LocalBackend } from '../../src/repo/local-backend';
import { Repository, type ManifestEntry } from '../../src/repo/repository';
import { scratchDir } from './scratch';

let dir: string;
beforeEach(() => {
  dir = scratchDir('dmthin-manifest-');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const N = 1_000_000;
/** A distinct, well-formed id per index. */
const idOf = (i: number) => i.toString(16).padStart(64, 'c');

/**
 * A local repository whose backend reports every chunk present: these tests
 * are about the map, and commit() refuses entries naming chunks the
 * repository lacks (the subject of test/repo/gc.test.ts).
 */
async function repositoryWithEveryChunk(loc: string): Promise<Repository> {
  const backend = new LocalBackend(loc);
  const stat = backend.stat.bind(backend);
  backend.stat = async (key, opts) => (key.startsWith('chunks/') ? { key, size: 1, mtimeMs: 0 } : stat(key, opts));
  return Repository.openBackend(backend, { create: {} });
}

it('writes and reads a manifest of 1M entries with bounded heap', async () => {
  const loc = join(dir, 'r');
  await using repo = await repositoryWithEveryChunk(loc);
  function* entries(): Generator<ManifestEntry> {
    // Holes between runs of entries, as a sparse thin volume has.
    for (let i = 0, index = 0; i < N; i++, index += i % 100 === 0 ? 37 : 1) yield { index, id: idOf(i) };
  }
  const hdr = { volume: 'big', deviceSize: 2 ** 40, chunkSize: 65536, createdMs: 1, source: {}, base: null };
  // These entries' chunks are looked up by commit (the backend says present): the garbage of 1M
  // look-ups is not this test's subject, so this first commit is not measured.
  let first: string;
  {
    await using s0 = await repo.beginBackup('big');
    first = (await s0.commit(hdr, entries())).id;
  }
  let peak = 0;
  const base = process.memoryUsage().heapUsed;
  const sample = () => {
    peak = Math.max(peak, process.memoryUsage().heapUsed - base);
  };
  // Measured: a commit streaming the first manifest's entries as read (taken without look-ups), then a read.
  async function* copied(): AsyncGenerator<ManifestEntry> {
    let n = 0;
    for await (const e of (await repo.readManifest(first)).entries) {
      if (n++ % 50_000 === 0) sample();
      yield e;
    }
  }
  await using s = await repo.beginBackup('big');
  const sum = await s.commit(hdr, copied());
  expect(sum.chunks).toBe(N);
  expect(statSync(join(loc, 'maps', sum.id)).size).toBeGreaterThan(N * 33);

  const { header, entries: read } = await repo.readManifest(sum.id);
  expect(header.chunks).toBe(N);
  let i = 0;
  let index = 0;
  for await (const e of read) {
    if (e.index !== index || e.id !== idOf(i)) throw new Error(`entry ${i}: ${JSON.stringify(e)}, want index ${index}`);
    i++;
    index += i % 100 === 0 ? 37 : 1;
    if (i % 50_000 === 0) sample();
  }
  expect(i).toBe(N);
  // Holding 1M entries (an object and a 64-character string each) takes well over 100 MB.
  expect(peak).toBeLessThan(48 * 2 ** 20);
});

it('a reader that stops early releases the stream, and each read starts afresh', async () => {
  await using repo = await repositoryWithEveryChunk(join(dir, 'r'));
  await using s = await repo.beginBackup('v');
  const entries = Array.from({ length: 5000 }, (_, i) => ({ index: i, id: idOf(i) }));
  const sum = await s.commit({ volume: 'v', deviceSize: 5000 * 512, chunkSize: 512, createdMs: 1, source: {}, base: null }, entries);
  const m = await repo.readManifest(sum.id);
  let n = 0;
  for await (const _ of m.entries) if (++n === 10) break;
  const all: ManifestEntry[] = [];
  for await (const e of m.entries) all.push(e);
  expect(all).toEqual(entries);
});
