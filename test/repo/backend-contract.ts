// The Backend contract (src/repo/backend.ts) as tests: every backend (local
// directory, S3) runs this one suite. Expected values come from the test's own
// inputs (bytes it generated, keys it chose), never from a backend's output.
import { createHash } from 'node:crypto';
import { AbortError, RepoError } from '../../src/errors';
import type { Backend } from '../../src/repo/backend';

/** Options of the contract run. */
export interface BackendContractOptions {
  /** Size of the "large" stream: above the backend's part size (default 20 MiB + 12345 bytes). */
  largeBytes?: number;
}

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** Pseudo-random bytes (different per seed, cheap to regenerate). */
function bytes(n: number, seed = 1): Buffer {
  const out = Buffer.allocUnsafe(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** A stream of `total` bytes in pieces of `piece` bytes; the hash of what it yielded is in `hash()`. */
function stream(total: number, piece: number, seed = 7): { body: AsyncIterable<Uint8Array>; hash: () => string } {
  const h = createHash('sha256');
  let digest = '';
  return {
    body: (async function* () {
      let left = total;
      let s = seed;
      while (left > 0) {
        const p = bytes(Math.min(piece, left), s++);
        h.update(p);
        left -= p.length;
        yield p;
      }
      digest = h.digest('hex');
    })(),
    hash: () => digest,
  };
}

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
  throw new Error('expected a rejection, got a result');
}

function expectRepoError(e: unknown, reason: string, key?: string): void {
  expect(e).toBeInstanceOf(RepoError);
  expect((e as RepoError).reason).toBe(reason);
  if (key !== undefined) expect((e as RepoError).key).toBe(key);
}

function expectAbort(e: unknown): void {
  expect(e).toBeInstanceOf(AbortError);
  expect((e as AbortError).code).toBe('ABORT_ERR');
}

/**
 * Defines the describe/it blocks every backend must pass. `make` gives a fresh,
 * empty backend per test and a cleanup.
 */
export function backendContract(
  name: string,
  make: () => Promise<{ backend: Backend; cleanup(): Promise<void> }>,
  opts: BackendContractOptions = {},
): void {
  const largeBytes = opts.largeBytes ?? 20 * 1024 * 1024 + 12345;

  describe(`Backend contract: ${name}`, () => {
    let b: Backend;
    let cleanup: () => Promise<void>;
    beforeEach(async () => {
      ({ backend: b, cleanup } = await make());
    });
    afterEach(async () => {
      await b.close();
      await cleanup();
    });

    it('has a location string', () => {
      expect(typeof b.location).toBe('string');
      expect(b.location.length).toBeGreaterThan(0);
    });

    it('put then get returns the same bytes; stat gives size and a current time', async () => {
      const data = bytes(100000, 3);
      const before = Date.now();
      await expect(b.put('chunks/ab/abcdef', data)).resolves.toBe(true);
      expect(sha(await b.get('chunks/ab/abcdef'))).toBe(sha(data));
      const st = await b.stat('chunks/ab/abcdef');
      expect(st).not.toBeNull();
      expect(st!.key).toBe('chunks/ab/abcdef');
      expect(st!.size).toBe(100000);
      // Second-granular stores (S3's Last-Modified) round down: allow 2 s of slack.
      expect(st!.mtimeMs).toBeGreaterThanOrEqual(before - 2000);
      expect(st!.mtimeMs).toBeLessThanOrEqual(Date.now() + 2000);
    });

    it('stores an empty object', async () => {
      await expect(b.put('empty', new Uint8Array(0))).resolves.toBe(true);
      expect((await b.get('empty')).length).toBe(0);
      expect((await b.stat('empty'))!.size).toBe(0);
      await expect(b.put('empty-stream', (async function* () {})())).resolves.toBe(true);
      expect((await b.stat('empty-stream'))!.size).toBe(0);
    });

    it('put without ifAbsent replaces an object whole', async () => {
      await b.put('config', Buffer.from('first version, longer than the second'));
      await expect(b.put('config', Buffer.from('second'))).resolves.toBe(true);
      expect((await b.get('config')).toString()).toBe('second');
      expect((await b.stat('config'))!.size).toBe(6);
    });

    it('ifAbsent writes an absent key (true) and leaves an existing one untouched (false)', async () => {
      await expect(b.put('chunks/x', Buffer.from('one'), { ifAbsent: true })).resolves.toBe(true);
      await expect(b.put('chunks/x', Buffer.from('two'), { ifAbsent: true })).resolves.toBe(false);
      expect((await b.get('chunks/x')).toString()).toBe('one');
      // A stream body the backend does not need is not an error either.
      const s = stream(1000, 100);
      await expect(b.put('chunks/x', s.body, { ifAbsent: true })).resolves.toBe(false);
      expect((await b.get('chunks/x')).toString()).toBe('one');
    });

    it('concurrent ifAbsent puts of the same content leave that content', async () => {
      const data = bytes(50000, 9);
      const results = await Promise.all(Array.from({ length: 6 }, () => b.put('chunks/same', data, { ifAbsent: true })));
      expect(results).toContain(true);
      expect(sha(await b.get('chunks/same'))).toBe(sha(data));
    });

    it(`streams a body larger than a part (${largeBytes} bytes in odd pieces) and reads it back as a stream`, async () => {
      const s = stream(largeBytes, 1_000_003);
      await expect(b.put('manifests/big', s.body)).resolves.toBe(true);
      expect((await b.stat('manifests/big'))!.size).toBe(largeBytes);
      const h = createHash('sha256');
      let pieces = 0;
      let total = 0;
      for await (const p of b.getStream('manifests/big')) {
        expect(Buffer.isBuffer(p)).toBe(true);
        h.update(p);
        total += p.length;
        pieces++;
      }
      expect(total).toBe(largeBytes);
      expect(h.digest('hex')).toBe(s.hash());
      // Not one buffer of the whole object.
      expect(pieces).toBeGreaterThan(1);
    });

    it('takes the size hint for a stream', async () => {
      const s = stream(300000, 65536);
      await expect(b.put('sized', s.body, { size: 300000 })).resolves.toBe(true);
      expect(sha(await b.get('sized'))).toBe(s.hash());
    });

    it('a large Uint8Array body round-trips', async () => {
      const data = bytes(largeBytes, 5);
      await b.put('big-buffer', data);
      expect(sha(await b.get('big-buffer'))).toBe(sha(data));
    });

    it('a body stream that fails leaves nothing visible, and an older version intact', async () => {
      await b.put('manifests/m1', Buffer.from('old manifest'));
      const boom = new Error('reader failed');
      const failing = (total: number): AsyncIterable<Uint8Array> =>
        (async function* () {
          let sent = 0;
          while (sent < total) {
            yield bytes(1 << 20, sent + 1);
            sent += 1 << 20;
          }
          throw boom;
        })();
      // The body's own error, or one that carries it as its cause.
      const isBoom = (e: unknown): boolean => e === boom || (e as Error)?.cause === boom;
      expect(isBoom(await rejection(b.put('manifests/m1', failing(largeBytes))))).toBe(true);
      expect((await b.get('manifests/m1')).toString()).toBe('old manifest');
      expect(isBoom(await rejection(b.put('manifests/m2', failing(2 << 20))))).toBe(true);
      expect(await b.stat('manifests/m2')).toBeNull();
      expect(isBoom(await rejection(b.put('manifests/m3', failing(largeBytes))))).toBe(true);
      expect(await b.stat('manifests/m3')).toBeNull();
      expect((await collect(b.list('manifests/'))).map((o) => o.key)).toEqual(['manifests/m1']);
    });

    it('get, getStream of an object larger than maxBytes: RepoError corrupt (EBADMSG) naming the key', async () => {
      await b.put('chunks/ab/big', bytes(1000, 5));
      expect((await b.get('chunks/ab/big', { maxBytes: 1000 })).length).toBe(1000);
      const e = await rejection(b.get('chunks/ab/big', { maxBytes: 999 }));
      expectRepoError(e, 'corrupt', 'chunks/ab/big');
      expect(e as RepoError).toMatchObject({ code: 'EBADMSG' });
      expectRepoError(await rejection(collect(b.getStream('chunks/ab/big', { maxBytes: 10 }))), 'corrupt', 'chunks/ab/big');
    });

    it('get, getStream of an absent key: RepoError not-found naming the key; stat: null', async () => {
      expectRepoError(await rejection(b.get('chunks/none')), 'not-found', 'chunks/none');
      expect((await rejection(b.get('chunks/none'))) as RepoError).toMatchObject({ code: 'ENOENT' });
      expectRepoError(await rejection(collect(b.getStream('manifests/none'))), 'not-found', 'manifests/none');
      expect(await b.stat('chunks/none')).toBeNull();
    });

    it('lists by prefix with keys relative to the root, sizes and times', async () => {
      const keys = ['a/1', 'a/2', 'a/sub/3', 'ab/4', 'b/5', 'top'];
      await Promise.all(keys.map((k, i) => b.put(k, bytes(10 + i, i + 1))));
      const all = await collect(b.list(''));
      expect(all.map((o) => o.key).sort()).toEqual(keys);
      for (const o of all) {
        expect(o.size).toBe(10 + keys.indexOf(o.key));
        expect(o.mtimeMs).toBeGreaterThan(Date.now() - 600000);
      }
      expect((await collect(b.list('a/'))).map((o) => o.key).sort()).toEqual(['a/1', 'a/2', 'a/sub/3']);
      expect((await collect(b.list('a'))).map((o) => o.key).sort()).toEqual(['a/1', 'a/2', 'a/sub/3', 'ab/4']);
      expect((await collect(b.list('a/sub/'))).map((o) => o.key)).toEqual(['a/sub/3']);
      expect(await collect(b.list('zzz/'))).toEqual([]);
      for (const p of ['/a', 'a//', '../', 'a b/']) expectRepoError(await rejection(collect(b.list(p))), 'config');
    });

    it('lists nothing in an empty repository', async () => {
      expect(await collect(b.list(''))).toEqual([]);
    });

    it('deletes; absent keys and an empty list are not errors', async () => {
      await b.put('d/1', Buffer.from('1'));
      await b.put('d/2', Buffer.from('2'));
      await b.put('d/3', Buffer.from('3'));
      await b.delete(['d/1', 'd/3', 'd/never']);
      await b.delete([]);
      expect((await collect(b.list('d/'))).map((o) => o.key)).toEqual(['d/2']);
      expect(await b.stat('d/1')).toBeNull();
      expectRepoError(await rejection(b.get('d/3')), 'not-found', 'd/3');
      await b.delete(['d/2', 'd/2']);
      expect(await collect(b.list(''))).toEqual([]);
    });

    it('keys: the longest allowed key works; every bad key is RepoError config on every call', async () => {
      const long = Array.from({ length: 5 }, (_, i) => String(i).repeat(100)).join('/') + '/xxxxxxx'; // 512 bytes
      expect(long.length).toBe(512);
      await b.put(long, Buffer.from('ok'));
      expect((await b.get(long)).toString()).toBe('ok');
      const bad = ['', '/abs', 'dir/', 'a/../b', '..', './a', 'a/./b', 'a//b', 'sp ace', 'uni\u00e9', 'back\\slash', 'q?x', 'x'.repeat(513), 'nul\u0000'];
      for (const k of bad) {
        expectRepoError(await rejection(b.put(k, Buffer.from('x'))), 'config');
        expectRepoError(await rejection(b.get(k)), 'config');
        expectRepoError(await rejection(collect(b.getStream(k))), 'config');
        expectRepoError(await rejection(b.stat(k)), 'config');
        expectRepoError(await rejection(b.delete(['ok', k])), 'config');
      }
      // A rejected delete removed nothing.
      expect(await b.stat(long)).not.toBeNull();
      expect((await collect(b.list(''))).map((o) => o.key)).toEqual([long]);
    });

    it('an aborted signal rejects every call with AbortError and writes nothing', async () => {
      const ac = new AbortController();
      ac.abort();
      const signal = ac.signal;
      await b.put('there', Buffer.from('x'));
      expectAbort(await rejection(b.put('k', Buffer.from('x'), { signal })));
      expectAbort(await rejection(b.get('there', { signal })));
      expectAbort(await rejection(collect(b.getStream('there', { signal }))));
      expectAbort(await rejection(b.stat('there', { signal })));
      expectAbort(await rejection(collect(b.list('', { signal }))));
      expectAbort(await rejection(b.delete(['there'], { signal })));
      expect(await b.stat('k')).toBeNull();
      expect(await b.stat('there')).not.toBeNull();
    });

    it('abort during a streamed put rejects with AbortError and leaves no object', async () => {
      const ac = new AbortController();
      let sent = 0;
      const body = (async function* () {
        for (;;) {
          yield bytes(1 << 20, sent + 1);
          sent += 1 << 20;
          if (sent === Math.floor(largeBytes / 2 / (1 << 20)) * (1 << 20)) ac.abort();
          if (sent > 4 * largeBytes) throw new Error('the backend did not stop reading after abort');
          // Let an aborted backend notice between pieces.
          await new Promise((r) => setImmediate(r));
        }
      })();
      expectAbort(await rejection(b.put('manifests/aborted', body, { signal: ac.signal })));
      expect(await b.stat('manifests/aborted')).toBeNull();
      expect(await collect(b.list(''))).toEqual([]);
    });

    it('abort while reading a stream stops it with AbortError', async () => {
      await b.put('big', bytes(largeBytes, 11));
      const ac = new AbortController();
      let got = 0;
      const e = await rejection(
        (async () => {
          for await (const p of b.getStream('big', { signal: ac.signal })) {
            got += p.length;
            ac.abort();
          }
        })(),
      );
      expectAbort(e);
      expect(got).toBeLessThan(largeBytes);
    });

    it('many concurrent puts and gets all land', async () => {
      const n = 64;
      const datas = Array.from({ length: n }, (_, i) => bytes(1000 + i * 37, i + 100));
      await Promise.all(datas.map((d, i) => b.put(`c/${String(i).padStart(3, '0')}`, d)));
      const back = await Promise.all(datas.map((_, i) => b.get(`c/${String(i).padStart(3, '0')}`)));
      back.forEach((g, i) => expect(sha(g)).toBe(sha(datas[i]!)));
      expect((await collect(b.list('c/'))).length).toBe(n);
    });

    it('is AsyncDisposable', async () => {
      expect(typeof b[Symbol.asyncDispose]).toBe('function');
    });
  });
}

export { bytes as contractBytes };
