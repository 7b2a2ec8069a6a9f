/**
 * checkMetadata: everything thin_check checks, and more, collected as a list
 * of problems rather than thrown. Order: superblock; device-details tree;
 * top-level mapping tree; every device's mapping tree (each node validated
 * by TreeValidator; a subtree shared by several devices is validated once
 * unless a later parent gives it a key range that does not contain the one
 * it was validated under); the held metadata snapshot's trees; then both
 * space maps, against a recount of every reference.
 *
 * Memory: 1 byte per data block (data recount) up to DATA_WINDOW blocks; a
 * larger data device is recounted a window of DATA_WINDOW blocks at a time
 * (4 MiB): window 0 during the walk, each other window by re-reading the
 * leaves that map into it (their numbers are listed per window during the
 * walk: 4 bytes a leaf and window). Plus
 * about 14 bytes per metadata block (recount, per-node key range, height,
 * mapping count, tree marks) and the device list. Never proportional to the
 * number of mappings.
 */
import { DmthinError, MetadataError, throwIfAborted, check } from '../errors';
import { BlockSet, BtreeNode, Key, TreeValidator } from '../pdata/btree';
import { compareSpaceMap, countTreeNodes, CheckProblem, loadIndex, problemOf, RefCounts } from '../pdata/space-map-check';
import { ENTRIES_PER_BITMAP } from '../pdata/space-map';
import type { Block } from '../pdata/block-source';
import { DEVICE_DETAILS_SIZE, parseDeviceDetails } from './device-details';
import { grow, sortedIndexOf } from './device-table';
import { ThinMetadata } from './metadata';
import { parseSuperblock, Superblock } from './superblock';
import { mappingDataBlock } from './mapping-value';

export type { CheckProblem, ProblemSeverity } from '../pdata/space-map-check';

/** The step a check is in: superblock, trees, then the space maps. */
export type CheckPhase = 'superblock' | 'details' | 'mapping-top' | 'mappings' | 'metadata-snap' | 'data-sm' | 'metadata-sm';

/** Progress of checkMetadata. */
export interface CheckProgress {
  /** The current phase. */
  phase: CheckPhase;
  /** Mappings walked (phase 'mappings'), bitmaps compared (space-map phases). */
  done: number;
  /** What `done` counts up to in this phase. */
  total: number;
}

/** Options of checkMetadata. */
export interface CheckOptions {
  /** Check the superblock only. */
  superblockOnly?: boolean;
  /** Walk the details and top-level trees only; no mapping trees, no space maps (as thin_check --skip-mappings; a mapping root beyond the metadata device is still reported). */
  skipMappings?: boolean;
  /** Cancels the work, which then rejects with AbortError. */
  signal?: AbortSignal;
  /** Called as the work advances. */
  onProgress?: (p: CheckProgress) => void;
  /** Problems kept in the report (default 10000); the rest are counted in `omitted`. */
  maxProblems?: number;
  /**
   * @internal Data blocks recounted at once when the data device is larger
   * (a multiple of 16,320, default DATA_WINDOW); tests use small windows.
   */
  dataWindow?: number;
  /** @internal Tree walks before the walk marks are cleared (default 65,535); tests use small values. */
  markSerials?: number;
}

/** What a check counted. */
export interface CheckCounts {
  /** Devices in the checked (live, or with a metadata snapshot the held) details tree. */
  devices: number;
  /** Mappings counted per device (a shared subtree counts for each device). */
  mappings: number;
  /** Metadata blocks the recount found in use (0 when space maps were not checked). */
  metadataBlocksInUse: number;
  /** Data blocks the recount found in use. */
  dataBlocksInUse: number;
  /** Size of the metadata device in metadata blocks (from the superblock). */
  metadataBlocks: number;
  /** Size of the data device in data blocks (from the superblock). */
  dataBlocks: number;
  /** The superblock's transaction id. */
  transactionId: bigint;
  /** Held metadata snapshot root, or 0. */
  heldRoot: number;
}

/** The outcome of checkMetadata: problems are collected, not thrown. */
export interface CheckReport {
  /** The problems found, up to maxProblems. */
  problems: CheckProblem[];
  /** Problems that make the metadata unusable (thin_check would fail). */
  fatal: number;
  /** Problems that leave it usable (e.g. leaked blocks). */
  nonFatal: number;
  /** Problems not kept in `problems` (beyond maxProblems); counted in fatal/nonFatal. */
  omitted: number;
  /** False with a metadata snapshot, superblockOnly or skipMappings, or when the check ended early. */
  spaceMapsChecked: boolean;
  /** What was counted. */
  counts: CheckCounts;
}

const TWO64M1 = (1n << 64n) - 1n;

/** A u32 of NodeBook that stands for "more than a u32 holds" (see NodeBook). */
const U32_TOP = 0xffffffff;
/** NodeBook.entries: the count is in bigEntries. */
const BIG = 0xff;
/** Tree walks per pass of NodeBook.mark (a u16 serial; 0 = not reached). */
const MARK_SERIALS = 0xffff;

/**
 * Per-metadata-block bookkeeping for subtrees shared between trees.
 *
 * Memory: this is the part of a check that grows with the metadata device,
 * so it is kept to about 12 bytes a block (was about 29: u64 key ranges, a
 * f64 count and a u32 mark; 19 MB of a 40M-mapping pool's 648k blocks, now
 * about 8 MB). The narrowing is sound, never exact-or-wrong:
 * - lo/hi are u32. A shared node is skipped only when the new range
 *   contains the stored one (newLo <= lo && newHi >= hi). A low key at or
 *   above 2^32-1 is stored as 2^32-1 (lower than the truth) and a high key at
 *   or above 2^32-1 as U32_TOP, which stands for 2^64-1 (higher than the
 *   truth): the stored range only widens, so the test only gets stricter
 *   (at worst a node is validated again). Virtual blocks of a pool are below
 *   2^32 unless the thin device is over 16 TiB at 4 KiB blocks.
 * - entries is a byte: a leaf's count (at most 252); an internal node (about
 *   1 in 100 blocks) or a count of 255 or more is marked BIG and its count
 *   kept in `bigEntries`.
 * - mark is a u16 walk serial (compared only for equality within one walk);
 *   when the serials run out the marks are cleared and the serial restarts
 *   at 1 (see Checker.newWalk), once per 65,535 trees.
 * @internal Exported for its unit test only.
 */
export class NodeBook {
  /** Validated at least once (as a btree node of any tree). */
  readonly validated: BlockSet;
  /** Validated as a node of a bottom-level mapping tree (only those may be skipped when shared). */
  readonly mappingNode: BlockSet;
  /** The subtree below had a problem when first walked. */
  readonly faulty: BlockSet;
  /**
   * Validated as a non-root node (the minimum fill applied): a node first
   * met as a tree's root, which is exempt, is validated again where another
   * tree reaches it below its root.
   */
  readonly filled: BlockSet;
  /**
   * Inclusive key range each node was validated under (intersection of all),
   * widened to u32: lo clamped down to 2^32-1, hi at or above 2^32-1 stored
   * as U32_TOP = 2^64-1.
   */
  readonly lo: Uint32Array;
  readonly hi: Uint32Array;
  /** Levels below the node (leaf = 0). */
  readonly height: Uint8Array;
  /** Mappings (leaf entries) in the subtree; BIG: see bigEntries. */
  readonly entries: Uint8Array;
  /** Mappings of the subtrees marked BIG in `entries`. */
  readonly bigEntries = new Map<number, number>();
  /** Serial of the tree walk that last reached the block (a second reach in one walk is a cycle). */
  readonly mark: Uint16Array;
  constructor(n: number) {
    this.validated = new BlockSet(n);
    this.mappingNode = new BlockSet(n);
    this.faulty = new BlockSet(n);
    this.filled = new BlockSet(n);
    this.lo = new Uint32Array(n);
    this.hi = new Uint32Array(n);
    this.height = new Uint8Array(n);
    this.entries = new Uint8Array(n);
    this.mark = new Uint16Array(n);
  }

  /** Whether a node validated before lies in the key range [lo, hi) (exclusive hi; Infinity = every key). */
  within(b: number, lo: Key, hi: Key): boolean {
    // lo <= stored lo; hi - 1 >= stored hi, where U32_TOP is 2^64-1 (only hi = Infinity covers it).
    const h = this.hi[b];
    return lo <= this.lo[b] && (h === U32_TOP ? hi === Infinity : hi > h);
  }

  /** A node's first validation: the range [lo, hi), its height and mappings. */
  set(b: number, lo: Key, hi: Key, height: number, entries: number): void {
    this.lo[b] = lowU32(lo);
    this.hi[b] = highU32(hi);
    this.height[b] = height;
    if (height > 0 || entries >= BIG) {
      this.bigEntries.set(b, entries);
      this.entries[b] = BIG;
    } else this.entries[b] = entries;
  }

  /** A node validated again under [lo, hi): its keys lie in the intersection. */
  narrow(b: number, lo: Key, hi: Key): void {
    // Both clampings are monotonic, so the max / min of clamped bounds is the clamped max / min.
    const l = lowU32(lo);
    const h = highU32(hi);
    if (l > this.lo[b]) this.lo[b] = l;
    if (h < this.hi[b]) this.hi[b] = h;
  }

  entriesOf(b: number): number {
    const e = this.entries[b];
    return e === BIG ? this.bigEntries.get(b)! : e;
  }
}

/** Inclusive low key as stored: exact below 2^32-1, else 2^32-1 (lower: a stricter containment test). */
const lowU32 = (lo: Key): number => (lo < U32_TOP ? Number(lo) : U32_TOP);
/** Inclusive high key (exclusive `hi` - 1) as stored: exact below 2^32-1, else U32_TOP = 2^64-1 (higher: stricter). */
const highU32 = (hi: Key): number => (hi <= U32_TOP ? Number(hi) - 1 : U32_TOP);

type TreeKind = 'details' | 'mapping-top' | 'mapping';

interface TreeWalk {
  kind: TreeKind;
  devId?: number;
  serial: number;
  validator: TreeValidator;
  faulty: boolean;
  /** An unbalanced tree was reported: one depth problem per tree, naming the first node out of line. */
  depthReported: boolean;
  /** Details / top-level trees: every leaf (shared or not) is read, as they list the devices. */
  readAll: boolean;
  onLeaf(leaf: BtreeNode, first: boolean): void;
}

/**
 * Sibling nodes to walk (the children of one node): block numbers and key
 * ranges [lo, hi), in one Float64Array. An object per child (and the arrays
 * holding it) was ~60 bytes of JS heap that outlived the walk of its
 * subtree, so most of it was promoted to the old space: ~28 MB of garbage at
 * 40M mappings, the larger part of the heap's peak.
 */
class Siblings {
  n = 0;
  private readonly v: Float64Array;
  /** Keys of 2^53 and more (bigints), by their index in `v` (which holds NaN). */
  private big?: Map<number, Key>;
  constructor(capacity: number) {
    this.v = new Float64Array(3 * capacity);
  }
  push(block: number, lo: Key, hi: Key): void {
    const o = 3 * this.n++;
    this.v[o] = block;
    this.put(o + 1, lo);
    this.put(o + 2, hi);
  }
  private put(o: number, k: Key): void {
    if (typeof k === 'number') this.v[o] = k;
    else {
      this.v[o] = NaN;
      (this.big ??= new Map()).set(o, k);
    }
  }
  private key(o: number): Key {
    const x = this.v[o];
    return x === x ? x : this.big!.get(o)!;
  }
  block(i: number): number {
    return this.v[3 * i];
  }
  lo(i: number): Key {
    return this.key(3 * i + 1);
  }
  hi(i: number): Key {
    return this.key(3 * i + 2);
  }
}

/** Children of a later sibling, read ahead (see Checker.preRead). */
interface PreRead {
  blocks: number[];
  p: Promise<Block[]>;
}

/** Flags of an internal btree node (at byte 4 of the node). */
const INTERNAL_FLAG = 1;

/**
 * Data blocks recounted at once: whole bitmaps, 4 MiB of counts. A data
 * device up to this size gets one count per block for the whole walk.
 */
export const DATA_WINDOW = ENTRIES_PER_BITMAP * 256;

/**
 * The data recount of a device larger than DATA_WINDOW blocks, a window at a
 * time: the walk notes which (first-seen) leaves map into each window; the
 * space-map comparison then refills the counts window by window from those
 * leaves alone. Window 0 is counted during the walk itself; each leaf is read
 * again once per other window it maps into, so the extra IO is at most about
 * one more read of the mapping leaves, and none for the leaves that map only
 * into window 0.
 */
const MAPPING_CTX = { tree: 'mapping' };

class DataWindows {
  readonly counts: RefCounts;
  private readonly leaves: Uint32Array[];
  private readonly nLeaves: Uint32Array;
  /** The last leaf noted per window (a leaf is listed once per window). */
  private readonly last: Float64Array;
  /** Blocks in use in the windows loaded so far. */
  inUse = 0;
  /** The window `counts` holds: window 0, counted by note() during the walk, to begin with. */
  private loaded = 0;
  private readonly counted: Uint8Array;

  constructor(
    readonly nrDataBlocks: number,
    readonly size: number,
  ) {
    const n = Math.ceil(nrDataBlocks / size);
    this.counts = new RefCounts(size);
    this.leaves = Array.from({ length: n }, () => new Uint32Array(16));
    this.nLeaves = new Uint32Array(n);
    this.last = new Float64Array(n).fill(-1);
    this.counted = new Uint8Array(n);
  }

  get windows(): number {
    return this.leaves.length;
  }

  isCounted(w: number): boolean {
    return this.counted[w] === 1;
  }

  /**
   * Leaf `leaf`, seen for the first time, maps data block `data` (<
   * nrDataBlocks). Window 0 is also counted here, during the walk: it is
   * loaded when the space-map comparison starts, so the leaves mapping into
   * it (usually most of them: pools allocate from the start) are not read a
   * second time. The leaf is listed all the same, should window 0 be needed
   * again after another one.
   */
  note(data: number, leaf: number): void {
    const w = Math.floor(data / this.size);
    if (w === 0) this.counts.inc(data);
    if (this.last[w] === leaf) return;
    this.last[w] = leaf;
    let a = this.leaves[w];
    const n = this.nLeaves[w];
    if (n === a.length) {
      const g = new Uint32Array(n * 2);
      g.set(a);
      a = this.leaves[w] = g;
    }
    a[n] = leaf;
    this.nLeaves[w] = n + 1;
  }

  /**
   * Fills `counts` with window w's references, re-reading its leaves (in
   * block order, a batch ahead); returns the window's first block. A leaf
   * that no longer validates (the metadata changed under the check) is
   * reported and skipped.
   */
  async load(w: number, io: ThinMetadata['io'], report: (e: unknown, leaf: number) => void, signal?: AbortSignal): Promise<number> {
    const base = w * this.size;
    if (this.loaded === w) return this.counted1(w, base);
    this.loaded = -1; // cleared below: no window until this one is complete
    this.counts.clear();
    const list = this.leaves[w].subarray(0, this.nLeaves[w]).sort();
    const end = base + this.size;
    const BATCH = 256;
    const readBatch = (i: number): Promise<Block[]> | null => {
      if (i >= list.length) return null;
      // Not Array.from(list.subarray(...)): it made an iterator result per block.
      const nrs: number[] = new Array(Math.min(BATCH, list.length - i));
      for (let j = 0; j < nrs.length; j++) nrs[j] = list[i + j];
      const p = io.read(nrs);
      p.catch(() => {});
      return p;
    };
    let next = readBatch(0);
    for (let i = 0; i < list.length; i += BATCH) {
      throwIfAborted(signal);
      const pending = next!;
      next = readBatch(i + BATCH);
      const blocks = await pending;
      for (const b of blocks) {
        try {
          const leaf = new BtreeNode(b, 8, MAPPING_CTX);
          const u32 = leaf.u32;
          const vbase = leaf.base + (leaf.valuesOffset >> 2);
          for (let k = 0; k < leaf.nrEntries; k++) {
            const data = mappingDataBlock(u32[vbase + 2 * k], u32[vbase + 2 * k + 1]);
            if (data >= base && data < end) this.counts.inc(data - base);
          }
        } catch (e) {
          report(e, b.nr);
        }
        b.done();
      }
    }
    this.loaded = w;
    return this.counted1(w, base);
  }

  /** Window w is in `counts`: its blocks in use are added to inUse the first time. */
  private counted1(w: number, base: number): number {
    if (!this.counted[w]) this.inUse += this.counts.inUse();
    this.counted[w] = 1;
    return base;
  }
}

/** "metadata snapshot (block 8): " for the held trees, nothing for the live ones. */
const pre = (label: string): string => (label ? `${label}: ` : '');
const toBig = (k: Key): bigint => (typeof k === 'bigint' ? k : BigInt(k));
const hiIncl = (hi: Key): bigint => (hi === Infinity ? TWO64M1 : toBig(hi) - 1n);

class Checker {
  readonly problems: CheckProblem[] = [];
  fatal = 0;
  nonFatal = 0;
  omitted = 0;
  private serial = 0;
  private book?: NodeBook;
  meta?: RefCounts;
  /** The data recount: a count per block, or (a large device) per window. */
  data?: RefCounts;
  dataWindows?: DataWindows;
  mappingsWalked = 0;
  mappingsTotal = 0;

  constructor(
    readonly md: ThinMetadata,
    readonly opts: CheckOptions,
    readonly nrMetadataBlocks: number,
    readonly nrDataBlocks: number,
    /** Recount references (false with a metadata snapshot or --skip-mappings). */
    readonly recount: boolean,
  ) {}

  report = (p: CheckProblem): void => {
    if (p.severity === 'fatal') this.fatal++;
    else this.nonFatal++;
    if (this.problems.length < (this.opts.maxProblems ?? 10000)) this.problems.push(p);
    else this.omitted++;
  };

  /** Reports a MetadataError as a problem; rethrows anything else (IO errors, aborts). */
  caught(e: unknown, extra: Partial<CheckProblem> = {}): void {
    if (e instanceof MetadataError) this.report(problemOf(e, extra));
    else throw e;
  }

  progress(phase: CheckPhase, done = 0, total = 0): void {
    this.opts.onProgress?.({ phase, done, total });
  }

  setupRecount(): void {
    const window = this.opts.dataWindow ?? DATA_WINDOW;
    if (!(window > 0 && window % ENTRIES_PER_BITMAP === 0)) throw new DmthinError('EINVAL', `dataWindow ${window} is not a positive multiple of ${ENTRIES_PER_BITMAP}`);
    try {
      this.book = new NodeBook(this.nrMetadataBlocks);
      if (this.recount) {
        this.meta = new RefCounts(this.nrMetadataBlocks);
        if (this.nrDataBlocks <= window) this.data = new RefCounts(this.nrDataBlocks);
        else this.dataWindows = new DataWindows(this.nrDataBlocks, window);
      }
    } catch (e) {
      if (!(e instanceof RangeError)) throw e;
      const bytes = this.nrMetadataBlocks * 14 + (this.recount ? Math.min(this.nrDataBlocks, this.opts.dataWindow ?? DATA_WINDOW) : 0);
      throw new DmthinError('ENOMEM', `checking needs about ${Math.ceil(bytes / 2 ** 20)} MiB for ${this.nrMetadataBlocks} metadata and ${this.nrDataBlocks} data blocks, which could not be allocated`, { cause: e });
    }
  }

  /**
   * Every tree is walked: the NodeBook (about 12 bytes a metadata block,
   * 7.4 MiB at 40M mappings) is dropped so that it can be freed before the
   * space-map phase, where check's memory peaks.
   */
  treesDone(): void {
    this.book = undefined;
  }

  /** A reference to a metadata block from outside a btree node (superblock, top-level leaf). */
  ref(b: number): void {
    if (this.meta && b < this.nrMetadataBlocks) this.meta.inc(b);
  }

  newWalk(kind: TreeKind, valueSize: number, onLeaf: TreeWalk['onLeaf'], devId?: number): TreeWalk {
    if (this.serial >= Math.min(this.opts.markSerials ?? MARK_SERIALS, MARK_SERIALS)) {
      // Serials of the u16 marks run out: no walk is under way, so every mark can go.
      this.book?.mark.fill(0);
      this.serial = 0;
    }
    return {
      kind,
      devId,
      serial: ++this.serial,
      validator: new TreeValidator(this.nrMetadataBlocks, valueSize, { tree: kind, ...(devId !== undefined ? { devId } : {}) }),
      faulty: false,
      depthReported: false,
      readAll: kind !== 'mapping',
      onLeaf,
    };
  }

  where(t: TreeWalk): string {
    return t.devId !== undefined ? `${t.kind} tree of device ${t.devId}` : `${t.kind} tree`;
  }

  problem(t: TreeWalk, kind: string, block: number, lo: Key, hi: Key, message: string): void {
    t.faulty = true;
    this.report({
      severity: 'fatal',
      kind,
      block,
      ...(t.devId !== undefined ? { devId: t.devId } : {}),
      tree: t.kind,
      keys: [toBig(lo), hiIncl(hi)],
      message,
    });
  }

  /**
   * Starts reading the children of an internal node not yet visited (a later
   * sibling), so that the read overlaps the check of the siblings before it.
   * Children that descend() will skip as already checked are left out. The
   * node is not validated here (descend() does that); anything odd just
   * means no read ahead.
   */
  private preRead(t: TreeWalk, block: Block): PreRead | undefined {
    const book = this.book!;
    let node: BtreeNode;
    try {
      node = new BtreeNode(block, t.validator.valueSize, { tree: t.kind });
    } catch {
      return undefined;
    }
    const want: number[] = [];
    for (let k = 0; k < node.nrEntries; k++) {
      const hiWord = node.u32[node.base + (node.valuesOffset >> 2) + 2 * k + 1];
      const c = node.u32[node.base + (node.valuesOffset >> 2) + 2 * k];
      if (hiWord !== 0 || c >= this.nrMetadataBlocks || book.mark[c] === t.serial) continue;
      if (!t.readAll && book.mappingNode.has(c)) continue; // probably checked already: descend() decides
      want.push(c);
    }
    if (want.length === 0) return undefined;
    const p = this.md.io.read(want);
    p.catch(() => {}); // descend() reads again on failure and reports that
    return { blocks: want, p };
  }

  /** Blocks `want`, from a read ahead where it has them, else read now. */
  private async readSiblings(want: number[], pre: PreRead | undefined): Promise<Block[]> {
    if (!pre) return this.md.io.read(want);
    let got: Block[] | undefined;
    try {
      got = await pre.p;
    } catch {
      got = undefined;
    }
    if (!got) return this.md.io.read(want);
    const have = new Map<number, Block>();
    for (let i = 0; i < pre.blocks.length; i++) have.set(pre.blocks[i], got[i]);
    const missing = want.filter((b) => !have.has(b));
    if (missing.length) {
      const more = await this.md.io.read(missing);
      for (let i = 0; i < missing.length; i++) have.set(missing[i], more[i]);
    }
    return want.map((b) => have.get(b)!);
  }

  /** Walks one tree from its root. Returns the number of leaf entries below it. */
  async walk(t: TreeWalk, root: number): Promise<number> {
    if (root >= this.nrMetadataBlocks) {
      this.rootBeyond(t, root);
      return 0;
    }
    const items = new Siblings(1);
    items.push(root, 0, Infinity);
    const r = await this.descend(t, items, 0);
    return r.entries;
  }

  /** A tree's root outside the metadata device (a fatal block-range problem). */
  rootBeyond(t: TreeWalk, root: number, label = ''): void {
    this.problem(t, 'block-range', root, 0, Infinity, `${pre(label)}root of the ${this.where(t)} is block ${root}, beyond the metadata device (${this.nrMetadataBlocks} blocks)`);
  }

  /**
   * A fault of a node of tree t, reached under [lo, hi). Leaf depths follow the
   * walkers' rule (TreeValidator): the first leaf met, in key order, sets the
   * depth, and the first node out of line with it is named; one such problem
   * per tree, not one per node that disagrees with it.
   */
  private nodeFault(t: TreeWalk, e: unknown, lo: Key, hi: Key): void {
    t.faulty = true;
    if (e instanceof MetadataError && e.kind === 'depth') {
      if (t.depthReported) return;
      t.depthReported = true;
    }
    this.caught(e, { keys: [toBig(lo), hiIncl(hi)] });
  }

  /**
   * The leaves of a shared subtree skipped as checked (height h) are at
   * depth + h: checked against the tree's leaf depth, in key order (see descend).
   */
  private skippedDepth(t: TreeWalk, items: Siblings, j: number, depth: number, h: number): void {
    try {
      t.validator.noteLeafDepth(depth + h, items.block(j), h > 0);
    } catch (e) {
      this.nodeFault(t, e, items.lo(j), items.hi(j));
    }
  }

  /**
   * Validates a set of sibling nodes (read in one batch) and everything below
   * them. Returns their leaf entries and their height (-1 when unknown).
   */
  private async descend(t: TreeWalk, items: Siblings, depth: number, pre?: PreRead): Promise<{ entries: number; height: number }> {
    const book = this.book!;
    throwIfAborted(this.opts.signal);
    let entries = 0;
    let height = -1;
    // The siblings to read: their blocks, and their index in `items`.
    const want: number[] = [];
    const at: number[] = [];
    // Shared subtrees skipped: their index in `items` and height. Their leaf depth is checked in
    // key order among the siblings read, so that the walk meets leaves in the order the walkers do.
    const skipped: number[] = [];
    let nextSkipped = 0;
    const skippedUpTo = (end: number): void => {
      for (; nextSkipped < skipped.length && skipped[nextSkipped] < end; nextSkipped += 2) this.skippedDepth(t, items, skipped[nextSkipped], depth, skipped[nextSkipped + 1]);
    };
    for (let j = 0; j < items.n; j++) {
      const b = items.block(j);
      if (book.mark[b] === t.serial) {
        this.problem(t, 'cycle', b, items.lo(j), items.hi(j), `block ${b} is reached twice in the ${this.where(t)} (a cycle, or a node shared inside one tree)`);
        continue;
      }
      book.mark[b] = t.serial;
      if (!t.readAll && book.mappingNode.has(b) && book.within(b, items.lo(j), items.hi(j)) && (depth === 0 || book.filled.has(b))) {
        // Shared with a tree already checked, under a range containing this one's: its keys fit
        // (and, below a root, its fill: a node checked only as a root was exempt from it).
        const h = book.height[b];
        skipped.push(j, h);
        if (book.faulty.has(b)) t.faulty = true;
        entries += book.entriesOf(b);
        height = Math.max(height, h);
        continue;
      }
      want.push(b);
      at.push(j);
    }
    if (want.length === 0) {
      skippedUpTo(Infinity);
      return { entries, height };
    }
    let blocks: Block[];
    try {
      blocks = await this.readSiblings(want, pre);
    } catch (e) {
      skippedUpTo(Infinity);
      t.faulty = true;
      this.caught(e, { tree: t.kind, ...(t.devId !== undefined ? { devId: t.devId } : {}) });
      return { entries, height };
    }
    // The next internal sibling's children are read while this one's subtree is checked.
    let nextPre: PreRead | undefined;
    let nextPreAt = -1;
    for (let i = 0; i < want.length; i++) {
      const j = at[i];
      const b = want[i];
      const itLo = items.lo(j);
      const itHi = items.hi(j);
      skippedUpTo(j);
      let node: BtreeNode;
      const faultyBefore = t.faulty;
      t.faulty = false;
      try {
        node = t.validator.visit(blocks[i], itLo, itHi, depth);
      } catch (e) {
        blocks[i].done();
        this.nodeFault(t, e, itLo, itHi);
        continue;
      }
      const first = !book.validated.has(b);
      if (depth > 0) book.filled.add(b);
      let sub = 0;
      let h: number;
      if (node.isLeaf) {
        h = 0;
        sub = node.nrEntries;
        try {
          t.onLeaf(node, first);
        } catch (e) {
          this.caught(e, { tree: t.kind, ...(t.devId !== undefined ? { devId: t.devId } : {}) });
          t.faulty = true;
        }
        blocks[i].done(); // its buffer is reused once the batch's last block is done
      } else {
        const children = new Siblings(node.nrEntries);
        for (let k = 0; k < node.nrEntries; k++) {
          const lo = node.keyAt(k);
          const hi = k + 1 < node.nrEntries ? node.keyAt(k + 1) : itHi;
          let child: number;
          try {
            child = node.value64(k);
            t.validator.checkPointer(child, b);
          } catch (e) {
            this.caught(e, { keys: [toBig(lo), hiIncl(hi)] });
            t.faulty = true;
            continue;
          }
          if (first) this.ref(child);
          children.push(child, lo, hi);
        }
        const mine = nextPreAt === i ? nextPre : undefined;
        nextPre = undefined;
        nextPreAt = -1;
        for (let k = i + 1; k < want.length; k++) {
          if (blocks[k].u32(4) !== INTERNAL_FLAG) continue;
          nextPre = this.preRead(t, blocks[k]);
          nextPreAt = k;
          break;
        }
        blocks[i].done();
        const r = await this.descend(t, children, depth + 1, mine);
        sub = r.entries;
        h = r.height < 0 ? 0 : r.height + 1;
      }
      if (first) {
        book.validated.add(b);
        if (t.kind === 'mapping') book.mappingNode.add(b);
        book.set(b, itLo, itHi, h, sub);
        if (t.faulty) book.faulty.add(b);
      } else {
        // Valid under both ranges: its keys lie in their intersection.
        book.narrow(b, itLo, itHi);
      }
      t.faulty ||= faultyBefore;
      entries += sub;
      height = Math.max(height, h);
    }
    skippedUpTo(Infinity);
    return { entries, height };
  }
}

interface TreesResult {
  /** Devices in the details tree. */
  devices: number;
  mappings: number;
}

/**
 * Keys of a tree in the order its walk met them, each with one number: the
 * details tree's ids with their mapped_blocks, the top-level tree's with
 * their roots. Typed arrays, not a Map of objects: 70,000 devices cost 16
 * bytes each. Looked up by binary search, so only for a walk that found no
 * fault (its keys are then strictly increasing).
 */
class KeyedColumn {
  private keys = new Float64Array(1024);
  private vals = new Float64Array(1024);
  size = 0;
  push(key: number, value: number): void {
    this.keys = grow(this.keys, this.size + 1);
    this.vals = grow(this.vals, this.size + 1);
    this.keys[this.size] = key;
    this.vals[this.size++] = value;
  }
  key(i: number): number {
    return this.keys[i];
  }
  value(i: number): number {
    return this.vals[i];
  }
  /** Index of `key`, or -1. */
  indexOf(key: number): number {
    return sortedIndexOf(this.keys, this.size, key);
  }
}

/** The trees of one superblock (live, or the held snapshot's copy). */
async function checkTrees(c: Checker, sb: Superblock, opts: CheckOptions, label: string): Promise<TreesResult | null> {
  const devices = new KeyedColumn(); // id -> mapped_blocks
  c.progress('details');
  c.ref(sb.deviceDetailsRoot);
  const dw = c.newWalk('details', DEVICE_DETAILS_SIZE, (leaf) => {
    for (let i = 0; i < leaf.nrEntries; i++) {
      const d = parseDeviceDetails(leaf, i);
      devices.push(d.devId, d.mappedBlocks);
    }
  });
  await c.walk(dw, sb.deviceDetailsRoot);

  c.progress('mapping-top');
  c.ref(sb.dataMappingRoot);
  const roots = new KeyedColumn(); // id -> root
  const tw = c.newWalk('mapping-top', 8, (leaf, first) => {
    for (let i = 0; i < leaf.nrEntries; i++) {
      const id = leaf.key(i);
      const root = leaf.value64(i);
      roots.push(id, root);
      // The kernel counts a bottom root once per top-level leaf that names it.
      if (first) c.ref(root);
    }
  });
  await c.walk(tw, sb.dataMappingRoot);
  if (dw.faulty || tw.faulty) {
    // Without a sound device list the rest would report noise; stop here.
    c.report({
      severity: 'fatal',
      kind: 'check-incomplete',
      tree: dw.faulty ? 'details' : 'mapping-top',
      message: `${pre(label)}the device list could not be read, so the mapping trees${c.recount ? ' and space maps' : ''} were not checked`,
    });
    return null;
  }

  for (let i = 0; i < devices.size; i++) {
    const id = devices.key(i);
    if (roots.indexOf(id) < 0) {
      c.report({ severity: 'fatal', kind: 'device-mismatch', devId: id, tree: 'mapping-top', message: `${pre(label)}device ${id} is in the details tree but has no mapping tree` });
    }
  }
  for (let i = 0; i < roots.size; i++) {
    const id = roots.key(i);
    if (devices.indexOf(id) < 0) {
      c.report({ severity: 'fatal', kind: 'device-mismatch', devId: id, tree: 'details', message: `${pre(label)}device ${id} has a mapping tree but no entry in the details tree` });
    }
  }
  if (opts.skipMappings) {
    // The mapping trees are not walked, but a root outside the metadata device is a
    // fault of the top-level tree's values, which were read: the kernel (and ls) could
    // not open that device's tree. Reported as the full check's walk would.
    for (let i = 0; i < roots.size; i++) {
      if (roots.value(i) >= c.nrMetadataBlocks) c.rootBeyond(c.newWalk('mapping', 8, () => {}, roots.key(i)), roots.value(i), label);
    }
    return { devices: devices.size, mappings: 0 };
  }
  for (let i = 0; i < devices.size; i++) c.mappingsTotal += devices.value(i);

  c.progress('mappings', c.mappingsWalked, c.mappingsTotal);
  let mappings = 0;
  // In id order: the walk found the top-level tree's keys strictly increasing.
  for (let t = 0; t < roots.size; t++) {
    const id = roots.key(t);
    throwIfAborted(opts.signal);
    let n = 0;
    const w = c.newWalk(
      'mapping',
      8,
      (leaf, first) => {
        if (!first) return;
        // First time this leaf is seen: count its data references (once per leaf, as the kernel does).
        const u32 = leaf.u32;
        const vbase = leaf.base + (leaf.valuesOffset >> 2);
        let bad = -1;
        let badCount = 0;
        for (let i = 0; i < leaf.nrEntries; i++) {
          const data = mappingDataBlock(u32[vbase + 2 * i], u32[vbase + 2 * i + 1]);
          if (data >= c.nrDataBlocks) {
            if (bad < 0) bad = i;
            badCount++;
          } else if (c.dataWindows) c.dataWindows.note(data, leaf.nr);
          else c.data?.inc(data);
        }
        n += leaf.nrEntries;
        c.mappingsWalked += leaf.nrEntries;
        c.progress('mappings', c.mappingsWalked, c.mappingsTotal);
        if (bad >= 0) {
          const data = mappingDataBlock(u32[vbase + 2 * bad], u32[vbase + 2 * bad + 1]);
          const k = leaf.keyAt(bad);
          c.report({
            severity: 'fatal',
            kind: 'data-range',
            block: leaf.nr,
            devId: id,
            tree: 'mapping',
            keys: [toBig(k), toBig(k)],
            message: `${pre(label)}device ${id}: block ${k} maps to data block ${data}, beyond the data device (${c.nrDataBlocks} blocks) (leaf ${leaf.nr}${badCount > 1 ? `; ${badCount} such mappings in this leaf` : ''})`,
          });
        }
      },
      id,
    );
    const entries = await c.walk(w, roots.value(t));
    mappings += entries;
    const di = devices.indexOf(id);
    const mapped = di < 0 ? entries : devices.value(di);
    if (!w.faulty && mapped !== entries) {
      c.report({
        severity: 'non-fatal',
        kind: 'mapped-count',
        devId: id,
        tree: 'details',
        message: `${pre(label)}device ${id}: the details tree says ${mapped} mapped blocks, its mapping tree has ${entries}`,
      });
    }
  }
  return { devices: devices.size, mappings };
}

function emptyCounts(md: ThinMetadata | null): CheckCounts {
  return {
    devices: 0,
    mappings: 0,
    metadataBlocksInUse: 0,
    dataBlocksInUse: 0,
    metadataBlocks: md?.nrMetadataBlocks ?? 0,
    dataBlocks: md?.nrDataBlocks ?? 0,
    transactionId: md?.superblock.transactionId ?? 0n,
    heldRoot: md?.liveSuperblock.heldRoot ?? 0,
  };
}

/**
 * The verdict `dmthin check` exits by (thin_check's rule): a fatal problem
 * fails; a non-fatal one fails unless ignoreNonFatalErrors.
 */
export function reportFails(r: CheckReport, ignoreNonFatalErrors = false): boolean {
  const what = 'a CheckReport (from checkMetadata or openFailureReport)';
  check.object(r, 'report', what);
  // Counts it cannot read would make any object "pass".
  for (const k of ['fatal', 'nonFatal'] as const) check.integer(r[k], `report.${k} (report must be ${what})`, 0);
  check.boolean(ignoreNonFatalErrors, 'ignoreNonFatalErrors');
  return r.fatal > 0 || (r.nonFatal > 0 && !ignoreNonFatalErrors);
}

/** A report for metadata that could not even be opened (what ThinMetadata.open threw). */
export function openFailureReport(e: MetadataError | DmthinError): CheckReport {
  check.instance(e, DmthinError, 'openFailureReport error (what ThinMetadata.open threw)');
  const p: CheckProblem =
    e instanceof MetadataError
      ? problemOf(e, { tree: (e as MetadataError & { tree?: string }).tree ?? 'superblock' })
      : { severity: 'fatal', kind: 'open', message: e.message };
  return { problems: [p], fatal: 1, nonFatal: 0, omitted: 0, spaceMapsChecked: false, counts: emptyCounts(null) };
}

/**
 * Checks opened metadata. With a metadata snapshot (`md.metadataSnap`), the
 * held trees are checked and the space maps are not (they describe the live
 * pool, which keeps changing). Throws only AbortError and IO errors; every
 * fault in the metadata is a problem in the report.
 */
export async function checkMetadata(md: ThinMetadata, opts: CheckOptions = {}): Promise<CheckReport> {
  check.instance(md, ThinMetadata, 'metadata');
  check.options(opts, 'checkMetadata options');
  opts ??= {}; // null, as Node's own APIs take it
  check.signal(opts.signal);
  check.callback(opts.onProgress, 'onProgress');
  if (opts.maxProblems !== undefined) check.integer(opts.maxProblems, 'maxProblems', 0);
  check.boolean(opts.superblockOnly, 'superblockOnly');
  check.boolean(opts.skipMappings, 'skipMappings');
  throwIfAborted(opts.signal);
  const live = md.liveSuperblock;
  const viaSnap = md.metadataSnap !== null;
  const recount = !viaSnap && !opts.skipMappings && !opts.superblockOnly;
  const c = new Checker(md, opts, md.nrMetadataBlocks, md.nrDataBlocks, recount);
  const counts = emptyCounts(md);
  const done = (spaceMapsChecked: boolean): CheckReport => ({
    problems: c.problems,
    fatal: c.fatal,
    nonFatal: c.nonFatal,
    omitted: c.omitted,
    spaceMapsChecked,
    counts,
  });

  // Superblock: ThinMetadata.open validated checksum, magic, version and block sizes.
  c.progress('superblock');
  // Sizes (metadata space map within the device and its index block, data
  // space map within what its bitmaps can count) were checked by open().
  // nr_data_blocks 0 is not a fault: the kernel formats new metadata with an
  // empty data space map and grows it at the pool's first resume; a mapping
  // then is out of range, found below.
  for (const [what, b] of [
    ['device-details root', md.superblock.deviceDetailsRoot],
    ['mapping root', md.superblock.dataMappingRoot],
    ...(viaSnap ? [] : ([['metadata space-map index', live.metadataSpaceMap.bitmapRoot], ['data space-map index root', live.dataSpaceMap.bitmapRoot], ['metadata ref-count root', live.metadataSpaceMap.refCountRoot], ['data ref-count root', live.dataSpaceMap.refCountRoot], ...(live.heldRoot ? [['held root', live.heldRoot]] : [])] as [string, number][])),
  ] as [string, number][]) {
    if (b === 0 || b >= md.nrMetadataBlocks) {
      c.report({
        severity: 'fatal',
        kind: 'block-range',
        block: md.superblock.location,
        tree: 'superblock',
        message: `superblock: ${what} is block ${b}, ${b === 0 ? 'the superblock itself' : `beyond the metadata device (${md.nrMetadataBlocks} blocks)`}`,
      });
    }
  }
  if (c.fatal > 0 || opts.superblockOnly) return done(false);

  c.setupRecount();
  c.ref(0);
  const label = viaSnap ? `metadata snapshot (block ${md.metadataSnap})` : '';
  const trees = await checkTrees(c, md.superblock, opts, label);
  if (!trees) return done(false);
  counts.devices = trees.devices;
  counts.mappings = trees.mappings;

  if (!viaSnap && live.heldRoot !== 0) {
    c.progress('metadata-snap');
    c.ref(live.heldRoot);
    let held: Superblock | null = null;
    try {
      const [hb] = await md.io.read([live.heldRoot]);
      held = parseSuperblock(hb);
    } catch (e) {
      c.caught(e, { tree: 'superblock', block: live.heldRoot });
    }
    if (held) {
      const bad = [held.deviceDetailsRoot, held.dataMappingRoot].find((b) => b === 0 || b >= md.nrMetadataBlocks);
      if (held.dataBlockSize !== live.dataBlockSize) {
        // A pool's data block size never changes (dump -m would print its mappings in other units).
        c.report({
          severity: 'fatal',
          kind: 'block-size',
          block: live.heldRoot,
          tree: 'superblock',
          message: `metadata snapshot superblock (block ${live.heldRoot}) says data blocks of ${held.dataBlockSize} sectors, the live superblock ${live.dataBlockSize}`,
        });
      }
      if (bad !== undefined) {
        c.report({ severity: 'fatal', kind: 'block-range', block: live.heldRoot, tree: 'superblock', message: `metadata snapshot superblock (block ${live.heldRoot}) names root ${bad}, outside the metadata device` });
      } else if (!(await checkTrees(c, held, opts, `metadata snapshot (block ${live.heldRoot})`))) {
        return done(false);
      }
    }
  }
  c.treesDone();
  if (!recount) return done(false);

  // After a structural fault some subtree was not walked: leaks and high counts prove nothing then.
  // Asked at each comparison: a fault in the data space map's index (found below) leaves its nodes
  // and bitmaps uncounted as metadata references too.
  const partial = (): boolean => c.fatal > 0;
  // Data space map: index tree nodes and bitmaps are metadata references too.
  const meta = c.meta!;
  const windows = c.dataWindows;
  const data = windows ? windows.counts : c.data!;
  if (!windows) counts.dataBlocksInUse = data.inUse();
  const loadWindow = windows
    ? (block: number): Promise<number> =>
        windows.load(Math.floor(block / windows.size), md.io, (e, leaf) => c.caught(e, { block: leaf, tree: 'mapping' }), opts.signal)
    : undefined;
  c.progress('data-sm');
  const dataIndex = await loadIndex(md.io, 'data', live.dataSpaceMap, md.nrMetadataBlocks, meta, c.report, opts.signal);
  // The ref-count trees' nodes count once each; walked now so the metadata recount is complete.
  const overflowOk = { data: true, metadata: true };
  for (const [kind, root] of [
    ['data', live.dataSpaceMap.refCountRoot],
    ['metadata', live.metadataSpaceMap.refCountRoot],
  ] as const) {
    try {
      await countTreeNodes(md.io, root, 'ref-count', 4, md.nrMetadataBlocks, meta, opts.signal);
    } catch (e) {
      c.caught(e, { tree: 'ref-count', message: `${kind} space map ref-count tree: ${(e as Error).message}` });
      overflowOk[kind] = false;
    }
  }
  // Each space map against its recount, then its nr_allocated hint.
  const compare = async (kind: 'data' | 'metadata', index: NonNullable<typeof dataIndex>, counted: RefCounts): Promise<void> => {
    const root = kind === 'data' ? live.dataSpaceMap : live.metadataSpaceMap;
    const r = await compareSpaceMap(md.io, kind, root, index, md.nrMetadataBlocks, counted, c.report, {
      signal: opts.signal,
      overflowUnreadable: !overflowOk[kind],
      partial: partial(),
      onProgress: (d, t) => c.progress(kind === 'data' ? 'data-sm' : 'metadata-sm', d, t),
      ...(kind === 'data' && loadWindow ? { loadWindow } : {}),
    });
    if (!partial()) checkNrAllocated(c, kind, root.nrAllocated, root.nrBlocks, r.diskInUse);
  };
  if (dataIndex) await compare('data', dataIndex, data);
  if (windows) {
    // Windows the comparison did not reach (an unreadable index or bitmap) are counted all the same.
    for (let w = 0; w < windows.windows; w++) if (!windows.isCounted(w)) await loadWindow!(w * windows.size);
    counts.dataBlocksInUse = windows.inUse;
  }
  c.progress('metadata-sm');
  const metaIndex = await loadIndex(md.io, 'metadata', live.metadataSpaceMap, md.nrMetadataBlocks, meta, c.report, opts.signal);
  counts.metadataBlocksInUse = meta.inUse();
  if (metaIndex) await compare('metadata', metaIndex, meta);
  return done(dataIndex !== null && metaIndex !== null);
}

/**
 * nr_allocated is a hint (free-space reporting); a value below what the
 * bitmaps count understates use. thin_restore 0.9.0 writes the metadata one
 * a block too high in every image, which overstates use and is accepted.
 */
function checkNrAllocated(c: Checker, kind: 'data' | 'metadata', nrAllocated: number, nrBlocks: number, diskInUse: number): void {
  if (nrAllocated < diskInUse || nrAllocated > nrBlocks) {
    c.report({
      severity: 'non-fatal',
      kind: 'sm-nr-allocated',
      block: 0,
      tree: `${kind}-sm`,
      message: `superblock: the ${kind} space map's nr_allocated is ${nrAllocated}, but its bitmaps count ${diskInUse} blocks in use${nrAllocated > nrBlocks ? ` (and it has only ${nrBlocks} blocks)` : ''}`,
    });
  }
}

