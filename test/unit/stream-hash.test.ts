/**
 * The stream digest on the addon's threads (native/digest_pipe.cc) against
 * node:crypto and @noble/hashes: copied and held updates, in any mix, split
 * anywhere, larger than its ring, give the same SHA-256 (version 1) or the
 * same segmented digest (versions 2 and 3, computed here from
 * docs/stream-format.md §6); ready() and hashedThrough() settle, the latter
 * only once every byte before the position is hashed, whichever thread hashed
 * it. The addon's BLAKE3 (vendored C) against BLAKE3's published test vectors.
 * And the send's range reader: ranges land where asked, a range beyond the
 * end of the file is EIO.
 */
import { blake3 } from '@noble/hashes/blake3';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { cryptoStreamHash, newStreamHash, type DigestAlgorithm, type StreamHash } from '../../src/native/stream-hash';
import { native, sha256Of } from '../../src/native/binding';
import { NativeDataSource } from '../../src/stream/send/data-source';
import { scratch, type Scratch } from '../stream/helpers';

let s: Scratch;
beforeAll(() => (s = scratch()));
afterAll(() => s.cleanup());

const data = randomBytes((3 << 20) + 4321);

test.each([
  ['copied', () => false],
  ['held', () => true],
  ['mixed', (i: number) => i % 3 === 1],
])('%s updates through a 64 KiB ring: the digest node:crypto gives', async (_name, held) => {
  const h = newStreamHash(64 << 10);
  const ref = createHash('sha256');
  let i = 0;
  for (let off = 0; off < data.length; i++) {
    const n = Math.min(data.length - off, [1, 24, 65536, 300_000, 1 << 20][i % 5]);
    const piece = Buffer.from(data.subarray(off, off + n)); // its own buffer: a held one must not change
    if (i % 4 === 0) await h.ready(n);
    if (held(i)) h.updateHeld(piece);
    else h.update(piece);
    ref.update(piece);
    off += n;
  }
  await h.hashedThrough(data.length);
  expect(h.digest().toString('hex')).toBe(ref.digest('hex'));
});

/** SHA-256 from node:crypto, BLAKE3 from @noble/hashes (pure JavaScript, not the addon's C). */
function hashOf(algo: DigestAlgorithm, x: Uint8Array): Buffer {
  return algo === 'sha256' ? createHash('sha256').update(x).digest() : Buffer.from(blake3(x));
}

/** The outer hash of §6 over the given segment digests. */
function fold(algo: DigestAlgorithm, seg: number, digests: Buffer[], length: number): string {
  const size = Buffer.alloc(4);
  size.writeUInt32LE(seg);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(length));
  const prefix = Buffer.from(`dmthin stream digest ${algo === 'sha256' ? 2 : 3}\0`, 'latin1');
  return hashOf(algo, Buffer.concat([prefix, size, ...digests, len])).toString('hex');
}

/** Version 2's (SHA-256) or 3's (BLAKE3) digest from the format's text, with segments of `seg` bytes instead of 1 MiB. */
function segmented(b: Buffer, seg: number, algo: DigestAlgorithm = 'sha256'): string {
  const digests: Buffer[] = [];
  for (let i = 0; i < b.length; i += seg) digests.push(hashOf(algo, b.subarray(i, Math.min(i + seg, b.length))));
  return fold(algo, seg, digests, b.length);
}

describe.each([
  ['version 2, the addon', 'sha256', (ring: number, seg: number) => newStreamHash(ring, seg)],
  ["version 2, node:crypto's fallback", 'sha256', (_ring: number, seg: number) => cryptoStreamHash(seg)],
  ['version 3, the addon', 'blake3', (ring: number, seg: number) => newStreamHash(ring, seg, 'blake3')],
  ["version 3, @noble/hashes' fallback", 'blake3', (_ring: number, seg: number) => cryptoStreamHash(seg, 'blake3')],
] as const)('segmented digest, %s', (_name, algo: DigestAlgorithm, make: (ring: number, seg: number) => StreamHash) => {
  test.each([
    [4096, 'copied', () => false],
    [4096, 'held', () => true],
    [65536, 'mixed', (i: number) => i % 3 === 1],
    [1 << 20, 'mixed', (i: number) => i % 2 === 0],
  ])('segments of %d bytes, %s updates split anywhere', async (seg, _how, held) => {
    const h = make(64 << 10, seg);
    let i = 0;
    for (let off = 0; off < data.length; i++) {
      const n = Math.min(data.length - off, [1, 24, 4095, 65536, 300_000, 1 << 20, 4097][i % 7]);
      const piece = Buffer.from(data.subarray(off, off + n));
      if (i % 4 === 0) await h.ready(n);
      if (held(i)) h.updateHeld(piece);
      else h.update(piece);
      off += n;
    }
    await h.hashedThrough(data.length);
    expect(h.digest().toString('hex')).toBe(segmented(data, seg, algo));
  });

  test('a stream of exactly whole segments, one short one, and nothing', () => {
    for (const n of [3 * 4096, 4096, 100, 0]) {
      const h = make(64 << 10, 4096);
      h.update(data.subarray(0, n));
      expect(h.digest().toString('hex')).toBe(segmented(data.subarray(0, n), 4096, algo));
    }
  });
});

test.each(['sha256', 'blake3'] as const)('held buffers refilled once hashedThrough passes them (%s): the digest is of what was given (the segments hashed by several threads, out of order)', async (algo) => {
  // Three 1 MiB buffers in turn, as a send's batches: each refilled as soon
  // as the digest is said to have passed its last use. A digest that said so
  // while another thread still had an earlier segment to hash would read
  // the new bytes and give another digest.
  const seg = 64 << 10;
  for (let round = 0; round < 3; round++) {
    const h = newStreamHash(4 << 20, seg, algo);
    const bufs = [0, 1, 2].map(() => Buffer.alloc(1 << 20));
    const ends: number[] = [];
    const given: Buffer[] = [];
    let fed = 0;
    for (let i = 0; i < 48; i++) {
      const k = i % 3;
      if (ends[k] !== undefined) await h.hashedThrough(ends[k]);
      bufs[k].fill((i * 37 + round) & 0xff);
      bufs[k].writeUInt32LE(i, (i * 4099) % ((1 << 20) - 4));
      given.push(Buffer.from(bufs[k]));
      await h.ready(1 << 20);
      h.updateHeld(bufs[k]);
      fed += 1 << 20;
      ends[k] = fed;
    }
    await h.ready(Infinity);
    expect(h.digest().toString('hex')).toBe(segmented(Buffer.concat(given), seg, algo));
  }
});

describe("BLAKE3's published test vectors (test/fixtures/blake3-test-vectors.json, from the BLAKE3 repository)", () => {
  const vectors = JSON.parse(readFileSync(join(__dirname, '../fixtures/blake3-test-vectors.json'), 'utf8')) as { cases: { input_len: number; hash: string }[] };
  const input = (n: number): Buffer => Buffer.from(Array.from({ length: n }, (_, i) => i % 251));

  test('@noble/hashes, which the tests and the fallback use, gives them', () => {
    expect(vectors.cases.length).toBeGreaterThan(30);
    for (const c of vectors.cases) expect([c.input_len, Buffer.from(blake3(input(c.input_len))).toString('hex')]).toEqual([c.input_len, c.hash.slice(0, 64)]);
  });

  test("the addon's segments hash to them (one segment each: its digest is the vector's), copied and held, split anywhere", async () => {
    const seg = 1 << 20;
    for (const c of vectors.cases) {
      const want = fold('blake3', seg, [Buffer.from(c.hash.slice(0, 64), 'hex')].slice(0, c.input_len ? 1 : 0), c.input_len);
      const b = input(c.input_len);
      for (const cut of [0, 1, 63, 64, 1023, 1024, 1025, 8191, 31_744]) {
        const h = newStreamHash(64 << 10, seg, 'blake3');
        const at = Math.min(cut, b.length);
        h.update(b.subarray(0, at));
        h.updateHeld(Buffer.from(b.subarray(at)));
        await h.ready(Infinity);
        expect([c.input_len, cut, h.digest().toString('hex')]).toEqual([c.input_len, cut, want]);
      }
    }
  });
});

test("the addon's pipe says its segment size and function; bad sizes and functions are refused", () => {
  const { DigestPipe } = native();
  const p = new DigestPipe(64 << 10, 1 << 20);
  expect([p.segmentBytes(), p.algorithm()]).toEqual([1 << 20, 'sha256']);
  p.abort();
  const q = new DigestPipe(64 << 10, 1 << 20, 'blake3');
  expect([q.segmentBytes(), q.algorithm()]).toEqual([1 << 20, 'blake3']);
  q.abort();
  for (const bad of [100, 4095, 2 ** 31, -4096]) expect(() => new DigestPipe(64 << 10, bad)).toThrow(/segment size must be 0 or a multiple of 4 KiB/);
  expect(() => new DigestPipe(64 << 10, 1 << 20, 'md5' as 'sha256')).toThrow(/algorithm must be 'sha256' or 'blake3'/);
  // BLAKE3 exists only as version 3's segmented digest.
  expect(() => new DigestPipe(64 << 10, 0, 'blake3')).toThrow(/segments only/);
  expect(() => newStreamHash(64 << 10, 0, 'blake3')).toThrow(/segments only/);
  expect(() => cryptoStreamHash(0, 'blake3')).toThrow(/segments only/);
});

test('an empty stream hash is the SHA-256 of nothing; a copied buffer may change at once', async () => {
  expect(newStreamHash().digest().toString('hex')).toBe(createHash('sha256').digest('hex'));
  const h = newStreamHash(64 << 10);
  const b = Buffer.from(data.subarray(0, 100_000));
  const want = createHash('sha256').update(b).digest('hex');
  h.update(b);
  b.fill(0); // copied into the ring: the digest is of what was given
  await h.ready(Infinity);
  expect(h.digest().toString('hex')).toBe(want);
});

test.each(['sha256', 'blake3'] as const)("a stream's first 1 MiB is hashed as it comes, without threads (%s): a held buffer may change at once; beyond it the lanes go on from there", async (algo) => {
  // The process's threads but the kernel's io_uring workers (iou-wrk-*, iou-sqp-*): a ring an
  // earlier test file's send used in this jest worker starts and ends them on its own schedule.
  const threads = () =>
    readdirSync('/proc/self/task').filter((t) => {
      try {
        return !readFileSync(`/proc/self/task/${t}/comm`, 'utf8').startsWith('iou-');
      } catch {
        return false; // ended meanwhile
      }
    }).length;
  const before = threads();
  const h = newStreamHash(undefined, 1 << 20, algo);
  const given: Buffer[] = [];
  const b = Buffer.from(data.subarray(0, 768 << 10));
  h.updateHeld(b);
  given.push(Buffer.from(b));
  b.fill(7); // hashed already: the digest is of what was given
  h.update(data.subarray(768 << 10, (1 << 20) - 100));
  given.push(data.subarray(768 << 10, (1 << 20) - 100));
  expect(threads()).toBe(before);
  // Across the 1 MiB line, in the middle of a segment: the rest on the lanes' threads.
  const rest = Buffer.from(data.subarray((1 << 20) - 100));
  h.updateHeld(rest);
  given.push(rest);
  expect(threads()).toBeGreaterThan(before);
  await h.ready(Infinity);
  expect(h.digest().toString('hex')).toBe(segmented(Buffer.concat(given), 1 << 20, algo));
  expect(threads()).toBe(before);
});

// Threads under RLIMIT_NPROC, which root ignores: run as nobody with a few limits, one of which leaves
// no thread for the lanes once the stream passes its first 1 MiB.
const asRoot = process.getuid?.() === 0;
if (!asRoot) console.warn('stream-hash.test: SKIPPED the thread-limit case (it needs root to run a child as nobody under ulimit -u)');
(asRoot ? test : test.skip)("a pipe that cannot start its threads throws a JavaScript error and is finished (it ended the process: std::terminate, exit 134)", () => {
  const script = [
    `const P = require(${JSON.stringify(require.resolve('../../dist/native/binding.js'))}).native().DigestPipe;`,
    "const p = new P(1 << 20, 4096, 'blake3');",
    "try { p.update(Buffer.alloc(2 << 20)); } catch (e) { let then = ''; try { p.update(Buffer.alloc(1)); } catch (f) { then = f.message; } console.log('ERR ' + e.message + ' | ' + then); process.exit(0); }",
    "console.log('OK ' + p.digest().toString('hex'));",
  ].join('\n');
  const file = join(s.dir, 'threads.js');
  writeFileSync(file, script);
  chmodSync(s.dir, 0o755);
  const outs = new Set<string>();
  // From 6 (below that Node itself waits forever for its own threads) until the lanes have their threads.
  for (let n = 6; n <= 24 && ![...outs].some((l) => l.startsWith('OK ')); n++) {
    const r = spawnSync('setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', 'bash', '-c', `ulimit -u ${n}; exec ${process.execPath} ${file}`], { encoding: 'utf8', timeout: 20_000 });
    // Never a crash (SIGABRT, or 134 from a shell).
    expect({ n, signal: r.signal === 'SIGTERM' ? 'timeout' : r.signal, status: r.status === 134 ? 134 : 'not 134' }).toEqual({ n, signal: r.signal === 'SIGTERM' ? 'timeout' : null, status: 'not 134' });
    const line = r.stdout.trim();
    if (line.startsWith('ERR ') || line.startsWith('OK ')) outs.add(line);
  }
  expect([...outs].some((l) => l === `ERR the digest's threads could not be started: Resource temporarily unavailable | the hash is finished (digest taken or aborted)`)).toBe(true);
  expect([...outs].filter((l) => l.startsWith('OK '))).toEqual([`OK ${segmented(Buffer.alloc(2 << 20), 4096, 'blake3')}`]);
});

test('abort() with held bytes still queued: ready() settles, digest() then throws, abort() again is harmless', async () => {
  const h = newStreamHash(64 << 10);
  for (let i = 0; i < 64; i++) h.updateHeld(Buffer.alloc(1 << 20, i)); // far more than is hashed by now
  const waiting = h.ready(64 << 10); // room for a whole ring: only once everything queued is hashed, or on abort
  h.abort();
  await waiting;
  expect(() => h.digest()).toThrow(/finished/);
  h.abort();
});

test('readRanges: each range lands at its buffer offset (a small batch read on the worker, a larger by threads); past the end is EIO', async () => {
  const file = s.path('src.bin');
  writeFileSync(file, data.subarray(0, 3 << 20));
  const src = await NativeDataSource.open(file, { addressing: 'data' });
  try {
    const buf = src.allocBuffer(4 << 20);
    await src.readRanges(buf, [
      { at: 0, offset: 2 << 20, length: 1 << 20 },
      { at: 1 << 20, offset: 4096, length: (1 << 20) + 8192 },
    ]);
    expect(buf.subarray(0, 1 << 20).equals(data.subarray(2 << 20, 3 << 20))).toBe(true);
    expect(buf.subarray(1 << 20, (2 << 20) + 8192).equals(data.subarray(4096, 4096 + (1 << 20) + 8192))).toBe(true);
    // Up to 1 MiB in all is read on the worker itself, more by threads of its own: both land the same.
    for (const n of [3, 40]) {
      const ranges = Array.from({ length: n }, (_, i) => ({ at: i * 65536, offset: ((7 * i) % 40) * 65536 + 4096, length: 61440 }));
      buf.fill(0);
      await src.readRanges(buf, ranges);
      for (const r of ranges) expect(buf.subarray(r.at, r.at + r.length).equals(data.subarray(r.offset, r.offset + r.length))).toBe(true);
    }
    await expect(src.readRanges(buf, [{ at: 0, offset: (3 << 20) - 4096, length: 8192 }])).rejects.toMatchObject({ code: 'EIO', path: file });
    await expect(src.readRanges(buf, [{ at: 0, offset: 0, length: 4096 }, { at: 4096, offset: (3 << 20) - 4096, length: 8192 }])).rejects.toMatchObject({ code: 'EIO', path: file });
  } finally {
    await src.close();
  }
});

test("sha256Of (the addon's one-shot SHA-256, which identities use): node:crypto's digest of the parts in order", () => {
  const { sha256 } = native();
  const parts = [Buffer.from('dmthin offline identity 1\0', 'latin1'), randomBytes(4), randomBytes(4096), new Uint8Array(0), data.subarray(5, 70_000)];
  const want = createHash('sha256');
  for (const p of parts) want.update(p);
  const hex = want.digest('hex');
  expect(sha256(parts).toString('hex')).toBe(hex);
  expect(sha256Of(parts).toString('hex')).toBe(hex);
  expect(sha256([]).toString('hex')).toBe(createHash('sha256').digest('hex'));
  expect(() => sha256('text' as unknown as Uint8Array[])).toThrow(/^sha256\(parts: Uint8Array\[\]\)$/);
  expect(() => sha256(['text' as unknown as Uint8Array])).toThrow(/^sha256\(parts: Uint8Array\[\]\)$/);
});
