/**
 * NodeBook keeps the key range a shared node was validated under as u32s
 * (memory, see src/thin/check.ts): a low key at or above 2^32-1 is clamped
 * down, a high key at or above 2^32-1 is stored as "2^64-1". A shared node
 * under a narrower range in another tree must still be validated again, on
 * either side of 2^32; a range that contains the stored one still skips it.
 * The walk marks are u16 serials, cleared when they run out.
 */
import { checkMetadata, CheckReport, ThinMetadata } from '../../src';
import { NodeBook } from '../../src/thin/check';
import { listNodes, node, seal } from '../helpers/corrupt';
import { fixtureImage } from '../helpers/fixtures';

const TWO32 = 2n ** 32n;

/**
 * shared-subtree with every bottom-level key moved up by `offset`: devices 1,
 * 2 and 4 share root 10, device 3's root 8 shares the middle leaf 12 (keys
 * 126..251 before the move, range [126, 252)) with device 1's root.
 */
function shifted(offset: bigint): { img: Buffer; root3: number; shared: number } {
  const img = Buffer.from(fixtureImage('shared-subtree'));
  const bottom = listNodes(img).filter((n) => n.tree === 'bottom');
  for (const n of bottom) {
    const v = node(img, n.block);
    for (let i = 0; i < v.nr; i++) v.buf.writeBigUInt64LE(v.key(i) + offset, 32 + 8 * i);
    seal(v.buf, 'btree');
  }
  const root3 = bottom.find((n) => n.dev === 3n && n.level === 1)!.block;
  const root1 = bottom.find((n) => n.dev === 1n && n.level === 1)!.block;
  const r3 = node(img, root3);
  const r1 = node(img, root1);
  // the layout this test is written for
  expect(r3.nr).toBe(3);
  expect(r3.child(1)).toBe(r1.child(1));
  expect([r3.key(1), r3.key(2)]).toEqual([126n + offset, 252n + offset]);
  return { img, root3, shared: r3.child(1) };
}

function setKey(img: Buffer, block: number, i: number, key: bigint): void {
  const v = node(img, block);
  v.buf.writeBigUInt64LE(key, 32 + 8 * i);
  seal(v.buf, 'btree');
}

async function check(img: Buffer, opts: Parameters<typeof checkMetadata>[1] = {}): Promise<CheckReport> {
  await using md = await ThinMetadata.fromBuffer(img);
  return checkMetadata(md, opts);
}

const brief = (r: CheckReport) => r.problems.map((p) => ({ kind: p.kind, block: p.block, devId: p.devId, keys: p.keys }));

describe('shared nodes with keys near and above 2^32', () => {
  // straddling: the shared leaf's low key is below 2^32-1 (stored exactly), its high key above (stored as 2^64-1)
  const STRADDLE = TWO32 - 200n;
  // above: both ends at or above 2^32-1 (low clamped to 2^32-1, high stored as 2^64-1)
  const ABOVE = TWO32 + 1000n;

  it('clean: no problems and the counts of the unmoved image', async () => {
    const base = await check(fixtureImage('shared-subtree'));
    expect(base.problems).toEqual([]);
    for (const off of [STRADDLE, ABOVE, 2n ** 63n]) {
      const r = await check(shifted(off).img);
      expect(r.problems).toEqual([]);
      expect(r.counts).toEqual(base.counts);
    }
  });

  it('a narrower high end above 2^32 in another tree is validated again (a high key clamped down or wrapped would skip it)', async () => {
    const { img, root3, shared } = shifted(STRADDLE);
    // device 3's range for the shared leaf ends one key early: [2^32-74, 2^32+51), the leaf's last key is 2^32+51
    setKey(img, root3, 2, 251n + STRADDLE);
    const r = await check(img);
    expect(brief(r)).toEqual([{ kind: 'key-range', block: shared, devId: 3, keys: [126n + STRADDLE, 250n + STRADDLE] }]);
  });

  it('a narrower low end above 2^32 in another tree is validated again', async () => {
    const { img, root3, shared } = shifted(ABOVE);
    setKey(img, root3, 1, 127n + ABOVE);
    const r = await check(img);
    expect(brief(r)).toEqual([{ kind: 'key-range', block: shared, devId: 3, keys: [127n + ABOVE, 251n + ABOVE] }]);
  });

  it('below 2^32-1 the same narrowing is caught and a containing range still skips the node (read once)', async () => {
    const { img, root3, shared } = shifted(1000n);
    const clean = Buffer.from(img);
    setKey(img, root3, 2, 1251n);
    expect(brief(await check(img))).toEqual([{ kind: 'key-range', block: shared, devId: 3, keys: [1126n, 1250n] }]);
    await using md = await ThinMetadata.fromBuffer(clean);
    const before = md.io.stats.blocksRead;
    expect((await checkMetadata(md)).problems).toEqual([]);
    const bottom = new Set(listNodes(clean).filter((n) => n.tree === 'bottom').map((n) => n.block));
    expect(md.io.stats.blocksRead - before).toBeLessThan(bottom.size + 20);
  });
});

describe('NodeBook', () => {
  it('stores ranges so that containment is only ever stricter', () => {
    const b = new NodeBook(4);
    b.set(0, 5, 100, 0, 7); // [5, 99]
    expect(b.within(0, 5, 100)).toBe(true);
    expect(b.within(0, 0, Infinity)).toBe(true);
    expect(b.within(0, 6, 100)).toBe(false);
    expect(b.within(0, 5, 99)).toBe(false);
    // high end at 2^32-1 and beyond: only an unbounded range contains it
    b.set(1, 5, 2 ** 32, 0, 7); // [5, 2^32-1]
    expect(b.within(1, 5, 2 ** 32 + 1)).toBe(false);
    expect(b.within(1, 5, 2 ** 40)).toBe(false);
    expect(b.within(1, 5, 2n ** 64n - 1n)).toBe(false);
    expect(b.within(1, 0, Infinity)).toBe(true);
    b.set(2, 5, 2 ** 32 - 1, 0, 7); // [5, 2^32-2]: exact
    expect(b.within(2, 5, 2 ** 32 - 1)).toBe(true);
    expect(b.within(2, 5, 2 ** 32 - 2)).toBe(false);
    // low end at 2^32-1 and beyond: clamped down
    b.set(3, 2 ** 33, Infinity, 0, 7);
    expect(b.within(3, 2 ** 32 - 1, Infinity)).toBe(true);
    expect(b.within(3, 2 ** 32, Infinity)).toBe(false);
    expect(b.within(3, 2n ** 60n, Infinity)).toBe(false);
  });

  it('narrows to the intersection, the stored 2^64-1 above every finite high end', () => {
    const b = new NodeBook(1);
    b.set(0, 10, Infinity, 1, 3);
    b.narrow(0, 20, 2 ** 40); // high end stays "2^64-1"
    expect(b.within(0, 20, 2 ** 41)).toBe(false);
    expect(b.within(0, 20, Infinity)).toBe(true);
    expect(b.within(0, 21, Infinity)).toBe(false);
    b.narrow(0, 0, 500); // [20, 499]
    expect(b.within(0, 20, 500)).toBe(true);
    expect(b.within(0, 20, 499)).toBe(false);
    b.narrow(0, 2n ** 63n, Infinity); // low end clamped: 2^32-1
    expect(b.within(0, 2 ** 32 - 1, Infinity)).toBe(true);
    expect(b.within(0, 2 ** 32, Infinity)).toBe(false);
  });

  it('keeps a leaf count in a byte, and internal nodes\' and counts of 255 or more aside', () => {
    const b = new NodeBook(5);
    b.set(0, 0, Infinity, 0, 252);
    b.set(1, 0, Infinity, 0, 255);
    b.set(2, 0, Infinity, 3, 2 ** 45 + 3);
    b.set(3, 0, Infinity, 1, 7);
    b.set(4, 0, Infinity, 0, 0);
    expect([0, 1, 2, 3, 4].map((i) => b.entriesOf(i))).toEqual([252, 255, 2 ** 45 + 3, 7, 0]);
    expect([...b.bigEntries.keys()].sort()).toEqual([1, 2, 3]);
    expect([...b.height]).toEqual([0, 0, 3, 1, 0]);
  });
});

describe('walk marks', () => {
  it('cleared when the serials run out: no false cycles, real cycles still found', async () => {
    // shared-subtree: 6 walks (details, top, 4 devices); with 2 serials per pass, shared nodes carry stale marks
    for (const n of [1, 2, 3]) {
      const r = await check(fixtureImage('shared-subtree'), { markSerials: n });
      expect(r.problems).toEqual([]);
    }
    // device 3's root points a second time to the leaf it shares with device 1 (skipped as shared the first time)
    const { img, root3, shared } = shifted(0n);
    const v = node(img, root3);
    v.buf.writeBigUInt64LE(BigInt(shared), v.valueOff(2));
    seal(v.buf, 'btree');
    const want = brief(await check(img));
    expect(want.filter((p) => p.kind === 'cycle')).toEqual([{ kind: 'cycle', block: shared, devId: 3, keys: [252n, 2n ** 64n - 1n] }]);
    for (const n of [1, 2, 3]) expect(brief(await check(img, { markSerials: n }))).toEqual(want);
  });
});
