/**
 * The compression workers: the bytes they make are the bytes Node's zlib
 * makes on this thread (stored chunks do not change with where they were
 * compressed), a failure inside zlib comes back as an error (and as
 * RepoError 'corrupt' through the envelope), the caller's memory is neither
 * detached nor read beyond its slice, and many tasks at once each get their
 * own answer; all of it on the workers and on the calling thread, which does
 * the work until a process has (de)compressed 16 MiB.
 */
import { spawnSync } from 'node:child_process';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { brotliCompressSync, constants as zc, deflateRawSync } from 'node:zlib';
import { RepoError } from '../../src/errors';
import { seal, unseal, unsealChunkAsync, parseCompression } from '../../src/repo/codec';
import { WorkerTaskError, compressInWorker, decompressInWorker, setInlineBudget, workersStarted } from '../../src/repo/codec-workers';

const copyOut = (z: Uint8Array) => Buffer.from(z);
const text = Buffer.from('the quick brown fox jumps over the lazy dog; '.repeat(2000));
const brotli = (b: Uint8Array, q: number) => brotliCompressSync(b, { params: { [zc.BROTLI_PARAM_QUALITY]: q, [zc.BROTLI_PARAM_SIZE_HINT]: b.length } });

// The calling thread first: once started, the workers stay for the process.
describe.each([
  ['on the calling thread, before the workers start', Infinity],
  ['on worker threads', 0],
])('compression %s', (_where, budget) => {
  beforeAll(() => setInlineBudget(budget));
  afterAll(() => setInlineBudget(0));

  it.each([1, 5, 11])('brotli quality %i: the same bytes as brotliCompressSync', async (q) => {
    for (const s of [text, randomBytes(70_000), Buffer.alloc(4 << 20, 7), Buffer.alloc(0)]) {
      expect((await compressInWorker(2, q, s, copyOut)).equals(brotli(s, q))).toBe(true);
    }
  });

  it.each([1, 9])('deflate level %i: the same bytes as deflateRawSync', async (level) => {
    for (const s of [text, randomBytes(70_000)]) expect((await compressInWorker(1, level, s, copyOut)).equals(deflateRawSync(s, { level }))).toBe(true);
  });

  it('takes a slice of a larger buffer without reading past it or detaching it', async () => {
    const big = Buffer.concat([Buffer.alloc(1000, 1), text, Buffer.alloc(1000, 2)]);
    const slice = big.subarray(1000, 1000 + text.length);
    const z = await compressInWorker(2, 1, slice, copyOut);
    expect(big.length).toBe(text.length + 2000); // not detached
    expect(z.equals(brotli(text, 1))).toBe(true);
    const { out } = await decompressInWorker(2, z, 1 << 20);
    expect(out.equals(text)).toBe(true);
  });

  it('a result larger than the room its slab has (a hint too small) comes back whole', async () => {
    const z = brotli(text, 1);
    const { out } = await decompressInWorker(2, z, 1 << 20, 1000);
    expect(out.equals(text)).toBe(true);
  });

  it('the compressed view lives in a reused slab: what the callback copied stays right after later tasks', async () => {
    const a = await compressInWorker(2, 1, text, copyOut);
    const view = await compressInWorker(2, 1, text, (z) => z);
    await compressInWorker(2, 1, randomBytes(60_000), copyOut);
    expect(a.equals(brotli(text, 1))).toBe(true);
    expect(view).toBeInstanceOf(Uint8Array); // a view: the API says it is valid only during the callback
  });

  it('decompresses with the chunk id of the result: SHA-256, or HMAC-SHA-256 under a key', async () => {
    const z = brotli(text, 1);
    const key = randomBytes(32);
    expect((await decompressInWorker(2, z, 1 << 20, text.length, null)).id).toBe(createHash('sha256').update(text).digest('hex'));
    expect((await decompressInWorker(2, z, 1 << 20, text.length, key)).id).toBe(createHmac('sha256', key).update(text).digest('hex'));
    expect((await decompressInWorker(2, z, 1 << 20)).id).toBeUndefined();
  });

  it('a payload that is not brotli or deflate, or decodes to more than the bound, fails with zlib\'s reason', async () => {
    await expect(decompressInWorker(2, Buffer.from([0xff, 0xff, 0xff]), 1 << 20)).rejects.toMatchObject({ constructor: WorkerTaskError, code: expect.stringMatching(/^ERR_/) });
    await expect(decompressInWorker(1, Buffer.from([0xff, 0xff, 0xff]), 1 << 20)).rejects.toMatchObject({ constructor: WorkerTaskError, code: 'Z_DATA_ERROR' });
    await expect(decompressInWorker(2, brotli(Buffer.alloc(1 << 20), 1), 65536)).rejects.toBeInstanceOf(WorkerTaskError);
    // A stream cut short.
    const z = brotli(text, 5);
    await expect(decompressInWorker(2, z.subarray(0, z.length - 1), 1 << 20)).rejects.toBeInstanceOf(WorkerTaskError);
  });

  it('bytes after the end of the compressed stream (which zlib ignores) are refused: whole streams plus a byte, an empty brotli stream plus garbage, 2000 random payloads', async () => {
    const trailing = { constructor: WorkerTaskError, code: 'Z_DATA_ERROR', message: expect.stringMatching(/^the compressed stream ends after \d+ of its \d+ bytes/) };
    const b = brotli(text, 5);
    const d = deflateRawSync(text);
    // The control: whole, they decode.
    expect((await decompressInWorker(2, b, 1 << 20)).out.equals(text)).toBe(true);
    expect((await decompressInWorker(1, d, 1 << 20)).out.equals(text)).toBe(true);
    await expect(decompressInWorker(2, Buffer.concat([b, Buffer.from([0])]), 1 << 20)).rejects.toMatchObject({ ...trailing, message: expect.stringContaining(`ends after ${b.length} of its ${b.length + 1} bytes`) });
    await expect(decompressInWorker(1, Buffer.concat([d, Buffer.from([0])]), 1 << 20)).rejects.toMatchObject(trailing);
    // 0x06: WBITS 16, last meta-block, empty: a whole brotli stream of one byte.
    expect((await decompressInWorker(2, Buffer.from([0x06]), 1 << 20)).out.length).toBe(0);
    await expect(decompressInWorker(2, Buffer.from([0x06, 1, 2, 3, 4]), 1 << 20)).rejects.toMatchObject(trailing);
    // About 4% of random 500-byte payloads start with a whole (empty) brotli stream.
    const results = await Promise.all(Array.from({ length: 2000 }, () => decompressInWorker(2, randomBytes(500), 1 << 20).then(() => 'decoded', (e: WorkerTaskError) => e.code)));
    expect(results.filter((r) => r === 'decoded')).toEqual([]);
    expect(results.filter((r) => r === 'Z_DATA_ERROR').length).toBeGreaterThan(0);
  });

  it('through the envelope: a chunk whose checksum is right but whose brotli is not is RepoError corrupt', async () => {
    // seal() of incompressible data stores it as is (code 0): mark it brotli and reseal the sum.
    const sealed = seal(randomBytes(4096), 'chunks/ab/x', null, parseCompression('none'));
    const forged = Buffer.from(sealed);
    forged[1] = 2;
    const payload = forged.subarray(2, forged.length - 32);
    createHash('sha256').update('chunks/ab/x').update(forged.subarray(0, 2)).update(payload).digest().copy(forged, forged.length - 32);
    const e = await unsealChunkAsync(forged, 'chunks/ab/x', null).then(
      () => null,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(RepoError);
    expect((e as RepoError).reason).toBe('corrupt');
  });

  it('through the envelope: a whole brotli stream with bytes after it, its checksum right, is RepoError corrupt (unseal and unsealChunkAsync)', async () => {
    const plain = Buffer.from(text);
    const sealed = seal(plain, 'chunks/ab/y', null, parseCompression('brotli:5'));
    expect(sealed[1]).toBe(2);
    expect(unseal(sealed, 'chunks/ab/y', null).equals(plain)).toBe(true);
    // The payload with one byte more, the sum made again over it.
    const forged = Buffer.concat([sealed.subarray(0, sealed.length - 32), Buffer.from([0x55]), Buffer.alloc(32)]);
    const payload = forged.subarray(2, forged.length - 32);
    createHash('sha256').update('chunks/ab/y').update(forged.subarray(0, 2)).update(payload).digest().copy(forged, forged.length - 32);
    for (const run of [() => unsealChunkAsync(forged, 'chunks/ab/y', null), async () => unseal(forged, 'chunks/ab/y', null)]) {
      const e = await run().then(
        () => null,
        (x: unknown) => x,
      );
      expect(e).toBeInstanceOf(RepoError);
      expect(e).toMatchObject({ reason: 'corrupt', key: 'chunks/ab/y' });
    }
  });

  it('300 tasks at once each get their own answer', async () => {
    const inputs = Array.from({ length: 300 }, (_, i) => Buffer.from(`chunk ${i} `.repeat(100 + i)));
    const outs = await Promise.all(inputs.map((b) => compressInWorker(2, 1, b, copyOut)));
    const back = await Promise.all(outs.map((z, i) => decompressInWorker(2, z, 1 << 20, inputs[i]!.length)));
    back.forEach((r, i) => expect(r.out.equals(inputs[i]!)).toBe(true));
  });

  it('the workers are used in this mode, or not', async () => {
    await compressInWorker(2, 1, text, copyOut);
    expect(workersStarted()).toBe(budget === 0);
  });
});

describe('when the workers start', () => {
  it('idle workers never keep a process alive, also those that never had a task (built library, child process)', () => {
    const mod = join(__dirname, '..', '..', 'dist', 'repo', 'codec-workers.js');
    // One task at a time: the second worker never gets one.
    const code = `const w = require(${JSON.stringify(mod)}); w.setInlineBudget(0); (async () => { for (let i = 0; i < 3; i++) await w.compressInWorker(2, 1, Buffer.alloc(1000, i), (z) => z.length); console.log(w.workersStarted() ? 'done' : 'no workers'); })();`;
    const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8', timeout: 20_000, killSignal: 'SIGKILL' });
    expect(r.signal).toBeNull();
    expect(r.stdout).toBe('done\n');
    expect(r.status).toBe(0);
  });

  it('a process that (de)compresses little never starts them; past 16 MiB they start and stay', () => {
    const mod = join(__dirname, '..', '..', 'dist', 'repo', 'codec-workers.js');
    const code = `const w = require(${JSON.stringify(mod)}); const b = require('node:crypto').randomBytes(1 << 20); (async () => {
      const seen = [];
      for (let i = 0; i < 24; i++) { await w.compressInWorker(2, 1, b, (z) => z.length); seen.push(w.workersStarted() ? 1 : 0); }
      console.log(seen.join(''));
    })();`;
    const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8', timeout: 20_000, killSignal: 'SIGKILL' });
    expect([r.status, r.stdout]).toEqual([0, '0'.repeat(16) + '1'.repeat(8) + '\n']);
  });

  it('workers started together all come up: --expose-gc is set, used and cleared under one lock (a review: one worker cleared it between another\'s set and use, and that worker died with "gc is not defined")', async () => {
    const { Worker } = await import('node:worker_threads');
    const { WORKER_SOURCE } = await import('../../src/repo/codec-workers');
    let failed = 0;
    for (let round = 0; round < 60; round++) {
      const flagLock = new SharedArrayBuffer(4);
      await Promise.all(
        Array.from({ length: 4 }, async () => {
          const w = new Worker(WORKER_SOURCE, { eval: true, workerData: { flagLock } });
          try {
            const data = Buffer.from('some data');
            const slab = new SharedArrayBuffer(4096);
            new Uint8Array(slab).set(data);
            const reply = await new Promise<{ error?: unknown }>((resolve, reject) => {
              w.once('message', resolve);
              w.once('error', reject);
              w.postMessage({ op: 'compress', algorithm: 1, level: 1, seq: 1, slab, inLen: data.length, inCap: 64, outCap: 1024 });
            });
            if (reply.error !== undefined) failed++;
          } catch {
            failed++;
          } finally {
            await w.terminate();
          }
        }),
      );
    }
    expect(failed).toBe(0);
  });

  it("starting them leaves V8's flags as they were: code cached after, by the CLI at its exit, is taken by the next run (outside hunt U: a backup's workers set --expose-gc, every later run refused the cache and wrote it again)", () => {
    const mod = join(__dirname, '..', '..', 'dist', 'repo', 'codec-workers.js');
    const dir = mkdtempSync(join(tmpdir(), 'dmthin-flags-'));
    try {
      const cache = join(dir, 'cache');
      const src = 'function twice(x) { return x * 2 } twice(21);';
      const make = `const w = require(${JSON.stringify(mod)}); w.setInlineBudget(0); (async () => {
        await w.compressInWorker(2, 1, Buffer.alloc(1 << 16, 1), (z) => z.length);
        if (!w.workersStarted()) throw new Error('no workers');
        const s = new (require('node:vm').Script)(${JSON.stringify(src)}); s.runInThisContext();
        require('node:fs').writeFileSync(${JSON.stringify(cache)}, s.createCachedData());
        process.exit(0);
      })();`;
      const made = spawnSync(process.execPath, ['-e', make], { encoding: 'utf8', timeout: 20_000, killSignal: 'SIGKILL' });
      expect([made.status, made.stderr]).toEqual([0, '']);
      const use = `const s = new (require('node:vm').Script)(${JSON.stringify(src)}, { cachedData: require('node:fs').readFileSync(${JSON.stringify(cache)}) }); console.log(s.cachedDataRejected);`;
      const used = spawnSync(process.execPath, ['-e', use], { encoding: 'utf8', timeout: 20_000 });
      expect([used.status, used.stdout]).toEqual([0, 'false\n']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
