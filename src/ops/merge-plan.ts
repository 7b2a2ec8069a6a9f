/**
 * What a merge does, decided from metadata alone (no I/O here, so it can be
 * tested on its own): which virtual blocks to copy and which to discard, and
 * how that work is cut into read batches.
 *
 *  - into an external origin: every mapped block of the thin is copied (its
 *    mapped blocks are exactly where it differs from the origin);
 *  - into an in-pool origin, from the delta ORIGIN -> SNAP: blocks that
 *    differ or that only SNAP maps are copied from SNAP, blocks that only
 *    ORIGIN maps are discarded on ORIGIN; shared blocks are left alone.
 */
import { UsageError } from '../errors';
import type { DeltaExtent } from '../thin/delta';
import type { VirtualKey } from '../thin/mappings';

/** A virtual block as the API (bigint) or the delta's hot path (a number below 2^53) gives it. */
type AnyBlock = VirtualKey;

export type MergeOp = 'copy' | 'discard';

/** Virtual blocks [begin, begin+length) (pool data blocks), and what to do with them. */
export interface MergeRange {
  op: MergeOp;
  begin: number;
  length: number;
}

export interface MergePlan {
  /** In virtual-block order, adjacent ranges of one op merged. */
  ranges: MergeRange[];
  copyBlocks: number;
  discardBlocks: number;
  /** One past the highest block touched (0 when nothing is). */
  endBlock: number;
}

function blockNumber(b: AnyBlock): number {
  const n = typeof b === 'bigint' ? Number(b) : b;
  // Bytes of such a block are past 2^53 anyway: no block device is that large.
  if (!Number.isSafeInteger(n) || n < 0) throw new UsageError(`virtual block ${b} is beyond what a merge can address`);
  return n;
}

/**
 * Builds a plan from ranges given in virtual-block order. By default the
 * ranges are kept in `done().ranges`; a streaming builder (`keep: false`)
 * keeps only the one still growing and hands the finished ones out through
 * take(), so a caller can spill them (a fragmented thin has as many ranges
 * as mappings).
 */
export class MergePlanBuilder {
  private readonly plan: MergePlan = { ranges: [], copyBlocks: 0, discardBlocks: 0, endBlock: 0 };
  private cur: MergeRange | null = null;
  private out: MergeRange[] = [];

  constructor(private readonly keep = true) {}

  add(op: MergeOp, begin: AnyBlock, length: number): void {
    if (length <= 0) return;
    const b = blockNumber(begin);
    const p = this.plan;
    if (b < p.endBlock) throw new UsageError(`merge plan: block ${b} comes after block ${p.endBlock - 1} (extents out of order)`);
    const c = this.cur;
    if (c && c.op === op && c.begin + c.length === b) c.length += length;
    else {
      if (c) this.finish(c);
      this.cur = { op, begin: b, length };
    }
    if (op === 'copy') p.copyBlocks += length;
    else p.discardBlocks += length;
    p.endBlock = b + length;
  }

  private finish(r: MergeRange): void {
    (this.keep ? this.plan.ranges : this.out).push(r);
  }

  /** A delta extent ORIGIN (left) -> SNAP (right). */
  addDelta(e: Omit<DeltaExtent, 'begin'> & { begin: AnyBlock }): void {
    if (e.kind === 'different' || e.kind === 'right_only') this.add('copy', e.begin, e.length);
    else if (e.kind === 'left_only') this.add('discard', e.begin, e.length);
  }

  /** The finished ranges not taken yet (streaming builder). */
  take(): MergeRange[] {
    const t = this.out;
    this.out = [];
    return t;
  }

  /** Counts so far. */
  get counts(): Readonly<Omit<MergePlan, 'ranges'>> {
    return this.plan;
  }

  /** Ends the plan: the last range is finished (in `ranges`, or for take()). */
  done(): MergePlan {
    if (this.cur) this.finish(this.cur);
    this.cur = null;
    return this.plan;
  }
}

/** The plan of an in-pool merge from the delta ORIGIN -> SNAP (extents in order). */
export function planFromDelta(extents: Iterable<Omit<DeltaExtent, 'begin'> & { begin: AnyBlock }>): MergePlan {
  const b = new MergePlanBuilder();
  for (const e of extents) b.addDelta(e);
  return b.done();
}

/** The plan of an external-origin merge from the thin's mapping runs (in order). */
export function planFromMappings(runs: Iterable<{ originBegin: AnyBlock; length: number }>): MergePlan {
  const b = new MergePlanBuilder();
  for (const r of runs) b.add('copy', r.originBegin, r.length);
  return b.done();
}

/**
 * The first block of copy range `r` that does not fit in a target of
 * `targetBytes`: one that starts at or beyond its end (a block straddling
 * the end is copied up to the end). Null when all fit, and for discards.
 */
export function rangeBeyond(r: MergeRange, blockBytes: number, targetBytes: number): number | null {
  if (r.op !== 'copy') return null;
  if (r.begin * blockBytes >= targetBytes) return r.begin;
  if ((r.begin + r.length - 1) * blockBytes >= targetBytes) return Math.ceil(targetBytes / blockBytes);
  return null;
}

/** rangeBeyond() of the plan's first range that does not fit, or null. */
export function firstBlockBeyond(plan: MergePlan, blockBytes: number, targetBytes: number): number | null {
  for (const r of plan.ranges) {
    const b = rangeBeyond(r, blockBytes, targetBytes);
    if (b !== null) return b;
  }
  return null;
}

/** One step of the work: bytes [offset, offset+length) of the device, copied or discarded. */
export interface MergeStep {
  op: MergeOp;
  offset: number;
  length: number;
  /** Pool blocks this step completes (for progress). */
  blocks: number;
}

/**
 * The plan as steps of at most `maxBytes` each (copies are read and written
 * one step at a time), in order, with nothing at or beyond `limitBytes` (a
 * straddling block is cut there). `maxBytes` is a multiple of 64 KiB, as
 * every pool block size is.
 */
export function* mergeSteps(plan: MergePlan, blockBytes: number, maxBytes: number, limitBytes = Infinity): Generator<MergeStep> {
  if (maxBytes <= 0 || maxBytes % 65536 !== 0) throw new UsageError(`merge batch of ${maxBytes} bytes is not a positive multiple of 64 KiB`);
  for (const r of plan.ranges) yield* rangeSteps(r, blockBytes, maxBytes, limitBytes);
}

/** mergeSteps() of one range. */
export function* rangeSteps(r: MergeRange, blockBytes: number, maxBytes: number, limitBytes = Infinity): Generator<MergeStep> {
  if (maxBytes <= 0 || maxBytes % 65536 !== 0) throw new UsageError(`merge batch of ${maxBytes} bytes is not a positive multiple of 64 KiB`);
  const start = r.begin * blockBytes;
  const end = Math.min((r.begin + r.length) * blockBytes, limitBytes);
  // Discards go in one piece: they cost no data transfer.
  const step = r.op === 'discard' ? Math.max(end - start, 1) : maxBytes;
  for (let off = start; off < end; off += step) {
    const len = Math.min(step, end - off);
    // Blocks whose last byte this step covers (a cut block counts in the step that reaches the cut).
    const doneTo = off + len >= end ? r.begin + r.length : Math.floor((off + len) / blockBytes);
    const doneFrom = off === start ? r.begin : Math.floor(off / blockBytes);
    yield { op: r.op, offset: off, length: len, blocks: doneTo - doneFrom };
  }
}
