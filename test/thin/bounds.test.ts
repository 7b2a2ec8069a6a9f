/**
 * Sizes from a checksummed but absurd superblock are refused before anything
 * is allocated or walked, and per-walk bookkeeping follows what is visited.
 */
import { MetadataError } from '../../src/errors';
import { OwnerMap } from '../../src/pdata/owner-map';
import { ThinMetadata } from '../../src/thin/metadata';
import { blk, seal } from '../helpers/corrupt';
import { fixtureImage, tempImage } from '../helpers/fixtures';
import { runCli } from '../cli/run-cli';

/** A copy of a fixture with a u64 of the superblock replaced (checksum resealed). */
function withSuperblockU64(name: string, offset: number, value: bigint): Buffer {
  const img = Buffer.from(fixtureImage(name));
  const sb = blk(img, 0);
  sb.writeBigUInt64LE(value, offset);
  seal(sb, 'superblock');
  return img;
}

const METADATA_NR_BLOCKS = 0xc0;
const DATA_NR_BLOCKS = 0x40;

async function openError(img: Buffer): Promise<MetadataError> {
  const t0 = Date.now();
  const err = await ThinMetadata.fromBuffer(img).then(
    (md) => md.close().then(() => undefined),
    (e) => e,
  );
  expect(Date.now() - t0).toBeLessThan(2000);
  expect(err).toBeInstanceOf(MetadataError);
  return err as MetadataError;
}

test('a metadata space map of 2^36 blocks is refused at open, typed, without allocating for it', async () => {
  const e = await openError(withSuperblockU64('snapshots', METADATA_NR_BLOCKS, 2n ** 36n));
  expect(e.kind).toBe('space-map');
  expect(e.code).toBe('EUCLEAN');
  expect(e.message).toMatch(/claims 68719476736 blocks; a pool's metadata has at most 4161600/);
});

test('a metadata space map larger than the device is a truncated device', async () => {
  const img = fixtureImage('snapshots');
  const blocks = img.length / 4096;
  const e = await openError(withSuperblockU64('snapshots', METADATA_NR_BLOCKS, BigInt(blocks + 1)));
  expect(e.kind).toBe('truncated');
  expect(e.message).toContain(`claims ${blocks + 1} blocks but <memory> holds ${blocks}`);
});

test('a data space map with more blocks than the metadata has bitmaps for is refused', async () => {
  const img = fixtureImage('snapshots');
  const meta = img.length / 4096;
  const e = await openError(withSuperblockU64('snapshots', DATA_NR_BLOCKS, BigInt(meta * 16320 + 1)));
  expect(e.kind).toBe('space-map');
  expect(e.message).toMatch(/data space map claims \d+ blocks, more than \d+ metadata blocks can hold bitmaps for/);
  // The largest count that fits is accepted (dump does not read the data space map).
  await (await ThinMetadata.fromBuffer(withSuperblockU64('snapshots', DATA_NR_BLOCKS, BigInt(meta * 16320)))).close();
});

test('the CLI reports an absurd superblock in one line, exit 1, for every reader', () => {
  using t = tempImage(withSuperblockU64('snapshots', METADATA_NR_BLOCKS, 2n ** 36n));
  for (const args of [['dump'], ['ls'], ['delta', '--snap1', '1', '--snap2', '2']]) {
    const r = runCli([...args, t.path]);
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/metadata space map claims 68719476736 blocks/);
  }
});

test('ownership bookkeeping costs about half a KiB per scattered block, not a 128 KiB page', () => {
  const before = process.memoryUsage().arrayBuffers;
  const m = new OwnerMap(2);
  for (let i = 0; i < 10_000; i++) m.mark(i * 65536, i % 2);
  const grown = process.memoryUsage().arrayBuffers - before;
  expect(grown).toBeLessThan(10_000 * 1024); // 64 Ki-block pages took 1.3 GB here
  const ex = m.exclusiveCounts(2);
  expect([...ex]).toEqual([5000, 5000]);
});

test('ls fields from the details tree read that tree alone: no mapping tree, not even its top level (as thin_ls 0.9.0)', async () => {
  const { deviceUsage } = await import('../../src/thin/ls');
  const { listNodes } = await import('../helpers/corrupt');
  const img = fixtureImage('deep-tree');
  const nodes = listNodes(img);
  const details = nodes.filter((n) => n.tree === 'details').length;
  expect(nodes.filter((n) => n.tree === 'top').length).toBeGreaterThan(0);
  expect(nodes.length - details).toBeGreaterThan(10);
  await using md = await ThinMetadata.fromBuffer(img);
  const rows = await deviceUsage(md, { exclusive: false });
  expect(md.io.stats.blocksRead).toBe(1 + details); // the superblock and the details tree's nodes
  expect(rows.every((r) => r.exclusiveBlocks === null && r.mappedBlocks > 0)).toBe(true);
  const { formatLsTable, lsJson } = await import('../../src/thin/ls');
  expect(() => formatLsTable(rows, ['EXCLUSIVE_BLOCKS'], 128)).toThrow(/needs the mapping walk/);
  expect(() => lsJson(rows, ['SHARED_BYTES'], 128)).toThrow(/needs the mapping walk/);
  await using md2 = await ThinMetadata.fromBuffer(img);
  const full = await deviceUsage(md2);
  expect(md2.io.stats.blocksRead).toBeGreaterThan(nodes.length - 1);
  expect(full.map((r) => r.mappedBlocks)).toEqual(rows.map((r) => r.mappedBlocks));
});
