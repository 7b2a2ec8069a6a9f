/**
 * The addon's writeDecimalCells (native/decimal_cells.cc): the integer
 * columns of ls's table. Checked against JavaScript's own number printing
 * (String and padStart), not against dmthin's JS cell writer; and a bad
 * call must write nothing.
 */
import { native } from '../../src/native/binding';

const UNITS = ['', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];

/** What the cells should read: each value (and its unit) right-aligned in `width`, a space, a newline when asked. */
function expected(values: ArrayLike<number>, from: number, to: number, width: number, stride: number, newline: boolean, units?: Uint8Array): string[] {
  const cells: string[] = [];
  for (let j = from; j < to; j++) {
    const text = String(values[j]) + (units ? UNITS[units[j]] : '');
    cells.push(text.padStart(width) + ' ' + (newline ? '\n' : '') + '.'.repeat(stride - width - 1 - (newline ? 1 : 0)));
  }
  return cells;
}

function cellsOf(buf: Buffer, at: number, stride: number, count: number): string[] {
  const out: string[] = [];
  for (let k = 0; k < count; k++) out.push(buf.toString('latin1', at + k * stride, at + (k + 1) * stride));
  return out;
}

describe('writeDecimalCells', () => {
  const { writeDecimalCells } = native();

  test('u32 and f64 columns, with and without units, any width and stride, a slice of the rows', () => {
    const edges = [0, 1, 9, 10, 99, 100, 999, 1000, 65535, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1];
    const u32 = Uint32Array.from([...edges, ...Array.from({ length: 500 }, () => Math.floor(Math.random() * 2 ** 32))]);
    const bigs = [2 ** 32, 2 ** 32 + 1, 10 ** 15, 2 ** 53 - 1, 999_999_999_999, 2 ** 53 - 2];
    const f64 = Float64Array.from([...edges, ...bigs, ...Array.from({ length: 500 }, () => Math.floor(Math.random() * 2 ** 53))]);
    for (const values of [u32, f64]) {
      const units = Uint8Array.from(values, () => Math.floor(Math.random() * UNITS.length));
      for (const withUnits of [false, true]) {
        const widest = Math.max(...Array.from(values, (v, j) => String(v).length + (withUnits ? UNITS[units[j]].length : 0)));
        for (const extra of [0, 3]) {
          const width = widest + extra;
          for (const newline of [false, true]) {
            const stride = width + 2 + (newline ? 1 : 0) + extra;
            const from = 3;
            const to = values.length - 2;
            const buf = Buffer.alloc(5 + (to - from) * stride, '.');
            writeDecimalCells(buf, 5, stride, values, from, to, width, newline, withUnits ? units : undefined, withUnits ? UNITS : undefined);
            expect(buf.toString('latin1', 0, 5)).toBe('.....');
            expect(cellsOf(buf, 5, stride, to - from)).toEqual(expected(values, from, to, width, stride, newline, withUnits ? units : undefined));
          }
        }
      }
    }
  });

  test('an empty range writes nothing; cells may end at the buffer\'s last byte', () => {
    const buf = Buffer.alloc(8, '.');
    writeDecimalCells(buf, 8, 8, new Uint32Array([1]), 0, 0, 3, false);
    expect(buf.toString()).toBe('........');
    writeDecimalCells(buf, 3, 0, new Uint32Array([42]), 0, 1, 4, false);
    expect(buf.toString()).toBe('...  42 ');
  });

  test('a bad call throws a RangeError or TypeError and writes nothing at all', () => {
    const cases: [string, (b: Buffer) => void, RegExp][] = [
      ['a cell wider than its column (the last row)', (b) => writeDecimalCells(b, 0, 8, new Uint32Array([1, 22, 333, 4444]), 0, 4, 3, false), /row 3 is wider/],
      ['a unit that makes it wider', (b) => writeDecimalCells(b, 0, 8, new Uint32Array([1, 22]), 0, 2, 4, false, Uint8Array.of(0, 1), UNITS), /row 1 is wider/],
      ['a unit index beyond the names', (b) => writeDecimalCells(b, 0, 8, new Uint32Array([1, 2]), 0, 2, 4, false, Uint8Array.of(0, 9), UNITS), /no such unit/],
      ['a fraction', (b) => writeDecimalCells(b, 0, 8, Float64Array.of(1, 2.5), 0, 2, 6, false), /not an integer/],
      ['a negative', (b) => writeDecimalCells(b, 0, 8, Float64Array.of(1, -1), 0, 2, 6, false), /not an integer/],
      ['2^53', (b) => writeDecimalCells(b, 0, 20, Float64Array.of(1, 2 ** 53), 0, 2, 18, false), /not an integer/],
      ['NaN', (b) => writeDecimalCells(b, 0, 8, Float64Array.of(NaN), 0, 1, 6, false), /not an integer/],
      ['cells beyond the buffer', (b) => writeDecimalCells(b, 0, 8, new Uint32Array(9), 0, 9, 3, false), /beyond the buffer/],
      ['a start beyond the buffer', (b) => writeDecimalCells(b, 70, 8, new Uint32Array(1), 0, 1, 3, false), /beyond the buffer/],
      ['rows beyond the values', (b) => writeDecimalCells(b, 0, 8, new Uint32Array(2), 0, 3, 3, false), /bad at, stride, from, to or width/],
      ['from after to', (b) => writeDecimalCells(b, 0, 8, new Uint32Array(2), 2, 1, 3, false), /bad at/],
      ['a fractional offset', (b) => writeDecimalCells(b, 0.5, 8, new Uint32Array(2), 0, 1, 3, false), /bad at/],
      ['a stride shorter than a cell', (b) => writeDecimalCells(b, 0, 3, new Uint32Array(2), 0, 2, 3, false), /stride shorter/],
      ['width 0', (b) => writeDecimalCells(b, 0, 8, new Uint32Array(1), 0, 1, 0, false), /bad at/],
      ['Int32Array values', (b) => writeDecimalCells(b, 0, 8, new Int32Array(1) as unknown as Uint32Array, 0, 1, 3, false), /writeDecimalCells\(dst/],
      ['a Uint16Array destination', () => writeDecimalCells(new Uint16Array(8) as unknown as Uint8Array, 0, 8, new Uint32Array(1), 0, 1, 3, false), /writeDecimalCells\(dst/],
    ];
    for (const [what, call, message] of cases) {
      const buf = Buffer.alloc(64, '.');
      expect(() => call(buf)).toThrow(message);
      expect([what, buf.toString()]).toEqual([what, '.'.repeat(64)]);
    }
  });
});

describe('writeDecimalCells and JavaScript that runs during the call (a review: it checked the buffers, then read the unit names, whose getter could shrink or detach them, and wrote out of bounds)', () => {
  const { writeDecimalCells } = native();
  it.each(['shrinks', 'detaches'])('a unit-name getter that %s the destination: refused, nothing written out of bounds', (mode) => {
    const ab = new (ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => ArrayBuffer & { resize(n: number): void })(1 << 20, { maxByteLength: 1 << 21 });
    const dst = new Uint8Array(ab);
    const names = ['', 'KiB'];
    Object.defineProperty(names, 1, {
      get() {
        if (mode === 'shrinks') ab.resize(0);
        else structuredClone(ab, { transfer: [ab] });
        return 'KiB';
      },
    });
    const n = 20_000;
    expect(() => writeDecimalCells(dst, 0, 50, new Uint32Array(n).fill(123456), 0, n, 40, true, new Uint8Array(n), names)).toThrow(/cells beyond the buffer/);
  });

  it('a destination sharing memory with the values or the units is refused, nothing written (an outside test: a cell overwrote the next value, which then wrote a byte before dst)', () => {
    const ab = new ArrayBuffer(256);
    const values = new Uint32Array(ab, 0, 2);
    values.set([123456789, 7]);
    const before = Buffer.from(ab).toString('hex');
    expect(() => writeDecimalCells(new Uint8Array(ab, 4), 0, 12, values, 0, 2, 10, false)).toThrow(/shares memory with the values or the units/);
    const units = new Uint8Array(ab, 100, 2);
    expect(() => writeDecimalCells(new Uint8Array(ab, 64), 0, 12, new Uint32Array([1, 2]), 0, 2, 10, false, units, ['', 'KiB'])).toThrow(/shares memory/);
    expect(Buffer.from(ab).toString('hex')).toBe(before);
    // Beside each other in one buffer: fine.
    writeDecimalCells(new Uint8Array(ab, 8, 22), 0, 11, values, 0, 2, 10, false);
    expect(Buffer.from(ab).toString('latin1', 8, 30)).toBe(' 123456789          7 ');
  });

  it('values and destination in SharedArrayBuffers are read and written like any other', () => {
    const values = new Uint32Array(new SharedArrayBuffer(8));
    values[1] = 4242;
    const dst = new Uint8Array(new SharedArrayBuffer(16)).fill(0x2e);
    writeDecimalCells(dst, 1, 0, values, 1, 2, 6, true);
    expect(Buffer.from(dst).toString('latin1')).toBe('.  4242 \n.......');
  });
});

describe('diskUnits', () => {
  const { diskUnits } = native();
  const NAMES = ['', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];

  /** thin_ls's rule in BigInt steps: divide by 1024 while above 1 MiB, then round to the next unit if above 8 KiB. */
  function human(bytes: bigint): [number, number] {
    let n = bytes;
    let i = 0;
    while (n > 1048576n) {
      n /= 1024n;
      i++;
    }
    if (n > 8192n) {
      // Round half up: n * 2 + 1024 over 2048.
      n = (n * 2n + 1024n) / 2048n;
      i++;
    }
    return [Number(n), i];
  }

  test('each row\'s number and suffix, and the largest number of each suffix, for any block size', () => {
    let s = 3;
    const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
    const edges = [0, 1, 2, 15, 16, 17, 127, 128, 129, 1023, 1024, 1025, 2047, 2048, 16383, 16384, 16385, 2 ** 20, 2 ** 32, 2 ** 40];
    for (const bytesPerBlock of [512, 4096, 65536, 1 << 30, 3 * 512]) {
      const blocks = Float64Array.from([...edges, ...Array.from({ length: 2000 }, () => Math.floor(rnd() * 2 ** Math.floor(rnd() * 43)))].filter((b) => b * bytesPerBlock < 2 ** 53));
      const values = new Uint32Array(blocks.length);
      const units = new Uint8Array(blocks.length);
      const max = new Float64Array(7);
      expect(diskUnits(blocks, bytesPerBlock, values, units, max)).toBe(true);
      const want = Array.from(blocks, (b) => human(BigInt(b) * BigInt(bytesPerBlock)));
      expect(Array.from(blocks, (_, j) => `${values[j]}${NAMES[units[j]]}`)).toEqual(want.map(([n, i]) => `${n}${NAMES[i]}`));
      const wantMax = new Array(7).fill(0);
      for (const [n, i] of want) wantMax[i] = Math.max(wantMax[i], n);
      expect(Array.from(max)).toEqual(wantMax);
    }
  });

  test('a byte count of 2^53 or more, or a block count that is not an integer: false (the exact path takes over)', () => {
    const out = () => [new Uint32Array(3), new Uint8Array(3), new Float64Array(7)] as const;
    expect(diskUnits(Float64Array.of(1, 2 ** 44, 3), 2 ** 9, ...out())).toBe(false);
    expect(diskUnits(Float64Array.of(1, 2 ** 44 - 1, 3), 2 ** 9, ...out())).toBe(true);
    expect(diskUnits(Float64Array.of(1, 2.5), 512, ...out())).toBe(false);
    expect(diskUnits(Float64Array.of(NaN), 512, ...out())).toBe(false);
    expect(diskUnits(Float64Array.of(-1), 512, ...out())).toBe(false);
  });

  test('bad arguments are refused before anything is written', () => {
    const values = new Uint32Array(2).fill(9);
    expect(() => diskUnits(Float64Array.of(1, 2), 512, new Uint32Array(1), new Uint8Array(2), new Float64Array(7))).toThrow(/a row for each block count/);
    expect(() => diskUnits(Float64Array.of(1, 2), 512, values, new Uint8Array(2), new Float64Array(6))).toThrow(/maxPerUnit 7 entries/);
    expect(() => diskUnits(Float64Array.of(1, 2), 0, values, new Uint8Array(2), new Float64Array(7))).toThrow(/positive integer/);
    expect(() => diskUnits(Float64Array.of(1, 2), 1.5, values, new Uint8Array(2), new Float64Array(7))).toThrow(/positive integer/);
    expect(() => diskUnits(new Uint32Array(2) as unknown as Float64Array, 512, values, new Uint8Array(2), new Float64Array(7))).toThrow(/diskUnits\(blocks/);
    expect(Array.from(values)).toEqual([9, 9]);
  });
});
