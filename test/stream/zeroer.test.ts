/**
 * The zeroer's discard mode, on a regular file standing in for a dm-thin
 * target whose discards the kernel may drop: with a granularity that is not a
 * power of two (a 192 KiB pool block), every discarded granule is read back
 * and the ones still holding data are zeroed; the ragged edges are zeroed; a
 * power-of-two granularity is trusted (no read-back).
 */
import { readFileSync } from 'node:fs';
import { BlockWriter } from '../../src/native/block-writer';
import { zeroer, type TargetInfo } from '../../src/stream/receive/target';
import { junkFile, scratch, type Scratch } from './helpers';

let s: Scratch;
beforeEach(() => (s = scratch()));
afterEach(() => s.cleanup());

const KiB = 1024;

/** A writer whose discards "succeed" and change nothing, like a discard the kernel splits into partial blocks. */
function ignoringDiscards(w: BlockWriter): BlockWriter {
  return Object.assign(Object.create(w) as BlockWriter, { discard: async () => 'blkdiscard' as const });
}

function target(path: string, g: number): TargetInfo {
  return { path, exists: true, blockDevice: true, thin: true, discardGranularity: g };
}

const isZero = (b: Buffer) => b.every((x) => x === 0);

test('granularity not a power of two: dropped discards are found by reading back and zeroed; edges zeroed; nothing else touched', async () => {
  const g = 192 * KiB;
  const f = s.path('t');
  junkFile(f, 4 * 1024 * KiB, 9);
  const before = readFileSync(f);
  await using w = await BlockWriter.open(f);
  const z = zeroer(ignoringDiscards(w), target(f, g), 'discard');
  try {
    // [100 KiB, 100 KiB + 700 KiB): granules [192, 768) KiB, edges [100, 192) and [768, 800).
    await z(100 * KiB, 700 * KiB);
  } finally {
    z.close();
  }
  const after = readFileSync(f);
  expect(isZero(after.subarray(100 * KiB, 800 * KiB))).toBe(true);
  expect(after.subarray(0, 100 * KiB).equals(before.subarray(0, 100 * KiB))).toBe(true);
  expect(after.subarray(800 * KiB).equals(before.subarray(800 * KiB))).toBe(true);
  expect(z.used['discard-not-honoured']).toBe(3);
  expect(z.used.blkdiscard).toBe(1);
});

test('granularity not a power of two: granules that did read back as zeros are left alone', async () => {
  const g = 192 * KiB;
  const f = s.path('t');
  junkFile(f, 2 * 1024 * KiB, 3);
  await using w = await BlockWriter.open(f);
  // A discard that works: the real writer punches a hole.
  const z = zeroer(w, target(f, g), 'discard');
  await z(0, 4 * g);
  z.close();
  expect(isZero(readFileSync(f).subarray(0, 4 * g))).toBe(true);
  expect(z.used['discard-not-honoured']).toBeUndefined();
  expect(z.used['punch-hole']).toBe(1);
});

test('a power-of-two granularity is trusted: no read-back', async () => {
  const f = s.path('t');
  junkFile(f, 1024 * KiB, 5);
  await using w = await BlockWriter.open(f);
  const z = zeroer(ignoringDiscards(w), target(f, 128 * KiB), 'discard');
  await z(128 * KiB, 256 * KiB);
  z.close();
  expect(z.used).toEqual({ blkdiscard: 1 });
  expect(isZero(readFileSync(f).subarray(128 * KiB, 384 * KiB))).toBe(false);
});
