/**
 * The device-details leaves copied into ls's columns: the addon's
 * decodeDetailsLeaf (native/details_columns.cc) and the TypeScript loop used
 * without it. Each is checked against the details as read entry by entry
 * from the image's bytes here (not through either decoder), the two agree,
 * the columns grow past their first block, entries of 2^53 and more are
 * refused as parseDeviceDetails refuses them, and a bad call to the addon
 * writes nothing.
 */
import { ThinMetadata } from '../../src';
import { native } from '../../src/native/binding';
import { detailsLeaves } from '../../src/thin/device-table';
import type { DetailsTable } from '../../src/thin/device-table';
import { listNodes, node, seal } from '../helpers/corrupt';
import { fixtureImage } from '../helpers/fixtures';

/** Each device's details straight from the leaves' bytes, in key order. */
function detailsOf(img: Buffer): { id: number; mapped: number; tx: bigint; ct: number; st: number }[] {
  const out = [];
  for (const n of listNodes(img).filter((x) => x.tree === 'details' && x.leaf)) {
    const v = node(img, n.block);
    for (let i = 0; i < v.nr; i++) {
      const at = v.valueOff(i);
      out.push({ id: Number(v.key(i)), mapped: Number(v.buf.readBigUInt64LE(at)), tx: v.buf.readBigUInt64LE(at + 8), ct: v.buf.readUInt32LE(at + 16), st: v.buf.readUInt32LE(at + 20) });
    }
  }
  return out.sort((a, b) => a.id - b.id);
}

function rowsOf(t: DetailsTable) {
  return Array.from({ length: t.count }, (_, j) => ({
    id: t.devId[j],
    mapped: t.mappedBlocks[j],
    tx: (BigInt(t.transactionHi[j]) << 32n) | BigInt(t.transactionLo[j]),
    ct: t.creationTime[j],
    st: t.snapshottedTime[j],
  }));
}

async function tableOf(img: Buffer, opts: { js?: boolean; initialRows?: number; hugeFromRows?: number } = {}): Promise<DetailsTable> {
  const saved = { ...detailsLeaves };
  if (opts.js) detailsLeaves.decode = null;
  if (opts.initialRows !== undefined) detailsLeaves.initialRows = opts.initialRows;
  if (opts.hugeFromRows !== undefined) detailsLeaves.hugeFromRows = opts.hugeFromRows;
  try {
    await using md = await ThinMetadata.fromBuffer(img);
    const t = await md.detailsTable();
    // The addon ran, not a silent fallback to the loop.
    if (!opts.js) expect(typeof detailsLeaves.decode).toBe('function');
    // A block past hugeFromRows rows is the addon's mapping: whole huge pages.
    if (opts.hugeFromRows !== undefined && Math.max(opts.initialRows ?? 4096, t.count) > opts.hugeFromRows) {
      expect(typeof detailsLeaves.huge).toBe('function');
      expect(t.devId.buffer.byteLength % (2 << 20)).toBe(0);
    }
    return t;
  } finally {
    Object.assign(detailsLeaves, saved);
  }
}

describe.each([
  ['the addon', false],
  ['the TypeScript loop', true],
] as const)('%s', (_name, js) => {
  test.each(['many-devices', 'high-values', 'snapshots', 'basic', 'empty', 'dbs-1gib-full'])('%s: every device as the leaves hold it, the maxima, and the same growing from 1 and 7 rows, in huge pages from the start and grown into them', async (fixture) => {
    const img = fixtureImage(fixture);
    const want = detailsOf(img);
    for (const [initialRows, hugeFromRows] of [[undefined, undefined], [1, undefined], [7, undefined], [undefined, 0], [1, 3]]) {
      const t = await tableOf(img, { js, initialRows, hugeFromRows });
      expect(rowsOf(t)).toEqual(want);
      const max = (k: 'mapped' | 'ct' | 'st') => want.reduce((m, d) => Math.max(m, d[k]), 0);
      expect([t.maxMappedBlocks, t.maxCreationTime, t.maxSnapshottedTime]).toEqual([max('mapped'), max('ct'), max('st')]);
    }
  });

  test('a huge mapping that fails (mmap, or the 1 GiB limit): the columns come from malloc, the table the same', async () => {
    const img = fixtureImage('many-devices');
    const saved = { ...detailsLeaves };
    let asked = 0;
    Object.assign(detailsLeaves, {
      huge: () => {
        asked++;
        throw new RangeError('hugeArrayBuffer: out of memory (mmap failed)');
      },
      hugeFromRows: 3,
      initialRows: 1,
      ...(js ? { decode: null } : {}),
    });
    try {
      await using md = await ThinMetadata.fromBuffer(img);
      const t = await md.detailsTable();
      expect(rowsOf(t)).toEqual(detailsOf(img));
      expect(asked).toBeGreaterThan(0);
      expect(t.devId.buffer.byteLength % (2 << 20)).not.toBe(0);
    } finally {
      Object.assign(detailsLeaves, saved);
    }
  });

  test('an entry of 2^53 or more is refused with parseDeviceDetails\' error, the same for both', async () => {
    for (const [what, field, message] of [
      ['mapped_blocks', 0, /^device \d+: mapped_blocks exceeds 2\^53$/],
      ['key', -1, /^the key of entry \d+ in block \d+ exceeds 2\^53/],
    ] as const) {
      const img = Buffer.from(fixtureImage('many-devices'));
      // The last leaf: its parent gives it keys up to the end, so a key past 2^53 is still in range there.
      const leaf = listNodes(img).filter((n) => n.tree === 'details' && n.leaf).at(-1)!;
      const v = node(img, leaf.block);
      const i = v.nr - 1;
      v.buf.writeBigUInt64LE(2n ** 53n + 1n, field < 0 ? 32 + 8 * i : v.valueOff(i) + field);
      seal(v.buf, 'btree');
      const err = await tableOf(img, { js }).catch((e: unknown) => e);
      expect([what, (err as Error).message]).toEqual([what, expect.stringMatching(message)]);
    }
  });
});

describe('decodeDetailsLeaf, called directly', () => {
  const { decodeDetailsLeaf } = native();
  const ROWS = 4;
  const cols = () => new Float64Array(4 * ROWS + 3);
  const words = () => {
    const w = new Uint32Array(8 + 2 * 3 + 6 * 3);
    for (let i = 0; i < 3; i++) {
      w[8 + 2 * i] = 10 + i; // key
      w.set([100 * (i + 1), 0, 7, 1, 50 + i, 60 + i], 14 + 6 * i); // mapped, tx lo/hi, ctime, stime
    }
    return w;
  };

  test('rows at an offset, the maxima raised, nothing else written', () => {
    const c = cols();
    c.fill(-1, 0, 2 * ROWS);
    const u = new Uint32Array(c.buffer, 16 * ROWS, 4 * ROWS).fill(0xaaaaaaaa);
    c.fill(0, 4 * ROWS);
    expect(decodeDetailsLeaf(words(), 8, 14, 3, 1, c)).toBe(-1);
    const X = 0xaaaaaaaa;
    expect(Array.from(c.subarray(0, ROWS))).toEqual([-1, 10, 11, 12]);
    expect(Array.from(c.subarray(ROWS, 2 * ROWS))).toEqual([-1, 100, 200, 300]);
    expect(Array.from(u)).toEqual([X, 7, 7, 7, X, 1, 1, 1, X, 50, 51, 52, X, 60, 61, 62]);
    expect(Array.from(c.subarray(4 * ROWS))).toEqual([300, 52, 62]);
  });

  test("a key or mapped_blocks of 2^53: the entry's index, it and those after it not written", () => {
    // Entry 1's high words: its key's at 8 + 2 + 1, its mapped_blocks' at 14 + 6 + 1.
    for (const at of [11, 21]) {
      const w = words();
      w[at] = 2 ** 21;
      const c = cols();
      expect([at, decodeDetailsLeaf(w, 8, 14, 3, 0, c)]).toEqual([at, 1]);
      expect([at, Array.from(c.subarray(0, ROWS))]).toEqual([at, [10, 0, 0, 0]]);
      expect(Array.from(c.subarray(4 * ROWS))).toEqual([100, 50, 60]);
    }
  });

  test('a bad call throws a RangeError or TypeError and writes nothing', () => {
    const shared = new Float64Array(64);
    const cases: [string, (c: Float64Array) => unknown, RegExp][] = [
      ['entries beyond the words (keys)', (c) => decodeDetailsLeaf(words(), 8, 14, 4, 0, c), /entries beyond words/],
      ['entries beyond the words (values)', (c) => decodeDetailsLeaf(words(), 8, 15, 3, 0, c), /entries beyond words/],
      ['rows beyond the columns', (c) => decodeDetailsLeaf(words(), 8, 14, 3, 2, c), /rows beyond the columns/],
      ['columns not 4R + 3 long', () => decodeDetailsLeaf(words(), 8, 14, 1, 0, new Float64Array(18)), /4R \+ 3/],
      ['a fractional offset', (c) => decodeDetailsLeaf(words(), 8.5, 14, 1, 0, c), /bad keysAt/],
      ['a negative count', (c) => decodeDetailsLeaf(words(), 8, 14, -1, 0, c), /bad keysAt/],
      ['NaN', (c) => decodeDetailsLeaf(words(), 8, 14, NaN, 0, c), /bad keysAt/],
      ['Int32Array words', (c) => decodeDetailsLeaf(new Int32Array(32) as unknown as Uint32Array, 8, 14, 1, 0, c), /decodeDetailsLeaf\(words/],
      ['Float32Array columns', () => decodeDetailsLeaf(words(), 8, 14, 1, 0, new Float32Array(19) as unknown as Float64Array), /decodeDetailsLeaf\(words/],
      ['a string', (c) => decodeDetailsLeaf(words(), '8' as unknown as number, 14, 1, 0, c), /decodeDetailsLeaf\(words/],
      ['too few arguments', () => (decodeDetailsLeaf as unknown as (...a: unknown[]) => number)(words(), 8, 14, 1, 0), /decodeDetailsLeaf\(words/],
      [
        'columns over the words',
        () => decodeDetailsLeaf(new Uint32Array(shared.buffer, 0, 64), 8, 14, 1, 0, new Float64Array(shared.buffer, 8 * 8, 19)),
        /share memory/,
      ],
    ];
    for (const [what, call, message] of cases) {
      const c = cols();
      const before = Buffer.from(c.buffer).toString('hex');
      expect(() => call(c)).toThrow(message);
      expect([what, Buffer.from(c.buffer).toString('hex')]).toEqual([what, before]);
    }
  });
});

describe('hugeArrayBuffer (the columns grown past 4,096 rows)', () => {
  const huge = native().hugeArrayBuffer;

  test('an ArrayBuffer of exactly the bytes asked for, zero, writable; several live at once are apart', () => {
    const a = new Uint8Array(huge(2 << 20));
    const b = new Uint8Array(huge(4097));
    expect([a.length, b.length]).toEqual([2 << 20, 4097]);
    expect(a.every((x) => x === 0) && b.every((x) => x === 0)).toBe(true);
    a.fill(7);
    b[4096] = 9;
    expect([a[0], a[(2 << 20) - 1], b[0], b[4096]]).toEqual([7, 7, 0, 9]);
  });

  // The addon's errors are of Node's realm, not the test's: matched by name and message.
  test.each([[0], [-1], [1.5], [2 ** 30 + 1], [NaN], ['4096'], [undefined]])('bytes %p: a RangeError or TypeError, no buffer', (bytes) => {
    let err: unknown;
    try {
      (huge as (b: unknown) => ArrayBuffer)(bytes);
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject(typeof bytes === 'number' ? { name: 'RangeError', message: 'hugeArrayBuffer: bytes must be an integer in 1..2^30' } : { name: 'TypeError', message: 'hugeArrayBuffer(bytes: number)' });
  });
});
