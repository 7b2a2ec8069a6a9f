/**
 * rmap: which thin devices map the given data blocks, as thin_rmap 0.9.0
 * prints it (test/fixtures/ORACLE-NOTES.md §7).
 *
 * thin_rmap walks every mapping tree in (device, virtual block) order, keeps
 * the mappings whose data block lies in any region, merges a mapping into the
 * previous run when it continues it on both sides (same device, next data
 * block, next virtual block; times are ignored), then sorts all runs by their
 * first data block with the C++ library's std::sort. That sort is not stable:
 * runs of several devices that start at one data block (shared blocks, i.e.
 * snapshots) come out in an order only the algorithm itself determines. To
 * print the same bytes we run the same algorithm (libstdc++'s introsort:
 * median-of-three quicksort above 16 elements, heapsort past a depth of
 * 2*floor(log2 n), then insertion sort) over the same input sequence.
 *
 * One deliberate difference: 0.9.0 visits each btree node once, so a subtree
 * shared by several devices is reported only for the first of them. Here
 * every device's tree is walked whole: every device that maps a block is
 * reported (the output equals 0.9.0's on the same mappings without shared
 * nodes; ORACLE-NOTES.md §7.2).
 *
 * Memory: runs, not mappings, are kept (a run covers any number of
 * consecutive mappings; mappings outside the regions cost nothing), 32 bytes
 * each, in memory up to a bound and past it in a temporary file, sorted there
 * by the same algorithm (src/thin/rmap-runs.ts): the memory stays flat
 * whatever the number of runs.
 */
import { check, describeValue, throwIfAborted, UsageError } from '../errors';
import { rmapLinesFunction } from '../native/binding';
import { asciiTag, type OutputSink } from '../output/sink';
import { STD_SORT_THRESHOLD } from './std-sort';
import { ThinMetadata } from './metadata';
import type { VirtualBlock, VirtualKey } from './mappings';
import { RmapRuns } from './rmap-runs';

/**
 * Data blocks [begin, end). Data blocks are below 2^40 (the mapping value
 * packs them in 40 bits), so they are numbers; an end past every data block,
 * up to Number.MAX_SAFE_INTEGER, means "to the end".
 */
export interface DataRegion {
  /** First data block. */
  begin: number;
  /** End of the range (exclusive). */
  end: number;
}

/** Data blocks [dataBegin, dataBegin+length) mapped by one device from virtualBegin on. */
export interface RmapRun {
  /** First data block of the run. */
  dataBegin: number;
  /** Number of blocks. */
  length: number;
  /** The thin device that maps them. */
  devId: number;
  /** Virtual block that maps dataBegin (a bigint: see docs/json.md). */
  virtualBegin: VirtualBlock;
}

/** @internal An RmapRun on the hot path: `virtualBegin` a number below 2^53, a bigint from there on. */
export interface RawRmapRun extends Omit<RmapRun, 'virtualBegin'> {
  virtualBegin: VirtualKey;
}

/** Options of rmap. */
export interface RmapOptions {
  /** Cancels the work, which then rejects with AbortError. */
  signal?: AbortSignal;
  /** Mappings walked so far, out of the sum of mapped_blocks. */
  onProgress?: (p: { mappings: number; total: number }) => void;
  /** @internal Runs held in memory before they go to a temporary file (default RMAP_RUNS_IN_MEMORY; tests force the file with a few). */
  runsInMemory?: number;
}

/** The union of the regions as sorted, disjoint, non-touching [begin, end) pairs. */
export function normalizeRegions(regions: readonly DataRegion[]): [number, number][] {
  if (!Array.isArray(regions)) throw new UsageError('rmap takes an array of data-block regions ({begin, end})');
  if (regions.length === 0) throw new UsageError('rmap needs at least one data-block region');
  const rs = regions.map((r) => {
    if (typeof r !== 'object' || r === null) throw new UsageError(`bad data-block region ${describeValue(r)}: a region is {begin, end}`);
    const ok = (v: number) => Number.isSafeInteger(v) && v >= 0;
    if (!ok(r.begin) || !ok(r.end) || r.end <= r.begin) {
      throw new UsageError(`bad data-block region ${describeValue(r.begin)}..${describeValue(r.end)}: it needs integers 0 <= begin < end (end is one past the last block)`);
    }
    return [r.begin, r.end] as [number, number];
  });
  rs.sort((a, b) => a[0] - b[0]);
  const out: [number, number][] = [];
  for (const r of rs) {
    const last = out[out.length - 1];
    if (last && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
    else out.push([r[0], r[1]]);
  }
  return out;
}

const addV = (a: VirtualKey, n: number): VirtualKey => (typeof a === 'number' && a + n <= Number.MAX_SAFE_INTEGER ? a + n : BigInt(a) + BigInt(n));
// eslint-disable-next-line eqeqeq
const eqV = (a: VirtualKey, b: VirtualKey): boolean => a == b;

/**
 * The runs of the regions, in thin_rmap's order (by first data block; runs
 * that start at the same data block in the order thin_rmap prints them).
 * Every mapping tree is read before the first run is yielded.
 */
export async function* rmap(md: ThinMetadata, regions: readonly DataRegion[], opts: RmapOptions = {}): AsyncGenerator<RmapRun> {
  check.instance(md, ThinMetadata, 'metadata');
  opts = check.walk(opts, 'rmap options');
  for await (const r of rmapRaw(md, regions, opts)) yield { ...r, virtualBegin: BigInt(r.virtualBegin) };
}

/** @internal rmap() without a BigInt per run. */
export async function* rmapRaw(md: ThinMetadata, regions: readonly DataRegion[], opts: RmapOptions = {}): AsyncGenerator<RawRmapRun> {
  opts = check.walk(opts, 'rmap options');
  const runs = await rmapRuns(md, regions, opts);
  for await (const c of runs.sorted(opts.signal)) {
    const { f64, u32 } = c;
    for (let i = 0; i < c.n; i++) {
      throwIfAborted(opts.signal); // at the next run, not a chunk (thousands of runs) later
      const k = c.order[i];
      const hi = u32[8 * k + 6];
      const lo = u32[8 * k + 5];
      const virtualBegin = hi < 0x200000 ? hi * 2 ** 32 + lo : (BigInt(hi) << 32n) | BigInt(lo);
      yield { dataBegin: f64[4 * k], length: f64[4 * k + 1], devId: u32[8 * k + 4], virtualBegin };
    }
  }
}

/**
 * @internal The runs of rmap(), walked and held (in memory or a temporary
 * file); `sorted()` gives them in print order, chunk by chunk, and frees them.
 * The CLI prints from the chunks without an async step per run.
 */
export async function rmapRuns(md: ThinMetadata, regions: readonly DataRegion[], opts: RmapOptions = {}): Promise<RmapRuns> {
  opts = check.walk(opts, 'rmap options');
  if (opts.runsInMemory !== undefined) check.integer(opts.runsInMemory, 'runsInMemory', STD_SORT_THRESHOLD);
  const rs = normalizeRegions(regions);
  const rBegin = Float64Array.from(rs, (r) => r[0]);
  const rEnd = Float64Array.from(rs, (r) => r[1]);
  const nr = rs.length;
  const table = await md.deviceTable({ signal: opts.signal });
  let total = 0;
  for (let r = 0; r < table.count; r++) total += table.mappedBlocks[r];
  const cols = new RmapRuns(opts.runsInMemory);
  try {
    // The run being extended (thin_rmap's "current" region). cVirt is a
    // number while every virtual block fits in one (the hot path), else a bigint.
    let open = false;
    let cData = 0;
    let cLen = 0;
    let cDev = 0;
    let cVirt: VirtualKey = 0;
    const slowPiece = (dev: number, data: number, len: number, virt: VirtualKey): void => {
      if (open && dev === cDev && data === cData + cLen && eqV(virt, addV(cVirt, cLen))) {
        cLen += len;
        return;
      }
      if (open) cols.push(cData, cLen, cDev, cVirt);
      open = true;
      cData = data;
      cLen = len;
      cDev = dev;
      cVirt = virt;
    };
    // One walk over all devices (as dump and ls do): the roots are read
    // together and each batch of runs comes through a plain callback, not
    // three nested async generators.
    const ids = table.devId;
    let walked = 0;
    let batches = 0;
    await md.walkDevices(
      ids,
      {
        begin: () => {},
        runs: (k, b) => {
          const dev = ids[k];
          const bData = b.dataBegin;
          const bLen = b.length;
          const bOrigin = b.originBegin;
          for (let i = 0; i < b.count; i++) {
            const db = bData[i];
            const de = db + bLen[i];
            // First region that ends after db (regions are few; a binary search keeps many cheap).
            let lo = 0;
            let hi = nr;
            while (lo < hi) {
              const mid = (lo + hi) >> 1;
              if (rEnd[mid] <= db) lo = mid + 1;
              else hi = mid;
            }
            const o = bOrigin[i];
            for (let k2 = lo; k2 < nr && rBegin[k2] < de; k2++) {
              const s = db > rBegin[k2] ? db : rBegin[k2];
              const e = de < rEnd[k2] ? de : rEnd[k2];
              const v = o + (s - db);
              // Hot path: numbers all the way (o is NaN past 2^53, which fails the test).
              if (typeof cVirt === 'number' && v <= Number.MAX_SAFE_INTEGER) {
                if (open && dev === cDev && s === cData + cLen && v === cVirt + cLen) {
                  cLen += e - s;
                  continue;
                }
                if (open) cols.push(cData, cLen, cDev, cVirt);
                open = true;
                cData = s;
                cLen = e - s;
                cDev = dev;
                cVirt = v;
              } else slowPiece(dev, s, e - s, addV(b.origin(i), s - db));
            }
            walked += bLen[i];
          }
          if (opts.onProgress && ++batches % 16 === 0) opts.onProgress({ mappings: walked, total });
        },
        end: () => {},
      },
      { signal: opts.signal },
    );
    opts.onProgress?.({ mappings: walked, total });
    if (open) cols.push(cData, cLen, cDev, cVirt);
    throwIfAborted(opts.signal);
    return cols;
  } catch (e) {
    cols.close();
    throw e;
  }
}

const DATA = asciiTag('data ');
const DOTS = asciiTag('..');
const THIN = asciiTag(' -> thin(');
const CLOSE_PAREN = asciiTag(') ');
const NEWLINE = asciiTag('\n');
/** Bytes of the longest line: its tags and five numbers of at most 20 digits. */
const RMAP_LINE = 128;

/** @internal The addon's line writer, looked up on first use; null: the JS loop (tests set it). */
export const rmapText: { lines: ReturnType<typeof rmapLinesFunction> | undefined } = { lines: undefined };

/**
 * @internal Prints the runs, in print order, as thin_rmap does
 * ("data B..E -> thin(DEV) VB..VE"), into the sink; frees them. Bytes go
 * straight into the output chunk (a string per line made most of the time
 * garbage), chunk by chunk (an await per run was a quarter of the time); the
 * addon writes the lines where it loads (373,625 lines: ~60 ms in V8's first
 * tiers, a few ms there).
 */
export async function writeRmapText(runs: RmapRuns, sink: OutputSink, signal?: AbortSignal): Promise<void> {
  // undefined: not looked up yet; null (no addon, or a test): the JS loop. Not ??=, which takes null for unset.
  const native = rmapText.lines === undefined ? (rmapText.lines = rmapLinesFunction()) : rmapText.lines;
  for await (const t of runs.sorted(signal)) {
    const { order, f64, u32 } = t;
    for (let i = 0; i < t.n; ) {
      if (native) {
        // As many lines as surely fit in the chunk (at least 64: room() hands a fuller one on).
        let fit = Math.floor((sink.buf.length - sink.pos) / native.maxLine);
        if (fit < 64) {
          sink.room(64 * native.maxLine);
          fit = Math.floor((sink.buf.length - sink.pos) / native.maxLine);
        }
        const to = Math.min(t.n, i + fit);
        sink.pos = native.write(sink.buf, sink.pos, u32, order, i, to);
        i = to;
      } else {
        const k = order[i++];
        const d = f64[4 * k];
        const l = f64[4 * k + 1];
        const hi = u32[8 * k + 6];
        sink.room(RMAP_LINE);
        sink.tag(DATA);
        sink.uint(d);
        sink.tag(DOTS);
        sink.uint(d + l);
        sink.tag(THIN);
        sink.uint(u32[8 * k + 4]);
        sink.tag(CLOSE_PAREN);
        // The virtual begin is exact in 64 bits; numbers while it and its end stay below 2^53.
        const v = hi * 2 ** 32 + u32[8 * k + 5];
        if (hi < 0x200000 && v + l <= Number.MAX_SAFE_INTEGER) {
          sink.uint(v);
          sink.tag(DOTS);
          sink.uint(v + l);
        } else {
          // A run up to the last key ends at 2^64, which thin_rmap prints in u64 arithmetic: 0.
          const b = (BigInt(hi) << 32n) | BigInt(u32[8 * k + 5]);
          sink.ascii(`${b}..${BigInt.asUintN(64, b + BigInt(l))}`);
        }
        sink.tag(NEWLINE);
      }
      if (sink.needsFlush()) {
        throwIfAborted(signal);
        await sink.maybeFlush();
        // A file or /dev/null as stdout completes writes on process.nextTick, which an
        // unbroken chain of awaits starves: without a turn of the event loop here every
        // chunk of a long print stayed allocated until the print ended (+15 MiB at 100,000 runs).
        await new Promise<void>((r) => setImmediate(r));
      }
    }
  }
}
