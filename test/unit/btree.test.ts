import fc from 'fast-check';
import { lookup, walkLeaves, BlockSet, BtreeNode, LeafWalk } from '../../src/pdata/btree';
import { MemoryBlockSource } from '../../src/pdata/block-source';
import { MetadataError } from '../../src/errors';
import { BlockType } from '../../src/pdata/checksum';
import { buildTree, ImageBuilder, SMALL_VALUE_SIZE, u64, writeNode } from './tree-builder';

async function allKeys(img: ImageBuilder, root: number, opts: Partial<Parameters<typeof walkLeaves>[2]> = {}) {
  const src = new MemoryBlockSource(img.image);
  const keys: number[] = [];
  for await (const leaf of walkLeaves(src, root, { tree: 'test', valueSize: 8, nrMetadataBlocks: img.nrBlocks, window: 7, ...opts })) {
    for (let i = 0; i < leaf.nrEntries; i++) keys.push(leaf.key(i));
  }
  return { keys, src };
}

function entries(keys: number[]) {
  return keys.map((k) => ({ key: BigInt(k), value: u64(k * 3) }));
}

describe('walkLeaves', () => {
  test('property: yields every key in order, whatever the shape (small leaves and fan-out force depth)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uniqueArray(fc.integer({ min: 0, max: 1e9 }), { maxLength: 2000 }),
        fc.integer({ min: 4, max: 12 }),
        fc.integer({ min: 84, max: 120 }),
        async (raw, perLeaf, fanout) => {
          const keys = [...raw].sort((a, b) => a - b);
          const img = new ImageBuilder(1200);
          const root = buildTree(img, entries(keys), SMALL_VALUE_SIZE, perLeaf, fanout);
          const { keys: got } = await allKeys(img, root, { valueSize: SMALL_VALUE_SIZE });
          expect(got).toEqual(keys);
        },
      ),
      { numRuns: 60 },
    );
  });

  test('LeafWalk: leaves already read come from poll() without a wait; one wait per read batch at most', async () => {
    const keys = Array.from({ length: 3000 }, (_, i) => i * 2);
    const img = new ImageBuilder(600);
    const root = buildTree(img, entries(keys), SMALL_VALUE_SIZE, 10, 84);
    const src = new MemoryBlockSource(img.image);
    const walk = new LeafWalk(src, root, { tree: 'test', valueSize: SMALL_VALUE_SIZE, nrMetadataBlocks: img.nrBlocks, window: 64, transient: true });
    const got: number[] = [];
    let leaves = 0;
    let waits = 0;
    for (;;) {
      const leaf = walk.poll();
      if (leaf === null) break;
      if (leaf === undefined) {
        waits++;
        await walk.wait();
        continue;
      }
      leaves++;
      for (let i = 0; i < leaf.nrEntries; i++) got.push(leaf.key(i));
    }
    expect(got).toEqual(keys);
    expect(leaves).toBe(300);
    expect(waits).toBeGreaterThan(0);
    expect(waits).toBeLessThanOrEqual(src.stats.batches);
    expect(src.stats.batches).toBeLessThan(leaves / 8);
    expect(walk.poll()).toBeNull();
  });

  test('lookup finds present keys and not absent ones', async () => {
    const keys = Array.from({ length: 3000 }, (_, i) => i * 5);
    const img = new ImageBuilder(500);
    const root = buildTree(img, entries(keys), SMALL_VALUE_SIZE, 10, 84);
    const src = new MemoryBlockSource(img.image);
    const opts = { tree: 'test', valueSize: SMALL_VALUE_SIZE, nrMetadataBlocks: img.nrBlocks };
    for (const k of [0, 5, 14995, 7770]) {
      const hit = await lookup(src, root, k, opts);
      expect(hit && hit.node.value(hit.index).readBigUInt64LE(0)).toBe(BigInt(k * 3));
    }
    for (const k of [1, 14996, 1e12]) expect(await lookup(src, root, k, opts)).toBeUndefined();
  });

  test('the range option visits only subtrees that can hold keys in [begin, end)', async () => {
    const keys = Array.from({ length: 5000 }, (_, i) => i);
    const img = new ImageBuilder(700);
    const root = buildTree(img, entries(keys), SMALL_VALUE_SIZE, 10, 84);
    const { keys: got, src } = await allKeys(img, root, { begin: 2000, end: 2100, valueSize: SMALL_VALUE_SIZE });
    expect(got.filter((k) => k >= 2000 && k < 2100)).toHaveLength(100);
    expect(src.stats.blocksRead).toBeLessThan(40);
  });

  async function expectCorruption(img: ImageBuilder, root: number, kind: string, valueSize = 8) {
    const err = await allKeys(img, root, { valueSize }).then(
      () => undefined,
      (e) => e,
    );
    expect(err).toBeInstanceOf(MetadataError);
    expect((err as MetadataError).kind).toBe(kind);
    return err as MetadataError;
  }

  /** A leaf of small values holding `keys` (at least 4 keys: a third full). */
  function smallLeaf(img: ImageBuilder, keys: bigint[]): number {
    const nr = img.alloc();
    writeNode(img, nr, true, keys, keys.map((k) => u64(k)), SMALL_VALUE_SIZE);
    return nr;
  }

  test('a child pointing back at its parent is a cycle', async () => {
    const img = new ImageBuilder(50);
    const leaf = smallLeaf(img, [1n, 2n, 3n, 4n]);
    const root = img.alloc();
    writeNode(img, root, false, [0n, 10n], [u64(leaf), u64(root)], 8);
    const e = await expectCorruption(img, root, 'cycle', SMALL_VALUE_SIZE);
    expect(e.block).toBe(root);
  });

  test('a chain of single-child nodes is caught by the fill rule; a lookup through a full self-referencing node stops at the depth cap', async () => {
    const img = new ImageBuilder(50);
    let child = smallLeaf(img, [5n, 6n, 7n, 8n]);
    for (let i = 0; i < 20; i++) {
      const p = img.alloc();
      writeNode(img, p, false, [0n], [u64(child)], 8);
      child = p;
    }
    const e = await expectCorruption(img, child, 'nr-entries', SMALL_VALUE_SIZE);
    expect(e.message).toMatch(/holds 1 entries; a non-root node holds at least 84/);
    // 84 children, all the node itself: a walk sees the repeat; a lookup
    // (which keeps no set of visited blocks) sees the keys leave the range
    // the node gave itself (or, failing that, would stop at the depth cap).
    const self = img.alloc();
    const keys = Array.from({ length: 84 }, (_, i) => BigInt(i * 10));
    writeNode(img, self, false, keys, keys.map(() => u64(self)), 8);
    await expectCorruption(img, self, 'cycle', SMALL_VALUE_SIZE);
    const err = await lookup(new MemoryBlockSource(img.image), self, 5, { tree: 'test', valueSize: SMALL_VALUE_SIZE, nrMetadataBlocks: 50 }).catch((x) => x);
    expect(err).toBeInstanceOf(MetadataError);
    expect(['key-range', 'depth']).toContain((err as MetadataError).kind);
  });

  test('the same leaf twice under one parent is a double reference', async () => {
    const img = new ImageBuilder(50);
    const leaf = smallLeaf(img, [1n, 2n, 3n, 4n]);
    const root = img.alloc();
    writeNode(img, root, false, [0n, 10n], [u64(leaf), u64(leaf)], 8);
    await expectCorruption(img, root, 'cycle', SMALL_VALUE_SIZE);
  });

  test('an under-filled non-root leaf (its mappings would silently vanish) and an empty one', async () => {
    for (const n of [3, 0]) {
      const img = new ImageBuilder(50);
      const a = smallLeaf(img, [1n, 2n, 3n, 4n]);
      const b = smallLeaf(img, [20n, 21n, 22n, 23n].slice(0, n));
      const root = img.alloc();
      writeNode(img, root, false, [0n, 20n], [u64(a), u64(b)], 8);
      const e = await expectCorruption(img, root, 'nr-entries', SMALL_VALUE_SIZE);
      expect(e.block).toBe(b);
      expect(e.message).toContain(`holds ${n} entries; a non-root node holds at least 4 (max_entries 12)`);
      const err = await lookup(new MemoryBlockSource(img.image), root, 21, { tree: 'test', valueSize: SMALL_VALUE_SIZE, nrMetadataBlocks: 50 }).catch((x) => x);
      expect((err as MetadataError).kind).toBe('nr-entries');
    }
    // The root may hold anything, even nothing.
    const img = new ImageBuilder(10);
    const r = smallLeaf(img, [1n]);
    expect((await allKeys(img, r, { valueSize: SMALL_VALUE_SIZE })).keys).toEqual([1]);
  });

  test('keys outside the parent range', async () => {
    const img = new ImageBuilder(50);
    const a = smallLeaf(img, [1n, 2n, 3n, 50n]); // 50 belongs to the second child
    const b = smallLeaf(img, [20n, 21n, 22n, 23n]);
    const root = img.alloc();
    writeNode(img, root, false, [0n, 10n], [u64(a), u64(b)], 8);
    const e = await expectCorruption(img, root, 'key-range', SMALL_VALUE_SIZE);
    expect(e.block).toBe(a);
  });

  test('unsorted keys', async () => {
    const img = new ImageBuilder(10);
    const r = img.alloc();
    writeNode(img, r, true, [5n, 4n], [u64(1), u64(2)], 8);
    await expectCorruption(img, r, 'key-order');
  });

  test('unbalanced tree', async () => {
    const img = new ImageBuilder(120);
    const l1 = smallLeaf(img, [1n, 2n, 3n, 4n]);
    const below: number[] = [];
    const firsts: bigint[] = [];
    for (let i = 0; i < 84; i++) {
      const k = BigInt(20 + i * 10);
      firsts.push(k);
      below.push(smallLeaf(img, [k, k + 1n, k + 2n, k + 3n]));
    }
    const mid = img.alloc();
    writeNode(img, mid, false, firsts, below.map((b) => u64(b)), 8);
    const root = img.alloc();
    writeNode(img, root, false, [0n, 20n], [u64(l1), u64(mid)], 8);
    await expectCorruption(img, root, 'depth', SMALL_VALUE_SIZE);
  });

  test('pointer beyond the metadata device', async () => {
    const img = new ImageBuilder(10);
    const root = img.alloc();
    writeNode(img, root, false, [0n], [u64(999)], 8);
    await expectCorruption(img, root, 'block-range');
  });

  test('wrong value size, flags, max_entries, nr_entries, blocknr', async () => {
    const cases: [string, (b: Buffer) => void][] = [
      ['value-size', (b) => b.writeUInt32LE(16, 24)],
      ['node-flags', (b) => b.writeUInt32LE(3, 4)],
      ['max-entries', (b) => b.writeUInt32LE(250, 20)],
      ['nr-entries', (b) => b.writeUInt32LE(253, 16)],
      ['blocknr', (b) => b.writeUInt32LE(7, 8)],
    ];
    for (const [kind, mut] of cases) {
      const img = new ImageBuilder(10);
      const r = img.alloc();
      writeNode(img, r, true, [1n], [u64(1)], 8);
      mut(img.block(r));
      img.seal(r, BlockType.BtreeNode);
      await expectCorruption(img, r, kind);
    }
  });

  test('property: any single-byte change to any node, checksum fixed or not, gives a typed error or a valid walk', async () => {
    const keys = Array.from({ length: 600 }, (_, i) => i * 2);
    const base = new ImageBuilder(200);
    const root = buildTree(base, entries(keys), 8, 20, 5);
    const used = base.next;
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: used - 1 }),
        fc.integer({ min: 4, max: 4095 }),
        fc.integer({ min: 1, max: 255 }),
        fc.boolean(),
        async (blk, off, x, fix) => {
          const img = new ImageBuilder(200);
          base.image.copy(img.image);
          img.block(blk)[off] ^= x;
          if (fix) img.seal(blk, BlockType.BtreeNode);
          try {
            await allKeys(img, root);
          } catch (e) {
            expect(e).toBeInstanceOf(MetadataError);
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});

test('BtreeNode rejects a bitmap block where a node is expected', async () => {
  const img = new ImageBuilder(4);
  img.block(1).writeBigUInt64LE(1n, 8);
  img.seal(1, BlockType.Bitmap);
  const [b] = await new MemoryBlockSource(img.image).read([1]);
  expect(() => new BtreeNode(b, 8, { tree: 'x' })).toThrow(expect.objectContaining({ kind: 'block-type' }));
});

describe('BlockSet', () => {
  test('property: add and has agree with a Set, for blocks inside and beyond nrBlocks (corrupt pointers) and past the preallocated pages', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 1 << 22 }),
        fc.array(fc.oneof(fc.integer({ min: 0, max: 1 << 16 }), fc.integer({ min: 0, max: 2 ** 32 - 1 })), { maxLength: 300 }),
        (nrBlocks, blocks) => {
          const set = new BlockSet(nrBlocks);
          const model = new Set<number>();
          for (const b of blocks) {
            expect(set.has(b)).toBe(model.has(b));
            expect(set.add(b)).toBe(!model.has(b));
            model.add(b);
            expect(set.has(b)).toBe(true);
          }
          for (const b of blocks) expect(set.has(b + 1)).toBe(model.has(b + 1));
        },
      ),
    );
  });
});
