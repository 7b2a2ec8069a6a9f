/**
 * The addon's two rmap helpers: writeRmapLines (native/rmap_lines.cc), checked
 * against lines built here with BigInt arithmetic from thin_rmap's format (not
 * against dmthin's JS line writer), and stdSortOrder's argument checks
 * (native/std_sort.cc; its order is compared with the system's std::sort in
 * test/thin/rmap-runs.test.ts). A bad call must write nothing.
 */
import { native } from '../../src/native/binding';

const RUN_WORDS = 8;

/** Run records as rmap-runs.ts lays them out: data begin, length (float64), device, virtual begin (low, high words). */
function records(runs: { data: number; len: number; dev: number; virt: bigint }[]): Uint32Array {
  const buf = new ArrayBuffer(runs.length * RUN_WORDS * 4);
  const f64 = new Float64Array(buf);
  const u32 = new Uint32Array(buf);
  runs.forEach((r, k) => {
    f64[4 * k] = r.data;
    f64[4 * k + 1] = r.len;
    u32[8 * k + 4] = r.dev;
    u32[8 * k + 5] = Number(r.virt & 0xffffffffn);
    u32[8 * k + 6] = Number(r.virt >> 32n);
  });
  return u32;
}

/** thin_rmap's line: the data range, the device, the virtual range with its end in u64 arithmetic. */
const line = (r: { data: number; len: number; dev: number; virt: bigint }) =>
  `data ${r.data}..${BigInt(r.data) + BigInt(r.len)} -> thin(${r.dev}) ${r.virt}..${BigInt.asUintN(64, r.virt + BigInt(r.len))}\n`;

/** A deterministic pseudo-random sequence (a failure must reproduce). */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

describe('writeRmapLines', () => {
  const { writeRmapLines, rmapLineMaxBytes } = native();
  const rnd = lcg(7);
  const edges = [
    { data: 0, len: 1, dev: 0, virt: 0n },
    { data: 2 ** 40 - 1, len: 1, dev: 2 ** 32 - 1, virt: 2n ** 64n - 1n }, // the last key: its end wraps to 0
    { data: 12345, len: 2 ** 40, dev: 7, virt: 2n ** 53n - 1n }, // numbers past 2^53 on the virtual side
    { data: 999999, len: 100, dev: 16777215, virt: 2n ** 64n - 50n }, // the end wraps to 50
    { data: 9999, len: 1, dev: 10, virt: 9999n },
    { data: 2 ** 53 - 2, len: 1, dev: 1, virt: 2n ** 32n }, // the largest data range it takes
  ];
  const random = Array.from({ length: 3000 }, () => ({
    data: Math.floor(rnd() * 2 ** 40),
    len: 1 + Math.floor(rnd() * 2 ** (rnd() * 30)),
    dev: Math.floor(rnd() * 2 ** 32),
    virt: (BigInt(Math.floor(rnd() * 2 ** 32)) << BigInt(Math.floor(rnd() * 33))) | BigInt(Math.floor(rnd() * 1000)),
  }));
  const runs = [...edges, ...random];
  const recs = records(runs);

  test('thin_rmap\'s line for each run, in the order given, from an offset; returns the end', () => {
    // A permutation with repeats: print order is any sequence of record indices.
    const order = Uint32Array.from({ length: runs.length + 20 }, (_, i) => (i < runs.length ? runs.length - 1 - i : i % 5));
    const from = 3;
    const to = order.length - 2;
    const dst = Buffer.alloc(7 + (to - from) * rmapLineMaxBytes, '.');
    const end = writeRmapLines(dst, 7, recs, order, from, to);
    const want = Array.from(order.subarray(from, to), (k) => line(runs[k])).join('');
    expect(dst.toString('latin1', 0, 7)).toBe('.......');
    expect(dst.toString('latin1', 7, end)).toBe(want);
    expect(dst.toString('latin1', end)).toBe('.'.repeat(dst.length - end));
  });

  test('every line fits the bound it states', () => {
    const widest = { data: 2 ** 53 - 2, len: 1, dev: 2 ** 32 - 1, virt: 2n ** 64n - 1n };
    expect(line(widest).length).toBeLessThanOrEqual(rmapLineMaxBytes);
    const dst = Buffer.alloc(rmapLineMaxBytes);
    expect(writeRmapLines(dst, 0, records([widest]), Uint32Array.of(0), 0, 1)).toBe(line(widest).length);
  });

  test('an empty range writes nothing', () => {
    const dst = Buffer.alloc(4, '.');
    expect(writeRmapLines(dst, 4, recs, Uint32Array.of(0), 1, 1)).toBe(4);
    expect(dst.toString()).toBe('....');
  });

  test('a bad call throws a RangeError or TypeError and writes nothing at all', () => {
    const two = records([
      { data: 1, len: 2, dev: 3, virt: 4n },
      { data: 5, len: 6, dev: 7, virt: 8n },
    ]);
    const withRecord = (r: { data: number; len: number }) => records([{ ...r, dev: 1, virt: 1n }]);
    const M = rmapLineMaxBytes;
    const cases: [string, (b: Buffer) => number, RegExp][] = [
      ['an order index beyond the records (the last line)', (b) => writeRmapLines(b, 0, two, Uint32Array.of(0, 1, 2), 0, 3), /order\[2\] is beyond the records/],
      ['a fractional data begin', (b) => writeRmapLines(b, 0, withRecord({ data: 1.5, len: 1 }), Uint32Array.of(0), 0, 1), /not integers below 2\^53/],
      ['a negative length', (b) => writeRmapLines(b, 0, withRecord({ data: 1, len: -1 }), Uint32Array.of(0), 0, 1), /not integers below 2\^53/],
      ['NaN', (b) => writeRmapLines(b, 0, withRecord({ data: NaN, len: 1 }), Uint32Array.of(0), 0, 1), /not integers below 2\^53/],
      ['an end at 2^53', (b) => writeRmapLines(b, 0, withRecord({ data: 2 ** 53 - 1, len: 1 }), Uint32Array.of(0), 0, 1), /not integers below 2\^53/],
      ['too little room for the lines', (b) => writeRmapLines(b, b.length - M + 1, two, Uint32Array.of(0), 0, 1), /not enough room/],
      ['rows beyond the order', (b) => writeRmapLines(b, 0, two, Uint32Array.of(0), 0, 2), /bad at, from or to/],
      ['from after to', (b) => writeRmapLines(b, 0, two, Uint32Array.of(0, 1), 2, 1), /bad at, from or to/],
      ['a fractional offset', (b) => writeRmapLines(b, 0.5, two, Uint32Array.of(0), 0, 1), /bad at, from or to/],
      ['Float64Array records', (b) => writeRmapLines(b, 0, new Float64Array(8) as unknown as Uint32Array, Uint32Array.of(0), 0, 1), /writeRmapLines\(dst/],
      ['a missing argument', (b) => (writeRmapLines as unknown as (...a: unknown[]) => number)(b, 0, two, Uint32Array.of(0), 0), /writeRmapLines\(dst/],
    ];
    for (const [what, call, message] of cases) {
      const buf = Buffer.alloc(4 * M, '.');
      expect(() => call(buf)).toThrow(message);
      expect([what, buf.toString()]).toEqual([what, '.'.repeat(4 * M)]);
    }
  });

  test('a destination sharing memory with the order or the records is refused, nothing written (a review: lines written over the order made the next index ~1.6e9, SIGSEGV)', () => {
    const M = rmapLineMaxBytes;
    const two = records([
      { data: 1, len: 2, dev: 3, virt: 4n },
      { data: 5, len: 6, dev: 7, virt: 8n },
    ]);
    const ab = new ArrayBuffer(8 * M);
    const order = new Uint32Array(ab, 0, 4).fill(1);
    const dst = new Uint8Array(ab);
    const before = Buffer.from(ab).toString('hex');
    expect(() => writeRmapLines(dst, 64, two, order, 0, 4)).toThrow(/shares memory/);
    const recAb = new ArrayBuffer(two.byteLength + 4 * M);
    const recs2 = new Uint32Array(recAb, 0, two.length);
    recs2.set(two);
    expect(() => writeRmapLines(new Uint8Array(recAb, 16), 200, recs2, Uint32Array.of(0, 1), 0, 2)).toThrow(/shares memory/);
    expect(Buffer.from(ab).toString('hex')).toBe(before);
    expect(Array.from(recs2)).toEqual(Array.from(two));
    // Next to each other in one buffer, not overlapping: fine.
    const dst2 = new Uint8Array(ab, 16);
    expect(writeRmapLines(dst2, 0, two, order, 0, 4)).toBe(4 * line({ data: 5, len: 6, dev: 7, virt: 8n }).length);
  });

  test('a detached destination is refused, not written', () => {
    const ab = new ArrayBuffer(4 * rmapLineMaxBytes);
    const dst = new Uint8Array(ab);
    structuredClone(ab, { transfer: [ab] });
    expect(() => writeRmapLines(dst, 0, recs, Uint32Array.of(0), 0, 1)).toThrow(/not enough room/);
  });
});

describe('stdSortOrder (the addon\'s)', () => {
  const { stdSortOrder } = native();

  test('a bad call throws and leaves out as it was', () => {
    const cases: [string, (out: Uint32Array) => void, RegExp][] = [
      ['a NaN key', (o) => stdSortOrder(Float64Array.of(3, 1, NaN, 2), 4, 4, o), /key 2 is NaN/],
      ['n beyond the keys', (o) => stdSortOrder(Float64Array.of(3, 1), 3, 4, o), /n must be an integer/],
      ['n beyond out', (o) => stdSortOrder(new Float64Array(9), 9, 4, o), /n must be an integer/],
      ['a fractional n', (o) => stdSortOrder(Float64Array.of(3, 1), 1.5, 4, o), /n must be an integer/],
      ['a negative depth', (o) => stdSortOrder(Float64Array.of(3, 1), 2, -1, o), /depth must be/],
      // A depth std::sort never has would let adversarial keys recurse ~n/2 deep (a review: a stack overflow).
      ['a depth above 128', (o) => stdSortOrder(Float64Array.of(3, 1), 2, 129, o), /depth must be an integer from 0 to 128/],
      ['Uint32Array keys', (o) => stdSortOrder(new Uint32Array(2) as unknown as Float64Array, 2, 4, o), /stdSortOrder\(keys/],
    ];
    for (const [what, call, message] of cases) {
      const out = new Uint32Array(8).fill(77);
      expect(() => call(out)).toThrow(message);
      expect([what, Array.from(out)]).toEqual([what, new Array(8).fill(77)]);
    }
  });

  test('keys that share memory with out are read before out is written', () => {
    // The permutation is built aside and copied: a caller reusing one buffer for both gets the right order.
    const ab = new ArrayBuffer(64);
    const keys = new Float64Array(ab, 0, 4);
    keys.set([30, 10, 40, 20]);
    stdSortOrder(keys, 4, 4, new Uint32Array(ab, 0, 4));
    expect(Array.from(new Uint32Array(ab, 0, 4))).toEqual([1, 3, 0, 2]);
  });
});
