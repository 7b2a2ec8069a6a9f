/**
 * The native BlockWriter on regular files: coalesced O_DIRECT writes,
 * unaligned tails, discards and zeroing, and refusal of anything outside
 * [0, size) with the target left as it was.
 */
import { existsSync, mkdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { SystemCallError } from '../../src/errors';
import { BlockWriter } from '../../src/native/block-writer';
import { native } from '../../src/native/binding';
import { junkFile, scratch, type Scratch } from './helpers';

let s: Scratch;
beforeEach(() => (s = scratch()));
afterEach(() => s.cleanup());

async function refused(p: Promise<unknown>, code: string): Promise<SystemCallError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(SystemCallError);
    expect(e).toMatchObject({ code });
    return e as SystemCallError;
  }
  throw new Error(`expected ${code}`);
}

test('writes batches of segments, coalescing adjacent ones, O_DIRECT where the filesystem allows', async () => {
  const f = s.path('t');
  writeFileSync(f, Buffer.alloc(1 << 20, 7));
  const w = await BlockWriter.open(f);
  expect(w.info).toMatchObject({ size: 1 << 20, blockDevice: false, created: false });
  const r = await w.write([
    { offset: 8192, data: Buffer.alloc(4096, 3) },
    { offset: 0, data: Buffer.alloc(4096, 1) },
    { offset: 4096, data: Buffer.alloc(4096, 2) },
    { offset: 65536, data: Buffer.alloc(512, 4) },
    { offset: 70000, data: Buffer.alloc(0) },
  ]);
  expect(r).toEqual({ bytes: 4096 * 3 + 512, writes: 2 });
  // Unaligned offsets and lengths go through the buffered descriptor.
  await w.write([{ offset: 100001, data: Buffer.from('hello') }]);
  await w.fsync();
  w.close();
  const d = readFileSync(f);
  expect([d[0], d[4096], d[8192], d[12288], d[65536], d[66048]]).toEqual([1, 2, 3, 7, 4, 7]);
  expect(d.subarray(100001, 100006).toString()).toBe('hello');
  expect(d.length).toBe(1 << 20);
});

test('a large batch through the bounce buffer (more than one 8 MiB chunk)', async () => {
  const f = s.path('big');
  writeFileSync(f, Buffer.alloc(0));
  truncateSync(f, 32 << 20);
  const w = await BlockWriter.open(f);
  const segs = Array.from({ length: 5 }, (_, i) => ({ offset: i * (5 << 20), data: Buffer.alloc(5 << 20, i + 1) }));
  expect(await w.write(segs)).toEqual({ bytes: 25 << 20, writes: 1 });
  w.close();
  const d = readFileSync(f);
  for (let i = 0; i < 5; i++) expect([d[i * (5 << 20)], d[(i + 1) * (5 << 20) - 1]]).toEqual([i + 1, i + 1]);
  expect(d[25 << 20]).toBe(0);
});

test('4096-aligned buffers are written in place; a run with one unaligned piece still goes through the bounce buffer; same bytes either way', async () => {
  const f = s.path('aligned');
  writeFileSync(f, Buffer.alloc(4 << 20, 9));
  const w = await BlockWriter.open(f);
  const aligned = (bytes: number, fill: (i: number) => number): Buffer => {
    const a = native().alignedBuffer(bytes);
    const b = Buffer.from(a.buffer, a.byteOffset, a.byteLength);
    for (let i = 0; i < bytes; i++) b[i] = fill(i);
    return b;
  };
  // Two views of one aligned buffer (as apply's batches are), adjacent on disk: one run, written in place.
  const big = aligned(1 << 20, (i) => (i * 7 + (i >> 12)) & 0xff);
  expect(await w.write([
    { offset: 0, data: big.subarray(0, 512 << 10) },
    { offset: 512 << 10, data: big.subarray(512 << 10) },
  ])).toEqual({ bytes: 1 << 20, writes: 1 });
  // A run whose second piece starts 512 bytes into a buffer: not aligned to 4096 in memory, so bounced.
  const odd = aligned(64 << 10, (i) => (i * 13) & 0xff);
  expect(await w.write([
    { offset: 2 << 20, data: odd.subarray(0, 4096) },
    { offset: (2 << 20) + 4096, data: odd.subarray(4096 + 512, 4096 + 512 + 8192) },
  ])).toEqual({ bytes: 4096 + 8192, writes: 1 });
  await w.fsync();
  w.close();
  const d = readFileSync(f);
  expect(d.subarray(0, 1 << 20).equals(big)).toBe(true);
  expect(d.subarray(2 << 20, (2 << 20) + 4096).equals(odd.subarray(0, 4096))).toBe(true);
  expect(d.subarray((2 << 20) + 4096, (2 << 20) + 4096 + 8192).equals(odd.subarray(4096 + 512, 4096 + 512 + 8192))).toBe(true);
  expect(d[(2 << 20) + 4096 + 8192]).toBe(9);
  expect(d[1 << 20]).toBe(9);
});

test('refuses writes, discards and zeroing outside [0, size): ENOSPC, file untouched', async () => {
  const f = s.path('t');
  junkFile(f, 65536);
  const before = readFileSync(f);
  const w = await BlockWriter.open(f);
  const e = await refused(w.write([{ offset: 65536, data: Buffer.alloc(512) }]), 'ENOSPC');
  expect(e).toMatchObject({ errno: -28, syscall: 'pwrite', path: f, offset: 65536 });
  await refused(w.write([{ offset: 65024, data: Buffer.alloc(1024) }]), 'ENOSPC'); // straddles the end
  await refused(w.write([{ offset: 0, data: Buffer.alloc(512) }, { offset: 1 << 30, data: Buffer.alloc(512) }]), 'ENOSPC'); // one bad segment refuses the batch
  await refused(w.discard(60000, 10000), 'ENOSPC');
  await refused(w.zeroOut(2 ** 40, 512), 'ENOSPC');
  await refused(w.write([{ offset: 0, data: Buffer.alloc(1024) }, { offset: 512, data: Buffer.alloc(512) }]), 'EINVAL'); // overlap
  w.close();
  expect(readFileSync(f).equals(before)).toBe(true);
  expect(statSync(f).size).toBe(65536);
});

test('discard punches holes, zeroOut zeroes; both read back as zeros', async () => {
  const f = s.path('t');
  junkFile(f, 1 << 20);
  const w = await BlockWriter.open(f);
  expect(await w.discard(65536, 131072)).toBe('punch-hole');
  expect(['zero-range', 'written']).toContain(await w.zeroOut(512, 1024));
  expect(await w.discard(0, 0)).toBe('none');
  await w.fsync();
  w.close();
  const d = readFileSync(f);
  expect(d.subarray(65536, 196608).every((b) => b === 0)).toBe(true);
  expect(d.subarray(512, 1536).every((b) => b === 0)).toBe(true);
  expect(d.subarray(0, 512).some((b) => b !== 0)).toBe(true);
  expect(d.subarray(196608, 200000).some((b) => b !== 0)).toBe(true);
});

test('discardMany: several ranges punched in one call, the rest untouched; unordered, overlapping or outside ranges refuse the whole call', async () => {
  const f = s.path('t');
  junkFile(f, 1 << 20);
  const before = readFileSync(f);
  const w = await BlockWriter.open(f);
  expect(await w.discardMany(Float64Array.from([0, 4096, 65536, 8192, 131072, 0, 200704, 4096]))).toBe('punch-hole');
  await refused(w.discardMany(Float64Array.from([65536, 4096, 0, 4096])), 'EINVAL'); // unordered
  await refused(w.discardMany(Float64Array.from([0, 8192, 4096, 4096])), 'EINVAL'); // overlapping
  await refused(w.discardMany(Float64Array.from([0, 4096, 1 << 20, 4096])), 'ENOSPC'); // one outside refuses all
  expect(await w.discardMany(new Float64Array(0))).toBe('none');
  w.close();
  const d = readFileSync(f);
  const zeroed = [[0, 4096], [65536, 73728], [200704, 204800]];
  for (const [a, b] of zeroed) expect([a, d.subarray(a, b).every((x) => x === 0)]).toEqual([a, true]);
  // Everything else as it was (the refused calls punched nothing).
  const keep = Buffer.from(before);
  for (const [a, b] of zeroed) keep.fill(0, a, b);
  expect(d.equals(keep)).toBe(true);
});

test('never creates unless asked, never truncates, grows only', async () => {
  const f = s.path('new');
  await refused(BlockWriter.open(f), 'ENOENT');
  expect(existsSync(f)).toBe(false);
  const w = await BlockWriter.open(f, { create: true });
  expect(w.info).toMatchObject({ created: true, size: 0 });
  await refused(w.write([{ offset: 0, data: Buffer.alloc(512) }]), 'ENOSPC');
  expect(await w.extend(8192)).toBe(8192);
  expect(w.size).toBe(8192);
  expect(await w.extend(4096)).toBe(8192); // never shrinks
  await w.write([{ offset: 4096, data: Buffer.alloc(4096, 9) }]);
  w.close();
  expect(statSync(f).mode & 0o777).toBe(0o600);
  const w2 = await BlockWriter.open(f, { create: true });
  expect(w2.info).toMatchObject({ created: false, size: 8192 });
  w2.close();
  expect(readFileSync(f)[4096]).toBe(9);
});

test('refuses what is neither a regular file nor a block device, and closed writers', async () => {
  mkdirSync(s.path('dir'));
  await refused(BlockWriter.open(s.path('dir')), 'EINVAL');
  await refused(BlockWriter.open('/dev/null'), 'EINVAL');
  const f = s.path('t');
  writeFileSync(f, Buffer.alloc(4096));
  const w = await BlockWriter.open(f);
  w.close();
  await expect(w.write([{ offset: 0, data: Buffer.alloc(512) }])).rejects.toMatchObject({ code: 'EBADF' });
});

// The block-device case (BLKGETSIZE64, O_EXCL, BLKZEROOUT) needs root and a loop
// device: it runs in the test VM, test/vm/block-writer.vm.test.ts.
