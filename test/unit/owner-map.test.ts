/**
 * The owner maps behind `ls` EXCLUSIVE/SHARED (src/pdata/owner-map.ts) against
 * a plain model: per block, how many uses and by whom; a device's exclusive
 * count is its blocks used once, by it. The nibble map packs two blocks a
 * byte, so ranges start and end on both halves and cross each other there.
 */
import { ByteOwnerMap, NibbleOwnerMap, OwnerMap } from '../../src/pdata/owner-map';

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

type Range = [begin: number, len: number, owner: number];

function model(blocks: number, owners: number, ranges: Range[]): number[] {
  const uses = new Array<number>(blocks).fill(0);
  const who = new Array<number>(blocks).fill(-1);
  for (const [b, l, k] of ranges)
    for (let i = b; i < b + l; i++) {
      uses[i]++;
      who[i] = k;
    }
  const out = new Array<number>(owners).fill(0);
  for (let i = 0; i < blocks; i++) if (uses[i] === 1) out[who[i]]++;
  return out;
}

function randomRanges(rnd: () => number, blocks: number, owners: number, n: number, maxLen: number): Range[] {
  return Array.from({ length: n }, () => {
    const b = Math.floor(rnd() * blocks);
    const l = Math.min(blocks - b, Math.floor(rnd() * maxLen));
    return [b, l, Math.floor(rnd() * owners)] as Range;
  });
}

describe.each([
  ['NibbleOwnerMap', NibbleOwnerMap.MAX_OWNERS, (blocks: number) => new NibbleOwnerMap(blocks)],
  ['ByteOwnerMap', ByteOwnerMap.MAX_OWNERS, (blocks: number) => new ByteOwnerMap(blocks)],
  ['OwnerMap', 300, (_blocks: number, owners: number) => new OwnerMap(owners)],
] as const)('%s', (_name, maxOwners, make) => {
  test.each([
    [1, 1, 5, 1],
    [2, 2, 40, 2],
    [3, 3, 40, 3],
    [97, 5, 200, 9],
    [1000, 14, 400, 40],
    [4099, 14, 300, 600],
  ])('%i blocks, %i owners: exclusive counts as the model says', (blocks, owners, n, maxLen) => {
    const o = Math.min(owners, maxOwners);
    const rnd = lcg(blocks * 31 + o);
    const ranges = randomRanges(rnd, blocks, o, n, maxLen);
    // Every start and length parity, and empty ranges, at the ends too.
    ranges.push([0, 0, 0], [0, 1, o - 1], [blocks - 1, 1, 0], [Math.max(0, blocks - 3), Math.min(3, blocks), o - 1]);
    const m = make(blocks, o);
    for (const [b, l, k] of ranges) m.markRange(b, l, k);
    expect([...m.exclusiveCounts(o)]).toEqual(model(blocks, o, ranges));
  });

  test('a block used twice by one owner is shared (as thin_ls counts it)', () => {
    const m = make(16, 2);
    m.markRange(0, 8, 0);
    m.markRange(2, 4, 0); // blocks 2..5 again, by the same owner: whole bytes and halves
    m.markRange(9, 3, 1);
    m.markRange(11, 2, 1); // block 11 twice
    expect([...m.exclusiveCounts(2)]).toEqual([4, 3]);
  });

  test('each owner up to the most it takes, alone and then shared', () => {
    const o = Math.min(maxOwners, 254);
    const m = make(2 * o + 1, o);
    for (let k = 0; k < o; k++) m.markRange(2 * k, 2, k); // blocks 2k, 2k+1
    for (let k = 0; k < o; k += 2) m.markRange(2 * k + 1, 1, (k + 1) % o); // shares block 2k+1
    const want = new Array<number>(o).fill(0).map((_, k) => (k % 2 === 0 ? 1 : 2));
    expect([...m.exclusiveCounts(o)]).toEqual(want);
  });
});
