/**
 * The stream digest on the addon's thread (native/sha256_pipe.cc) against
 * node:crypto: copied and held updates, in any mix, split anywhere, larger
 * than its ring, give the same SHA-256; ready() and hashedThrough() settle.
 * And the send's range reader: ranges land where asked, a range beyond the
 * end of the file is EIO.
 */
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { newStreamHash } from '../../src/native/stream-hash';
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
