/**
 * Bottom-level mapping trees: virtual block -> (data block, time), packed as
 * data_block << 24 | time. Runs are merged the way thin_dump merges them:
 * consecutive virtual blocks on consecutive data blocks with the same time,
 * across leaf boundaries.
 */
import { MetadataError } from '../errors';
import { BtreeNode, walkLeaves } from '../pdata/btree';
import type { BlockSource } from '../pdata/block-source';
import { MAX_SAFE_HI, TWO32 } from '../pdata/words';
import { mappingDataBlock, mappingTime } from './mapping-value';

/**
 * A virtual block number (a mapping key: a u64 on disk, so it can pass 2^53;
 * see docs/json.md). Always a bigint in the API, a decimal string in JSON.
 */
export type VirtualBlock = bigint;

/**
 * @internal A virtual block on the hot paths: a number below 2^53, a bigint
 * from there on (so millions of keys cost no BigInt each). Never on a public
 * type: the API converts with BigInt().
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
  /** Visit only virtual blocks in [begin, end). */
  begin?: VirtualKey;
  end?: VirtualKey;
}

/** Decodes entry i of a mapping leaf. */
export function leafMapping(leaf: BtreeNode, i: number): Mapping {
  const w = leaf.base + (leaf.valuesOffset >> 2) + 2 * i;
  const lo = leaf.u32[w];
  return { dataBlock: mappingDataBlock(lo, leaf.u32[w + 1]), time: mappingTime(lo) };
}

/**
 * @internal Runs in struct-of-arrays form: cheap to produce and to format by
 * the million (the fast path under `ThinMetadata.mappings`).
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
 * Yields merged runs in batches (about one per leaf), so that callers
 * formatting millions of runs pay no per-run allocation. The same batch object
 * is reused: it is valid until the consumer asks for the next one.
 */
export async function* mappingRunBatches(io: BlockSource, root: number, opts: MappingWalkOptions): AsyncGenerator<RunBatch> {
  const { nrDataBlocks, devId } = opts;
  const begin = opts.begin ?? 0;
  const end = opts.end ?? Infinity;
  const whole = begin === 0 && end === Infinity;
  // The current run. oBegin is a bigint once virtual blocks pass 2^53.
  let open = false;
  let oBegin: VirtualKey = 0;
  let dBegin = 0;
  let len = 0;
  let time = 0;
  let total = 0;
  let nodes = 0;
  const batch = new RunBatch(256);
  for await (const leaf of walkLeaves(io, root, {
    tree: 'mapping',
    devId,
    valueSize: 8,
    nrMetadataBlocks: opts.nrMetadataBlocks,
    signal: opts.signal,
    begin,
    end,
    onNode: () => nodes++,
  })) {
    const n = leaf.nrEntries;
    const out = batch;
    out.reset();
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
        key = u32[kbase + 2 * i] + khi * TWO32;
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
    total += n;
    opts.onProgress?.({ mappings: total, nodes });
    if (out.count) yield out;
  }
  if (open) {
    batch.reset();
    batch.push(oBegin, dBegin, len, time);
    yield batch;
  }
}
