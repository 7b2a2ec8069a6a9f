/**
 * Persistent-data btree nodes (one 4 KiB block each) and a validating walker.
 * Nothing here knows about thin provisioning: trees are described by their
 * leaf value size and a name for error messages.
 */
import { MetadataError, throwIfAborted } from '../errors';
import { BlockType, verifyChecksum } from './checksum';
import type { Block, BlockSource } from './io-engine';

export const NODE_HEADER_SIZE = 32;
export const INTERNAL_NODE = 1;
export const LEAF_NODE = 2;
/** With a minimum fan-out of 84, 2^64 keys fit in 11 levels; deeper is a loop or garbage. */
export const MAX_DEPTH = 16;
const TWO32 = 2 ** 32;
/** Keys and values above 2^53 cannot be numbers; no real pool gets near them. */
const MAX_HI = 2 ** 21;

/** max_entries for a value size: as many (key, value) pairs as fit, rounded down to a multiple of 3. */
export function maxEntriesFor(valueSize: number): number {
  const n = Math.floor((4096 - NODE_HEADER_SIZE) / (8 + valueSize));
  return n - (n % 3);
}

export interface TreeContext {
  /** Which tree, for errors: 'details', 'mapping-top', 'mapping', 'data-sm-index', 'ref-count'. */
  tree: string;
  devId?: number;
}

/** A validated node. Accessors read straight from the block. */
export class BtreeNode {
  readonly nr: number;
  readonly isLeaf: boolean;
  readonly nrEntries: number;
  readonly maxEntries: number;
  readonly valueSize: number;
  readonly data: Buffer;
  /** Uint32 view of the block: key i is at [8 + 2i] (lo) and [9 + 2i] (hi). */
  readonly u32: Uint32Array;
  /** Byte offset of value 0. */
  readonly valuesOffset: number;

  constructor(block: Block, leafValueSize: number, ctx: TreeContext) {
    const d = block.data;
    verifyChecksum(block, BlockType.BtreeNode, ctx);
    const err = (kind: ConstructorParameters<typeof MetadataError>[0], msg: string) =>
      new MetadataError(kind, `${msg} (block ${block.nr}, ${describe(ctx)})`, { block: block.nr, ...ctx });
    const flags = d.readUInt32LE(4);
    const blocknr = d.readUInt32LE(8) + d.readUInt32LE(12) * TWO32;
    if (blocknr !== block.nr) throw err('blocknr', `btree node says it is block ${blocknr}`);
    if (flags !== INTERNAL_NODE && flags !== LEAF_NODE) throw err('node-flags', `bad node flags ${flags}`);
    this.isLeaf = flags === LEAF_NODE;
    this.nrEntries = d.readUInt32LE(16);
    this.maxEntries = d.readUInt32LE(20);
    this.valueSize = d.readUInt32LE(24);
    const wantVs = this.isLeaf ? leafValueSize : 8;
    if (this.valueSize !== wantVs) throw err('value-size', `value size mismatch: expected ${wantVs}, got ${this.valueSize}`);
    const wantMax = maxEntriesFor(this.valueSize);
    if (this.maxEntries !== wantMax) throw err('max-entries', `max_entries is ${this.maxEntries}, expected ${wantMax}`);
    if (this.nrEntries > this.maxEntries) throw err('nr-entries', `nr_entries ${this.nrEntries} > max_entries ${this.maxEntries}`);
    this.nr = block.nr;
    this.data = d;
    this.u32 = new Uint32Array(d.buffer, d.byteOffset, 1024);
    this.valuesOffset = NODE_HEADER_SIZE + 8 * this.maxEntries;
  }

  key(i: number): number {
    const hi = this.u32[9 + 2 * i];
    if (hi >= MAX_HI) throw new MetadataError('key-range', `key ${i} of block ${this.nr} exceeds 2^53`, { block: this.nr });
    return this.u32[8 + 2 * i] + hi * TWO32;
  }

  /** u64 value i (value size 8) as a number; for internal nodes, the child block. */
  value64(i: number): number {
    const w = (this.valuesOffset >> 2) + 2 * i;
    const hi = this.u32[w + 1];
    if (hi >= MAX_HI) throw new MetadataError('block-range', `value ${i} of block ${this.nr} exceeds 2^53`, { block: this.nr });
    return this.u32[w] + hi * TWO32;
  }

  /** Raw value bytes. */
  value(i: number): Buffer {
    const off = this.valuesOffset + i * this.valueSize;
    return this.data.subarray(off, off + this.valueSize);
  }

  /** Checks keys are strictly increasing and inside [lo, hi). */
  checkKeys(lo: number, hi: number, ctx: TreeContext): void {
    let prev = -1;
    for (let i = 0; i < this.nrEntries; i++) {
      const k = this.key(i);
      if (k <= prev) {
        throw new MetadataError('key-order', `keys out of order: ${k} after ${prev} (block ${this.nr}, ${describe(ctx)})`, {
          block: this.nr,
          ...ctx,
        });
      }
      prev = k;
    }
    if (this.nrEntries > 0) {
      const first = this.key(0);
      const last = prev;
      if (first < lo || last >= hi) {
        throw new MetadataError(
          'key-range',
          `keys ${first}..${last} lie outside the range [${lo}, ${hi === Infinity ? '-' : hi}) its parent gives (block ${this.nr}, ${describe(ctx)})`,
          { block: this.nr, ...ctx },
        );
      }
    }
  }
}

function describe(ctx: TreeContext): string {
  return ctx.devId !== undefined ? `${ctx.tree} tree of device ${ctx.devId}` : `${ctx.tree} tree`;
}

/** One bit per metadata block: "seen in this tree". Catches cycles and double references. */
export class BlockSet {
  private readonly bits: Uint8Array;
  constructor(readonly nrBlocks: number) {
    this.bits = new Uint8Array(Math.ceil(nrBlocks / 8));
  }
  /** Returns false if already present. */
  add(b: number): boolean {
    const i = b >>> 3;
    const m = 1 << (b & 7);
    if (this.bits[i] & m) return false;
    this.bits[i] |= m;
    return true;
  }
  has(b: number): boolean {
    return (this.bits[b >>> 3] & (1 << (b & 7))) !== 0;
  }
}

export interface WalkOptions extends TreeContext {
  /** Value size of the leaves (8 mapping, 24 details, 16 sm index, 4 ref counts). */
  valueSize: number;
  /** Number of metadata blocks: any pointer at or beyond it is corruption. */
  nrMetadataBlocks: number;
  signal?: AbortSignal;
  /** Nodes per read batch (default 256 = 1 MiB). */
  window?: number;
  /** Only visit subtrees that may hold keys in [begin, end). */
  begin?: number;
  end?: number;
  /** Called for every node read (for progress and IO accounting). */
  onNode?: (node: BtreeNode, depth: number) => void;
}

interface Pending {
  block: number;
  lo: number;
  hi: number;
  depth: number;
  p?: Promise<Block>;
}

/**
 * Yields the leaves of a btree in key order. Memory is bounded by the depth of
 * the tree times its fan-out plus one read window; leaves are read in batches
 * (sorted and coalesced by the IO engine) one window ahead of the consumer.
 * Every node is validated (checksum, blocknr, flags, sizes, key order and
 * range, depth, balance); a block seen twice in the tree is an error.
 */
export async function* walkLeaves(io: BlockSource, root: number, opts: WalkOptions): AsyncGenerator<BtreeNode> {
  const window = opts.window ?? 256;
  const begin = opts.begin ?? 0;
  const end = opts.end ?? Infinity;
  const seen = new BlockSet(opts.nrMetadataBlocks);
  const ctx: TreeContext = { tree: opts.tree, devId: opts.devId };
  // The stack's top (last element) is the next node in key order.
  const stack: Pending[] = [{ block: root, lo: 0, hi: Infinity, depth: 0 }];
  let loadedAhead = 0;
  let leafDepth = -1;

  const checkPointer = (b: number, from: number) => {
    if (b >= opts.nrMetadataBlocks) {
      throw new MetadataError('block-range', `block ${from} points to block ${b}, beyond the metadata device (${opts.nrMetadataBlocks} blocks)`, {
        block: from,
        ...ctx,
      });
    }
  };
  checkPointer(root, root);

  const fetch = () => {
    const items: Pending[] = [];
    for (let i = stack.length - 1; i >= 0 && items.length < window; i--) if (!stack[i].p) items.push(stack[i]);
    if (items.length === 0) return;
    const batch = io.read(items.map((it) => it.block));
    batch.catch(() => {});
    items.forEach((it, i) => {
      it.p = batch.then((bs) => bs[i]);
      it.p.catch(() => {}); // an abandoned walk must not leave an unhandled rejection
    });
    loadedAhead += items.length;
  };

  while (stack.length > 0) {
    throwIfAborted(opts.signal);
    const top = stack[stack.length - 1];
    if (!top.p || loadedAhead <= window / 2) fetch();
    const item = stack.pop()!;
    loadedAhead--;
    const block = await item.p!;
    if (!seen.add(item.block)) {
      throw new MetadataError('cycle', `block ${item.block} is referenced twice in the ${describe(ctx)} (cycle or shared node)`, {
        block: item.block,
        ...ctx,
      });
    }
    if (item.depth >= MAX_DEPTH) {
      throw new MetadataError('depth', `${describe(ctx)} is deeper than ${MAX_DEPTH} levels at block ${item.block}`, {
        block: item.block,
        ...ctx,
      });
    }
    const node = new BtreeNode(block, opts.valueSize, ctx);
    node.checkKeys(item.lo, item.hi, ctx);
    opts.onNode?.(node, item.depth);
    if (node.isLeaf) {
      if (leafDepth < 0) leafDepth = item.depth;
      else if (leafDepth !== item.depth) {
        throw new MetadataError('depth', `unbalanced ${describe(ctx)}: leaf ${item.block} at depth ${item.depth}, others at ${leafDepth}`, {
          block: item.block,
          ...ctx,
        });
      }
      yield node;
      continue;
    }
    if (node.nrEntries === 0) {
      throw new MetadataError('nr-entries', `internal node ${item.block} has no entries (${describe(ctx)})`, { block: item.block, ...ctx });
    }
    if (leafDepth >= 0 && item.depth >= leafDepth) {
      throw new MetadataError('depth', `unbalanced ${describe(ctx)}: internal node ${item.block} at leaf depth ${leafDepth}`, {
        block: item.block,
        ...ctx,
      });
    }
    // Push children last-to-first so the first child is on top.
    for (let i = node.nrEntries - 1; i >= 0; i--) {
      const lo = node.key(i);
      const hi = i + 1 < node.nrEntries ? node.key(i + 1) : item.hi;
      if (hi <= begin || lo >= end) continue;
      const child = node.value64(i);
      checkPointer(child, item.block);
      stack.push({ block: child, lo, hi, depth: item.depth + 1 });
    }
  }
}

/**
 * Looks up one key: the largest key <= target at each level. Returns the leaf
 * and index, or undefined when absent. Validates every node on the path.
 */
export async function lookup(
  io: BlockSource,
  root: number,
  key: number,
  opts: { valueSize: number; nrMetadataBlocks: number } & TreeContext,
): Promise<{ node: BtreeNode; index: number } | undefined> {
  let block = root;
  let lo = 0;
  let hi = Infinity;
  const ctx: TreeContext = { tree: opts.tree, devId: opts.devId };
  for (let depth = 0; ; depth++) {
    if (depth >= MAX_DEPTH) throw new MetadataError('depth', `${describe(ctx)} deeper than ${MAX_DEPTH} levels`, { block, ...ctx });
    if (block >= opts.nrMetadataBlocks) {
      throw new MetadataError('block-range', `pointer to block ${block} beyond the metadata device`, { block, ...ctx });
    }
    const [b] = await io.read([block]);
    const node = new BtreeNode(b, opts.valueSize, ctx);
    node.checkKeys(lo, hi, ctx);
    const i = upperIndex(node, key);
    if (node.isLeaf) return i >= 0 && node.key(i) === key ? { node, index: i } : undefined;
    if (i < 0) return undefined;
    lo = node.key(i);
    hi = i + 1 < node.nrEntries ? node.key(i + 1) : hi;
    block = node.value64(i);
  }
}

/** Index of the largest key <= target, or -1. */
function upperIndex(node: BtreeNode, target: number): number {
  let lo = 0;
  let hi = node.nrEntries - 1;
  let ans = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (node.key(mid) <= target) {
      ans = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return ans;
}
