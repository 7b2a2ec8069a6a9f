/**
 * Bottom-level mapping trees: virtual block -> (data block, time), packed as
 * data_block << 24 | time. Runs are merged the way thin_dump merges them:
 * consecutive virtual blocks on consecutive data blocks with the same time,
 * across leaf boundaries.
 */
import { MetadataError } from '../errors';
import { BtreeNode, walkLeaves } from '../pdata/btree';
import type { BlockSource } from '../pdata/io-engine';

export interface MappingRun {
  /** First virtual block (in data-block units). */
  originBegin: number;
  /** First data block. */
  dataBegin: number;
  length: number;
  /** Snapshot time the mappings were made at. */
  time: number;
}

export interface Mapping {
  dataBlock: number;
  time: number;
}

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
  signal?: AbortSignal;
  onProgress?: (p: WalkProgress) => void;
  /** Visit only virtual blocks in [begin, end). */
  begin?: number;
  end?: number;
}

export const TIME_MASK = 0xffffff;

/** Decodes entry i of a mapping leaf. */
export function leafMapping(leaf: BtreeNode, i: number): Mapping {
  const w = (leaf.valuesOffset >> 2) + 2 * i;
  const lo = leaf.u32[w];
  return { dataBlock: leaf.u32[w + 1] * 256 + (lo >>> 24), time: lo & TIME_MASK };
}

/**
 * Yields merged runs in batches (one array per leaf, roughly), which keeps
 * per-mapping overhead low for callers that format millions of them.
 */
export async function* mappingRunBatches(io: BlockSource, root: number, opts: MappingWalkOptions): AsyncGenerator<MappingRun[]> {
  const { nrDataBlocks, devId } = opts;
  const begin = opts.begin ?? 0;
  const end = opts.end ?? Infinity;
  let oBegin = -1;
  let dBegin = 0;
  let len = 0;
  let time = 0;
  let total = 0;
  let nodes = 0;
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
    const out: MappingRun[] = [];
    const u32 = leaf.u32;
    const vbase = leaf.valuesOffset >> 2;
    const n = leaf.nrEntries;
    for (let i = 0; i < n; i++) {
      const khi = u32[9 + 2 * i];
      if (khi >= 2 ** 21) leaf.key(i); // throws the typed error
      const key = u32[8 + 2 * i] + khi * 4294967296;
      if (key < begin || key >= end) continue;
      const lo = u32[vbase + 2 * i];
      const data = u32[vbase + 2 * i + 1] * 256 + (lo >>> 24);
      const t = lo & TIME_MASK;
      if (data >= nrDataBlocks) {
        throw new MetadataError(
          'data-range',
          `device ${devId}: block ${key} maps to data block ${data}, beyond the data device (${nrDataBlocks} blocks) (leaf ${leaf.nr})`,
          { block: leaf.nr, devId, tree: 'mapping', dataBlock: data, virtualBlock: key },
        );
      }
      if (oBegin >= 0 && key === oBegin + len && data === dBegin + len && t === time) {
        len++;
      } else {
        if (oBegin >= 0) out.push({ originBegin: oBegin, dataBegin: dBegin, length: len, time });
        oBegin = key;
        dBegin = data;
        len = 1;
        time = t;
      }
    }
    total += n;
    opts.onProgress?.({ mappings: total, nodes });
    if (out.length) yield out;
  }
  if (oBegin >= 0) yield [{ originBegin: oBegin, dataBegin: dBegin, length: len, time }];
}
