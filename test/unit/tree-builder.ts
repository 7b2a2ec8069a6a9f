/**
 * Test-only writer of persistent-data btrees into an in-memory image, written
 * from the format description (docs/metadata-format.md §3), independent of the reader under test.
 */
import { BlockType, blockChecksum } from '../../src/pdata/checksum';

export class ImageBuilder {
  readonly image: Buffer;
  next = 1;
  constructor(readonly nrBlocks: number) {
    this.image = Buffer.alloc(nrBlocks * 4096);
  }
  alloc(): number {
    return this.next++;
  }
  block(n: number): Buffer {
    return this.image.subarray(n * 4096, (n + 1) * 4096);
  }
  seal(n: number, type: BlockType): void {
    const b = this.block(n);
    b.writeUInt32LE(blockChecksum(b, type), 0);
  }
}

export function maxEntries(vs: number): number {
  const n = Math.floor(4064 / (8 + vs));
  return n - (n % 3);
}

export function writeNode(img: ImageBuilder, nr: number, leaf: boolean, keys: bigint[], values: Buffer[], valueSize: number): void {
  const b = img.block(nr);
  b.fill(0);
  const max = maxEntries(valueSize);
  b.writeUInt32LE(leaf ? 2 : 1, 4);
  b.writeBigUInt64LE(BigInt(nr), 8);
  b.writeUInt32LE(keys.length, 16);
  b.writeUInt32LE(max, 20);
  b.writeUInt32LE(valueSize, 24);
  keys.forEach((k, i) => b.writeBigUInt64LE(k, 32 + 8 * i));
  values.forEach((v, i) => v.copy(b, 32 + 8 * max + valueSize * i));
  img.seal(nr, BlockType.BtreeNode);
}

export function u64(v: bigint | number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(v));
  return b;
}

/**
 * A value size whose nodes hold 12 entries (a non-root node at least 4), so
 * that a few hundred keys make a tree of several levels; mapping-sized nodes
 * (252, at least 84) need tens of thousands of keys for that.
 */
export const SMALL_VALUE_SIZE = 300;

/** The kernel's fill rule: a non-root node holds at least a third of max_entries. */
export function minEntries(valueSize: number): number {
  return Math.floor(maxEntries(valueSize) / 3);
}

/**
 * Splits items into consecutive chunks of about `per` (at most `per` unless
 * that would leave a chunk under `min`), all at least `min` when there is more
 * than one: the shape the kernel's btree keeps.
 */
export function chunkEven<T>(items: T[], per: number, min: number): T[][] {
  const n = items.length;
  const k = Math.max(1, Math.min(Math.ceil(n / per), Math.floor(n / Math.max(1, min))));
  const out: T[][] = [];
  let at = 0;
  for (let i = 0; i < k; i++) {
    const size = Math.floor(n / k) + (i < n % k ? 1 : 0);
    out.push(items.slice(at, at + size));
    at += size;
  }
  return out;
}

/**
 * Builds a balanced tree bottom-up with about `perLeaf` entries per leaf and
 * `fanout` children per internal node, every non-root node at least a third
 * full (internal nodes have 8-byte values: at least 84 children below the root).
 */
export function buildTree(
  img: ImageBuilder,
  entries: { key: bigint; value: Buffer }[],
  valueSize: number,
  perLeaf = maxEntries(valueSize),
  fanout = 252,
): number {
  let level: { nr: number; first: bigint }[] = [];
  if (entries.length === 0) {
    const nr = img.alloc();
    writeNode(img, nr, true, [], [], valueSize);
    return nr;
  }
  for (const chunk of chunkEven(entries, perLeaf, minEntries(valueSize))) {
    const nr = img.alloc();
    writeNode(img, nr, true, chunk.map((e) => e.key), chunk.map((e) => e.value), valueSize);
    level.push({ nr, first: chunk[0].key });
  }
  while (level.length > 1) {
    const up: { nr: number; first: bigint }[] = [];
    for (const chunk of chunkEven(level, fanout, minEntries(8))) {
      const nr = img.alloc();
      writeNode(img, nr, false, chunk.map((c) => c.first), chunk.map((c) => u64(c.nr)), 8);
      up.push({ nr, first: chunk[0].first });
    }
    level = up;
  }
  return level[0].nr;
}
