/**
 * Delta of two mapping trees: which virtual blocks are mapped the same,
 * differently, or on one side only, in virtual-block order.
 *
 * The two trees are walked together. Within one metadata snapshot a block
 * number names one immutable node, so when both walks reach the same block
 * (a subtree shared since a snapshot) its contents are identical on both
 * sides: it is reported as `same` by reading it once, or skipped without
 * reading anything when `same` is not wanted. The cost is then proportional
 * to what changed, not to the size of the devices. Memory is bounded by
 * depth x fan-out per side plus one read window.
 */
import { AbortError, check, MetadataError, throwIfAborted } from '../errors';
import { BlockSet, BtreeNode, checkFill, type Key, LEAF_NODE, TreeValidator, walkLeaves } from '../pdata/btree';
import type { Block, BlockSource } from '../pdata/block-source';
import type { VirtualBlock, VirtualKey } from './mappings';
import { mappingDataBlock, mappingTime } from './mapping-value';
import { MAX_SAFE_HI, TWO32 } from '../pdata/words';

/** How a run compares: mapped to the same data on both sides, differently, or on one side only. */
export type DeltaKind = 'same' | 'different' | 'left_only' | 'right_only';

/**
 * A run of virtual blocks [begin, begin+length) of one kind, with contiguous
 * data blocks on each side that maps them.
 */
export interface DeltaExtent {
  /** How the run compares. */
  kind: DeltaKind;
  /** First virtual block (a bigint: see docs/json.md). End: `begin + BigInt(length)`. */
  begin: VirtualBlock;
  /** Number of virtual blocks. */
  length: number;
  /** First data block on the left (same, different, left_only). */
  leftData?: number;
  /** First data block on the right (same, different, right_only). */
  rightData?: number;
}

/** @internal A DeltaExtent on the hot path: `begin` a number below 2^53, a bigint from there on. */
export interface RawDeltaExtent extends Omit<DeltaExtent, 'begin'> {
  begin: VirtualKey;
}

/** @internal The public form of a raw extent. */
export function publicExtent(e: RawDeltaExtent): DeltaExtent {
  const out: DeltaExtent = { kind: e.kind, begin: BigInt(e.begin), length: e.length };
  if (e.leftData !== undefined) out.leftData = e.leftData;
  if (e.rightData !== undefined) out.rightData = e.rightData;
  return out;
}

/** Progress of a delta walk. */
export interface DeltaProgress {
  /** Btree nodes read so far (both sides). */
  nodesRead: number;
  /** Subtrees found shared by both sides. */
  sharedSubtrees: number;
  /** Virtual blocks classified so far. */
  blocks: number;
}

/** Options of a delta walk. */
export interface DeltaOptions {
  /** Cancels the work, which then rejects with AbortError. */
  signal?: AbortSignal;
  /** Called as the work advances. */
  onProgress?: (p: DeltaProgress) => void;
  /** Report `same` extents (default true). When false, shared subtrees are not read at all. */
  includeSame?: boolean;
  /** Nodes per read batch (default 128). */
  window?: number;
  /**
   * @internal Merge consecutive extents of one kind whatever their data
   * blocks (leftData/rightData are then those of the first piece): all that
   * thin_delta's plain XML prints, at a fraction of the extents.
   */
  mergeByKind?: boolean;
  /**
   * @internal The extents of a batch may be reused for later batches once
   * the consumer asks for the next one: for consumers that copy what they
   * need from each extent before that (writeDelta). Fewer objects for the
   * garbage collector: a 4M-mapping delta of unrelated devices makes ~76,000.
   */
  reuseExtents?: boolean;
}

export interface DeltaWalkOptions extends DeltaOptions {
  nrMetadataBlocks: number;
  nrDataBlocks: number;
  /** Device ids (or labels) for error messages. */
  leftId?: number;
  rightId?: number;
}

/** Counters of a finished or running walk. */
export interface DeltaStats extends DeltaProgress {
  /** Blocks requested from the IO engine. */
  blocksRead: number;
  /** Virtual blocks classified that the left device maps: all of its mappings when `same` is included. */
  leftBlocks: number;
  /** The same for the right device. */
  rightBlocks: number;
}

function keyOf(node: BtreeNode, i: number): Key {
  const hi = node.u32[node.base + 9 + 2 * i];
  return hi === 0 ? node.u32[node.base + 8 + 2 * i] : hi < MAX_SAFE_HI ? node.u32[node.base + 8 + 2 * i] + hi * TWO32 : node.keyAt(i);
}

function dataOf(node: BtreeNode, i: number): { data: number; time: number } {
  const w = node.base + (node.valuesOffset >> 2) + 2 * i;
  const lo = node.u32[w];
  return { data: mappingDataBlock(lo, node.u32[w + 1]), time: mappingTime(lo) };
}

/** Marks a ref's block done once read (now, or when its read completes). */
function release(r: Ref): void {
  if (r.data) r.data.done();
  else if (r.p) r.p.then(() => r.data?.done(), () => {});
}

/** a + n for keys that may be bigints. */
function addKey(a: Key, n: number): Key {
  if (typeof a === 'number') {
    const s = a + n;
    return s <= Number.MAX_SAFE_INTEGER ? s : BigInt(a) + BigInt(n);
  }
  return a + BigInt(n);
}

// eslint-disable-next-line eqeqeq
const keyEq = (a: Key, b: Key): boolean => a == b;

/** Blocks the frontier reader may hold read and not yet used by the walk (4 MiB). */
const AHEAD_MAX = 1024;

interface Ref {
  leaf: false;
  block: number;
  lo: Key;
  hi: Key;
  depth: number;
  /** The read, once asked for; `data` is set when it resolves. */
  p?: Promise<unknown>;
  data?: Block;
}

interface Cursor {
  leaf: true;
  node: BtreeNode;
  i: number;
  depth: number;
}

type Item = Ref | Cursor;

/** One tree's walk: a stack whose top is the next item in key order. */
class Side {
  readonly stack: Item[] = [];
  /** Block numbers of the refs on the stack (a multiset), so the other side can see them. */
  readonly pending = new Map<number, number>();
  readonly validator: TreeValidator;
  other!: Side;

  constructor(
    readonly name: 'left' | 'right',
    readonly walk: DeltaWalker,
    root: number,
    readonly devId: number | undefined,
  ) {
    this.validator = new TreeValidator(walk.opts.nrMetadataBlocks, 8, { tree: 'mapping', devId });
    this.validator.checkRoot(root);
    this.pushRef({ leaf: false, block: root, lo: 0, hi: Infinity, depth: 0 });
  }

  get empty(): boolean {
    return this.stack.length === 0;
  }

  top(): Item {
    return this.stack[this.stack.length - 1];
  }

  pushRef(r: Ref, from = r.block): void {
    this.validator.checkPointer(r.block, from);
    this.stack.push(r);
    this.pending.set(r.block, (this.pending.get(r.block) ?? 0) + 1);
  }

  popRef(): Ref {
    const r = this.stack.pop() as Ref;
    const n = this.pending.get(r.block)! - 1;
    if (n === 0) this.pending.delete(r.block);
    else this.pending.set(r.block, n);
    return r;
  }

  /** Next key on this side: the current leaf entry, or the lower bound of the top subtree. */
  nextKey(): Key {
    const t = this.top();
    return t.leaf ? keyOf(t.node, t.i) : t.lo;
  }

  /** Consumes the current leaf entry. */
  advance(): void {
    const c = this.top() as Cursor;
    if (++c.i >= c.node.nrEntries) {
      this.stack.pop();
      c.node.block.done(); // its read buffer serves later reads
    }
  }

  /**
   * Reads up to `window` unread refs from the top down (the top first), but
   * not blocks the other side is about to visit too: those may be shared and
   * then are never read.
   */
  fetch(): void {
    const want: Ref[] = [];
    const top = this.top() as Ref;
    if (!top.p) want.push(top);
    this.collect(this.stack.length - 2, want, top.depth);
    if (want.length) this.walk.read(want);
  }

  /**
   * Keeps reads a window ahead. Called by the walk after both sides have
   * expanded what they expand in a step, so that subtrees the other side is
   * about to visit too are already visible in its `pending` and not read.
   */
  prefetch(): void {
    const i = this.stack.length - 1 - (this.walk.window >> 1);
    const ahead = this.stack[i];
    if (ahead && !ahead.leaf && !ahead.p && !this.other.pending.has(ahead.block)) this.fetchFrom(i);
  }

  private fetchFrom(i: number): void {
    const want: Ref[] = [];
    this.collect(i, want);
    if (want.length) this.walk.read(want);
  }

  /**
   * One level a batch (`depth`: that of the first ref taken, or the caller's): a batch of leaves
   * that also held the next subtrees' roots stayed allocated until those were walked (~25 MiB of
   * batches in a delta of an origin and its snapshot with `same`).
   */
  private collect(from: number, want: Ref[], depth = -1): void {
    for (let i = from; i >= 0 && want.length < this.walk.window; i--) {
      const it = this.stack[i];
      if (it.leaf || it.p) continue;
      if (depth >= 0 && it.depth !== depth) break;
      // A block the other side will visit too is probably shared: then it is
      // read once, by the left side, and only if `same` is wanted.
      if (this.other.pending.has(it.block) && (this.name === 'right' || this.walk.opts.includeSame === false)) continue;
      depth = it.depth;
      want.push(it);
    }
  }

  /**
   * Whether the top ref's node is read, so that takeNow/expandNow can run
   * (asks for its read otherwise). The walk awaits waitTop() only when not:
   * most nodes arrive in a read batch ahead of the walk, and an async step
   * per node was most of a delta's garbage.
   */
  ready(): boolean {
    const top = this.top() as Ref;
    if (!top.p) this.fetch();
    return top.data !== undefined;
  }

  /** Resolves once the top ref's node is read (rejects with the read's error). */
  async waitTop(): Promise<void> {
    const top = this.top() as Ref;
    if (!top.p) this.fetch();
    if (!top.data) await top.p;
  }

  /** Replaces the top ref (read: see ready) by its contents: a leaf cursor or the node's children. */
  expandNow(): void {
    const r = this.top() as Ref;
    this.push(this.takeNow(r), r);
  }

  /** The first half of expandNow(): pops the top ref `r`, validates its node, checks its child pointers. */
  takeNow(r: Ref): BtreeNode {
    const block = r.data!;
    this.popRef();
    const node = this.validator.visit(block, r.lo, r.hi, r.depth);
    this.walk.stats.nodesRead++;
    if (!node.isLeaf) for (let i = node.nrEntries - 1; i >= 0; i--) this.validator.checkPointer(node.value64(i), r.block);
    return node;
  }

  /** The second half: a leaf cursor or the node's children, bar those marked in `skip` (shared with the other side). */
  push(node: BtreeNode, r: Ref, skip?: Uint8Array): void {
    if (node.isLeaf) {
      if (node.nrEntries > 0) this.stack.push({ leaf: true, node, i: 0, depth: r.depth });
      else node.block.done();
      return;
    }
    for (let i = node.nrEntries - 1; i >= 0; i--) {
      if (skip?.[i]) continue;
      const lo = node.keyAt(i);
      const hi = i + 1 < node.nrEntries ? node.keyAt(i + 1) : r.hi;
      const ref: Ref = { leaf: false, block: node.value64(i), lo, hi, depth: r.depth + 1 };
      this.stack.push(ref);
      this.pending.set(ref.block, (this.pending.get(ref.block) ?? 0) + 1);
    }
    node.block.done();
  }

  label(): string {
    return this.devId !== undefined ? `device ${this.devId}` : `the ${this.name} tree`;
  }
}

/** The walk over two trees; yields extents through an async generator. */
class DeltaWalker {
  readonly stats: DeltaStats = { nodesRead: 0, sharedSubtrees: 0, blocks: 0, blocksRead: 0, leftBlocks: 0, rightBlocks: 0 };
  readonly window: number;
  /** Blocks the frontier reader read ahead of the walk, by block number (no-same walks only). */
  private readonly ahead = new Map<number, Promise<Block>>();
  /** Blocks requested so far (no-same walks only), so the frontier never reads one twice. */
  private readonly requested: BlockSet | undefined;
  /** The walk ended (or failed): the frontier stops. */
  done = false;
  private out: RawDeltaExtent[] = [];
  /** The batch handed out last (reuseExtents): its extents are reused at the next hand-out. */
  private handed: RawDeltaExtent[] = [];
  /** Extents free for reuse (reuseExtents). */
  private readonly free: RawDeltaExtent[] = [];
  private readonly reuse: boolean;
  private cur: RawDeltaExtent | undefined;
  private readonly byKind: boolean;

  constructor(
    readonly io: BlockSource,
    readonly opts: DeltaWalkOptions,
  ) {
    this.window = opts.window ?? 128;
    this.byKind = opts.mergeByKind === true;
    this.reuse = opts.reuseExtents === true;
    if (opts.includeSame === false) this.requested = new BlockSet(opts.nrMetadataBlocks);
  }

  read(refs: Ref[]): void {
    const need: Ref[] = [];
    // Indexed loops here and below: for-of makes an iterator result per step in code not yet optimised.
    for (let k = 0; k < refs.length; k++) {
      const r = refs[k];
      const ahead = this.ahead.get(r.block);
      if (!ahead) {
        need.push(r);
        continue;
      }
      // Read ahead by the frontier: used once. Should that read have failed
      // (its batch held other blocks), the block is read on its own, so an
      // error names the block the walk needs.
      this.ahead.delete(r.block);
      r.p = ahead.then(
        (b) => (r.data = b),
        () => {
          this.stats.blocksRead++;
          return this.io.read([r.block]).then((bs) => (r.data = bs[0]));
        },
      );
      r.p.catch(() => {});
    }
    if (need.length === 0) return;
    if (this.requested) for (let k = 0; k < need.length; k++) this.requested.add(need[k].block);
    const batch = this.io.read(need.map((r) => r.block));
    this.stats.blocksRead += need.length;
    // One reaction per batch, not a promise per block: it sets every `data`
    // before anything awaiting one of these refs runs.
    const p = batch.then((bs) => {
      for (let i = 0; i < need.length; i++) need[i].data = bs[i];
    });
    p.catch(() => {});
    for (let k = 0; k < need.length; k++) need[k].p = p;
  }

  /**
   * Without `same`, the walk only descends where the trees differ, and a
   * level-by-level walk would wait for one read after another (a changed leaf
   * under each changed internal node). The frontier reader goes ahead: given
   * two nodes that cover one key range, it reads at once every child that is
   * not the same pointer under the same range on the other side, and, when a
   * pair of such children (one range, two blocks) has arrived, does the same
   * one level down. The walk then finds the blocks already read (`ahead`).
   * Everything it reads is what the walk reads (no shared subtree), bar
   * corruption; it validates nothing (the walk does, on use), and stops at
   * AHEAD_MAX blocks not yet used.
   */
  private frontier(l: BtreeNode, r: BtreeNode, hi: Key, skipL?: Uint8Array, skipR?: Uint8Array): void {
    if (this.done || l.isLeaf || r.isLeaf) return;
    const reading = this.ahead.size < AHEAD_MAX;
    if (!reading && !skipL) return;
    const nl = l.nrEntries;
    const nr = r.nrEntries;
    const limit = Math.min(this.opts.nrMetadataBlocks, Math.floor(this.io.sizeBytes / 4096));
    const want: number[] = [];
    const pairs: [number, number, Key][] = [];
    const child = (n: BtreeNode, i: number): number => {
      const w = n.base + (n.valuesOffset >> 2) + 2 * i;
      return n.u32[w + 1] === 0 ? n.u32[w] : -1; // a pointer past 2^32 blocks is corruption: left to the walk
    };
    const upper = (n: BtreeNode, i: number, count: number): Key => (i + 1 < count ? keyOf(n, i + 1) : hi);
    const take = (b: number): boolean => {
      if (!reading || b < 0 || b >= limit || this.requested!.has(b)) return false;
      this.requested!.add(b);
      want.push(b);
      return true;
    };
    // Both key lists are sorted: a merge pairs the children that cover one range.
    let j = 0;
    for (let i = 0; i < nl; i++) {
      const lo = keyOf(l, i);
      while (j < nr && keyOf(r, j) < lo) take(child(r, j++));
      const bl = child(l, i);
      if (j < nr && keyEq(keyOf(r, j), lo) && keyEq(upper(r, j, nr), upper(l, i, nl))) {
        const br = child(r, j);
        if (bl === br && bl >= 0) {
          // Shared: never read without `same`, and not even pushed on the stacks.
          if (skipL) {
            skipL[i] = 1;
            skipR![j] = 1;
            this.stats.sharedSubtrees++;
          }
          j++;
          continue;
        }
        j++;
        take(bl);
        take(br);
        pairs.push([bl, br, upper(l, i, nl)]);
      } else take(bl);
    }
    while (j < nr) take(child(r, j++));
    if (want.length === 0) return;
    const batch = this.io.read(want);
    batch.catch(() => {});
    this.stats.blocksRead += want.length;
    want.forEach((b, i) => {
      const p = batch.then((bs) => bs[i]);
      p.catch(() => {});
      this.ahead.set(b, p);
    });
    const ctx = { tree: 'mapping' };
    for (const [bl, br, pairHi] of pairs) {
      const pl = this.ahead.get(bl);
      const pr = this.ahead.get(br);
      if (!pl || !pr) continue;
      Promise.all([pl, pr]).then(
        ([a, b]) => {
          if (this.done || a.u32(4) === LEAF_NODE || b.u32(4) === LEAF_NODE) return;
          let na: BtreeNode;
          let nb: BtreeNode;
          try {
            na = new BtreeNode(a, 8, ctx);
            nb = new BtreeNode(b, 8, ctx);
          } catch {
            return; // the walk reports it when it gets there
          }
          this.frontier(na, nb, pairHi);
        },
        () => {},
      );
    }
  }

  private checkData(d: number, key: Key, side: Side): void {
    if (d >= this.opts.nrDataBlocks) {
      throw new MetadataError('data-range', `${side.label()}: block ${key} maps to data block ${d}, beyond the data device (${this.opts.nrDataBlocks} blocks)`, {
        tree: 'mapping',
        devId: side.devId,
        dataBlock: d,
      });
    }
  }

  /** Adds one classified virtual block (or a run of them) to the current extent. */
  private emit(kind: DeltaKind, begin: Key, length: number, left: number | undefined, right: number | undefined): void {
    this.stats.blocks += length;
    if (kind !== 'right_only') this.stats.leftBlocks += length;
    if (kind !== 'left_only') this.stats.rightBlocks += length;
    if (kind === 'same' && this.opts.includeSame === false) return;
    const c = this.cur;
    if (
      c &&
      c.kind === kind &&
      (typeof begin === 'number' && typeof c.begin === 'number' ? c.begin + c.length === begin : keyEq(addKey(c.begin, c.length), begin)) &&
      (this.byKind || ((left === undefined || c.leftData! + c.length === left) && (right === undefined || c.rightData! + c.length === right)))
    ) {
      c.length += length;
      return;
    }
    if (c) this.out.push(c);
    const f = this.free.pop();
    if (f) {
      f.kind = kind;
      f.begin = begin;
      f.length = length;
      f.leftData = left;
      f.rightData = right;
      this.cur = f;
      return;
    }
    // Every field in one literal: one object shape for all extents (fields
    // added afterwards made each extent change shape twice).
    this.cur = { kind, begin, length, leftData: left, rightData: right };
  }

  private sharedLeaf(b: Block, l: Ref, r: Ref): BtreeNode {
    const ctx = { tree: 'mapping', devId: this.opts.leftId };
    const node = new BtreeNode(b, 8, ctx);
    node.checkKeys(l.lo, l.hi, ctx);
    if (l.depth > 0 || r.depth > 0) checkFill(node, ctx);
    this.left.validator.noteLeafDepth(l.depth, b.nr);
    this.right.validator.noteLeafDepth(r.depth, b.nr);
    return node;
  }

  /**
   * Both sides reference the same subtree under the same key range, so its
   * contents are identical on both sides. Reads it once (one side) to report
   * `same`, or not at all. Yields after each leaf so the caller can hand
   * extents on and memory stays bounded.
   */
  private async *shared(l: Ref, r: Ref): AsyncGenerator<void> {
    this.stats.sharedSubtrees++;
    if (this.opts.includeSame === false) return;
    const lo = l.lo;
    const hi = l.hi;
    // The left side usually read it already (prefetch): a shared leaf is then
    // enumerated straight away; a shared internal node is walked in bulk,
    // validated as the subtree it is (fill rule, key range, leaf depth on
    // both sides).
    if (!l.data && l.p) await l.p;
    const first = l.data;
    const leaves =
      first && first.u32(4) === LEAF_NODE
        ? [this.sharedLeaf(first, l, r)]
        : walkLeaves(this.io, l.block, {
            tree: 'mapping',
            devId: this.opts.leftId,
            valueSize: 8,
            nrMetadataBlocks: this.opts.nrMetadataBlocks,
            signal: this.opts.signal,
            window: this.window,
            // Each leaf is read whole into extents before the next is asked for: its read buffer
            // is reused at once, not left to the collector (a 4M-mapping origin and its snapshot
            // sharing all but 75 blocks, with `same`: peak 89 MiB).
            transient: true,
            subtree: { depth: Math.max(l.depth, r.depth), lo, hi },
            onNode: (node, depth) => {
              this.stats.nodesRead++;
              this.stats.blocksRead++;
              if (node.isLeaf) {
                this.left.validator.noteLeafDepth(l.depth + depth, node.nr);
                this.right.validator.noteLeafDepth(r.depth + depth, node.nr);
              }
            },
          });
    if (first && first.u32(4) === LEAF_NODE) this.stats.nodesRead++;
    for await (const leaf of leaves) {
      const n = leaf.nrEntries;
      if (n && (leaf.keyAt(0) < lo || leaf.keyAt(n - 1) >= hi)) {
        throw new MetadataError('key-range', `shared subtree ${l.block} holds keys outside the range its parents give`, { block: leaf.nr, tree: 'mapping' });
      }
      // Runs of consecutive blocks on consecutive data are emitted whole.
      const w = leaf.u32;
      const s32 = leaf.i32;
      const kb = leaf.base + 8;
      const vb = leaf.base + (leaf.valuesOffset >> 2);
      const nrData = this.opts.nrDataBlocks;
      let runKey: Key = 0;
      let runData = 0;
      let runLen = 0;
      for (let i = 0; i < n; i++) {
        const hi = w[kb + 2 * i + 1];
        const k: Key = hi === 0 ? w[kb + 2 * i] : hi < MAX_SAFE_HI ? w[kb + 2 * i] + hi * TWO32 : leaf.keyAt(i);
        const lo = s32[vb + 2 * i];
        const d = mappingDataBlock(lo, w[vb + 2 * i + 1]);
        if (d >= nrData) this.checkData(d, k, this.left);
        if (runLen > 0 && d === runData + runLen && typeof k === 'number' && typeof runKey === 'number' && k === runKey + runLen) {
          runLen++;
          continue;
        }
        if (runLen > 0) this.emit('same', runKey, runLen, runData, runData);
        runKey = k;
        runData = d;
        runLen = 1;
      }
      if (runLen > 0) this.emit('same', runKey, runLen, runData, runData);
      yield;
    }
  }

  left!: Side;
  right!: Side;

  /**
   * Both tops are leaf cursors: classify entries until one leaf is used up.
   * The hot loop of a delta between unrelated trees, so no allocations here.
   */
  private mergeLeaves(a: Cursor, b: Cursor): void {
    const na = a.node;
    const nb = b.node;
    const wa = na.u32;
    const wb = nb.u32;
    const sa = na.i32; // value low words: see Block.ints
    const sb = nb.i32;
    const ka0 = na.base + 8;
    const kb0 = nb.base + 8;
    const va0 = na.base + (na.valuesOffset >> 2);
    const vb0 = nb.base + (nb.valuesOffset >> 2);
    const nrData = this.opts.nrDataBlocks;
    let i = a.i;
    let j = b.i;
    while (i < na.nrEntries && j < nb.nrEntries) {
      const hia = wa[ka0 + 2 * i + 1];
      const hib = wb[kb0 + 2 * j + 1];
      if (hia >= MAX_SAFE_HI || hib >= MAX_SAFE_HI) break; // huge keys: the general path below
      const ka = hia === 0 ? wa[ka0 + 2 * i] : wa[ka0 + 2 * i] + hia * TWO32;
      const kb = hib === 0 ? wb[kb0 + 2 * j] : wb[kb0 + 2 * j] + hib * TWO32;
      if (ka <= kb) {
        const lo = sa[va0 + 2 * i];
        const da = mappingDataBlock(lo, wa[va0 + 2 * i + 1]);
        if (da >= nrData) this.checkData(da, ka, this.left);
        if (ka < kb) {
          this.emit('left_only', ka, 1, da, undefined);
          i++;
          continue;
        }
        const lob = sb[vb0 + 2 * j];
        const db = mappingDataBlock(lob, wb[vb0 + 2 * j + 1]);
        if (db >= nrData) this.checkData(db, kb, this.right);
        this.emit(da === db ? 'same' : 'different', ka, 1, da, db);
        i++;
        j++;
      } else {
        const lob = sb[vb0 + 2 * j];
        const db = mappingDataBlock(lob, wb[vb0 + 2 * j + 1]);
        if (db >= nrData) this.checkData(db, kb, this.right);
        this.emit('right_only', kb, 1, undefined, db);
        j++;
      }
    }
    if (i === a.i && j === b.i) {
      // Only huge keys ahead: one step of the general (bigint-safe) path.
      const ka = keyOf(na, i);
      const kb = keyOf(nb, j);
      const va = dataOf(na, i).data;
      const vb = dataOf(nb, j).data;
      this.checkData(va, ka, this.left);
      this.checkData(vb, kb, this.right);
      if (ka < kb) {
        this.emit('left_only', ka, 1, va, undefined);
        i++;
      } else if (kb < ka) {
        this.emit('right_only', kb, 1, undefined, vb);
        j++;
      } else {
        this.emit(va === vb ? 'same' : 'different', ka, 1, va, vb);
        i++;
        j++;
      }
    }
    a.i = i;
    b.i = j;
    if (i >= na.nrEntries) {
      this.left.stack.pop();
      na.block.done();
    }
    if (j >= nb.nrEntries) {
      this.right.stack.pop();
      nb.block.done();
    }
  }

  async *run(leftRoot: number, rightRoot: number): AsyncGenerator<RawDeltaExtent[]> {
    // An abort before the walk is honoured before it starts (not 1024 steps in: a short walk would finish).
    throwIfAborted(this.opts.signal);
    const L = (this.left = new Side('left', this, leftRoot, this.opts.leftId));
    const R = (this.right = new Side('right', this, rightRoot, this.opts.rightId));
    L.other = R;
    R.other = L;
    let steps = 0;
    for (;;) {
      if (++steps % 1024 === 0) {
        throwIfAborted(this.opts.signal);
        this.opts.onProgress?.({ ...this.stats });
      }
      if (this.out.length >= 256) yield this.handOut();
      if (L.empty && R.empty) break;
      if (L.empty || R.empty) {
        const s = L.empty ? R : L;
        const t = s.top();
        if (!t.leaf) {
          if (!s.ready()) await s.waitTop();
          s.expandNow();
          s.prefetch();
          continue;
        }
        const k = keyOf(t.node, t.i);
        const { data } = dataOf(t.node, t.i);
        this.checkData(data, k, s);
        if (s === L) this.emit('left_only', k, 1, data, undefined);
        else this.emit('right_only', k, 1, undefined, data);
        s.advance();
        continue;
      }
      const a = L.top();
      const b = R.top();
      // One block under the same key range on both sides: a shared subtree,
      // skipped (or read once). Under different ranges it is read and
      // validated on each side like any other node, so that a subtree whose
      // keys fit one parent's range and not the other's cannot be skipped.
      if (!a.leaf && !b.leaf && a.block === b.block && keyEq(a.lo, b.lo) && keyEq(a.hi, b.hi)) {
        if (this.opts.includeSame !== false) {
          if (!a.p) L.fetch();
          L.prefetch();
        }
        L.popRef();
        R.popRef();
        for await (const _ of this.shared(a, b)) if (this.out.length >= 256) yield this.handOut();
        // The subtree's root as either side read it (the left's for `same`: a shared leaf's entries,
        // or an internal node shared() read again; the right's, read before the left's `pending`
        // showed it shared): nothing reads it again, so it is done. Left to the collector, each
        // pinned its whole read batch (a delta of an origin and its snapshot with `same` held
        // ~25 MiB of batches, peak 89 MiB at 4M mappings).
        release(a);
        release(b);
        continue;
      }
      const ka = a.leaf ? keyOf(a.node, a.i) : a.lo;
      const kb = b.leaf ? keyOf(b.node, b.i) : b.lo;
      if (a.leaf && b.leaf) {
        this.mergeLeaves(a, b);
        continue;
      }
      if (a.leaf) {
        // b is a subtree starting at kb: nothing on the right comes before it.
        if (ka < kb) {
          const va = dataOf(a.node, a.i);
          this.checkData(va.data, ka, L);
          this.emit('left_only', ka, 1, va.data, undefined);
          L.advance();
        } else {
          if (!R.ready()) await R.waitTop();
          R.expandNow();
          R.prefetch();
        }
        continue;
      }
      if (b.leaf) {
        if (kb < ka) {
          const vb = dataOf(b.node, b.i);
          this.checkData(vb.data, kb, R);
          this.emit('right_only', kb, 1, undefined, vb.data);
          R.advance();
        } else {
          if (!L.ready()) await L.waitTop();
          L.expandNow();
          L.prefetch();
        }
        continue;
      }
      // Two different subtrees: open the one that starts first; at the same
      // start, the wider one (higher up its tree), or both.
      const first = ka < kb ? L : kb < ka ? R : a.hi > b.hi ? L : b.hi > a.hi ? R : undefined;
      if (first) {
        if (!first.ready()) await first.waitTop();
        first.expandNow();
      } else {
        if (!a.p) L.fetch();
        if (!b.p) R.fetch();
        if (this.requested) {
          // Without `same`: two nodes over one range. The children they share
          // are skipped here (as the walk below would, one by one), and what
          // differs below them is read ahead of the walk (frontier).
          const rl = L.top() as Ref;
          if (!L.ready()) await L.waitTop();
          const nl = L.takeNow(rl);
          const rr = R.top() as Ref;
          if (!R.ready()) await R.waitTop();
          const nr = R.takeNow(rr);
          const skipL = nl.isLeaf ? undefined : new Uint8Array(nl.nrEntries);
          const skipR = nr.isLeaf ? undefined : new Uint8Array(nr.nrEntries);
          if (skipL && skipR) this.frontier(nl, nr, a.hi, skipL, skipR);
          L.push(nl, rl, skipL);
          R.push(nr, rr, skipR);
        } else {
          if (!L.ready()) await L.waitTop();
          L.expandNow();
          if (!R.ready()) await R.waitTop();
          R.expandNow();
        }
      }
      L.prefetch();
      R.prefetch();
    }
    if (this.cur) this.out.push(this.cur);
    this.cur = undefined;
    this.opts.onProgress?.({ ...this.stats });
    if (this.out.length) yield this.handOut();
  }

  /**
   * The extents made since the last hand-out. With reuseExtents, the batch
   * handed out before this one is done with (its consumer asked for more):
   * its extents become free for emit() to reuse.
   */
  private handOut(): RawDeltaExtent[] {
    if (!this.reuse) return this.out.splice(0);
    const done = this.handed;
    for (let i = 0; i < done.length; i++) this.free.push(done[i]);
    done.length = 0;
    this.handed = this.out;
    this.out = done;
    return this.handed;
  }
}

/**
 * @internal Delta of two bottom-level mapping trees (by root block) in one metadata
 * view. Yields batches of extents; consumers usually want `deltaExtents`.
 */
export async function* deltaBatches(io: BlockSource, leftRoot: number, rightRoot: number, opts: DeltaWalkOptions): AsyncGenerator<RawDeltaExtent[], DeltaStats> {
  if (opts.window !== undefined) check.integer(opts.window, 'window', 1);
  check.boolean(opts.includeSame, 'includeSame');
  const w = new DeltaWalker(io, opts);
  try {
    yield* w.run(leftRoot, rightRoot);
  } catch (e) {
    if (opts.signal?.aborted && !(e instanceof AbortError)) throw new AbortError(undefined, { cause: e });
    throw e;
  } finally {
    w.done = true;
  }
  return w.stats;
}
