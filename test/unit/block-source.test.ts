/**
 * One contract, two backends (the serialport pattern): the in-memory source
 * and the native O_DIRECT reader must behave the same.
 */
import { mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlockSource, MemoryBlockSource, NativeBlockSource } from '../../src/pdata/block-source';
import { native } from '../../src/native/binding';

const NBLOCKS = 64;
function image(): Buffer {
  const b = Buffer.alloc(NBLOCKS * 4096);
  for (let i = 0; i < NBLOCKS; i++) {
    b.writeUInt32LE(i * 7 + 1, i * 4096 + 100);
    b.fill(i & 0xff, i * 4096 + 200, i * 4096 + 300);
  }
  return b;
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'dmthin-bs-'));
  writeFileSync(join(dir, 'img'), image());
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const backends: [string, () => Promise<BlockSource>][] = [
  ['memory', async () => new MemoryBlockSource(image())],
  ['native', async () => NativeBlockSource.open(join(dir, 'img'))],
];

describe.each(backends)('%s block source', (_name, make) => {
  let src: BlockSource;
  beforeEach(async () => {
    src = await make();
  });
  afterEach(() => src.close());

  test('size', () => {
    expect(src.sizeBytes).toBe(NBLOCKS * 4096);
  });

  test('returns blocks in request order, with duplicates and gaps', async () => {
    const want = [5, 3, 4, 5, 63, 0, 20, 21, 30];
    const blocks = await src.read(want);
    expect(blocks.map((b) => b.nr)).toEqual(want);
    for (const b of blocks) {
      expect(b.data.length).toBe(4096);
      expect(b.data.readUInt32LE(100)).toBe(b.nr * 7 + 1);
      expect(b.u32(100)).toBe(b.nr * 7 + 1);
      expect(b.data[250]).toBe(b.nr & 0xff);
      // The CRC handed back is the raw CRC of bytes [4, 4096).
      expect(b.crc).toBe(native().crc32c(b.data.subarray(4), 0xffffffff, true) >>> 0);
    }
  });

  test('an empty batch', async () => {
    expect(await src.read([])).toEqual([]);
  });

  test('a block past the end is a typed truncation error', async () => {
    await expect(src.read([1, NBLOCKS])).rejects.toMatchObject({ kind: 'truncated', code: 'EUCLEAN', block: NBLOCKS });
  });

  test('bad block numbers are rejected', async () => {
    await expect(src.read([-1])).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(src.read([1.5])).rejects.toMatchObject({ code: 'EINVAL' });
  });

  test('large batches (coalesced runs and scattered reads)', async () => {
    const want: number[] = [];
    for (let i = 0; i < 1000; i++) want.push((i * 37) % NBLOCKS);
    const blocks = await src.read(want);
    blocks.forEach((b, i) => expect(b.data.readUInt32LE(100)).toBe(want[i] * 7 + 1));
  });
});

describe('native reader', () => {
  test('opens read-only with O_DIRECT and reports a Node-shaped error for a missing file', async () => {
    const s = await NativeBlockSource.open(join(dir, 'img'));
    expect(s.direct).toBe(true);
    expect(s.blockDevice).toBe(false);
    await s.close();
    await expect(NativeBlockSource.open(join(dir, 'nope'))).rejects.toMatchObject({
      code: 'ENOENT',
      errno: -2,
      syscall: 'stat',
      path: join(dir, 'nope'),
    });
  });

  test('reads after close fail with EBADF', async () => {
    const s = await NativeBlockSource.open(join(dir, 'img'));
    await s.close();
    await expect(s.read([0])).rejects.toMatchObject({ code: 'EBADF' });
  });

  test('close while reads are in flight lets them finish', async () => {
    const s = await NativeBlockSource.open(join(dir, 'img'));
    const p = s.read([1, 2, 3]);
    await s.close();
    const blocks = await p;
    expect(blocks[2].data.readUInt32LE(100)).toBe(3 * 7 + 1);
  });

  test('a batch whose blocks are all done is handed back: its views read as empty, later reads are right', async () => {
    const s = await NativeBlockSource.open(join(dir, 'img'));
    try {
      // 200 blocks (800 KiB): a batch of the pooled size class.
      const want = Array.from({ length: 200 }, (_, i) => i % NBLOCKS);
      const blocks = await s.read(want);
      const words = blocks[0].words;
      blocks.slice(0, -1).forEach((b) => b.done());
      blocks[0].done(); // twice: harmless, and it must not count for another block
      // One block still in use: the batch stays readable.
      expect(blocks[199].u32(100)).toBe(want[199] * 7 + 1);
      expect(words.length).toBe((200 * 4096) / 4);
      blocks[199].done();
      // Handed back: detached, so a stale view sees nothing rather than another read's bytes.
      expect(words.length).toBe(0);
      expect(blocks[5].u32(100)).toBeUndefined();
      // The buffer is reused by the next read of that size; its contents are that read's.
      const again = await s.read(want.map((b) => (b + 9) % NBLOCKS));
      again.forEach((b) => expect(b.u32(100)).toBe(b.nr * 7 + 1));
      // A small batch (an exact allocation) is handed back too.
      const small = await s.read([3]);
      const sw = small[0].words;
      small[0].done();
      expect(sw.length).toBe(0);
    } finally {
      await s.close();
    }
  });

  test('batches of every size class (64 KiB..1 MiB, and either side) handed back and reused in turn read right', async () => {
    const s = await NativeBlockSource.open(join(dir, 'img'));
    try {
      // Block counts at and around each class edge (16 blocks = 64 KiB ... 256 = 1 MiB), twice, interleaved.
      const sizes = [1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 300];
      for (let round = 0; round < 3; round++) {
        const held = [];
        for (const n of [...sizes, ...sizes.slice().reverse()]) {
          const want = Array.from({ length: n }, (_, i) => (i * 5 + n + round) % NBLOCKS);
          const blocks = await s.read(want);
          blocks.forEach((b, i) => expect([b.nr, b.u32(100), b.data[250]]).toEqual([want[i], want[i] * 7 + 1, want[i] & 0xff]));
          // Every other batch is kept while the next ones reuse the pool.
          if (n % 2) blocks.forEach((b) => b.done());
          else held.push({ blocks, want });
        }
        for (const { blocks, want } of held) {
          blocks.forEach((b, i) => expect(b.u32(100)).toBe(want[i] * 7 + 1));
          blocks.forEach((b) => b.done());
        }
      }
    } finally {
      await s.close();
    }
  });

  test('more pooled batches at once than the two huge-page slabs hold (4 MiB): the rest come from malloc, all read right', async () => {
    const s = await NativeBlockSource.open(join(dir, 'img'));
    try {
      for (let round = 0; round < 3; round++) {
        // Nine batches in flight together, 6.5 MiB of 1 MiB, 512 KiB and 256 KiB classes; then all handed back and asked again.
        const counts = [256, 256, 256, 128, 256, 64, 256, 128, 64];
        const wants = counts.map((n, k) => Array.from({ length: n }, (_, i) => (i * 3 + k + round) % NBLOCKS));
        const batches = await Promise.all(wants.map((w) => s.read(w)));
        batches.forEach((blocks, k) => blocks.forEach((b, i) => expect([b.u32(100), b.data[250]]).toEqual([wants[k][i] * 7 + 1, wants[k][i] & 0xff])));
        // Handed back in an order unlike the one they came in.
        for (const k of [3, 0, 8, 5, 1, 7, 2, 6, 4]) batches[k].forEach((b) => b.done());
      }
    } finally {
      await s.close();
    }
  });

  test('a buffered file: cached blocks are read without a thread, and the event loop still turns every few reads', async () => {
    const s = await NativeBlockSource.open(join(dir, 'img'), { direct: 'never' });
    try {
      expect(s.direct).toBe(false);
      await s.read([0, 1, 2, 3]); // now in the page cache (written just before, at the latest)
      // Settled from the page cache during the call: before an immediate queued just before it.
      let turned = false;
      setImmediate(() => (turned = true));
      const blocks = await s.read([5, 9, 40, 41, 63]);
      expect(turned).toBe(false);
      blocks.forEach((b) => expect([b.u32(100), b.data[250]]).toEqual([b.nr * 7 + 1, b.nr & 0xff]));
      // A short walk never turns it (V8's young-generation collection would run
      // there); a long run of such reads lets an immediate, a timer or a signal
      // handler run in between, every few reads once past the first 64.
      let fired = false;
      setImmediate(() => (fired = true));
      let reads = 2;
      for (; reads < 64; reads++) await s.read([reads % NBLOCKS]);
      expect(fired).toBe(false);
      for (; reads < 200 && !fired; reads++) await s.read([reads % NBLOCKS]);
      expect(fired).toBe(true);
      expect(reads).toBeLessThanOrEqual(68);
      let timer = false;
      setTimeout(() => (timer = true), 0);
      for (let i = 0; i < 200 && !timer; i++) await s.read([i % NBLOCKS]);
      expect(timer).toBe(true);
    } finally {
      await s.close();
    }
  });

  test('a buffered file: slow reads turn the event loop within the first 64 once 20 ms have passed since the first (a signal waits no longer)', async () => {
    const s = await NativeBlockSource.open(join(dir, 'img'), { direct: 'never' });
    let clock = 1_000_000;
    const now = jest.spyOn(Date, 'now').mockImplementation(() => clock);
    try {
      let fired = false;
      setImmediate(() => (fired = true));
      await s.read([0]);
      for (let i = 1; i < 3; i++) await s.read([i]);
      expect(fired).toBe(false);
      clock += 20; // the 4th read comes 20 ms after the first
      await s.read([3]);
      expect(fired).toBe(true);
    } finally {
      now.mockRestore();
      await s.close();
    }
  });

  test('blocks never marked done stay readable (the garbage collector frees them)', async () => {
    const s = await NativeBlockSource.open(join(dir, 'img'));
    const [b] = await s.read([7]);
    await s.close();
    expect(b.u32(100)).toBe(7 * 7 + 1);
  });

  test('refuses directories', async () => {
    await expect(NativeBlockSource.open(dir)).rejects.toMatchObject({ code: 'EINVAL' });
  });

  test('a regular file opens (or a missing path, a FIFO fails) without a thread: before an immediate queued ahead of it', async () => {
    const fifo = join(dir, 'fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    try {
      for (const [path, code] of [
        [join(dir, 'img'), undefined],
        [join(dir, 'missing'), 'ENOENT'],
        [fifo, 'EINVAL'], // refused before any open: opening a FIFO would wait for a writer
      ] as const) {
        let turned = false;
        setImmediate(() => (turned = true));
        const opened = await NativeBlockSource.open(path).then(
          (s) => s,
          (e: NodeJS.ErrnoException) => e,
        );
        expect(turned).toBe(false);
        if (code === undefined) {
          expect(opened).toBeInstanceOf(NativeBlockSource);
          const [b] = await (opened as NativeBlockSource).read([7]);
          expect(b.u32(100)).toBe(7 * 7 + 1);
          await (opened as NativeBlockSource).close();
        } else {
          expect(opened).toMatchObject({ code });
        }
      }
    } finally {
      unlinkSync(fifo);
    }
  });

  test('the descriptor is O_RDONLY | O_DIRECT (checked in /proc/self/fdinfo)', async () => {
    const { readdirSync, readlinkSync, readFileSync } = await import('node:fs');
    const p = join(dir, 'img');
    const s = await NativeBlockSource.open(p);
    try {
      const fds = readdirSync('/proc/self/fd').filter((fd) => {
        try {
          return readlinkSync(`/proc/self/fd/${fd}`) === p;
        } catch {
          return false;
        }
      });
      expect(fds.length).toBe(1);
      const flags = parseInt(/flags:\s+([0-7]+)/.exec(readFileSync(`/proc/self/fdinfo/${fds[0]}`, 'utf8'))![1], 8);
      expect(flags & 0o3).toBe(0); // O_ACCMODE == O_RDONLY
      expect(flags & 0o40000).toBe(0o40000); // O_DIRECT
    } finally {
      await s.close();
    }
  });
});

describe('CachingBlockSource', () => {
  test('reads each block once while it is kept, the oldest going first, and returns the same bytes', async () => {
    const { CachingBlockSource } = await import('../../src/pdata/block-source');
    const inner = new MemoryBlockSource(image());
    const c = new CachingBlockSource(inner, 3);
    const first = await c.read([5, 6]);
    expect(inner.stats.blocksRead).toBe(2);
    const again = await c.read([6, 5, 5]);
    expect(inner.stats.blocksRead).toBe(2); // both kept
    expect(again.map((b) => b.nr)).toEqual([6, 5, 5]);
    expect(again[1]).toBe(first[0]);
    await c.read([7, 8]); // 4 blocks for 3 places: 5, the oldest, goes
    expect(inner.stats.blocksRead).toBe(4);
    await c.read([6]);
    expect(inner.stats.blocksRead).toBe(4);
    const [five] = await c.read([5]);
    expect(inner.stats.blocksRead).toBe(5);
    expect(five.data.readUInt32LE(100)).toBe(5 * 7 + 1);
    expect(c.path).toBe(inner.path);
    expect(c.sizeBytes).toBe(inner.sizeBytes);
  });

  test('a read of more blocks than it keeps returns them all, each read once', async () => {
    const { CachingBlockSource } = await import('../../src/pdata/block-source');
    const inner = new MemoryBlockSource(image());
    const c = new CachingBlockSource(inner, 2);
    const got = await c.read([1, 2, 3, 1, 4]);
    expect(got.map((b) => b.nr)).toEqual([1, 2, 3, 1, 4]);
    expect(got.map((b) => b.data.readUInt32LE(100))).toEqual([1, 2, 3, 1, 4].map((i) => i * 7 + 1));
    expect(inner.stats.blocksRead).toBe(4);
  });
});
