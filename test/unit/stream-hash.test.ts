/**
 * The stream digest on the addon's threads (native/sha256_pipe.cc) against
 * node:crypto: copied and held updates, in any mix, split anywhere, larger
 * than its ring, give the same SHA-256 (version 1) or the same segmented
 * digest (version 2, computed here from docs/stream-format.md §6); ready()
 * and hashedThrough() settle, the latter only once every byte before the
 * position is hashed, whichever thread hashed it.
 * And the send's range reader: ranges land where asked, a range beyond the
 * end of the file is EIO.
 */
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { cryptoStreamHash, newStreamHash, type StreamHash } from '../../src/native/stream-hash';
import { native } from '../../src/native/binding';
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

/** Version 2's digest from the format's text, with segments of `seg` bytes instead of 1 MiB. */
function segmented(b: Buffer, seg: number): string {
  const size = Buffer.alloc(4);
  size.writeUInt32LE(seg);
  const outer = createHash('sha256').update('dmthin stream digest 2\0', 'latin1').update(size);
  for (let i = 0; i < b.length; i += seg) outer.update(createHash('sha256').update(b.subarray(i, Math.min(i + seg, b.length))).digest());
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(b.length));
  return outer.update(len).digest('hex');
}

describe.each([
  ['the addon', (ring: number, seg: number) => newStreamHash(ring, seg)],
  ["node:crypto's fallback", (_ring: number, seg: number) => cryptoStreamHash(seg)],
])('segmented digest (version 2) by %s', (_name, make: (ring: number, seg: number) => StreamHash) => {
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
    expect(h.digest().toString('hex')).toBe(segmented(data, seg));
  });

  test('a stream of exactly whole segments, one short one, and nothing', () => {
    for (const n of [3 * 4096, 4096, 100, 0]) {
      const h = make(64 << 10, 4096);
      h.update(data.subarray(0, n));
      expect(h.digest().toString('hex')).toBe(segmented(data.subarray(0, n), 4096));
    }
  });
});

test('held buffers refilled once hashedThrough passes them: the digest is of what was given (the segments hashed by several threads, out of order)', async () => {
  // Three 1 MiB buffers in turn, as a send's batches: each refilled as soon
  // as the digest is said to have passed its last use. A digest that said so
  // while another thread still had an earlier segment to hash would read
  // the new bytes and give another digest.
  const seg = 64 << 10;
  for (let round = 0; round < 3; round++) {
    const h = newStreamHash(4 << 20, seg);
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
    expect(h.digest().toString('hex')).toBe(segmented(Buffer.concat(given), seg));
  }
});

test("the addon's pipe says its segment size; bad sizes are refused", () => {
  const { Sha256Pipe } = native();
  const p = new Sha256Pipe(64 << 10, 1 << 20);
  expect(p.segmentBytes?.()).toBe(1 << 20);
  p.abort();
  for (const bad of [100, 4095, 2 ** 31, -4096]) expect(() => new Sha256Pipe(64 << 10, bad)).toThrow(/segment size must be 0 or a multiple of 4 KiB/);
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

test('abort() with held bytes still queued: ready() settles, digest() then throws, abort() again is harmless', async () => {
  const h = newStreamHash(64 << 10);
  for (let i = 0; i < 64; i++) h.updateHeld(Buffer.alloc(1 << 20, i)); // far more than is hashed by now
  const waiting = h.ready(64 << 10); // room for a whole ring: only once everything queued is hashed, or on abort
  h.abort();
  await waiting;
  expect(() => h.digest()).toThrow(/finished/);
  h.abort();
});

test('readRanges: each range lands at its buffer offset; past the end is EIO', async () => {
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
    await expect(src.readRanges(buf, [{ at: 0, offset: (3 << 20) - 4096, length: 8192 }])).rejects.toMatchObject({ code: 'EIO', path: file });
  } finally {
    await src.close();
  }
});
