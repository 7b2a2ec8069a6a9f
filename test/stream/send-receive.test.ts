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
import { NativeDataSource, type DataSource } from '../../src/stream/data-source';
import { identityKey } from '../../src/stream/format';
import { receive, receiveStream } from '../../src/stream/receive';
import type { ReceiveState } from '../../src/stream/receive-state';
import { sendStream, type SendSummary } from '../../src/stream/send-stream';
import { ThinMetadata } from '../../src/thin/metadata';
import { fixtureImage } from '../helpers/fixtures';
import { expectedSha, junkFile, PatternSource, scratch, writeDataFile, type Scratch } from './helpers';

interface Chain {
  fixture: string;
  held?: boolean;
  devices: number[];
  /** Fixed device size in blocks; default: each snapshot's highest mapped block. */
  sizeBlocks?: number;
  /** Read data from a sparse data file through the native reader (else the in-memory pattern). */
  dataFile?: boolean;
}

const CHAINS: Chain[] = [
  { fixture: 'shared-subtree', devices: [1, 3, 2, 4, 3], dataFile: true },
  { fixture: 'metadata-snap-diverged', held: true, devices: [1, 2, 3, 5, 1], dataFile: true },
  { fixture: 'metadata-snap-diverged', devices: [1, 4, 6, 2], dataFile: true, sizeBlocks: 300 },
  { fixture: 'snapshots', devices: [1, 2, 3, 16777215, 4, 5] },
  { fixture: 'deep-tree', devices: [1, 2, 1], sizeBlocks: 3000 },
  { fixture: 'dbs-1024-wide', devices: [10, 12, 11], sizeBlocks: 600 },
];

async function shaPrefix(path: string, n: number): Promise<string> {
  const h = createHash('sha256');
  if (n > 0) for await (const c of createReadStream(path, { start: 0, end: n - 1, highWaterMark: 1 << 20 })) h.update(c as Buffer);
  return h.digest('hex');
}

async function mapOf(md: ThinMetadata, dev: number): Promise<Map<number, number>> {
  const m = new Map<number, number>();
  for await (const r of md.mappings(dev)) {
    if (typeof r.originBegin === 'bigint') continue;
    for (let i = 0; i < r.length; i++) m.set(r.originBegin + i, r.dataBegin + i);
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
    for (const [step, dev] of chain.devices.entries()) {
      const deviceSize = chain.sizeBlocks !== undefined ? chain.sizeBlocks * bs : undefined;
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
  expect(md.io.stats.blocksRead - before).toBeLessThan(5);
  await md.close();
});

test('mappings beyond the device size are left out and counted', async () => {
  const md = await ThinMetadata.fromBuffer(fixtureImage('basic'));
  let summary: SendSummary | undefined;
  const s2 = sendStream({ metadata: md, snap: 1, source: new PatternSource(65536), deviceSize: 100 * 65536, onEnd: (x) => (summary = x) });
  for await (const _ of s2);
  const all = await mapOf(md, 1);
  const inside = [...all.keys()].filter((v) => v < 100).length;
  expect(summary!.dataBlocks).toBe(inside);
  expect(summary!.beyondEnd).toBeGreaterThan(0);
  // The default size would need a virtual block above 2^32 x 64 KiB: still exact, below 2^53.
  let def: SendSummary | undefined;
  const s3 = sendStream({ metadata: md, snap: 1, source: new PatternSource(65536), onEnd: (x) => (def = x) });
  for await (const _ of s3);
  expect(def!.beyondEnd).toBe(0);
  expect(def!.dataBlocks).toBe(32);
  await md.close();
});

test('1 GiB data blocks are cut into 8 MiB records and received whole', async () => {
  const md = await ThinMetadata.fromBuffer(fixtureImage('dbs-1gib-full'));
  const bs = md.superblock.dataBlockSize * 512; // 1 GiB
  const target = s.path('bigblocks.target');
  // The device clipped to 20 MiB + 4 KiB (a piece of its first block) to keep the test small.
  const size = 20 * 2 ** 20 + 4096;
  let summary: SendSummary | undefined;
  await pipeline(sendStream({ metadata: md, snap: 1, source: new PatternSource(bs), deviceSize: size, onEnd: (x) => (summary = x) }), receiveStream(target, { create: true, spoolDir: s.dir }));
  expect(summary).toMatchObject({ dataBlocks: 1, records: 4, dataBytes: size }); // header + 8 + 8 + 4 MiB
  expect(await shaPrefix(target, size)).toBe(await expectedSha(md, 1, size));
  await md.close();
});

test('virtual blocks beyond 2^53 bytes: the default size is refused, an explicit one works', async () => {
  const md = await ThinMetadata.fromBuffer(fixtureImage('high-values'));
  const bs = md.superblock.dataBlockSize * 512;
  const ids = [...(await md.devices()).keys()];
  const drain = async (r: NodeJS.ReadableStream): Promise<void> => {
    for await (const _ of r);
  };
  // Some device maps virtual block 2^64-2: no device size in bytes can reach it.
  const zeros = { addressing: 'data' as const, readBlocks: async (unit: number, blocks: readonly number[]) => Buffer.alloc(unit * blocks.length) };
  const results = await Promise.allSettled(ids.map((id) => drain(sendStream({ metadata: md, snap: id, source: zeros }))));
  expect(results.some((r) => r.status === 'rejected' && (r.reason as { code?: string }).code === 'EINVAL')).toBe(true);
  for (const id of ids) {
    let summary: SendSummary | undefined;
    // 1 MiB of the first (1 GiB) block: mapped or not, the one block is covered.
    await drain(sendStream({ metadata: md, snap: id, source: new PatternSource(bs), deviceSize: 1 << 20, onEnd: (x) => (summary = x) }));
    expect(summary!.dataBlocks + summary!.discardBlocks).toBe(1);
  }
  await md.close();
});
