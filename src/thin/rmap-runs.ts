/**
 * The runs of an rmap, and thin_rmap's sort of them, in bounded memory.
 *
 * Each run is a 32-byte record: data begin and length (float64), device id,
 * virtual begin as low and high 32-bit words (exact to 2^64), one spare word.
 * Up to `maxInMemory` runs (default RMAP_RUNS_IN_MEMORY) are kept in memory
 * and sorted there. Past that, the runs are spilled, in walk order, to a
 * temporary file in os.tmpdir() (TMPDIR, read then), which is unlinked as soon as it is
 * opened: no name is left behind on any exit path (an error, SIGINT, SIGTERM,
 * even SIGKILL), and the space is freed when the descriptor closes. The sort
 * then runs std::sort's own steps over the file (median of three, Hoare
 * partition, heapsort past the depth limit; through a cache of two 256 KiB
 * blocks) until a segment has at most `maxInMemory` runs; that segment is
 * read in and finished by stdSortOrder (src/thin/std-sort.ts explains why
 * this gives std::sort's permutation, ties included). Segments come out in
 * print order, so the output is written as each one is sorted.
 *
 * The heapsort fallback jumps around its segment (a parent and its children
 * are far apart), which two 256 KiB blocks cannot serve: every step read and
 * wrote back 512 KiB, and an rmap whose runs were two sorted sequences (an
 * origin and a snapshot) took 56 s where thin_rmap takes 1.5 s. Heapsort's
 * steps depend on the keys alone, so a segment of up to `heapInMemory` runs
 * (default 2^20) is heapsorted as keys and indices in memory (12 bytes a
 * run) and its records are then gathered into print order by sequential
 * passes over the file, one per output chunk; a longer one is heapsorted
 * over the file through 512 cached 4 KiB blocks (the heap's first 65,536
 * runs, its top 16 levels, stay cached). Two sorted sequences of 1.5M runs:
 * 204 s at first, 1.6 s (thin_rmap 3.2 s); of 6M runs (segments of up to
 * 611k runs heapsorted): 26.9 s over the file, 4.0 s by keys (thin_rmap
 * 23.9 s).
 *
 * Memory: at most maxInMemory * 44 bytes (records, keys, order) plus 512 KiB of
 * cache, whatever the number of runs, and after the metadata is closed 12
 * bytes for each run of the longest segment heapsorted by keys (12 MiB at
 * most) with a 2 MiB read buffer, or 2 MiB of heap cache; the file holds 32
 * bytes per run.
 */
import { closeSync, openSync, readSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { DmthinError, SystemCallError, throwIfAborted } from '../errors';
import { partitionRunFileFunction } from '../native/binding';
import { introsortDepth, stdSortOrder, STD_SORT_THRESHOLD } from './std-sort';
import type { VirtualKey } from './mappings';

/**
 * @internal The addon's partition over the file (native/std_sort.cc),
 * looked up on first use; null: the JS steps below (tests set it). The JS
 * took ~55 ms of a 4M-mapping rmap's ~95 ms sort, run once per process
 * before V8 optimises it.
 */
export const filePartition: { fn: ReturnType<typeof partitionRunFileFunction> | undefined } = { fn: undefined };

/** Bytes of one run record. */
export const RUN_BYTES = 32;
/** Runs kept in memory before the table is spilled (2 MiB of records). */
export const RMAP_RUNS_IN_MEMORY = 1 << 16;
/** The longest segment heapsorted by its keys in memory: 12 MiB of keys and order. */
export const RMAP_HEAP_IN_MEMORY = 1 << 20;
/** Records per cache block of the spilled sort (256 KiB). */
const BLOCK_RUNS = 1 << 13;
/** Records per cache block of a heapsort over the file (4 KiB), and blocks cached (2 MiB). */
const HEAP_BLOCK_RUNS = 1 << 7;
const HEAP_SLOTS = 1 << 9;
/** Heap steps (each ~log2 n moves through the cache) between two turns of the event loop. */
const HEAP_STEPS_BETWEEN_TURNS = 4096;
const TWO32 = 2 ** 32;

/**
 * @internal Runs in print order: run `order[i]` of the records is printed
 * i-th. Record k: data begin `f64[4k]`, length `f64[4k+1]`, device
 * `u32[8k+4]`, virtual begin `u32[8k+6] * 2^32 + u32[8k+5]`. The arrays are
 * reused for the next chunk once the consumer asks for it.
 */
export interface RunChunk {
  /** Runs in this chunk. */
  readonly n: number;
  /** Print order. */
  readonly order: Uint32Array;
  /** The records as float64 words. */
  readonly f64: Float64Array;
  /** The records as uint32 words. */
  readonly u32: Uint32Array;
}

function tempError(e: unknown, what: string, path: string): DmthinError {
  if (e instanceof DmthinError) return e;
  const x = e as NodeJS.ErrnoException;
  const code = typeof x?.code === 'string' ? x.code : 'EIO';
  const room = code === 'ENOSPC' || code === 'EDQUOT' ? ' (32 bytes per run: point TMPDIR at a filesystem with room)' : '';
  return new SystemCallError(code, `cannot ${what} rmap's temporary file in ${path}: ${x?.message ?? String(e)}${room}`, { syscall: x?.syscall, path, cause: e });
}

/** One cached block of the spilled records: block `blk` of `cap` records, from record `first`. */
interface Slot {
  blk: number;
  first: number;
  cap: number;
  buf: Buffer;
  f: Float64Array;
  u: Uint32Array;
  dirty: boolean;
}

function newSlot(cap: number): Slot {
  const b = Buffer.allocUnsafeSlow(cap * RUN_BYTES);
  return { blk: -1, first: 0, cap, buf: b, f: new Float64Array(b.buffer, b.byteOffset, cap * 4), u: new Uint32Array(b.buffer, b.byteOffset, cap * 8), dirty: false };
}

/** @internal The runs of an rmap, in memory up to a bound, else in an unlinked temporary file. */
export class RmapRuns {
  /** Runs pushed. */
  n = 0;
  private buf: Buffer;
  private f: Float64Array;
  private u: Uint32Array;
  /** Runs in `buf` (all of them until the spill). */
  private held = 0;
  private fd = -1;
  private slots: Slot[] = [];
  private lastSlot = 0;
  /** The heapsort's cache while one runs over the file (slot(i) then serves from it). */
  private heapSlots: Slot[] | null = null;
  /** Made once and reused: a sort can heapsort many segments, and dropped buffers wait for the collector. */
  private heapCache: Slot[] | null = null;
  /** The keys-only heapsort's arrays (made once at its bound: pages become resident only as used) and its read buffer. */
  private keyArrays: { key: Float64Array; order: Uint32Array } | null = null;
  private piece: { buf: Buffer; f64: Float64Array; u32: Uint32Array } | null = null;
  private closed = false;

  /**
   * @param maxInMemory runs held in memory; past that they go to a file
   * @param dirOption where that file is made (default os.tmpdir(): TMPDIR,
   *   read when the file is made; node:os is loaded only then, ~0.5 ms of a
   *   short rmap's start-up otherwise)
   * @param heapInMemory the longest segment heapsorted by its keys in
   *   memory (12 bytes a run); longer ones over the file (tests set it)
   */
  constructor(
    private readonly maxInMemory = RMAP_RUNS_IN_MEMORY,
    private readonly dirOption?: string,
    private readonly heapInMemory = Math.max(maxInMemory, RMAP_HEAP_IN_MEMORY),
  ) {
    if (!(maxInMemory >= STD_SORT_THRESHOLD)) throw new RangeError(`maxInMemory ${maxInMemory} < ${STD_SORT_THRESHOLD}`);
    // All of it at once: pages become resident only as runs are written to them, and no copy is left for the collector.
    [this.buf, this.f, this.u] = this.alloc(maxInMemory);
  }

  private alloc(runs: number): [Buffer, Float64Array, Uint32Array] {
    const b = Buffer.allocUnsafeSlow(runs * RUN_BYTES);
    return [b, new Float64Array(b.buffer, b.byteOffset, runs * 4), new Uint32Array(b.buffer, b.byteOffset, runs * 8)];
  }

  /** Whether the runs went to the temporary file. */
  get spilled(): boolean {
    return this.fd >= 0;
  }

  push(data: number, len: number, dev: number, virt: VirtualKey): void {
    if (this.held * RUN_BYTES === this.buf.length) this.makeRoom();
    const k = this.held++;
    this.n++;
    this.f[4 * k] = data;
    this.f[4 * k + 1] = len;
    this.u[8 * k + 4] = dev;
    if (typeof virt === 'number') {
      const hi = Math.floor(virt / TWO32);
      this.u[8 * k + 5] = virt - hi * TWO32;
      this.u[8 * k + 6] = hi;
    } else {
      this.u[8 * k + 5] = Number(virt & 0xffffffffn);
      this.u[8 * k + 6] = Number(virt >> 32n);
    }
  }

  private makeRoom(): void {
    if (this.fd < 0) this.openFile();
    this.writeAt(this.buf, this.held * RUN_BYTES, (this.n - this.held) * RUN_BYTES);
    this.held = 0;
  }

  private dirChosen: string | undefined;
  /** Where the file goes (chosen once). */
  private get dir(): string {
    return (this.dirChosen ??= this.dirOption ?? (require('node:os') as typeof import('node:os')).tmpdir());
  }

  private openFile(): void {
    // node:crypto only now: most rmaps never spill, and it costs ~3 ms of start-up.
    const { randomBytes } = require('node:crypto') as typeof import('node:crypto');
    const path = join(this.dir, `dmthin-rmap-${process.pid}-${randomBytes(6).toString('hex')}.runs`);
    try {
      this.fd = openSync(path, 'wx+', 0o600);
    } catch (e) {
      throw tempError(e, 'create', this.dir);
    }
    // Nameless from here on: nothing to remove on any way out.
    try {
      unlinkSync(path);
    } catch (e) {
      this.close();
      throw tempError(e, 'unlink', this.dir);
    }
  }

  private writeAt(b: Buffer, bytes: number, pos: number): void {
    try {
      for (let off = 0; off < bytes; ) {
        const w = writeSync(this.fd, b, off, bytes - off, pos + off);
        if (w <= 0) throw new SystemCallError('EIO', 'write made no progress', { syscall: 'write' });
        off += w;
      }
    } catch (e) {
      throw tempError(e, 'write', this.dir);
    }
  }

  private readAt(b: Buffer, bytes: number, pos: number): void {
    try {
      for (let off = 0; off < bytes; ) {
        const r = readSync(this.fd, b, off, bytes - off, pos + off);
        if (r <= 0) throw new SystemCallError('EIO', 'read ended early', { syscall: 'read' });
        off += r;
      }
    } catch (e) {
      throw tempError(e, 'read', this.dir);
    }
  }

  /** Closes the temporary file (its space is freed); the runs are gone. */
  close(): void {
    this.closed = true;
    if (this.fd >= 0) {
      const fd = this.fd;
      this.fd = -1;
      closeSync(fd);
    }
    this.slots = [];
    this.heapCache = null;
    this.keyArrays = null;
    this.piece = null;
  }

  /**
   * The runs in thin_rmap's order, a chunk at a time. Each chunk's arrays are
   * reused for the next; the file is closed when the iteration ends (or is
   * abandoned through return()).
   */
  async *sorted(signal?: AbortSignal): AsyncGenerator<RunChunk> {
    if (this.closed) throw new DmthinError('EBADF', 'the runs of this rmap were already sorted and freed; walk again for another pass');
    try {
      if (!this.spilled) {
        const n = this.held;
        const key = new Float64Array(n);
        for (let k = 0; k < n; k++) key[k] = this.f[4 * k];
        yield { n, order: stdSortOrder(key, n), f64: this.f, u32: this.u };
        return;
      }
      if (this.held > 0) this.writeAt(this.buf, this.held * RUN_BYTES, (this.n - this.held) * RUN_BYTES);
      this.held = 0;
      const m = this.maxInMemory;
      // The walk's buffer is reused for the sorted segments.
      const key = new Float64Array(m);
      const order = new Uint32Array(m);
      for (let i = 0; i < 2; i++) this.slots.push(newSlot(BLOCK_RUNS));
      yield* this.sortSegment(0, this.n, introsortDepth(this.n), key, order, signal);
    } finally {
      this.close();
    }
  }

  // ------------------------------------------------ the spilled records, through the block cache

  private slot(i: number): Slot {
    if (this.heapSlots) return this.heapSlot(i);
    const blk = Math.floor(i / BLOCK_RUNS);
    const s0 = this.slots[0];
    if (s0.blk === blk) {
      this.lastSlot = 0;
      return s0;
    }
    const s1 = this.slots[1];
    if (s1.blk === blk) {
      this.lastSlot = 1;
      return s1;
    }
    // Replace the one used less recently.
    const v = this.lastSlot === 0 ? 1 : 0;
    const s = this.slots[v];
    this.fill(s, blk);
    this.lastSlot = v;
    return s;
  }

  /** Direct-mapped: the heap's first 512 blocks (its top levels) never evict each other. */
  private heapSlot(i: number): Slot {
    const blk = Math.floor(i / HEAP_BLOCK_RUNS);
    const s = this.heapSlots![blk % HEAP_SLOTS];
    if (s.blk !== blk) this.fill(s, blk);
    return s;
  }

  /** Writes the slot back if dirty, then reads block `blk` into it. */
  private fill(s: Slot, blk: number): void {
    this.writeBack(s);
    const first = blk * s.cap;
    this.readAt(s.buf, Math.min(s.cap, this.n - first) * RUN_BYTES, first * RUN_BYTES);
    s.blk = blk;
    s.first = first;
  }

  private writeBack(s: Slot): void {
    if (s.dirty) {
      this.writeAt(s.buf, Math.min(s.cap, this.n - s.first) * RUN_BYTES, s.first * RUN_BYTES);
      s.dirty = false;
    }
  }

  private flushCache(): void {
    for (const s of this.slots) {
      this.writeBack(s);
      s.blk = -1;
    }
  }

  private key(i: number): number {
    const s = this.slot(i);
    return s.f[4 * (i - s.first)];
  }

  /** Copies record i into the 8 words of `to`. */
  private save(i: number, to: Uint32Array): void {
    const s = this.slot(i);
    const o = 8 * (i - s.first);
    for (let w = 0; w < 8; w++) to[w] = s.u[o + w];
  }

  /** Writes the 8 words of `from` as record i. */
  private restore(i: number, from: Uint32Array): void {
    const s = this.slot(i);
    const o = 8 * (i - s.first);
    for (let w = 0; w < 8; w++) s.u[o + w] = from[w];
    s.dirty = true;
  }

  private readonly tmpA = new Uint32Array(8);
  private readonly tmpB = new Uint32Array(8);
  private readonly tmpKey = new Float64Array(this.tmpA.buffer, 0, 1);

  private swap(i: number, j: number): void {
    if (i === j) return;
    this.save(i, this.tmpA);
    this.save(j, this.tmpB);
    this.restore(i, this.tmpB);
    this.restore(j, this.tmpA);
  }

  private move(to: number, from: number): void {
    this.save(from, this.tmpB);
    this.restore(to, this.tmpB);
  }

  private less(a: number, b: number): boolean {
    return this.key(a) < this.key(b);
  }

  private medianToFirst(to: number, a: number, b: number, c: number): void {
    if (this.less(a, b)) {
      if (this.less(b, c)) this.swap(to, b);
      else if (this.less(a, c)) this.swap(to, c);
      else this.swap(to, a);
    } else if (this.less(a, c)) this.swap(to, a);
    else if (this.less(b, c)) this.swap(to, c);
    else this.swap(to, b);
  }

  /** A block for one of the partition's two cursors: never the slot the other cursor reads. */
  private cursorSlot(blk: number, mine: Slot, other: Slot): Slot {
    if (mine.blk === blk) return mine;
    if (other.blk === blk) return other;
    const s = mine !== other ? mine : this.slots[0] === other ? this.slots[1] : this.slots[0];
    this.fill(s, blk);
    return s;
  }

  /** The partition of [first, last) around record `pivot`: the addon's where it loads, else partition(). */
  private partitionStep(first: number, last: number, pivot: number): number {
    // undefined: not looked up yet; null (no addon, or a test): the JS steps. Not ??=, which takes null for unset.
    const native = filePartition.fn === undefined ? (filePartition.fn = partitionRunFileFunction()) : filePartition.fn;
    if (native === null) return this.partition(first, last, pivot);
    const kp = this.key(pivot);
    // The addon reads and writes the file itself: the cache goes first (and holds nothing after).
    this.flushCache();
    try {
      return native(this.fd, this.n, first, last, pivot, kp);
    } catch (e) {
      throw tempError(e, (e as NodeJS.ErrnoException)?.syscall === 'pwrite' ? 'write' : 'read', this.dir);
    }
  }

  /**
   * std::__unguarded_partition over the file: the two cursors read their
   * blocks' arrays directly (a cache lookup per element cost more than the
   * rest of the sort).
   */
  private partition(first: number, last: number, pivot: number): number {
    const kp = this.key(pivot); // the pivot is outside [first, last): it never moves here
    const B = BLOCK_RUNS;
    let ls = this.cursorSlot(Math.floor(first / B), this.slots[0], this.slots[0]);
    let rs = ls;
    let lBase = ls.blk * B;
    let rBase = lBase;
    for (;;) {
      for (;;) {
        if (first - lBase >= B || first < lBase) {
          ls = this.cursorSlot(Math.floor(first / B), ls, rs);
          lBase = ls.blk * B;
        }
        if (!(ls.f[4 * (first - lBase)] < kp)) break;
        first++;
      }
      last--;
      for (;;) {
        if (last < rBase || last - rBase >= B) {
          rs = this.cursorSlot(Math.floor(last / B), rs, ls);
          rBase = rs.blk * B;
        }
        if (!(kp < rs.f[4 * (last - rBase)])) break;
        last--;
      }
      if (!(first < last)) return first;
      const lu = ls.u;
      const ru = rs.u;
      const lo = 8 * (first - lBase);
      const ro = 8 * (last - rBase);
      for (let w = 0; w < 8; w++) {
        const t = lu[lo + w];
        lu[lo + w] = ru[ro + w];
        ru[ro + w] = t;
      }
      ls.dirty = true;
      rs.dirty = true;
      first++;
    }
  }

  /** std::__adjust_heap with the value held in tmpA (its key in tmpKey). */
  private adjustHeap(first: number, hole: number, len: number): void {
    const top = hole;
    let child = hole;
    const kv = this.tmpKey[0];
    while (child < Math.floor((len - 1) / 2)) {
      child = 2 * (child + 1);
      if (this.key(first + child) < this.key(first + child - 1)) child--;
      this.move(first + hole, first + child);
      hole = child;
    }
    if ((len & 1) === 0 && child === Math.floor((len - 2) / 2)) {
      child = 2 * (child + 1);
      this.move(first + hole, first + child - 1);
      hole = child - 1;
    }
    let parent = Math.trunc((hole - 1) / 2);
    while (hole > top && this.key(first + parent) < kv) {
      this.move(first + hole, first + parent);
      hole = parent;
      parent = Math.trunc((hole - 1) / 2);
    }
    this.restore(first + hole, this.tmpA);
  }

  private async heapSort(first: number, last: number, signal?: AbortSignal): Promise<void> {
    this.flushCache();
    this.heapCache ??= Array.from({ length: HEAP_SLOTS }, () => newSlot(HEAP_BLOCK_RUNS));
    for (const s of this.heapCache) s.blk = -1;
    this.heapSlots = this.heapCache;
    try {
      await this.heapSteps(first, last, signal);
      for (const s of this.heapSlots) this.writeBack(s);
    } finally {
      this.heapSlots = null;
    }
  }

  /**
   * The event loop turns every HEAP_STEPS_BETWEEN_TURNS steps: a heapsort
   * over the file of a segment past heapInMemory (keys built to force it)
   * took ~40 s, and Ctrl-C waited for all of it (an outside test).
   */
  private async heapSteps(first: number, last: number, signal?: AbortSignal): Promise<void> {
    const len = last - first;
    let steps = 0;
    const turn = async () => {
      await new Promise<void>((r) => setImmediate(r));
      throwIfAborted(signal);
    };
    if (len >= 2) {
      for (let parent = Math.floor((len - 2) / 2); ; parent--) {
        this.save(first + parent, this.tmpA);
        this.adjustHeap(first, parent, len);
        if (parent === 0) break;
        if (++steps % HEAP_STEPS_BETWEEN_TURNS === 0) await turn();
      }
    }
    for (let end = last; end - first > 1; ) {
      end--;
      this.save(end, this.tmpA);
      this.move(end, first);
      this.adjustHeap(first, 0, end - first);
      if (++steps % HEAP_STEPS_BETWEEN_TURNS === 0) await turn();
    }
  }

  /**
   * Records [first, last) heapsorted by their keys alone: the keys are read
   * in (8 bytes a run), std::sort's heapsort steps give the order (4 bytes a
   * run; the steps depend on the keys only, so the permutation, ties
   * included, is the one the records would take), and each output chunk is
   * gathered by one sequential pass over the segment. A heapsort over the
   * file instead read and wrote a 4 KiB block for most of its ~n log n moves.
   * Chunks of maxInMemory runs in print order, in the walk's buffer.
   */
  private *heapSortByKeys(first: number, last: number, ident: Uint32Array, signal?: AbortSignal): Generator<RunChunk> {
    this.flushCache();
    const n = last - first;
    const m = this.maxInMemory;
    // At the bound once: a growing pair left its predecessors to the collector.
    this.keyArrays ??= { key: new Float64Array(this.heapInMemory), order: new Uint32Array(this.heapInMemory) };
    if (!this.piece) {
      const [buf, f64, u32] = this.alloc(m);
      this.piece = { buf, f64, u32 };
    }
    const { key, order } = this.keyArrays;
    const pc = this.piece;
    for (let s = 0; s < n; s += m) {
      const c = Math.min(m, n - s);
      this.readAt(pc.buf, c * RUN_BYTES, (first + s) * RUN_BYTES);
      for (let k = 0; k < c; k++) key[s + k] = pc.f64[4 * k];
    }
    stdSortOrder(key, n, 0, order);
    // The keys are spent: their memory holds each run's place in print order.
    const rank = new Uint32Array(key.buffer, 0, n);
    for (let i = 0; i < n; i++) rank[order[i]] = i;
    for (let i = 0; i < m; i++) ident[i] = i;
    const out = this.u;
    const src = pc.u32;
    for (let lo = 0; lo < n; lo += m) {
      throwIfAborted(signal);
      const cnt = Math.min(m, n - lo);
      for (let s = 0; s < n; s += m) {
        const c = Math.min(m, n - s);
        this.readAt(pc.buf, c * RUN_BYTES, (first + s) * RUN_BYTES);
        for (let k = 0; k < c; k++) {
          const r = rank[s + k] - lo;
          if (r >= 0 && r < cnt) {
            const o = 8 * r;
            const i = 8 * k;
            for (let w = 0; w < 8; w++) out[o + w] = src[i + w];
          }
        }
      }
      yield { n: cnt, order: ident, f64: this.f, u32: this.u };
    }
  }

  /** Records [first, last) into the chunk arrays (last - first <= maxInMemory). */
  private load(first: number, last: number): number {
    this.flushCache();
    const n = last - first;
    this.readAt(this.buf, n * RUN_BYTES, first * RUN_BYTES);
    return n;
  }

  /** std::sort's introsort loop over the file, left segment first (segments are independent). */
  private async *sortSegment(first: number, last: number, depth: number, key: Float64Array, order: Uint32Array, signal?: AbortSignal): AsyncGenerator<RunChunk> {
    const m = this.maxInMemory;
    while (last - first > m) {
      throwIfAborted(signal);
      await new Promise<void>((r) => setImmediate(r)); // let a signal in between passes
      if (depth === 0) {
        if (last - first <= this.heapInMemory) {
          yield* this.heapSortByKeys(first, last, order, signal);
          return;
        }
        await this.heapSort(first, last, signal);
        // Sorted: the final insertion sort leaves it as it is.
        for (let s = first; s < last; s += m) {
          const n = this.load(s, Math.min(last, s + m));
          for (let i = 0; i < n; i++) order[i] = i;
          yield { n, order, f64: this.f, u32: this.u };
        }
        return;
      }
      depth--;
      const mid = first + Math.floor((last - first) / 2);
      this.medianToFirst(first, first + 1, mid, last - 1);
      const cut = this.partitionStep(first + 1, last, first);
      yield* this.sortSegment(first, cut, depth, key, order, signal);
      first = cut;
    }
    throwIfAborted(signal);
    const n = this.load(first, last);
    for (let k = 0; k < n; k++) key[k] = this.f[4 * k];
    yield { n, order: stdSortOrder(key, n, depth, order), f64: this.f, u32: this.u };
  }
}
