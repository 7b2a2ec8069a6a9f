/**
 * Checking a space map against a recount: the expected reference count of
 * every block (RefCounts, filled by whoever walked the trees) compared with
 * what the on-disk bitmaps and overflow ref-count tree say. Nothing here
 * knows about thin provisioning. Problems are collected, never thrown.
 */
import { MetadataError, throwIfAborted } from '../errors';
import { BtreeNode, walkLeaves } from './btree';
import type { Block, BlockSource } from './block-source';
import { ENTRIES_PER_BITMAP, IndexEntry, MAX_METADATA_BITMAPS, SpaceMap, SpaceMapKind, SpaceMapRoot } from './space-map';
import { BlockType, verifyChecksum } from './checksum';
import { MAX_SAFE_HI, TWO32 } from './words';

/** Fatal problems make the metadata unusable; non-fatal ones (e.g. leaked blocks) do not. */
export type ProblemSeverity = 'fatal' | 'non-fatal';

/** One finding of a check. `kind` is a stable string (see the README's list). */
export interface CheckProblem {
  /** Fatal or non-fatal. */
  severity: ProblemSeverity;
  /** What was found (a CorruptionKind, or a check's own kind such as a leak). */
  kind: string;
  /** Metadata block (or, in a data space-map problem, data block) it is about; the first of a run. */
  block?: number;
  /** Consecutive blocks with the same problem, when more than one. */
  nrBlocks?: number;
  /** The thin device whose tree it was, when there is one. */
  devId?: number;
  /** 'superblock', 'details', 'mapping-top', 'mapping', 'metadata-sm', 'data-sm', 'data-sm-index', 'ref-count'... */
  tree?: string;
  /** Inclusive key range the problem applies to (a node's range as its parent gives it); u64s, so bigints. */
  keys?: [bigint, bigint];
  /** What is wrong, for a person. */
  message: string;
}

export type ProblemSink = (p: CheckProblem) => void;

/** The problem a MetadataError describes (always fatal: the reader refuses such metadata). */
export function problemOf(e: MetadataError, extra: Partial<CheckProblem> = {}): CheckProblem {
  const f = e as MetadataError & { devId?: number; tree?: string };
  return {
    severity: 'fatal',
    kind: e.kind,
    ...(e.block !== undefined ? { block: e.block } : {}),
    ...(f.devId !== undefined ? { devId: f.devId } : {}),
    ...(f.tree !== undefined ? { tree: f.tree } : {}),
    ...extra,
    message: e.message,
  };
}

/**
 * Expected reference counts, 1 byte per block: counts up to 254 in a
 * Uint8Array, 255 marks a count kept in a Map (rare: a block referenced 255
 * times or more). Sized by the number of blocks, never by what references them.
 */
export class RefCounts {
  readonly counts: Uint8Array;
  private readonly big = new Map<number, number>();
  constructor(readonly nrBlocks: number) {
    // Whole 16-entry groups, so a bitmap word's 16 counts can be read as four u32s.
    this.counts = new Uint8Array(Math.ceil(nrBlocks / 16) * 16);
  }
  inc(b: number): void {
    const c = this.counts[b];
    if (c < 254) this.counts[b] = c + 1;
    else if (c === 254) {
      this.counts[b] = 255;
      this.big.set(b, 255);
    } else this.big.set(b, this.big.get(b)! + 1);
  }
  get(b: number): number {
    const c = this.counts[b];
    return c === 255 ? this.big.get(b)! : c;
  }
  /** Every count back to 0 (a window of a large device is refilled for the next). */
  clear(): void {
    this.counts.fill(0);
    this.big.clear();
  }
  /** Blocks with a count above 0. */
  inUse(): number {
    // Eight counts per step, skipping zero words: a data device of 2^32
    // blocks is mostly unreferenced. Counts past nrBlocks are always 0.
    const c = this.counts;
    const w = new Uint32Array(c.buffer, c.byteOffset, c.length / 4); // not >>> 2: the length can be 2^32
    let n = 0;
    for (let i = 0; i < w.length; i += 2) {
      if ((w[i] | w[i + 1]) === 0) continue;
      const b = i * 4;
      for (let k = b; k < b + 8; k++) if (c[k] !== 0) n++;
    }
    return n;
  }
}

/** Counts every node of a space map's own btree (index or ref-count tree) as one reference. */
export async function countTreeNodes(
  io: BlockSource,
  root: number,
  tree: string,
  valueSize: number,
  nrMetadataBlocks: number,
  meta: RefCounts,
  signal?: AbortSignal,
  onLeaf?: (leaf: BtreeNode) => void,
): Promise<void> {
  // onLeaf reads a leaf before the walk goes on: transient, so the walk reuses its buffers.
  for await (const leaf of walkLeaves(io, root, { tree, valueSize, nrMetadataBlocks, signal, onNode: (n) => meta.inc(n.nr), transient: true })) onLeaf?.(leaf);
}


/** Index entry i of an index-block or index-tree leaf value at byte `off`. */
function indexEntryAt(buf: Buffer, off: number): IndexEntry | null {
  const hi = buf.readUInt32LE(off + 4);
  if (hi >= MAX_SAFE_HI) return null;
  return { blocknr: buf.readUInt32LE(off) + hi * TWO32, nrFree: buf.readUInt32LE(off + 8), noneFreeBefore: buf.readUInt32LE(off + 12) };
}

export interface SpaceMapCheckOptions {
  /** Cancels the work, which then rejects with AbortError. */
  signal?: AbortSignal;
  /** Bitmaps compared so far, of all. */
  onProgress?: (done: number, total: number) => void;
  /**
   * The recount is incomplete (a faulty subtree was not walked): report only
   * counts below the references, which missing references cannot explain.
   */
  partial?: boolean;
  /** The ref-count tree is known to be unreadable (already reported): do not walk it. */
  overflowUnreadable?: boolean;
  /**
   * `expected` holds the counts of one window of blocks only (a data device
   * too large for a count per block): called with a block outside the
   * current window, it refills `expected` with the counts of the window
   * holding that block and returns the window's first block. Windows are
   * whole bitmaps (a multiple of 16,320 blocks).
   */
  loadWindow?: (block: number) => Promise<number>;
}

/** Coalesces per-block findings of one kind into runs of consecutive blocks. */
class RunReporter {
  private kind = '';
  private severity: ProblemSeverity = 'fatal';
  private first = -1;
  private n = 0;
  private detail = '';
  constructor(
    private readonly sink: ProblemSink,
    private readonly sm: SpaceMapKind,
  ) {}
  add(kind: string, severity: ProblemSeverity, block: number, detail: string): void {
    if (this.n > 0 && kind === this.kind && block === this.first + this.n && detail === this.detail) {
      this.n++;
      return;
    }
    this.flush();
    this.kind = kind;
    this.severity = severity;
    this.first = block;
    this.n = 1;
    this.detail = detail;
  }
  flush(): void {
    if (this.n === 0) return;
    const what = this.n === 1 ? `${this.sm} block ${this.first}` : `${this.sm} blocks ${this.first}..${this.first + this.n - 1} (${this.n} blocks)`;
    this.sink({
      severity: this.severity,
      kind: this.kind,
      block: this.first,
      ...(this.n > 1 ? { nrBlocks: this.n } : {}),
      tree: `${this.sm}-sm`,
      message: `${what}: ${this.detail}`,
    });
    this.n = 0;
  }
}

/**
 * Verdict on one block. `disk` is what the space map says, `want` the recount.
 * A count of 0 or too low on disk for a block in use is fatal (the kernel
 * would hand the block out again while it is in use); a count for an
 * unreferenced block is a leak and a count above the references overstates
 * use (both non-fatal).
 */
const times = (n: number): string => (n === 1 ? 'once' : `${n} times`);

function verdict(disk: number, want: number): [string, ProblemSeverity, string] | null {
  if (disk === want) return null;
  if (disk === 0) return ['sm-in-use-counted-free', 'fatal', `in use (${want} reference${want > 1 ? 's' : ''}) but counted free: the kernel would hand it out again and overwrite live data`];
  if (disk < want) return ['sm-count-low', 'fatal', `counted ${disk} but referenced ${times(want)}: it would be freed while still in use`];
  if (want === 0) return ['sm-leak', 'non-fatal', `counted ${disk} but not referenced (leaked)`];
  return ['sm-count-high', 'non-fatal', `counted ${disk} but referenced ${times(want)} (overstates use)`];
}

/**
 * Reads a space map's index entries, counting the blocks it occupies (index
 * block, or index-tree nodes, and every bitmap) into `meta`. Returns null
 * (after reporting) when the index cannot be read.
 */
export async function loadIndex(
  io: BlockSource,
  kind: SpaceMapKind,
  root: SpaceMapRoot,
  nrMetadataBlocks: number,
  meta: RefCounts,
  sink: ProblemSink,
  signal?: AbortSignal,
): Promise<IndexEntry[] | null> {
  const tree = `${kind}-sm`;
  const n = Math.ceil(root.nrBlocks / ENTRIES_PER_BITMAP);
  const out: IndexEntry[] = [];
  /** The block holding each entry of `out`, and the location as read (a u64 may pass 2^53): for messages. */
  const holder: number[] = [];
  const raw: bigint[] = [];
  const entry = (data: Buffer, off: number, block: number): void => {
    out.push(indexEntryAt(data, off) ?? { blocknr: Infinity, nrFree: 0, noneFreeBefore: 0 });
    holder.push(block);
    raw.push(data.readBigUInt64LE(off));
  };
  const bad = (msg: string, block?: number) =>
    sink({ severity: 'fatal', kind: 'sm-index', ...(block !== undefined ? { block } : {}), tree, message: `${kind} space map: ${msg}` });
  try {
    if (kind === 'metadata') {
      if (n > MAX_METADATA_BITMAPS) {
        bad(`${n} bitmaps exceed the ${MAX_METADATA_BITMAPS} its index block can hold`);
        return null;
      }
      const ib = root.bitmapRoot;
      if (ib >= nrMetadataBlocks) {
        bad(`index block ${ib} is beyond the metadata device (${nrMetadataBlocks} blocks)`, ib);
        return null;
      }
      meta.inc(ib);
      const [b] = await io.read([ib]);
      verifyChecksum(b, BlockType.MetadataIndex, { tree });
      const self = b.data.readUInt32LE(8) + b.data.readUInt32LE(12) * TWO32;
      if (self !== ib) {
        bad(`index block ${ib} says it is block ${self}`, ib);
        return null;
      }
      for (let i = 0; i < n; i++) entry(b.data, 16 + 16 * i, ib);
    } else {
      let expect = 0;
      let keyError: string | null = null;
      await countTreeNodes(io, root.bitmapRoot, 'data-sm-index', 16, nrMetadataBlocks, meta, signal, (leaf) => {
        for (let i = 0; i < leaf.nrEntries; i++) {
          const k = leaf.keyAt(i);
          // eslint-disable-next-line eqeqeq
          if (k != expect) keyError ??= `index tree has key ${k} where ${expect} was expected (block ${leaf.nr})`;
          entry(leaf.data, leaf.valuesOffset + 16 * i, leaf.nr);
          expect++;
          if (expect > n) break;
        }
      });
      if (keyError) {
        bad(keyError);
        return null;
      }
      if (out.length !== n) {
        bad(`index tree has ${out.length} bitmaps, ${n} expected for ${root.nrBlocks} blocks`);
        return null;
      }
    }
  } catch (e) {
    if (e instanceof MetadataError) {
      sink(problemOf(e, { tree: e.tree ?? tree }));
      return null;
    }
    throw e;
  }
  let ok = true;
  out.forEach((ie, i) => {
    if (!(ie.blocknr < nrMetadataBlocks)) {
      bad(`bitmap ${i} is at block ${raw[i]} (its index entry in block ${holder[i]}), beyond the metadata device (${nrMetadataBlocks} blocks)`, holder[i]);
      ok = false;
    } else meta.inc(ie.blocknr);
  });
  return ok ? out : null;
}

/** OverflowCursor.peek: no entry for the block. */
const ABSENT = -1;
/** OverflowCursor.peek: the next leaf must be read (call seek). */
const MORE = -2;

/** Key-ordered cursor over a ref-count tree's (block, count) entries. */
class OverflowCursor {
  private leaf: BtreeNode | null = null;
  private i = 0;
  private done = false;
  private readonly it: AsyncGenerator<BtreeNode>;
  constructor(io: BlockSource, root: number, nrMetadataBlocks: number, signal?: AbortSignal) {
    // Transient: a leaf is never read once the next one is asked for.
    this.it = walkLeaves(io, root, { tree: 'ref-count', valueSize: 4, nrMetadataBlocks, signal, transient: true });
  }
  /**
   * seek() without a promise while the current leaf lasts: the count of b,
   * ABSENT when the tree has no entry for b, or MORE when the next leaf must
   * be read first (then call seek). Blocks shared by snapshots all have
   * overflow counts, so this runs once per data block: a promise and an
   * object each made a fifth of check's time garbage collection.
   */
  peek(b: number, skipped: (k: number, v: number) => void): number {
    if (this.done) return ABSENT;
    const leaf = this.leaf;
    if (!leaf) return MORE;
    const u32 = leaf.u32;
    const kb = leaf.base + 8;
    const vb = leaf.base + (leaf.valuesOffset >> 2);
    while (this.i < leaf.nrEntries) {
      const i = this.i;
      const hi = u32[kb + 2 * i + 1];
      const key = hi >= MAX_SAFE_HI ? Number.MAX_SAFE_INTEGER : u32[kb + 2 * i] + hi * TWO32;
      const value = u32[vb + i];
      if (key === b) {
        this.i++;
        return value;
      }
      if (key > b) return ABSENT;
      skipped(key, value);
      this.i++;
    }
    return MORE;
  }

  /** The next entry with key >= b; entries below b are passed to `skipped`. */
  async seek(b: number, skipped: (k: number, v: number) => void): Promise<{ key: number; value: number } | null> {
    for (;;) {
      if (this.done) return null;
      if (!this.leaf || this.i >= this.leaf.nrEntries) {
        const r = await this.it.next();
        if (r.done) {
          this.done = true;
          return null;
        }
        this.leaf = r.value;
        this.i = 0;
        continue;
      }
      const k = this.leaf.keyAt(this.i);
      const key = typeof k === 'bigint' ? Number.MAX_SAFE_INTEGER : k;
      const value = this.leaf.u32[this.leaf.base + (this.leaf.valuesOffset >> 2) + this.i]; // not leaf.data: a Buffer view per leaf
      if (key === b) this.i++; // consumed
      if (key >= b) return { key, value };
      skipped(key, value);
      this.i++;
    }
  }
  async close(): Promise<void> {
    await this.it.return(undefined);
  }
}

export interface SpaceMapCheckResult {
  /** Blocks the space map counts as in use (non-zero), where its bitmaps could be read. */
  diskInUse: number;
}

/**
 * Compares a space map with the expected counts. The index must come from
 * loadIndex (its blocks already counted); for the metadata space map the
 * caller must also have counted the ref-count tree's nodes before calling.
 */
export async function compareSpaceMap(
  io: BlockSource,
  kind: SpaceMapKind,
  root: SpaceMapRoot,
  index: IndexEntry[],
  nrMetadataBlocks: number,
  expected: RefCounts,
  sink: ProblemSink,
  opts: SpaceMapCheckOptions = {},
): Promise<SpaceMapCheckResult> {
  const tree = `${kind}-sm`;
  const sm = new SpaceMap(io, kind, root, nrMetadataBlocks);
  const runs = new RunReporter(sink, kind);
  const nrBlocks = root.nrBlocks;
  const cursor = new OverflowCursor(io, root.refCountRoot, nrMetadataBlocks, opts.signal);
  let overflowBroken = opts.overflowUnreadable === true;
  const stale = (k: number, v: number) => {
    runs.add('sm-overflow-stale', 'non-fatal', k, `the ref-count tree holds count ${v} for it, but its bitmap entry is below 3 (the entry is ignored)`);
  };
  // The overflow count of block bn, undefined when absent; null once the tree proved unreadable.
  const overflow = async (bn: number): Promise<number | undefined | null> => {
    if (overflowBroken) return null;
    try {
      const hit = await cursor.seek(bn, stale);
      return hit && hit.key === bn ? hit.value : undefined;
    } catch (e) {
      if (!(e instanceof MetadataError)) throw e;
      overflowBroken = true;
      runs.flush();
      sink(problemOf(e, { tree: 'ref-count', message: `${kind} space map ref-count tree: ${e.message}` }));
      return null;
    }
  };
  let diskInUse = 0;
  // Not >>> 2: a data device of 2^32 blocks has 2^32 counts (>>> 2 gave 0 words, so
  // an all-free bitmap word was never compared with the references).
  const exp32 = new Uint32Array(expected.counts.buffer, expected.counts.byteOffset, expected.counts.length / 4);
  // Counts of blocks [cbase, cend) are in `expected` (one window, or all of them).
  let cbase = 0;
  let cend = opts.loadWindow ? -1 : Infinity;
  // Bitmaps are read a batch ahead of the comparison, so that the device works
  // while the counts are compared (a 2^32-block data device has 263,000
  // bitmaps; read one batch at a time, check waited on IO 40% of its time).
  const BATCH = 128;
  const readBatch = (first: number): Promise<Block[]> | null => {
    if (first >= index.length) return null;
    const p = io.read(index.slice(first, first + BATCH).map((ie) => ie.blocknr));
    p.catch(() => {}); // awaited in turn below; an abandoned check must not leave an unhandled rejection
    return p;
  };
  let next = readBatch(0);
  try {
    for (let first = 0; first < index.length; first += BATCH) {
      throwIfAborted(opts.signal);
      const ies = index.slice(first, first + BATCH);
      const pending = next!;
      next = readBatch(first + BATCH);
      let blocks;
      try {
        blocks = await pending;
      } catch (e) {
        if (!(e instanceof MetadataError)) throw e;
        runs.flush();
        sink(problemOf(e, { tree, message: `${kind} space map bitmaps ${first}..${first + ies.length - 1}: ${e.message}` }));
        continue;
      }
      for (let j = 0; j < blocks.length; j++) {
        const i = first + j;
        const b = blocks[j];
        const base0 = i * ENTRIES_PER_BITMAP;
        const n = Math.min(ENTRIES_PER_BITMAP, nrBlocks - base0);
        try {
          sm.checkBitmap(b);
        } catch (e) {
          if (!(e instanceof MetadataError)) throw e;
          runs.flush();
          sink(problemOf(e, { tree, message: `${kind} space map bitmap ${i} (blocks ${base0}..${base0 + n - 1}): ${e.message}` }));
          continue;
        }
        if (base0 >= cend || base0 < cbase) {
          cbase = await opts.loadWindow!(base0);
          cend = cbase + expected.nrBlocks;
        }
        const w = b.words;
        const wb = b.base + 4; // entries start after the 16-byte header
        let free = 0;
        for (let e = 0; e < n; e += 16) {
          const word = w[wb + (e >>> 4)];
          const blk = base0 + e;
          const m = Math.min(16, n - e);
          if (word === 0 && m === 16) {
            const q = (blk - cbase) >>> 2;
            if ((exp32[q] | exp32[q + 1] | exp32[q + 2] | exp32[q + 3]) === 0) {
              free += 16;
              continue;
            }
          }
          for (let k = 0; k < m; k++) {
            const raw = (word >>> (2 * k)) & 3;
            let disk = ((raw & 1) << 1) | (raw >>> 1);
            const bn = blk + k;
            if (disk === 0) free++;
            else diskInUse++;
            const want = expected.get(bn - cbase);
            if (disk === 3) {
              let o: number | undefined | null;
              if (overflowBroken) o = null;
              else {
                const p = cursor.peek(bn, stale);
                o = p >= 0 ? p : p === ABSENT ? undefined : await overflow(bn);
              }
              if (o === undefined) {
                runs.add('sm-overflow-missing', 'fatal', bn, 'its bitmap entry says 3 or more, but the ref-count tree has no entry for it');
                continue;
              }
              if (o === null) {
                if (want >= 3) continue; // cannot tell: the ref-count tree is unreadable
              } else disk = o;
            }
            const v = verdict(disk, want);
            // An incomplete recount explains extra counts, never missing ones.
            if (v && (v[1] === 'fatal' || !opts.partial)) runs.add(v[0], v[1], bn, v[2]);
          }
        }
        // The kernel counts the entries past the device's end as free; thin_restore does not.
        // An nr_free above either understates use: the allocator would search a full bitmap.
        const tail = ENTRIES_PER_BITMAP - n;
        if (!opts.partial && index[i].nrFree > free + tail) {
          runs.flush();
          sink({
            severity: 'non-fatal',
            kind: 'sm-nr-free',
            block: index[i].blocknr,
            tree,
            message: `${kind} space map bitmap ${i} (block ${index[i].blocknr}): its index entry says ${index[i].nrFree} blocks are free, the bitmap has ${free}`,
          });
        }
        opts.onProgress?.(i + 1, index.length);
      }
      for (let k = 0; k < blocks.length; k++) blocks[k].done(); // the batch's buffer serves a later read
    }
    await overflow(Number.MAX_SAFE_INTEGER);
  } finally {
    await cursor.close().catch(() => {});
  }
  runs.flush();
  return { diskInUse };
}
