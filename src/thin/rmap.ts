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
 * Memory: the sort needs every run at once, so the runs inside the regions are
 * kept in columns: 32 bytes per run (data begin, length, virtual begin as
 * doubles, device id and sort index as u32), up to 1.5x that while a column
 * grows. Runs, not mappings: a run covers any number of consecutive mappings,
 * and the printed line of a run is longer than its 32 bytes, so the memory
 * stays below the size of the output. Mappings outside the regions cost
 * nothing.
 */
import { throwIfAborted, UsageError } from '../errors';
import type { ThinMetadata } from './metadata';
import type { VirtualBlock, VirtualKey } from './mappings';

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
}

/** The union of the regions as sorted, disjoint, non-touching [begin, end) pairs. */
export function normalizeRegions(regions: readonly DataRegion[]): [number, number][] {
  if (regions.length === 0) throw new UsageError('rmap needs at least one data-block region');
  const rs = regions.map((r) => {
    const ok = (v: number) => Number.isSafeInteger(v) && v >= 0;
    if (!ok(r.begin) || !ok(r.end) || r.end <= r.begin) {
      throw new UsageError(`bad data-block region ${r.begin}..${r.end}: it needs integers 0 <= begin < end (end is one past the last block)`);
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

/** Growable columns of runs. */
class RunColumns {
  n = 0;
  data = new Float64Array(1024);
  len = new Float64Array(1024);
  virt = new Float64Array(1024);
  dev = new Uint32Array(1024);
  /** Virtual begins at or beyond 2^53 (virt[i] is NaN there). */
  big: Map<number, bigint> | null = null;

  push(data: number, len: number, dev: number, virt: VirtualKey): void {
    if (this.n === this.data.length) this.grow();
    const i = this.n++;
    this.data[i] = data;
    this.len[i] = len;
    this.dev[i] = dev;
    if (typeof virt === 'bigint') {
      (this.big ??= new Map()).set(i, virt);
      this.virt[i] = NaN;
    } else this.virt[i] = virt;
  }

  private grow(): void {
    const cap = this.data.length * 2;
    const g = <T extends Float64Array | Uint32Array>(a: T, make: (n: number) => T): T => {
      const b = make(cap);
      b.set(a);
      return b;
    };
    this.data = g(this.data, (k) => new Float64Array(k));
    this.len = g(this.len, (k) => new Float64Array(k));
    this.virt = g(this.virt, (k) => new Float64Array(k));
    this.dev = g(this.dev, (k) => new Uint32Array(k));
  }

  run(i: number): RawRmapRun {
    const v = this.virt[i];
    return { dataBegin: this.data[i], length: this.len[i], devId: this.dev[i], virtualBegin: v === v ? v : this.big!.get(i)! };
  }
}

/**
 * @internal Every run of an rmap in columns, and the order to print them in:
 * run `order[i]` is printed i-th. Lets a printer of millions of runs loop
 * without an async step (or an object) per run.
 */
export interface RmapTable {
  /** Runs held. */
  readonly n: number;
  /** First data block of each run. */
  readonly data: Float64Array;
  /** Length of each run. */
  readonly len: Float64Array;
  /** Virtual block that maps the first data block (NaN at or beyond 2^53: see `big`). */
  readonly virt: Float64Array;
  /** Device of each run. */
  readonly dev: Uint32Array;
  /** Exact virtual begins at or beyond 2^53. */
  readonly big: Map<number, bigint> | null;
  /** Print order (thin_rmap's sort). */
  readonly order: Uint32Array;
  /** Run i as an object. */
  run(i: number): RawRmapRun;
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
  for await (const r of rmapRaw(md, regions, opts)) yield { ...r, virtualBegin: BigInt(r.virtualBegin) };
}

/** @internal rmap() without a BigInt per run. */
export async function* rmapRaw(md: ThinMetadata, regions: readonly DataRegion[], opts: RmapOptions = {}): AsyncGenerator<RawRmapRun> {
  const t = await rmapTable(md, regions, opts);
  for (let i = 0; i < t.n; i++) yield t.run(t.order[i]);
}

/** @internal The runs of rmap() as a table (the CLI prints from it without an async step per run). */
export async function rmapTable(md: ThinMetadata, regions: readonly DataRegion[], opts: RmapOptions = {}): Promise<RmapTable> {
  const rs = normalizeRegions(regions);
  const rBegin = Float64Array.from(rs, (r) => r[0]);
  const rEnd = Float64Array.from(rs, (r) => r[1]);
  const nr = rs.length;
  const devices = [...(await md.checkedDevices({ signal: opts.signal })).values()].sort((a, b) => a.devId - b.devId);
  const total = devices.reduce((n, d) => n + d.mappedBlocks, 0);
  const cols = new RunColumns();
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
  const ids = devices.map((d) => d.devId);
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
  const order = stdSortOrder(cols.data, cols.n);
  return { n: cols.n, data: cols.data, len: cols.len, virt: cols.virt, dev: cols.dev, big: cols.big, order, run: (i) => cols.run(i) };
}

// ---------------------------------------------------------------- std::sort

const THRESHOLD = 16;

/**
 * The permutation libstdc++'s std::sort (GCC 4.9 and later) leaves a sequence
 * in when sorting it by `key` with operator<: element i of the result is the
 * index of the input element that ends up at position i. Written from the
 * algorithm's description, step for step, because ties must land where it
 * puts them.
 */
function stdSortOrder(key: Float64Array, n: number): Uint32Array {
  const p = new Uint32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  if (n < 2) return p;
  const less = (a: number, b: number) => key[p[a]] < key[p[b]];
  const swap = (a: number, b: number) => {
    const t = p[a];
    p[a] = p[b];
    p[b] = t;
  };

  // Put the median of a, b, c at `to` (ties resolved as the library does).
  const medianToFirst = (to: number, a: number, b: number, c: number) => {
    if (less(a, b)) {
      if (less(b, c)) swap(to, b);
      else if (less(a, c)) swap(to, c);
      else swap(to, a);
    } else if (less(a, c)) swap(to, a);
    else if (less(b, c)) swap(to, c);
    else swap(to, b);
  };

  // Hoare partition of [first, last) around the pivot at `pivot`, no bounds checks.
  const partition = (first: number, last: number, pivot: number): number => {
    for (;;) {
      while (less(first, pivot)) first++;
      last--;
      while (less(pivot, last)) last--;
      if (!(first < last)) return first;
      swap(first, last);
      first++;
    }
  };

  // Binary max-heap over [first, first + len): sift the value v down from hole, then up.
  const adjustHeap = (first: number, hole: number, len: number, v: number) => {
    const top = hole;
    let child = hole;
    const kv = key[v];
    while (child < Math.floor((len - 1) / 2)) {
      child = 2 * (child + 1);
      if (key[p[first + child]] < key[p[first + child - 1]]) child--;
      p[first + hole] = p[first + child];
      hole = child;
    }
    if ((len & 1) === 0 && child === Math.floor((len - 2) / 2)) {
      child = 2 * (child + 1);
      p[first + hole] = p[first + child - 1];
      hole = child - 1;
    }
    let parent = Math.trunc((hole - 1) / 2); // C++ division truncates
    while (hole > top && key[p[first + parent]] < kv) {
      p[first + hole] = p[first + parent];
      hole = parent;
      parent = Math.trunc((hole - 1) / 2);
    }
    p[first + hole] = v;
  };

  const heapSort = (first: number, last: number) => {
    const len = last - first;
    if (len >= 2) {
      for (let parent = Math.floor((len - 2) / 2); ; parent--) {
        adjustHeap(first, parent, len, p[first + parent]);
        if (parent === 0) break;
      }
    }
    for (let end = last; end - first > 1; ) {
      end--;
      const v = p[end];
      p[end] = p[first];
      adjustHeap(first, 0, end - first, v);
    }
  };

  const introsort = (first: number, last: number, depth: number) => {
    while (last - first > THRESHOLD) {
      if (depth === 0) {
        heapSort(first, last);
        return;
      }
      depth--;
      const mid = first + Math.floor((last - first) / 2);
      medianToFirst(first, first + 1, mid, last - 1);
      const cut = partition(first + 1, last, first);
      introsort(cut, last, depth);
      last = cut;
    }
  };

  // Insertion of element i into the sorted run before it; a smaller element before it stops the scan.
  const linearInsert = (i: number) => {
    const v = p[i];
    const kv = key[v];
    let j = i;
    while (kv < key[p[j - 1]]) {
      p[j] = p[j - 1];
      j--;
    }
    p[j] = v;
  };
  const insertionSort = (first: number, last: number) => {
    for (let i = first + 1; i < last; i++) {
      if (key[p[i]] < key[p[first]]) {
        const v = p[i];
        p.copyWithin(first + 1, first, i);
        p[first] = v;
      } else linearInsert(i);
    }
  };

  introsort(0, n, 2 * (31 - Math.clz32(n))); // n < 2^32: floor(log2 n), exactly
  if (n > THRESHOLD) {
    insertionSort(0, THRESHOLD);
    for (let i = THRESHOLD; i < n; i++) linearInsert(i);
  } else insertionSort(0, n);
  return p;
}
