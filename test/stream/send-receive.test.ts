/**
 * End to end on the committed fixtures: the content of each thin device is
 * derived from a synthetic data device (every data block holds a pattern
 * of its own number). A chain of sends — full for the first device,
 * incremental for each next one against the previous — is received into a
 * file that starts out full of junk; after every step the file must hash
 * like the device it now holds, the stream must carry exactly the blocks a
 * naive comparison says changed, and the state file must name the device.
 */
import { createReadStream, createWriteStream, readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { join } from 'node:path';
import { StreamError, UsageError } from '../../src/errors';
import { NativeDataSource, type DataSource } from '../../src/stream/send/data-source';
import type { SendPlan } from '../../src/stream/send/plan';
import type { SendExtent } from '../../src/stream/send/extent-store';
import { identityKey } from '../../src/stream/format/records';
import { receive, receiveStream } from '../../src/ops/receive';
import { Spool } from '../../src/stream/receive/spool';
import type { ReceiveState } from '../../src/stream/receive/state';
import { encodeRecords, encodeStream, sendStream, writeRecords, type SendSummary } from '../../src/stream/send/send-stream';
import { BlockWriter } from '../../src/native/block-writer';
import { Writable } from 'node:stream';
import { EventEmitter } from 'node:events';
import { ThinMetadata } from '../../src/thin/metadata';
import { fixtureImage } from '../helpers/fixtures';
import { expectedSha, junkBytes, junkFile, patternBlock, PatternSource, scratch, writeDataFile, type Scratch } from './helpers';

interface Chain {
  fixture: string;
  held?: boolean;
  devices: number[];
  /** Device size in blocks; default: the end of the highest block any device of the chain maps. */
  sizeBlocks?: number;
  /** Read data from a sparse data file through the native reader (else the in-memory pattern). */
  dataFile?: boolean;
}

const CHAINS: Chain[] = [
  { fixture: 'shared-subtree', devices: [1, 3, 2, 4, 3], dataFile: true },
  { fixture: 'metadata-snap-diverged', held: true, devices: [1, 2, 3, 5, 1], dataFile: true },
  { fixture: 'metadata-snap-diverged', devices: [1, 4, 6, 2], dataFile: true, sizeBlocks: 300 },
  { fixture: 'snapshots', devices: [1, 2, 3, 16777215, 4, 5] },
];

async function shaPrefix(path: string, n: number): Promise<string> {
  const h = createHash('sha256');
  if (n > 0) for await (const c of createReadStream(path, { start: 0, end: n - 1, highWaterMark: 1 << 20 })) h.update(c as Buffer);
  return h.digest('hex');
}

async function mapOf(md: ThinMetadata, dev: number): Promise<Map<number, number>> {
  const m = new Map<number, number>();
  for await (const r of md.mappings(dev)) {
    if (r.originBegin > BigInt(Number.MAX_SAFE_INTEGER)) continue; // past any device size
    for (let i = 0; i < r.length; i++) m.set(Number(r.originBegin) + i, r.dataBegin + i);
  }
  return m;
}

/** What an incremental stream must carry, by brute force. */
async function naiveCounts(md: ThinMetadata, base: number | undefined, snap: number, nBlocks: number): Promise<{ data: number; zero: number }> {
  const s = await mapOf(md, snap);
  let data = 0;
  let zero = 0;
  if (base === undefined) {
    for (const v of s.keys()) if (v < nBlocks) data++;
    return { data, zero: nBlocks - data };
  }
  const b = await mapOf(md, base);
  for (const [v, d] of s) if (v < nBlocks && b.get(v) !== d) data++;
  for (const v of b.keys()) if (v < nBlocks && !s.has(v)) zero++;
  return { data, zero };
}

let s: Scratch;
beforeAll(() => (s = scratch()));
afterAll(() => s.cleanup());

describe.each(CHAINS)('$fixture (held: $held) chain $devices', (chain) => {
  test('full, then incrementals: the target always equals the device', async () => {
    const image = fixtureImage(chain.fixture);
    const md = await ThinMetadata.fromBuffer(image, { metadataSnap: chain.held || undefined });
    const bs = md.superblock.dataBlockSize * 512;
    const tag = `${chain.fixture}-${chain.held ? 'held' : 'live'}-${chain.devices.join('_')}`;
    let source: DataSource;
    if (chain.dataFile) {
      await writeDataFile(image, s.path(`${tag}.data`), bs);
      source = await NativeDataSource.open(s.path(`${tag}.data`), { addressing: 'data' });
    } else {
      source = new PatternSource(bs);
    }
    const target = s.path(`${tag}.target`);
    junkFile(target, 4 * bs, 7); // whatever was there before must not survive a full receive
    let prev: number | undefined;
    let sizeBlocks = chain.sizeBlocks ?? 0;
    if (chain.sizeBlocks === undefined) for (const d of chain.devices) for (const v of (await mapOf(md, d)).keys()) sizeBlocks = Math.max(sizeBlocks, v + 1);
    for (const [step, dev] of chain.devices.entries()) {
      const deviceSize = sizeBlocks * bs;
      let summary: SendSummary | undefined;
      const out = sendStream({ metadata: md, snap: dev, base: prev, source, deviceSize, poolId: 'test-pool', onEnd: (x) => (summary = x) });
      let result;
      if (step % 2 === 0) {
        // Through a file, verified in place.
        const file = s.path(`${tag}.${step}.stream`);
        await pipeline(out, createWriteStream(file));
        result = await receive({ target, input: file, create: true });
        expect(result.spooled).toBe(false);
      } else {
        // Straight from the sender into the receiver (spooled).
        const w = receiveStream(target, { create: true, spoolDir: s.dir });
        await pipeline(out, w);
        result = await w.result;
        expect(result.spooled).toBe(true);
      }
      const size = result.header.deviceSize;
      expect(await shaPrefix(target, size)).toBe(await expectedSha(md, dev, size));
      expect(result.digest).toBe(summary!.digest);
      const naive = await naiveCounts(md, prev, dev, Math.ceil(size / bs));
      expect({ data: result.dataBlocks, zero: result.discardBlocks }).toEqual(naive);
      expect(result.header.base?.devId).toBe(prev);
      const state = JSON.parse(readFileSync(result.stateFile, 'utf8')) as ReceiveState;
      expect(state.pending).toBeNull();
      expect(state.current).toMatchObject({ digest: summary!.digest, deviceSize: size, snapshot: { devId: dev, pool: 'test-pool', key: identityKey(result.header.target) } });
      prev = dev;
    }
    await source.close?.();
    await md.close();
  });
});

test('an incremental stream skips blocks both devices share: shared subtrees are not even read', async () => {
  const md = await ThinMetadata.fromBuffer(fixtureImage('shared-subtree'));
  const src = new PatternSource(65536);
  const before = md.io.stats.blocksRead;
  let summary: SendSummary | undefined;
  const chunks: Buffer[] = [];
  for await (const c of sendStream({ metadata: md, snap: 2, base: 1, source: src, deviceSize: 400 * 65536, onEnd: (x) => (summary = x) })) chunks.push(c as Buffer);
  // Devices 1 and 2 share their whole tree: nothing to send, and the walk reads next to nothing.
  expect(summary).toMatchObject({ dataBlocks: 0, discardBlocks: 0, records: 1 });
  expect(src.reads).toBe(0);
  // (Format 4 reads the two root nodes once more, for their digests in the header.)
  expect(md.io.stats.blocksRead - before).toBeLessThan(7);
  await md.close();
});

test('a data source that answers short, long or not with bytes fails the send (EIO): its bytes never stand in for the blocks asked (found by an outside hunt)', async () => {
  const md = await ThinMetadata.fromBuffer(fixtureImage('shared-subtree'));
  const pattern = new PatternSource(65536);
  const answers: [string, (b: Buffer) => unknown, RegExp][] = [
    ['short', (b) => b.subarray(0, b.length - 512), /returned \d+ bytes for \d+ units of \d+ bytes \(\d+ bytes\): a short or long read/],
    ['long', (b) => Buffer.concat([b, Buffer.alloc(512)]), /a short or long read/],
    ['a string', (b) => b.toString('latin1'), /returned string, not a Buffer/],
  ];
  for (const [, answer, message] of answers) {
    const source: DataSource = { addressing: 'data', readBlocks: async (u, blocks) => answer(await pattern.readBlocks(u, blocks)) as Buffer };
    const drain = async (): Promise<void> => {
      for await (const _ of sendStream({ metadata: md, snap: 1, source, deviceSize: 400 * 65536 }));
    };
    // Before: the stream was made (and verified on receive) with the wrong bytes.
    await expect(drain()).rejects.toMatchObject({ code: 'EIO', message: expect.stringMatching(message) });
  }
  await md.close();
});

test('a mapping beyond the declared size is an error, and no size is never guessed', async () => {
  const md = await ThinMetadata.fromBuffer(fixtureImage('basic'));
  const drain = async (r: NodeJS.ReadableStream): Promise<void> => {
    for await (const _ of r);
  };
  // Device 1 maps blocks 0..41 and 1000, 1001 (and one near 2^32): a 100-block device cannot hold them.
  const firstBeyond = Math.min(...[...(await mapOf(md, 1)).keys()].filter((v) => v >= 100));
  expect(firstBeyond).toBe(1000);
  const e = await drain(sendStream({ metadata: md, snap: 1, source: new PatternSource(65536), deviceSize: 100 * 65536 })).catch((x: unknown) => x);
  expect(e).toBeInstanceOf(StreamError);
  expect(e).toMatchObject({ reason: 'beyond-size', code: 'ERANGE', devId: 1, block: 1000, deviceSize: 100 * 65536 });
  expect((e as Error).message).toMatch(/device 1 maps virtual block 1000, outside the device size of 6553600 bytes \(100 blocks\)/);
  // No size and a source that is not the device itself: refused, not guessed from the mappings.
  const u = await drain(sendStream({ metadata: md, snap: 1, source: new PatternSource(65536) })).catch((x: unknown) => x);
  expect(u).toBeInstanceOf(UsageError);
  expect((u as Error).message).toMatch(/size of thin device 1 is not in the pool metadata.*deviceSize/);
  // Incremental: a left_only extent (mapped in the base only) beyond the size is an error too, not a skipped discard.
  const ex = await ThinMetadata.fromBuffer(readFileSync(join(__dirname, '..', '..', 'examples', 'pool.bin')));
  const li = await drain(sendStream({ metadata: ex, snap: 2, base: 1, source: new PatternSource(65536), deviceSize: 101 * 65536 })).catch((x: unknown) => x);
  expect(li).toMatchObject({ reason: 'beyond-size', devId: 1, block: 200 });
  expect((li as Error).message).toMatch(/unmapped in snapshot 2/);
  // right_only beyond the size (device 1 maps 200, base 2 does not).
  const ro = await drain(sendStream({ metadata: ex, snap: 1, base: 2, source: new PatternSource(65536), deviceSize: 150 * 65536 })).catch((x: unknown) => x);
  expect(ro).toMatchObject({ reason: 'beyond-size', devId: 1, block: 200 });
  await ex.close();
  await md.close();
});

test('1 GiB data blocks are cut into 8 MiB records and received whole', async () => {
  // The encoder alone: a device of one 1 GiB block clipped to 20 MiB + 4 KiB, to keep the test small.
  const bs = 2097152 * 512;
  const size = 20 * 2 ** 20 + 4096;
  const src = new PatternSource(bs);
  const plan: SendPlan = {
    header: { dataBlockSize: 2097152, deviceSize: size, target: { pool: 'p', devId: 1, creationTime: 0, transactionId: 0n }, base: null },
    extents: (async function* () {
      yield { kind: 'data' as const, begin: 0, length: 1, source: 0 };
    })(),
  };
  const target = s.path('bigblocks.target');
  let summary: SendSummary | undefined;
  await pipeline(encodeStream(plan, src, { onEnd: (x) => (summary = x) }), receiveStream(target, { create: true, spoolDir: s.dir }));
  expect(summary).toMatchObject({ dataBlocks: 1, records: 4, dataBytes: size }); // header + 8 + 8 + 4 MiB
  const want = createHash('sha256').update(await src.readBlocks(size, [0])).digest('hex');
  expect(await shaPrefix(target, size)).toBe(want);
});

test('a Readable of tiny chunks: gathered before they are verified and spooled, the target right', async () => {
  const md = await ThinMetadata.fromBuffer(fixtureImage('shared-subtree'));
  let blocks = 0;
  for (const v of (await mapOf(md, 3)).keys()) blocks = Math.max(blocks, v + 1);
  const size = blocks * 65536;
  const parts: Buffer[] = [];
  for await (const c of sendStream({ metadata: md, snap: 3, source: new PatternSource(65536), deviceSize: size })) parts.push(c as Buffer);
  const whole = Buffer.concat(parts);
  // Chunk sizes around the gathering limit (64 KiB) and the gather buffer's (1 MiB), mixed with 1-byte ones;
  // then 1-byte chunks for the last 50,000 bytes (before: one spool write each, ~0.1 ms a byte).
  const sizes = [1, 1, 3, 65535, 1, 65536, 2, 100000, 1, 1 << 20, 7, 65535, 65535];
  const input: Buffer[] = [];
  let at = 0;
  for (let i = 0; at < whole.length - 50000; i++) {
    const n = Math.min(sizes[i % sizes.length], whole.length - 50000 - at);
    input.push(Buffer.from(whole.subarray(at, at + n))); // own copies: the receiver may keep none of them
    at += n;
  }
  for (; at < whole.length; at++) input.push(Buffer.from([whole[at]]));
  expect(Buffer.concat(input).equals(whole)).toBe(true);
  const writes = jest.spyOn(Spool.prototype, 'write');
  try {
    const target = s.path('tiny-chunks.target');
    const w = receiveStream(target, { create: true, spoolDir: s.dir });
    await pipeline(Readable.from(input), w);
    const r = await w.result;
    expect(r.spooled).toBe(true);
    expect(r.header.deviceSize).toBe(size);
    expect(await shaPrefix(target, size)).toBe(await expectedSha(md, 3, size));
    expect(input.length).toBeGreaterThan(50000);
    expect(writes.mock.calls.length).toBeLessThan(1000);
  } finally {
    writes.mockRestore();
    await md.close();
  }
});

test('virtual blocks beyond 2^53 bytes: no device size can reach them, the send fails naming the block', async () => {
  const md = await ThinMetadata.fromBuffer(fixtureImage('high-values'));
  const drain = async (r: NodeJS.ReadableStream): Promise<void> => {
    for await (const _ of r);
  };
  const zeros = { addressing: 'data' as const, readBlocks: async (unit: number, blocks: readonly number[]) => Buffer.alloc(unit * blocks.length) };
  // Device 16777214 maps virtual block 2^64-2 (1 GiB blocks).
  const e = await drain(sendStream({ metadata: md, snap: 16777214, source: zeros, deviceSize: 1 << 30 })).catch((x: unknown) => x);
  expect(e).toMatchObject({ reason: 'beyond-size', devId: 16777214, virtualBlock: '18446744073709551614' });
  // Device 16777215 maps blocks 0 and 1: a 1 MiB device is too small for block 1.
  const f = await drain(sendStream({ metadata: md, snap: 16777215, source: zeros, deviceSize: 1 << 20 })).catch((x: unknown) => x);
  expect(f).toMatchObject({ reason: 'beyond-size', devId: 16777215, block: 1 });
  await md.close();
});

/** A plan of device 2 against base 1 (pool 'p'), `n` blocks of `bs` bytes, with the extents `extents` yields. */
function incrementalPlan(bs: number, n: number, extents: () => AsyncGenerator<SendExtent>): SendPlan {
  return {
    header: {
      dataBlockSize: bs / 512,
      deviceSize: n * bs,
      target: { pool: 'p', devId: 2, creationTime: 1, transactionId: 1n },
      base: { pool: 'p', devId: 1, creationTime: 0, transactionId: 1n },
    },
    extents: extents(),
  };
}

test('a stream of many small discards: written in few pieces, its discards punched many a call, the target right (found by an outside hunt)', async () => {
  // Blocks 3k: data (pattern of data block 3k), 3k+1: discarded, 3k+2: untouched (keeps the junk).
  const bs = 65536;
  const n = 600;
  const plan = (): SendPlan =>
    incrementalPlan(bs, n, async function* () {
      for (let b = 0; b < n; b += 3) {
        yield { kind: 'data' as const, begin: b, length: 1, source: b };
        yield { kind: 'zero' as const, begin: b + 1, length: 1, source: -1 };
      }
    });
  // Each buffer the sender yields is one write: now what came before a data record's payload, then the payload.
  const file = s.path('many-discards.stream');
  const chunks: Buffer[] = [];
  const out = new Writable({
    write(c: Buffer, _e, cb) {
      chunks.push(Buffer.from(c));
      cb();
    },
  });
  await writeRecords(encodeRecords(plan(), new PatternSource(bs), { reuseBuffers: true }), out);
  const stream = Buffer.concat(chunks);
  const pieces: Buffer[] = [];
  for await (const c of encodeStream(plan(), new PatternSource(bs))) pieces.push(c as Buffer);
  expect(Buffer.concat(pieces).equals(stream)).toBe(true); // a Readable of the same plan: the same bytes
  expect(chunks.length).toBeLessThanOrEqual(2 * 200 + 1); // 1,004 before
  expect(pieces.length).toBeLessThanOrEqual(2 * 200 + 1);
  const { writeFileSync } = await import('node:fs');
  writeFileSync(file, stream);

  const target = s.path('many-discards.target');
  junkFile(target, n * bs, 11);
  // A file's holes are punched many ranges a call (before: a call per record, one at a time).
  const single = jest.spyOn(BlockWriter.prototype, 'discard');
  const many = jest.spyOn(BlockWriter.prototype, 'discardMany');
  try {
    const r = await receive({ target, input: file, force: true });
    expect(r).toMatchObject({ dataBlocks: 200, discardBlocks: 200 });
    expect(single).not.toHaveBeenCalled();
    expect(many.mock.calls.length).toBeLessThanOrEqual(4); // 64 ranges a call
    expect(many.mock.calls.reduce((n, c) => n + c[0].length, 0)).toBe(2 * 200);
  } finally {
    single.mockRestore();
    many.mockRestore();
  }
  const want = junkBytes(n * bs, 11);
  for (let b = 0; b < n; b += 3) {
    patternBlock(b, bs).copy(want, b * bs);
    want.fill(0, (b + 1) * bs, (b + 2) * bs);
  }
  expect(readFileSync(target).equals(want)).toBe(true);
});

test('records written an item at a time through reused buffers: more small records than the gathering buffer holds reach an output that copies them late as they were, and an item of several writes reports its first failure', async () => {
  // 6,000 discards of one block each, 2,000 (80 KB) between data blocks: more than the 64 KiB gathering buffer holds.
  const bs = 65536;
  const n = 12_000;
  const plan = (): SendPlan =>
    incrementalPlan(bs, n, async function* () {
      for (let b = 0; b < n; b += 2) {
        if (b % 4000 === 0) yield { kind: 'data' as const, begin: b, length: 1, source: b };
        else yield { kind: 'zero' as const, begin: b, length: 1, source: -1 };
      }
    });
  const want: Buffer[] = [];
  for await (const c of encodeStream(plan(), new PatternSource(bs))) want.push(c as Buffer);
  // Each chunk is copied only when its write completes, a turn of the event loop later.
  const late: Buffer[] = [];
  let writes = 0;
  await writeRecords(
    encodeRecords(plan(), new PatternSource(bs), { reuseBuffers: true }),
    new Writable({
      write(c: Buffer, _e, cb) {
        writes++;
        setImmediate(() => {
          late.push(Buffer.from(c));
          cb();
        });
      },
    }),
  );
  expect(Buffer.concat(late).equals(Buffer.concat(want))).toBe(true);
  expect(writes).toBeLessThan(40); // 6,000 discard records gathered into a few pieces, a data record's payload on its own
  // An item of several writes (what was gathered, then a payload) to an output that fails each write its own
  // way (a Writable gives the later ones the first one's error): the first one's failure is the one reported.
  let calls = 0;
  const failing = Object.assign(new EventEmitter(), {
    destroyed: false,
    write(_c: Buffer, cb?: (e?: Error | null) => void): boolean {
      const first = ++calls === 1;
      setImmediate(() => cb?.(Object.assign(new Error(first ? 'the first write failed' : 'a later write failed'), { code: first ? 'ENOSPC' : 'EIO' })));
      return true;
    },
  });
  const e = await writeRecords(encodeRecords(plan(), new PatternSource(bs), { reuseBuffers: true }), failing as unknown as Writable).catch((x: unknown) => x);
  expect(calls).toBe(2);
  expect(e).toMatchObject({ code: 'ENOSPC', message: 'the first write failed' });
});


test('scattered extents are read a few pieces a call: batches of up to 2 MiB (batchBytes when given), one piece may fill 8 MiB; the stream the same', async () => {
  const bs = 65536;
  // readRanges (the native source's, with reused buffers) over the pattern, counting its calls.
  class RangePatternSource extends PatternSource {
    calls: number[] = []; // pieces per call
    allocBuffer(bytes: number): Buffer {
      return Buffer.alloc(bytes);
    }
    async readRanges(buf: Buffer, ranges: readonly { at: number; offset: number; length: number }[]): Promise<void> {
      this.calls.push(ranges.length);
      for (const r of ranges) (await this.readBlocks(512, Array.from({ length: r.length / 512 }, (_, i) => r.offset / 512 + i))).copy(buf, r.at);
    }
  }
  const plan = (extents: { begin: number; length: number; source: number }[]): SendPlan => ({
    header: { dataBlockSize: bs / 512, deviceSize: 1000 * bs, target: { pool: 'p', devId: 1, creationTime: 0, transactionId: 1n }, base: null },
    extents: (async function* () {
      for (const e of extents) yield { kind: 'data' as const, ...e };
    })(),
  });
  const streamOf = async (p: SendPlan, source: DataSource, reuseBuffers: boolean): Promise<Buffer> => {
    const chunks: Buffer[] = [];
    const out = new Writable({
      write(c: Buffer, _e, cb) {
        chunks.push(Buffer.from(c));
        cb();
      },
    });
    await writeRecords(encodeRecords(p, source, { reuseBuffers }), out);
    return Buffer.concat(chunks);
  };
  const cases = [
    // 64 one-block extents, every third block (before: 64 calls of one piece each)
    { extents: Array.from({ length: 64 }, (_, i) => ({ begin: 3 * i, length: 1, source: 5 * i })), calls: [32, 32] },
    // one extent of 300 blocks: 8 MiB pieces, a call each
    { extents: [{ begin: 0, length: 300, source: 7 }], calls: [1, 1, 1] },
    // the example pool's device 1: 12 blocks in three extents, one call
    { extents: [{ begin: 0, length: 10, source: 0 }, { begin: 50, length: 1, source: 50 }, { begin: 60, length: 1, source: 60 }], calls: [3] },
  ];
  for (const c of cases) {
    const src = new RangePatternSource(bs);
    const got = await streamOf(plan(c.extents), src, true);
    expect(src.calls).toEqual(c.calls);
    expect(got.equals(await streamOf(plan(c.extents), new PatternSource(bs), false))).toBe(true);
  }
  // batchBytes, when given, is where a batch of scattered pieces closes: the 64 in one call.
  const src = new RangePatternSource(bs);
  const chunks: Buffer[] = [];
  await writeRecords(
    encodeRecords(plan(cases[0].extents), src, { reuseBuffers: true, batchBytes: 8 << 20 }),
    new Writable({
      write(c: Buffer, _e, cb) {
        chunks.push(Buffer.from(c));
        cb();
      },
    }),
  );
  expect(src.calls).toEqual([64]);
  expect(Buffer.concat(chunks).equals(await streamOf(plan(cases[0].extents), new PatternSource(bs), false))).toBe(true);
});
