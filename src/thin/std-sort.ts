/**
 * libstdc++'s std::sort (GCC 4.9 and later) as a permutation, for rmap: its
 * order of equal keys is the reference tool's output order (src/thin/rmap.ts).
 * Written from the algorithm's description, step for step, because ties must
 * land where it puts them: median-of-three quicksort above 16 elements,
 * heapsort past a depth of 2*floor(log2 n), then one insertion sort.
 *
 * The sort of a long sequence kept in a file (src/thin/rmap-runs.ts) runs the
 * same steps over the file until a segment fits in memory and then sorts that
 * segment here with the depth left: partitions never move an element out of
 * its segment, and the final insertion sort never moves one across a
 * partition boundary (it moves an element only past strictly greater ones),
 * so sorting segment by segment gives the same permutation.
 *
 * The addon runs the same steps (native/std_sort.cc) where it loads: a
 * process sorts once, before V8 would optimise these loops (373,625 keys of
 * a 4M-mapping rmap: 46-51 ms here, ~15 ms there). These stay the fallback
 * and the short sorts' path.
 */
import { stdSortFunction } from '../native/binding';

/** @internal The addon's sort, looked up on first use; null: the JS steps (tests set it). */
export const nativeSort: { fn: ReturnType<typeof stdSortFunction> | undefined } = { fn: undefined };
/** Fewer keys than this are sorted here: the call into the addon would cost more than it saves. */
const NATIVE_SORT_MIN = 256;

/** Segments of at most this many elements are left to the final insertion sort. */
export const STD_SORT_THRESHOLD = 16;

/** std::sort's depth limit for n elements: 2 * floor(log2 n). */
export function introsortDepth(n: number): number {
  if (n < 2 ** 32) return 2 * (31 - Math.clz32(n));
  let d = 32;
  while (2 ** (d + 1) <= n) d++;
  return 2 * d;
}

// The sequence being sorted: module state, not closures made per call. The
// steps below were closures inside stdSortOrder; called once per segment of a
// spilled rmap they lost their inlining (V8 does not inline a function made
// anew on each call), and sorting 14 segments took 1.7x the CPU of one sort
// of all of them.
let K: Float64Array = new Float64Array(0);
let P: Uint32Array = new Uint32Array(0);

function less(a: number, b: number): boolean {
  return K[P[a]] < K[P[b]];
}

function swap(a: number, b: number): void {
  const t = P[a];
  P[a] = P[b];
  P[b] = t;
}

/** Puts the median of a, b, c at `to` (ties resolved as the library does). */
function medianToFirst(to: number, a: number, b: number, c: number): void {
  if (less(a, b)) {
    if (less(b, c)) swap(to, b);
    else if (less(a, c)) swap(to, c);
    else swap(to, a);
  } else if (less(a, c)) swap(to, a);
  else if (less(b, c)) swap(to, c);
  else swap(to, b);
}

/** Hoare partition of [first, last) around the pivot at `pivot`, no bounds checks. */
function partition(first: number, last: number, pivot: number): number {
  const kp = K[P[pivot]];
  for (;;) {
    while (K[P[first]] < kp) first++;
    last--;
    while (kp < K[P[last]]) last--;
    if (!(first < last)) return first;
    swap(first, last);
    first++;
  }
}

/** Binary max-heap over [first, first + len): sifts the value v down from hole, then up. */
function adjustHeap(first: number, hole: number, len: number, v: number): void {
  const top = hole;
  let child = hole;
  const kv = K[v];
  while (child < Math.floor((len - 1) / 2)) {
    child = 2 * (child + 1);
    if (K[P[first + child]] < K[P[first + child - 1]]) child--;
    P[first + hole] = P[first + child];
    hole = child;
  }
  if ((len & 1) === 0 && child === Math.floor((len - 2) / 2)) {
    child = 2 * (child + 1);
    P[first + hole] = P[first + child - 1];
    hole = child - 1;
  }
  let parent = Math.trunc((hole - 1) / 2); // C++ division truncates
  while (hole > top && K[P[first + parent]] < kv) {
    P[first + hole] = P[first + parent];
    hole = parent;
    parent = Math.trunc((hole - 1) / 2);
  }
  P[first + hole] = v;
}

function heapSort(first: number, last: number): void {
  const len = last - first;
  if (len >= 2) {
    for (let parent = Math.floor((len - 2) / 2); ; parent--) {
      adjustHeap(first, parent, len, P[first + parent]);
      if (parent === 0) break;
    }
  }
  for (let end = last; end - first > 1; ) {
    end--;
    const v = P[end];
    P[end] = P[first];
    adjustHeap(first, 0, end - first, v);
  }
}

function introsort(first: number, last: number, depth: number): void {
  while (last - first > STD_SORT_THRESHOLD) {
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
}

/** Inserts element i into the sorted run before it; a smaller element before it stops the scan. */
function linearInsert(i: number): void {
  const v = P[i];
  const kv = K[v];
  let j = i;
  while (kv < K[P[j - 1]]) {
    P[j] = P[j - 1];
    j--;
  }
  P[j] = v;
}

function insertionSort(first: number, last: number): void {
  for (let i = first + 1; i < last; i++) {
    if (K[P[i]] < K[P[first]]) {
      const v = P[i];
      P.copyWithin(first + 1, first, i);
      P[first] = v;
    } else linearInsert(i);
  }
}

/**
 * The permutation std::sort leaves a sequence in when sorting it by `key`
 * with operator<: element i of the result is the index of the input element
 * that ends up at position i. `depth` is the introsort depth left (a segment
 * of a larger sort passes what its parent left); `out` is reused when given.
 */
export function stdSortOrder(key: Float64Array, n: number, depth = introsortDepth(n), out?: Uint32Array): Uint32Array {
  const p = out && out.length >= n ? out : new Uint32Array(n);
  if (n >= NATIVE_SORT_MIN) {
    // undefined: not looked up yet; null (no addon, or a test): the JS steps. Not ??=, which takes null for unset.
    const sort = nativeSort.fn === undefined ? (nativeSort.fn = stdSortFunction()) : nativeSort.fn;
    if (sort) {
      sort(key, n, depth, p);
      return p;
    }
  }
  for (let i = 0; i < n; i++) p[i] = i;
  if (n < 2) return p;
  K = key;
  P = p;
  try {
    introsort(0, n, depth);
    if (n > STD_SORT_THRESHOLD) {
      insertionSort(0, STD_SORT_THRESHOLD);
      for (let i = STD_SORT_THRESHOLD; i < n; i++) linearInsert(i);
    } else insertionSort(0, n);
  } finally {
    // Not kept alive between sorts.
    K = new Float64Array(0);
    P = new Uint32Array(0);
  }
  return p;
}
