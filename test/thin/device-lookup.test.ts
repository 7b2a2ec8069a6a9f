/**
 * Commands about one or two devices (delta, send, merge, backup) find their
 * roots and details by a lookup in the top-level and details trees, as
 * thin_delta does, instead of reading both trees whole: in a pool of 70,000
 * devices a delta of two read all 70,000 roots and details (0.31 s and
 * 73 MiB against thin_delta's 0.04 s and 5 MiB).
 */
import { ThinMetadata } from '../../src';
import { walkLeaves } from '../../src/pdata/btree';
import { type Block, MemoryBlockSource } from '../../src/pdata/block-source';
import { fixtureImage } from '../helpers/fixtures';

/** A source that records every block read. */
class RecordingSource extends MemoryBlockSource {
  readonly seen = new Set<number>();
  override async read(blocks: readonly number[]): Promise<Block[]> {
    for (const b of blocks) this.seen.add(b);
    return super.read(blocks);
  }
}

/** The leaves of a tree with the first and last key each holds. */
async function leavesOf(md: ThinMetadata, root: number, valueSize: number, tree: 'details' | 'mapping-top'): Promise<{ nr: number; first: number; last: number }[]> {
  const out: { nr: number; first: number; last: number }[] = [];
  for await (const leaf of walkLeaves(md.io, root, { tree, valueSize, nrMetadataBlocks: md.nrMetadataBlocks })) {
    if (leaf.nrEntries > 0) out.push({ nr: leaf.nr, first: leaf.key(0), last: leaf.key(leaf.nrEntries - 1) });
  }
  return out;
}

test('a delta of two devices reads the top-level and details leaves of those two only', async () => {
  const img = fixtureImage('many-devices');
  let ids: number[];
  let top: { nr: number; first: number; last: number }[];
  let details: { nr: number; first: number; last: number }[];
  {
    await using md = await ThinMetadata.fromBuffer(img);
    ids = [...(await md.devices()).keys()];
    top = await leavesOf(md, md.superblock.dataMappingRoot, 8, 'mapping-top');
    details = await leavesOf(md, md.superblock.deviceDetailsRoot, 24, 'details');
  }
  // Enough leaves that reading them whole would show.
  expect(top.length).toBeGreaterThan(2);
  expect(details.length).toBeGreaterThan(4);
  const a = ids[10];
  const b = ids[ids.length - 10];
  const holding = (leaves: typeof top, id: number) => leaves.filter((l) => l.first <= id && id <= l.last).map((l) => l.nr);
  const src = new RecordingSource(img);
  await using md = await ThinMetadata.open('many-devices', { source: src });
  let n = 0;
  for await (const e of md.delta(a, b)) n += e.length;
  expect(n).toBeGreaterThan(0);
  const readLeaves = (leaves: typeof top) => leaves.map((l) => l.nr).filter((nr) => src.seen.has(nr));
  expect(readLeaves(top).sort()).toEqual([...new Set([...holding(top, a), ...holding(top, b)])].sort());
  expect(readLeaves(details).sort()).toEqual([...new Set([...holding(details, a), ...holding(details, b)])].sort());
});

test('mappingRoot and deviceDetails by lookup equal what the whole trees say, for every device', async () => {
  const img = fixtureImage('many-devices');
  let roots: Map<number, number>;
  let details: Map<number, unknown>;
  {
    await using md = await ThinMetadata.fromBuffer(img);
    roots = await md.deviceRoots();
    details = await md.devices();
  }
  // A fresh view, so that neither tree has been read whole.
  await using md = await ThinMetadata.fromBuffer(img);
  for (const [id, root] of roots) {
    expect(await md.mappingRoot(id)).toBe(root);
    expect(await md.deviceDetails(id)).toEqual(details.get(id));
  }
  const missing = Math.max(...roots.keys()) + 1;
  expect(await md.deviceDetails(missing)).toBeUndefined();
  await expect(md.mappingRoot(missing)).rejects.toMatchObject({ code: 'ENODEV', devId: missing });
});
