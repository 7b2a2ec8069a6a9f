/**
 * Persistent-data btree nodes (one 4 KiB block each) and a validating walker.
 * Nothing here knows about thin provisioning: trees are described by their
 * leaf value size and a name for error messages.
 */
import { MetadataError, throwIfAborted } from '../errors';
import { BlockType, verifyChecksum } from './checksum';
import type { Block, BlockSource } from './block-source';
import { MAX_SAFE_HI, TWO32 } from './words';

const NODE_HEADER_SIZE = 32;
const INTERNAL_NODE = 1;
export const LEAF_NODE = 2;
/** With a minimum fan-out of 84, 2^64 keys fit in 11 levels; deeper is a loop or garbage. */
const MAX_DEPTH = 16;

/** A btree key: a number when below 2^53, else a bigint (mixed comparisons are exact in JS). */
/** A btree key: a number below 2^53, a bigint above. */
export type Key = number | bigint;

/** max_entries for a value size: as many (key, value) pairs as fit, rounded down to a multiple of 3. */
export function maxEntriesFor(valueSize: number): number {
  const n = Math.floor((4096 - NODE_HEADER_SIZE) / (8 + valueSize));
  return n - (n % 3);
}

/** Which tree a node belongs to, for error reports. */
export interface TreeContext {
  /** Which tree, for errors: 'details', 'mapping-top', 'mapping', 'data-sm-index', 'ref-count'. */
  tree: string;
  /** The thin device whose tree it is, when there is one. */
  devId?: number;
}

/** A validated node. Accessors read straight from the block. */
export class BtreeNode {
  /** Its block number. */
  readonly nr: number;
  /** A leaf (values) rather than an internal node (child pointers). */
  readonly isLeaf: boolean;
  /** Entries in use. */
  readonly nrEntries: number;
  /** Entries the node can hold. */
  readonly maxEntries: number;
  /** Bytes per value. */
  readonly valueSize: number;
  /** The block it was read from. */
  readonly block: Block;
  /** Its tree, for messages. */
  private readonly ctx: TreeContext;
  /**
   * u32 words of the batch the node was read in; the node starts at word
   * `base`: key i is at base + 8 + 2i (lo) and base + 9 + 2i (hi).
   */
  readonly u32: Uint32Array;
  /** The same words signed (Block.ints): for words whose top bit may be set, read in hot loops. */
  readonly i32: Int32Array;
  /** Index in `u32` of the node's first word. */
  readonly base: number;
  /** Byte offset of value 0 within the node. */
  readonly valuesOffset: number;

  constructor(block: Block, leafValueSize: number, ctx: TreeContext) {
    // Only a failure builds the tree's words (a node is made per block read).
    if (((block.crc ^ BlockType.BtreeNode) >>> 0) !== block.u32(0)) verifyChecksum(block, BlockType.BtreeNode, ctx, describe(ctx));
    const w = block.words;
    const b = block.base;
    const flags = w[b + 1];
    const blocknr = w[b + 2] + w[b + 3] * TWO32;
    if (blocknr !== block.nr) throw nodeError(block, ctx, 'blocknr', `btree node says it is block ${blocknr}`);
    if (flags !== INTERNAL_NODE && flags !== LEAF_NODE) throw nodeError(block, ctx, 'node-flags', `bad node flags ${flags}`);
    this.isLeaf = flags === LEAF_NODE;
    this.nrEntries = w[b + 4];
    this.maxEntries = w[b + 5];
    this.valueSize = w[b + 6];
    const wantVs = this.isLeaf ? leafValueSize : 8;
    if (this.valueSize !== wantVs) throw nodeError(block, ctx, 'value-size', `value size mismatch: expected ${wantVs}, got ${this.valueSize}`);
    const wantMax = maxEntriesFor(this.valueSize);
    if (this.maxEntries !== wantMax) throw nodeError(block, ctx, 'max-entries', `max_entries is ${this.maxEntries}, expected ${wantMax}`);
    if (this.nrEntries > this.maxEntries) throw nodeError(block, ctx, 'nr-entries', `nr_entries ${this.nrEntries} > max_entries ${this.maxEntries}`);
    this.nr = block.nr;
    this.block = block;
    this.ctx = ctx;
    this.u32 = w;
    this.i32 = block.ints;
    this.base = b;
    this.valuesOffset = NODE_HEADER_SIZE + 8 * this.maxEntries;
  }

  /** The node's 4096 bytes. */
  get data(): Buffer {
    return this.block.data;
  }

  /** Key i as a number; throws MetadataError when it exceeds 2^53 (see keyAt). */
  key(i: number): number {
    const hi = this.u32[this.base + 9 + 2 * i];
    if (hi >= MAX_SAFE_HI) throw new MetadataError('key-range', `the key of entry ${i} in block ${this.nr} exceeds 2^53`, { block: this.nr });
    return hi === 0 ? this.u32[this.base + 8 + 2 * i] : this.u32[this.base + 8 + 2 * i] + hi * TWO32;
  }

  /** Key i exactly: a number below 2^53, a bigint above (virtual blocks may exceed 2^53). */
  keyAt(i: number): Key {
    const hi = this.u32[this.base + 9 + 2 * i];
    const lo = this.u32[this.base + 8 + 2 * i];
    return hi === 0 ? lo : hi < MAX_SAFE_HI ? lo + hi * TWO32 : (BigInt(hi) << 32n) | BigInt(lo);
  }

  /** u64 value i (value size 8) as a number; for internal nodes, the child block. */
  value64(i: number): number {
    const w = this.base + (this.valuesOffset >> 2) + 2 * i;
    const hi = this.u32[w + 1];
    if (hi >= MAX_SAFE_HI) {
      const v = (BigInt(hi) << 32n) | BigInt(this.u32[w]);
      const where = `block ${this.nr} (${describe(this.ctx)})`;
      throw new MetadataError('block-range', this.isLeaf ? `the value of entry ${i} in ${where} is ${v}, beyond 2^53` : `${where} points to block ${v}, beyond any metadata device`, {
        block: this.nr,
        ...this.ctx,
      });
    }
    return hi === 0 ? this.u32[w] : this.u32[w] + hi * TWO32;
  }

  /** Raw value bytes. */
  value(i: number): Buffer {
    const off = this.valuesOffset + i * this.valueSize;
    return this.data.subarray(off, off + this.valueSize);
  }

  /** Checks keys are strictly increasing and inside [lo, hi). Exact for all u64 keys. */
  checkKeys(lo: Key, hi: Key, ctx: TreeContext): void {
    const n = this.nrEntries;
    if (n === 0) return;
    const w = this.u32;
    const kb = this.base + 8;
    let phi = -1;
    let plo = 0;
    for (let i = 0; i < n; i++) {
      const khi = w[kb + 2 * i + 1];
      const klo = w[kb + 2 * i];
      if (khi < phi || (khi === phi && klo <= plo)) {
        throw new MetadataError('key-order', `keys out of order: ${this.keyAt(i)} after ${this.keyAt(i - 1)} (block ${this.nr}, ${describe(ctx)})`, {
          block: this.nr,
          ...ctx,
        });
      }
      phi = khi;
      plo = klo;
    }
    const first = this.keyAt(0);
    const last = this.keyAt(n - 1);
    if (first < lo || last >= hi) {
      throw new MetadataError(
        'key-range',
        `keys ${first}..${last} lie outside the range [${lo}, ${hi === Infinity ? '-' : hi}) its parent gives (block ${this.nr}, ${describe(ctx)})`,
        { block: this.nr, ...ctx },
      );
    }
  }
}

/** A fault in a node's header (not a closure made per node: a walk makes a node per block read). */
function nodeError(block: Block, ctx: TreeContext, kind: ConstructorParameters<typeof MetadataError>[0], msg: string): MetadataError {
  return new MetadataError(kind, `${msg} (block ${block.nr}, ${describe(ctx)})`, { block: block.nr, ...ctx });
}

function describe(ctx: TreeContext): string {
  return ctx.devId !== undefined ? `${ctx.tree} tree of device ${ctx.devId}` : treeName(ctx.tree);
}

/** A tree's code name ('data-sm-index') as a reader of the format names it ('data space map index tree'). */
export function treeName(tree: string): string {
  return `${TREE_WORDS[tree] ?? tree} tree`;
}

/** Trees named as a reader of the format names them, where the code's names are terse. */
const TREE_WORDS: Record<string, string> = {
  'mapping-top': 'top-level mapping',
  details: 'device details',
  'data-sm-index': 'data space map index',
  'ref-count': 'space map reference count',
};

/**
 * One bit per metadata block: "seen in this tree". Catches cycles and double
 * references. Paged (4 KiB of bits, 32768 blocks, per page, on first touch) so
 * that a walk that visits a few nodes of a large device costs a few pages,
 * not a bitmap of the whole device. The first block is held without a page:
 * a one-node tree (a small thin device) then allocates nothing, which counts
 * when tens of thousands of them are walked.
 */
export class BlockSet {
  // Made with its elements kind final (holey, any value): an empty [] went
  // through three kinds as pages were added, and each new set sent the
  // optimized code made for the last kind back to the interpreter (wrong map).
  private readonly pages: (Uint8Array | undefined)[];
  private first = -1;
  constructor(readonly nrBlocks: number) {
    // A page per 32,768 blocks, at most 1,024 made here (metadata holds at most
    // 2^22 blocks); it grows past that only for pointers beyond nrBlocks (corruption).
    this.pages = new Array<Uint8Array | undefined>(Math.min(1024, Math.ceil(Math.max(0, nrBlocks) / 32768))).fill(undefined);
  }
  /** Returns false if already present. */
  add(b: number): boolean {
    if (this.first < 0) {
      this.first = b;
      return true;
    }
    if (b === this.first) return false;
    return this.addPaged(b);
  }
  private addPaged(b: number): boolean {
    const p = Math.floor(b / 32768);
    const page = (this.pages[p] ??= new Uint8Array(4096));
    const o = b - p * 32768;
    const i = o >>> 3;
    const m = 1 << (o & 7);
    if (page[i] & m) return false;
    page[i] |= m;
    return true;
  }
  has(b: number): boolean {
    if (b === this.first) return true;
    const p = Math.floor(b / 32768);
    const page = this.pages[p];
    if (!page) return false;
    const o = b - p * 32768;
    return (page[o >>> 3] & (1 << (o & 7))) !== 0;
  }
}

/**
 * The fewest entries a non-root node may hold: a third of max_entries. The
 * kernel's btree keeps every node but the root at least that full (it
 * rebalances or merges on removal), and thin_check (0.9.0 and 1.x) rejects
 * less; so an under-filled node is corruption, typically a node whose
 * nr_entries was damaged so that mappings vanish from every walk.
 */
function minEntriesFor(maxEntries: number): number {
  return Math.floor(maxEntries / 3);
}

/** Throws unless a non-root node holds at least minEntriesFor(max_entries) entries. */
export function checkFill(node: BtreeNode, ctx: TreeContext): void {
  const min = minEntriesFor(node.maxEntries);
  if (node.nrEntries < min) {
    throw new MetadataError(
      'nr-entries',
      `${node.isLeaf ? 'leaf' : 'internal node'} ${node.nr} holds ${node.nrEntries} entries; a non-root node holds at least ${min} (max_entries ${node.maxEntries}) (${describe(ctx)})`,
      { block: node.nr, ...ctx },
    );
  }
}

/**
 * The checks every tree walk applies to each node it reaches: pointers inside
 * the metadata device, no block twice in one tree (which also stops cycles),
 * a depth cap, the node's own validation and key range, the fill of non-root
 * nodes, non-empty internal nodes, and all leaves at one depth.
 */
export class TreeValidator {
  private readonly seen: BlockSet;
  private leafDepth_ = -1;

  constructor(
    readonly nrMetadataBlocks: number,
    readonly valueSize: number,
    readonly ctx: TreeContext,
    /**
     * Depth of the walk's first node in its real tree: 0 when it is the
     * tree's root (exempt from the fill rule), more for a subtree walked on
     * its own (a shared subtree in a delta).
     */
    readonly rootDepth = 0,
  ) {
    this.seen = new BlockSet(nrMetadataBlocks);
  }

  /** Depth (from the walk's first node) at which leaves were found, or -1. */
  get leafDepth(): number {
    return this.leafDepth_;
  }

  /**
   * Records (or checks against the others) a leaf found at `depth` by a walk
   * outside this validator, e.g. in a subtree two trees share. `subtree`:
   * `block` is the root of the subtree whose leaves are at `depth`, not a leaf.
   */
  noteLeafDepth(depth: number, block: number, subtree = false): void {
    if (this.leafDepth_ < 0) this.leafDepth_ = depth;
    else if (this.leafDepth_ !== depth) {
      const what = subtree ? `leaves under block ${block} are` : `leaf ${block}`;
      throw new MetadataError('depth', `unbalanced ${describe(this.ctx)}: ${what} at depth ${depth}, others at ${this.leafDepth_}`, {
        block,
        ...this.ctx,
      });
    }
  }

  /** A tree's root (from the superblock, or a top-level value) beyond the metadata device: said as the root, not as a pointer from itself. */
  checkRoot(root: number): void {
    if (root >= this.nrMetadataBlocks) {
      throw new MetadataError('block-range', `the root of the ${describe(this.ctx)} is block ${root}, beyond the metadata device (${this.nrMetadataBlocks} blocks)`, {
        block: root,
        ...this.ctx,
      });
    }
  }

  checkPointer(b: number, from: number): void {
    if (b >= this.nrMetadataBlocks) {
      throw new MetadataError('block-range', `block ${from} (${describe(this.ctx)}) points to block ${b}, beyond the metadata device (${this.nrMetadataBlocks} blocks)`, {
        block: from,
        ...this.ctx,
      });
    }
  }

  /** Validates the node read for a pointer with key range [lo, hi) at `depth` (the walk's first node = 0). */
  visit(block: Block, lo: Key, hi: Key, depth: number): BtreeNode {
    const ctx = this.ctx;
    const nr = block.nr;
    if (!this.seen.add(nr)) {
      throw new MetadataError('cycle', `block ${nr} is referenced twice in the ${describe(ctx)} (cycle or shared node)`, { block: nr, ...ctx });
    }
    if (depth + this.rootDepth >= MAX_DEPTH) {
      throw new MetadataError('depth', `${describe(ctx)} is deeper than ${MAX_DEPTH} levels at block ${nr}`, { block: nr, ...ctx });
    }
    const node = new BtreeNode(block, this.valueSize, ctx);
    node.checkKeys(lo, hi, ctx);
    if (depth + this.rootDepth > 0) checkFill(node, ctx);
    if (node.isLeaf) {
      if (this.leafDepth_ < 0) this.leafDepth_ = depth;
      else if (this.leafDepth_ !== depth) {
        throw new MetadataError('depth', `unbalanced ${describe(ctx)}: leaf ${nr} at depth ${depth}, others at ${this.leafDepth_}`, { block: nr, ...ctx });
      }
      return node;
    }
    if (node.nrEntries === 0) {
      throw new MetadataError('nr-entries', `internal node ${nr} has no entries (${describe(ctx)})`, { block: nr, ...ctx });
    }
    if (this.leafDepth_ >= 0 && depth >= this.leafDepth_) {
      throw new MetadataError('depth', `unbalanced ${describe(ctx)}: internal node ${nr} at leaf depth ${this.leafDepth_}`, { block: nr, ...ctx });
    }
    return node;
  }
}

/** Options of walkLeaves. */
export interface WalkOptions extends TreeContext {
  /** Value size of the leaves (8 mapping, 24 details, 16 sm index, 4 ref counts). */
  valueSize: number;
  /** Number of metadata blocks: any pointer at or beyond it is corruption. */
  nrMetadataBlocks: number;
  /** Cancels the work, which then rejects with AbortError. */
  signal?: AbortSignal;
  /** Nodes per read batch (default 256 = 1 MiB). */
  window?: number;
  /** Only visit subtrees that may hold keys in [begin, end). */
  begin?: Key;
  /** End of the key range (exclusive). */
  end?: Key;
  /** Called for every node read (for progress and IO accounting). */
  onNode?: (node: BtreeNode, depth: number) => void;
  /**
   * Walk a subtree: the depth of `root` in its tree (so that the fill rule
   * applies to it when it is not the tree's root) and the key range its
   * parent gives it. Default: a whole tree (depth 0, every key).
   */
  subtree?: {
    /** Depth of the root in its tree. */
    depth: number;
    /** Lowest key the parent allows. */
    lo: Key;
    /** Highest key the parent allows. */
    hi: Key;
  };
  /** The root's block, already read (by a caller that reads many roots in one batch). */
  rootBlock?: Block;
  /**
   * Each yielded leaf (and each node passed to onNode) is valid only until
   * the walk goes on: its block is then marked done (Block.done), so the
   * walk's read buffers are reused instead of left to the garbage collector.
   * For callers that decode a leaf before asking for the next.
   */
  transient?: boolean;
}

/**
 * Every field is set when the object is made (one shape, no property store
 * added later): a walk keeps the pending nodes of a read window, long enough
 * to be promoted to V8's old space.
 */
interface Pending {
  block: number;
  lo: Key;
  hi: Key;
  depth: number;
  /** The read of its batch, once asked for; `data` is set when it completes. */
  p: Promise<unknown> | undefined;
  /** Set once the read completes (lets the prefetcher look inside internal nodes). */
  data: Block | undefined;
  /** Children, created ahead of time by the prefetcher. */
  children: Pending[] | undefined;
}

const pending = (block: number, lo: Key, hi: Key, depth: number): Pending => ({ block, lo, hi, depth, p: undefined, data: undefined, children: undefined });

/**
 * The leaves of a btree in key order, pulled one at a time: poll() returns the
 * next leaf at once when its block is already read, and only a leaf whose
 * read is still in flight costs an await (wait()). A walk of a 4M-mapping
 * device passes ~32,000 leaves and reads them in ~130 batches: pulled
 * through an async generator, each leaf cost a promise, an iterator result
 * and two microtask turns.
 *
 * Memory is bounded by the depth of the tree times its fan-out plus one read
 * window. Reads run a window ahead of the consumer: the prefetcher also looks
 * inside internal nodes it has already read, so the next leaves are in flight
 * before the walk gets to them. Every node is validated when the walk reaches
 * it (checksum, blocknr, flags, sizes, key order and range, depth, balance); a
 * block seen twice in one tree is an error, which also stops cycles.
 */
export class LeafWalk {
  private readonly window: number;
  private readonly transient: boolean;
  private readonly begin: Key;
  private readonly end: Key;
  private readonly ctx: TreeContext;
  private readonly v: TreeValidator;
  // The options the walk reads per node, copied: callers' option objects
  // have many shapes, and reading them through `opts` made the walk's
  // optimized code deoptimize on each new shape (wrong map).
  private readonly valueSize: number;
  private readonly signal: AbortSignal | undefined;
  private readonly onNode: WalkOptions['onNode'];
  /** The stack's top (last element) is the next node in key order. */
  private readonly stack: Pending[];
  /** Popped from the stack, its read still in flight: wait() waits for it. */
  private cur: Pending | undefined;
  /** The block of the leaf last returned, marked done at the next poll (transient walks). */
  private lastLeaf: Block | undefined;
  private inFlight = 0;
  /** Nodes read (or being read) that the walk has not reached yet. */
  private ahead = 0;
  private sinceFetch = 0;

  constructor(
    private readonly io: BlockSource,
    root: number,
    opts: WalkOptions,
  ) {
    this.valueSize = opts.valueSize;
    this.signal = opts.signal;
    this.onNode = opts.onNode;
    this.window = opts.window ?? 256;
    this.transient = opts.transient ?? false;
    this.begin = opts.begin ?? 0;
    this.end = opts.end ?? Infinity;
    this.ctx = { tree: opts.tree, devId: opts.devId };
    this.v = new TreeValidator(opts.nrMetadataBlocks, opts.valueSize, this.ctx, opts.subtree?.depth ?? 0);
    this.stack = [pending(root, opts.subtree?.lo ?? 0, opts.subtree?.hi ?? Infinity, 0)];
    if (opts.rootBlock) {
      if (opts.rootBlock.nr !== root) throw new RangeError(`rootBlock is block ${opts.rootBlock.nr}, not the root ${root}`);
      this.stack[0].data = opts.rootBlock;
      this.stack[0].p = Promise.resolve(opts.rootBlock);
    }
    this.v.checkRoot(root);
  }

  /**
   * The next leaf, validated; null once the walk is over; undefined when the
   * next node's read has not completed yet: await wait(), then poll again.
   * With `transient`, the leaf returned before is marked done here.
   */
  poll(): BtreeNode | null | undefined {
    if (this.lastLeaf) {
      this.lastLeaf.done();
      this.lastLeaf = undefined;
    }
    const stack = this.stack;
    for (;;) {
      let item = this.cur;
      if (item) {
        if (!item.data) return undefined;
        this.cur = undefined;
      } else {
        if (stack.length === 0) return null;
        throwIfAborted(this.signal);
        const top = stack[stack.length - 1];
        // Read-ahead is bounded: at most two windows of blocks read (or in
        // flight) and not yet reached. Unbounded, it grew with the tree (each
        // half window walked fetched a whole one), ~30 MiB at 10M mappings.
        if (!top.p || (this.inFlight < 2 && this.sinceFetch >= this.window / 2 && this.ahead < 2 * this.window)) {
          this.ahead += this.fetch();
          this.sinceFetch = 0;
        }
        item = stack.pop()!;
        if (item.p) this.ahead--;
        this.sinceFetch++;
        if (!item.data) {
          this.cur = item;
          return undefined;
        }
      }
      const block = item.data!;
      const node = this.v.visit(block, item.lo, item.hi, item.depth);
      this.onNode?.(node, item.depth);
      if (node.isLeaf) {
        if (this.transient) this.lastLeaf = block;
        return node;
      }
      const children = item.children ?? this.childrenOf(node, item);
      if (this.transient) block.done();
      // Push last-to-first so the first child is on top.
      for (let i = children.length - 1; i >= 0; i--) stack.push(children[i]);
    }
  }

  /** Resolves once poll() can go on (rejects with the read's error). */
  wait(): Promise<unknown> {
    return this.cur?.p ?? Promise.resolve();
  }

  /** Children of an internal node, in key order, limited to [begin, end). */
  private childrenOf(node: BtreeNode, item: Pending): Pending[] {
    const out: Pending[] = [];
    for (let i = 0; i < node.nrEntries; i++) {
      const lo = node.keyAt(i);
      const hi = i + 1 < node.nrEntries ? node.keyAt(i + 1) : item.hi;
      if (hi <= this.begin || lo >= this.end) continue;
      const child = node.value64(i);
      this.v.checkPointer(child, item.block);
      out.push(pending(child, lo, hi, item.depth + 1));
    }
    return out;
  }

  /**
   * Collects up to `window` unread nodes in walk order (looking into internal
   * nodes that are already in memory) and reads them in one batch.
   */
  private fetch(): number {
    const items: Pending[] = [];
    const window = this.window;
    const visit = (it: Pending): void => {
      if (items.length >= window) return;
      if (!it.p) {
        items.push(it);
        return;
      }
      if (!it.data || it.depth + 1 >= MAX_DEPTH) return;
      if (!it.children) {
        if (it.data.u32(4) !== INTERNAL_NODE) return;
        try {
          it.children = this.childrenOf(new BtreeNode(it.data, this.valueSize, this.ctx), it);
        } catch {
          return; // reported when the walk reaches the node
        }
      }
      const children = it.children; // indexed: for-of makes an iterator result per child until optimised
      for (let k = 0; k < children.length; k++) {
        if (items.length >= window) return;
        visit(children[k]);
      }
    };
    const stack = this.stack;
    for (let i = stack.length - 1; i >= 0 && items.length < window; i--) visit(stack[i]);
    if (items.length === 0) return 0;
    const batch = this.io.read(items.map((it) => it.block));
    this.inFlight++;
    // One reaction per batch, not a promise per block (garbage that outlived
    // the read): it runs before any later wait() on one of its items, so `data` is set then.
    const p = batch.then(
      (bs) => {
        this.inFlight--;
        for (let i = 0; i < items.length; i++) items[i].data = bs[i];
      },
      (e: unknown) => {
        this.inFlight--;
        throw e;
      },
    );
    p.catch(() => {}); // an abandoned walk must not leave an unhandled rejection
    for (let k = 0; k < items.length; k++) items[k].p = p;
    return items.length;
  }
}

/** The leaves of a btree in key order, as an async generator (LeafWalk pulled one leaf at a time). */
export async function* walkLeaves(io: BlockSource, root: number, opts: WalkOptions): AsyncGenerator<BtreeNode> {
  const w = new LeafWalk(io, root, opts);
  for (;;) {
    const n = w.poll();
    if (n === null) return;
    if (n === undefined) await w.wait();
    else yield n;
  }
}

/**
 * Looks up one key: the largest key <= target at each level. Returns the leaf
 * and index, or undefined when absent. Validates every node on the path.
 */
export async function lookup(
  io: BlockSource,
  root: number,
  key: Key,
  opts: {
    valueSize: number;
    nrMetadataBlocks: number;
    /** Refuse (key-range) a key of 2^53 or more in any node read, not only the one looked for. */
    safeKeys?: boolean;
  } & TreeContext,
): Promise<
  | {
      /** The leaf holding the key. */
      node: BtreeNode;
      /** Its index in the leaf. */
      index: number;
    }
  | undefined
> {
  let block = root;
  let lo: Key = 0;
  let hi: Key = Infinity;
  const ctx: TreeContext = { tree: opts.tree, devId: opts.devId };
  for (let depth = 0; ; depth++) {
    if (depth >= MAX_DEPTH) throw new MetadataError('depth', `${describe(ctx)} deeper than ${MAX_DEPTH} levels`, { block, ...ctx });
    if (block >= opts.nrMetadataBlocks) {
      const what = depth === 0 ? `the root of the ${describe(ctx)} is block ${block}` : `a node of the ${describe(ctx)} points to block ${block}`;
      throw new MetadataError('block-range', `${what}, beyond the metadata device (${opts.nrMetadataBlocks} blocks)`, { block, ...ctx });
    }
    const [b] = await io.read([block]);
    const node = new BtreeNode(b, opts.valueSize, ctx);
    node.checkKeys(lo, hi, ctx);
    if (depth > 0) checkFill(node, ctx);
    else if (!node.isLeaf && node.nrEntries === 0) {
      throw new MetadataError('nr-entries', `internal node ${block} has no entries (${describe(ctx)})`, { block, ...ctx });
    }
    // Keys are increasing: the last is the largest.
    if (opts.safeKeys && node.nrEntries > 0) node.key(node.nrEntries - 1);
    const i = upperIndex(node, key);
    // == so that a bigint key matches a number key of the same value.
    // eslint-disable-next-line eqeqeq
    if (node.isLeaf) return i >= 0 && node.keyAt(i) == key ? { node, index: i } : undefined;
    if (i < 0) return undefined;
    lo = node.keyAt(i);
    hi = i + 1 < node.nrEntries ? node.keyAt(i + 1) : hi;
    block = node.value64(i);
  }
}

/** Index of the largest key <= target, or -1. */
function upperIndex(node: BtreeNode, target: Key): number {
  let lo = 0;
  let hi = node.nrEntries - 1;
  let ans = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (node.keyAt(mid) <= target) {
      ans = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return ans;
}
