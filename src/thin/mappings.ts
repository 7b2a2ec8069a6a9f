/**
 * Bottom-level mapping trees: virtual block -> (data block, time), packed as
 * data_block << 24 | time. Runs are merged the way thin_dump merges them:
 * consecutive virtual blocks on consecutive data blocks with the same time,
 * across leaf boundaries.
 */
import { MetadataError, throwIfAborted } from '../errors';
import { BtreeNode, LeafWalk, TreeValidator } from '../pdata/btree';
import type { Block, BlockSource } from '../pdata/block-source';
import { MAX_SAFE_HI, TWO32 } from '../pdata/words';
import { mappingDataBlock, mappingTime } from './mapping-value';

/**
 * A virtual block number (a mapping key: a u64 on disk, so it can pass 2^53;
 * see docs/json.md). Always a bigint in the API, a decimal string in JSON.
 */
export type VirtualBlock = bigint;

/**
 * A virtual block on the hot paths: a number below 2^53, a bigint from there
 * on (so millions of keys cost no BigInt each). Never on a type of the public
 * API (the API converts with BigInt()); `dmthin/unstable`'s RunBatch uses it.
 */
export type VirtualKey = number | bigint;

/** A run of mappings: consecutive virtual blocks on consecutive data blocks, made at one time. */
export interface MappingRun {
  /** First virtual block (in data-block units). End: `originBegin + BigInt(length)`. */
  originBegin: VirtualBlock;
  /** First data block (data blocks are below 2^40: a number). */
  dataBegin: number;
  /** Blocks in the run, on both sides (a number: it never exceeds the data blocks). */
  length: number;
  /** Snapshot time the mappings were made at. */
  time: number;
}

/** One virtual block's mapping. */
export interface Mapping {
  /** The data block it maps to. */
  dataBlock: number;
  /** Snapshot time the mapping was made at. */
  time: number;
}

/** Progress of a mapping walk. */
export interface WalkProgress {
  /** Mappings seen so far in this walk. */
  mappings: number;
  /** Btree nodes read so far. */
  nodes: number;
}

export interface MappingWalkOptions {
  devId: number;
  nrMetadataBlocks: number;
  /** Data blocks in the pool: a mapping at or beyond it is corruption. */
  nrDataBlocks: number;
  /** Cancels the work, which then rejects with AbortError. */
  signal?: AbortSignal;
  /** Called as the work advances. */
  onProgress?: (p: WalkProgress) => void;
  /** @internal Visit only virtual blocks in [begin, end). */
  begin?: VirtualKey;
  /** @internal See begin. */
  end?: VirtualKey;
}

/** Decodes entry i of a mapping leaf. */
export function leafMapping(leaf: BtreeNode, i: number): Mapping {
  const w = leaf.base + (leaf.valuesOffset >> 2) + 2 * i;
  const lo = leaf.u32[w];
  return { dataBlock: mappingDataBlock(lo, leaf.u32[w + 1]), time: mappingTime(lo) };
}

/**
 * Runs in struct-of-arrays form: cheap to produce and to format by the
 * million (the fast path under `ThinMetadata.mappings`). Exported by
 * `dmthin/unstable` only.
 */
export class RunBatch {
  /** Runs held (the columns may be longer). */
  count = 0;
  /** First virtual block of each run (NaN at or beyond 2^53: see `big`). */
  readonly originBegin: Float64Array;
  /** First data block of each run. */
  readonly dataBegin: Float64Array;
  /** Length of each run in blocks. */
  readonly length: Float64Array;
  /** Snapshot time of each run. */
  readonly time: Uint32Array;
  /** Exact origins of runs that start at or beyond 2^53 (originBegin[i] is NaN there). */
  big: Map<number, bigint> | null = null;
  constructor(capacity: number) {
    this.originBegin = new Float64Array(capacity);
    this.dataBegin = new Float64Array(capacity);
    this.length = new Float64Array(capacity);
    this.time = new Uint32Array(capacity);
  }
  /** Empties the batch for reuse. */
  reset(): void {
    this.count = 0;
    this.big = null;
  }
  /** Appends a run: origin, data block, length, time. */
  push(o: VirtualKey, d: number, l: number, t: number): void {
    const i = this.count++;
    if (typeof o === 'bigint') {
      (this.big ??= new Map()).set(i, o);
      this.originBegin[i] = NaN;
    } else this.originBegin[i] = o;
    this.dataBegin[i] = d;
    this.length[i] = l;
    this.time[i] = t;
  }
  /** Origin of run i: a number below 2^53, a bigint from there on. */
  origin(i: number): VirtualKey {
    const o = this.originBegin[i];
    return o === o ? o : this.big!.get(i)!;
  }
  /** Run i as a public MappingRun (origin as a bigint). */
  run(i: number): MappingRun {
    return { originBegin: BigInt(this.origin(i)), dataBegin: this.dataBegin[i], length: this.length[i], time: this.time[i] };
  }
}


/**
 * Merges one device's mappings into runs, the way thin_dump merges them, and
 * checks each data block against the data device. Fed leaf by leaf in key
 * order; a run stays open across leaves.
 */
class RunMerger {
  private open = false;
  /** The current run. oBegin is a bigint once virtual blocks pass 2^53. */
  private oBegin: VirtualKey = 0;
  private dBegin = 0;
  private len = 0;
  private time = 0;
  private readonly whole: boolean;

  constructor(
    private readonly devId: number,
    private readonly nrDataBlocks: number,
    private readonly begin: VirtualKey = 0,
    private readonly end: VirtualKey = Infinity,
  ) {
    this.whole = begin === 0 && end === Infinity;
  }

  /** Appends to `out` the runs this leaf completes (at most one per entry). */
  leaf(leaf: BtreeNode, out: RunBatch): void {
    const n = leaf.nrEntries;
    // The common case in one tight loop: a whole-tree walk, every key of the
    // leaf below 2^53 (keys ascend: the last one's high word decides).
    if (this.whole && typeof this.oBegin === 'number' && n > 0 && leaf.u32[leaf.base + 9 + 2 * (n - 1)] < MAX_SAFE_HI) {
      this.fastLeaf(leaf, out);
      return;
    }
    const { nrDataBlocks, devId, begin, end, whole } = this;
    let { open, oBegin, dBegin, len, time } = this;
    const u32 = leaf.u32;
    const kbase = leaf.base + 8;
    const vbase = leaf.base + (leaf.valuesOffset >> 2);
    for (let i = 0; i < n; i++) {
      const khi = u32[kbase + 1 + 2 * i];
      const lo = u32[vbase + 2 * i];
      const data = mappingDataBlock(lo, u32[vbase + 2 * i + 1]);
      const t = mappingTime(lo);
      let key: VirtualKey;
      let extendsRun: boolean;
      if (khi < MAX_SAFE_HI && typeof oBegin === 'number') {
        // Fast path: every virtual block so far fits in a number.
        key = khi === 0 ? u32[kbase + 2 * i] : u32[kbase + 2 * i] + khi * TWO32;
        extendsRun = open && key === oBegin + len && data === dBegin + len && t === time;
      } else {
        key = leaf.keyAt(i);
        extendsRun = open && data === dBegin + len && t === time && BigInt(key) === BigInt(oBegin) + BigInt(len);
      }
      if (!whole && (key < begin || key >= end)) continue;
      if (data >= nrDataBlocks) {
        throw new MetadataError(
          'data-range',
          `device ${devId}: block ${key} maps to data block ${data}, beyond the data device (${nrDataBlocks} blocks) (leaf ${leaf.nr})`,
          { block: leaf.nr, devId, tree: 'mapping', dataBlock: data, virtualBlock: key },
        );
      }
      if (extendsRun) {
        len++;
      } else {
        if (open) out.push(oBegin, dBegin, len, time);
        open = true;
        oBegin = key;
        dBegin = data;
        len = 1;
        time = t;
      }
    }
    this.open = open;
    this.oBegin = oBegin;
    this.dBegin = dBegin;
    this.len = len;
    this.time = time;
  }

  /** leaf() for a whole walk whose keys are all numbers: no type tests or range tests per entry. */
  private fastLeaf(leaf: BtreeNode, out: RunBatch): void {
    const nrDataBlocks = this.nrDataBlocks;
    let open = this.open;
    let oBegin = this.oBegin as number;
    let dBegin = this.dBegin;
    let len = this.len;
    let time = this.time;
    const n = leaf.nrEntries;
    const u32 = leaf.u32;
    const i32 = leaf.i32; // value low words: see Block.ints
    const kbase = leaf.base + 8;
    const vbase = leaf.base + (leaf.valuesOffset >> 2);
    const oCol = out.originBegin;
    const dCol = out.dataBegin;
    const lCol = out.length;
    const tCol = out.time;
    let c = out.count;
    for (let i = 0; i < n; i++) {
      const khi = u32[kbase + 1 + 2 * i];
      const key = khi === 0 ? u32[kbase + 2 * i] : u32[kbase + 2 * i] + khi * TWO32;
      const lo = i32[vbase + 2 * i];
      const data = u32[vbase + 2 * i + 1] * 256 + (lo >>> 24);
      const t = lo & 0xffffff;
      if (data >= nrDataBlocks) this.dataRange(leaf, key, data);
      if (open && key === oBegin + len && data === dBegin + len && t === time) {
        len++;
        continue;
      }
      if (open) {
        oCol[c] = oBegin;
        dCol[c] = dBegin;
        lCol[c] = len;
        tCol[c] = time;
        c++;
      }
      open = true;
      oBegin = key;
      dBegin = data;
      len = 1;
      time = t;
    }
    out.count = c;
    this.open = open;
    this.oBegin = oBegin;
    this.dBegin = dBegin;
    this.len = len;
    this.time = time;
  }

  private dataRange(leaf: BtreeNode, key: VirtualKey, data: number): never {
    throw new MetadataError(
      'data-range',
      `device ${this.devId}: block ${key} maps to data block ${data}, beyond the data device (${this.nrDataBlocks} blocks) (leaf ${leaf.nr})`,
      { block: leaf.nr, devId: this.devId, tree: 'mapping', dataBlock: data, virtualBlock: key },
    );
  }

  /** Appends the last run, if any. */
  finish(out: RunBatch): void {
    if (this.open) out.push(this.oBegin, this.dBegin, this.len, this.time);
    this.open = false;
  }
}

/**
 * @internal Yields merged runs in batches (about one per leaf), so that callers
 * formatting millions of runs pay no per-run allocation. The same batch object
 * is reused: it is valid until the consumer asks for the next one.
 */
export async function* mappingRunBatches(io: BlockSource, root: number, opts: MappingWalkOptions): AsyncGenerator<RunBatch> {
  const merger = new RunMerger(opts.devId, opts.nrDataBlocks, opts.begin, opts.end);
  let total = 0;
  let nodes = 0;
  const batch = new RunBatch(256);
  const walk = new LeafWalk(io, root, {
    tree: 'mapping',
    devId: opts.devId,
    valueSize: 8,
    nrMetadataBlocks: opts.nrMetadataBlocks,
    signal: opts.signal,
    begin: opts.begin ?? 0,
    end: opts.end ?? Infinity,
    onNode: () => nodes++,
    transient: true, // each leaf is decoded into the batch before the next
  });
  for (let leaf; (leaf = walk.poll()) !== null; ) {
    if (leaf === undefined) {
      await walk.wait(); // a leaf already read costs no await (LeafWalk)
      continue;
    }
    batch.reset();
    merger.leaf(leaf, batch);
    total += leaf.nrEntries;
    opts.onProgress?.({ mappings: total, nodes });
    if (batch.count) yield batch;
  }
  batch.reset();
  merger.finish(batch);
  if (batch.count) yield batch;
}

/** @internal What walkDeviceRuns reports, device by device, in the order given. */
export interface DeviceRunsVisitor {
  /** Device k (its index in the list) starts. */
  begin(k: number): void;
  /** Runs of device k, in virtual-block order. The batch is reused once this returns (or its promise settles). */
  runs(k: number, batch: RunBatch): void | Promise<void>;
  /** Device k is complete: `mappings` is how many its tree holds. A returned promise is awaited (backpressure). */
  end(k: number, mappings: number): void | Promise<void>;
}

/** The devices walkDeviceRuns walks, in its order: device k has id devId[k] and mapping root root[k]. */
export interface DeviceList {
  count: number;
  devId: ArrayLike<number>;
  root: ArrayLike<number>;
}

/** Windows of roots read at once by walkDeviceRuns (4 x 256 blocks: 4 MiB). */
const DEVICE_READS_IN_FLIGHT = 4;

/** Options of walkDeviceRuns. */
export interface DeviceWalkOptions {
  nrMetadataBlocks: number;
  /** Data blocks in the pool: a mapping at or beyond it is corruption. */
  nrDataBlocks: number;
  /** Cancels the work, which then rejects with AbortError. */
  signal?: AbortSignal;
  /** Roots read in one batch ahead of the walk (default 256, 1 MiB). */
  window?: number;
  /**
   * Called after each window of devices, and within a large device every
   * PROGRESS_MAPPINGS mappings (a pool of a few large devices would
   * otherwise report once, at the end); never twice with one count.
   */
  onProgress?: (p: { devices: number; mappings: number }) => void;
}

/** Mappings between two progress reports of walkDeviceRuns within a device (a few hundred for 10 million). */
const PROGRESS_MAPPINGS = 1 << 15;

/**
 * @internal The whole mapping trees of many devices, one after the other, with the
 * validation and merging of mappingRunBatches. A pool of thousands of small
 * devices is mostly one-leaf trees: their roots are read `window` at a time
 * (the next window in flight while this one is decoded) and decoded without
 * an async step per device; only a device whose root is an internal node gets
 * a walk of its own (from the root already read). Memory: DEVICE_READS_IN_FLIGHT
 * windows of blocks plus one walk's.
 */
export async function walkDeviceRuns(
  io: BlockSource,
  devices: DeviceList,
  visitor: DeviceRunsVisitor,
  opts: DeviceWalkOptions,
): Promise<void> {
  const window = opts.window ?? 256;
  const batch = new RunBatch(256);
  const readWindow = (from: number): Promise<Block[]> => {
    const roots: number[] = [];
    for (let k = from; k < Math.min(devices.count, from + window); k++) roots.push(devices.root[k]);
    const p = io.read(roots);
    p.catch(() => {}); // awaited below, or abandoned when an earlier device fails
    return p;
  };
  // Reads of the next windows stay in flight while this one is decoded: a
  // busy or virtio disk delivers more with several requests queued.
  const ahead: Promise<Block[]>[] = [];
  let queued = 0;
  const fill = (): void => {
    while (ahead.length < DEVICE_READS_IN_FLIGHT && queued < devices.count) {
      ahead.push(readWindow(queued));
      queued += window;
    }
  };
  let mappings = 0;
  let reported = -1;
  const report = (devicesDone: number, m: number): void => {
    reported = m;
    opts.onProgress!({ devices: devicesDone, mappings: m });
  };
  for (let from = 0; from < devices.count; from += window) {
    throwIfAborted(opts.signal);
    fill();
    let blocks: Block[] | undefined;
    try {
      blocks = await ahead.shift()!;
    } catch {
      // A root that cannot be read fails the whole batch: read them one by
      // one, so the error is reported at its own device, after the ones before it.
      blocks = undefined;
    }
    fill();
    const to = Math.min(devices.count, from + window);
    for (let k = from; k < to; k++) {
      const devId = devices.devId[k];
      const root = devices.root[k];
      const block = blocks ? blocks[k - from] : (await io.read([root]))[0];
      const ctx = { tree: 'mapping', devId };
      const v = new TreeValidator(opts.nrMetadataBlocks, 8, ctx);
      v.checkRoot(root);
      const node = v.visit(block, 0, Infinity, 0);
      const merger = new RunMerger(devId, opts.nrDataBlocks);
      visitor.begin(k);
      let found = 0;
      if (node.isLeaf) {
        batch.reset();
        merger.leaf(node, batch);
        found = node.nrEntries;
        block.done();
      } else {
        // The walk marks the root block (and its own) done as it goes.
        const walk = new LeafWalk(io, root, { ...ctx, valueSize: 8, nrMetadataBlocks: opts.nrMetadataBlocks, signal: opts.signal, rootBlock: block, transient: true });
        for (let leaf; (leaf = walk.poll()) !== null; ) {
          if (leaf === undefined) {
            await walk.wait(); // pulled, not iterated: a leaf already read costs no promise (LeafWalk)
            continue;
          }
          batch.reset();
          merger.leaf(leaf, batch);
          found += leaf.nrEntries;
          if (opts.onProgress && mappings + found - reported >= PROGRESS_MAPPINGS) report(k, mappings + found);
          if (batch.count) {
            const r = visitor.runs(k, batch);
            if (r) await r;
          }
        }
        batch.reset();
      }
      merger.finish(batch);
      if (batch.count) {
        const r = visitor.runs(k, batch);
        if (r) await r;
      }
      mappings += found;
      const r = visitor.end(k, found);
      if (r) await r;
    }
    if (opts.onProgress && mappings !== reported) report(to, mappings);
  }
}
