/**
 * The delta walker on synthetic trees that share subtrees the way the kernel
 * makes them (a snapshot, then copy-on-write of the changed leaves and their
 * parents): results must equal a naive comparison of the expanded mappings,
 * and the blocks read must follow the number of changed leaves, not the size.
 */
import fc from 'fast-check';
import { MemoryBlockSource } from '../../src/pdata/block-source';
import { deltaBatches, type RawDeltaExtent as DeltaExtent } from '../../src/thin/delta';
import { chunkEven, ImageBuilder, minEntries, u64, writeNode } from '../unit/tree-builder';
import { fixtureFile, fixtureImage } from '../helpers/fixtures';
import { runCli } from '../cli/run-cli';
import { ThinMetadata } from '../../src';

type Mapping = [key: number, data: number, time: number];

function packValue(data: number, time: number): Buffer {
  return u64((BigInt(data) << 24n) | BigInt(time));
}

/** Internal nodes by their children, so that a rebuilt tree reuses unchanged ones (as copy-on-write does). */
type NodeCache = Map<string, number>;

/**
 * Leaves of mappings, then internal levels. With `reuse`, leaves given as a
 * block number are the origin's, and any internal node whose children are all
 * unchanged is the origin's too: only the paths to changed leaves are new.
 */
function build(img: ImageBuilder, leaves: Mapping[][], fanout: number, reuse?: number[], cache: NodeCache = new Map()): { root: number; leafBlocks: number[]; cache: NodeCache } {
  const leafBlocks = leaves.map((l, i) => {
    if (reuse && reuse[i] >= 0) return reuse[i];
    const nr = img.alloc();
    writeNode(img, nr, true, l.map((m) => BigInt(m[0])), l.map((m) => packValue(m[1], m[2])), 8);
    return nr;
  });
  let level = leafBlocks.map((nr, i) => ({ nr, first: BigInt(leaves[i][0][0]) }));
  while (level.length > 1) {
    const up: typeof level = [];
    for (const chunk of chunkEven(level, fanout, minEntries(8))) {
      const sig = chunk.map((c) => `${c.first}:${c.nr}`).join(',');
      let nr = cache.get(sig);
      if (nr === undefined) {
        nr = img.alloc();
        writeNode(img, nr, false, chunk.map((c) => c.first), chunk.map((c) => u64(c.nr)), 8);
        cache.set(sig, nr);
      }
      up.push({ nr, first: chunk[0].first });
    }
    level = up;
  }
  return { root: level[0].nr, leafBlocks, cache };
}

function naive(a: Mapping[], b: Mapping[], includeSame: boolean): DeltaExtent[] {
  const ma = new Map(a.map((m) => [m[0], m[1]]));
  const mb = new Map(b.map((m) => [m[0], m[1]]));
  const keys = [...new Set([...ma.keys(), ...mb.keys()])].sort((x, y) => x - y);
  const out: DeltaExtent[] = [];
  for (const k of keys) {
    const l = ma.get(k);
    const r = mb.get(k);
    const kind = l === undefined ? 'right_only' : r === undefined ? 'left_only' : l === r ? 'same' : 'different';
    if (kind === 'same' && !includeSame) continue;
    const c = out[out.length - 1];
    if (
      c &&
      c.kind === kind &&
      c.begin === k - c.length &&
      (l === undefined || c.leftData! + c.length === l) &&
      (r === undefined || c.rightData! + c.length === r)
    ) {
      c.length++;
      continue;
    }
    const e: DeltaExtent = { kind, begin: k, length: 1 };
    if (l !== undefined) e.leftData = l;
    if (r !== undefined) e.rightData = r;
    out.push(e);
  }
  return out;
}

/**
 * The walk's extents. With `reuse`, as writeDelta runs it: extents may be
 * reused once the next batch is asked for, so each is copied before that.
 */
async function runDelta(img: ImageBuilder, a: number, b: number, includeSame: boolean, reuse = false) {
  const src = new MemoryBlockSource(img.image);
  const g = deltaBatches(src, a, b, { nrMetadataBlocks: img.nrBlocks, nrDataBlocks: 1e9, includeSame, window: 8, reuseExtents: reuse });
  const out: DeltaExtent[] = [];
  for (;;) {
    const r = await g.next();
    if (r.done) return { out, stats: r.value, read: src.stats.blocksRead };
    out.push(...(reuse ? r.value.map((e) => ({ ...e })) : r.value));
  }
}

/** An origin of `nLeaves` leaves and a snapshot where `changed` leaves were rewritten (copy-on-write). */
function scenario(nLeaves: number, per: number, changed: number[], fanout: number) {
  const img = new ImageBuilder(nLeaves * 3 + 400);
  const leaves: Mapping[][] = [];
  let d = 0;
  for (let i = 0; i < nLeaves; i++) leaves.push(Array.from({ length: per }, (_, j) => [i * per * 2 + j * 2, d++, 0] as Mapping));
  const origin = build(img, leaves, fanout);
  const snapLeaves = leaves.map((l, i) => (changed.includes(i) ? l.map(([k, _d, t], j) => [k, 1_000_000 + i * per + (j % 3 === 0 ? j : 0), t + 1] as Mapping) : l));
  const snap = build(img, snapLeaves, fanout, leaves.map((_, i) => (changed.includes(i) ? -1 : origin.leafBlocks[i])), origin.cache);
  return { img, origin, snap, a: leaves.flat(), b: snapLeaves.flat() };
}

test('property: same results as a naive comparison, with and without same', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 100 }),
      fc.integer({ min: 84, max: 100 }),
      fc.integer({ min: 84, max: 100 }),
      fc.array(fc.nat(), { maxLength: 6 }),
      fc.boolean(),
      async (nLeaves, per, fanout, picks, swap) => {
        const changed = picks.map((p) => p % nLeaves);
        const s = scenario(nLeaves, per, changed, fanout);
        const [l, r, ml, mr] = swap ? [s.snap.root, s.origin.root, s.b, s.a] : [s.origin.root, s.snap.root, s.a, s.b];
        for (const same of [true, false]) {
          const { out } = await runDelta(s.img, l, r, same);
          expect(out).toEqual(naive(ml, mr, same));
          expect((await runDelta(s.img, l, r, same, true)).out).toEqual(out);
        }
      },
    ),
    { numRuns: 50 },
  );
});

test('property: unrelated trees (nothing shared) and one side empty', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.uniqueArray(fc.integer({ min: 0, max: 20000 }), { minLength: 1, maxLength: 1500 }),
      fc.uniqueArray(fc.integer({ min: 0, max: 20000 }), { maxLength: 1500 }),
      async (ka, kb) => {
        const img = new ImageBuilder(200);
        const mk = (keys: number[], base: number): Mapping[] => [...keys].sort((x, y) => x - y).map((k) => [k, (k * 7 + base) % 9000, 0]);
        const a = mk(ka, 0);
        const b = mk(kb, kb.length % 2 ? 0 : 13);
        const chunk = (m: Mapping[]) => chunkEven(m, 100, minEntries(8));
        const ra = a.length ? build(img, chunk(a), 84).root : (() => { const n = img.alloc(); writeNode(img, n, true, [], [], 8); return n; })();
        const rb = b.length ? build(img, chunk(b), 84).root : (() => { const n = img.alloc(); writeNode(img, n, true, [], [], 8); return n; })();
        const want = naive(a, b, true);
        expect((await runDelta(img, ra, rb, true)).out).toEqual(want);
        // Up to ~3,000 extents: batches of 256 handed out and their extents reused.
        expect((await runDelta(img, ra, rb, true, true)).out).toEqual(want);
      },
    ),
    { numRuns: 100 },
  );
});

test('pruning: blocks read grow with the changed leaves, not with the device', async () => {
  const reads = (nLeaves: number, k: number) => {
    const changed = Array.from({ length: k }, (_, i) => Math.floor(((i + 0.5) * nLeaves) / k));
    const s = scenario(nLeaves, 84, changed, 84);
    return runDelta(s.img, s.origin.root, s.snap.root, false).then((r) => r.read);
  };
  const small = await reads(200, 4);
  const big = await reads(3000, 4);
  const moreChanges = await reads(3000, 40);
  // 4 changed leaves: the same handful of reads in a 200-leaf and a 3000-leaf tree
  // (two roots, the changed paths, the changed leaves on both sides).
  expect(small).toBeLessThanOrEqual(4 * 2 * 4 + 2);
  expect(big).toBeLessThanOrEqual(4 * 2 * 5 + 2);
  expect(big).toBeLessThan(3000 / 20); // a full walk reads over 3000 leaves
  // ten times the changes: roughly ten times the reads.
  expect(moreChanges).toBeGreaterThan(big * 4);
  expect(moreChanges).toBeLessThanOrEqual(40 * 2 * 5 + 2);
});

test('identical roots read nothing without same, one subtree with same', async () => {
  const s = scenario(50, 84, [], 84);
  expect((await runDelta(s.img, s.origin.root, s.origin.root, false)).read).toBe(0);
  const withSame = await runDelta(s.img, s.origin.root, s.origin.root, true);
  expect(withSame.out).toEqual([{ kind: 'same', begin: 0, length: 1, leftData: 0, rightData: 0 }, ...naive(s.a, s.a, true).slice(1)]);
  expect(withSame.stats.sharedSubtrees).toBe(1);
});

test('a shared leaf under a narrower key range on one side is read and refused, not skipped', async () => {
  const img = new ImageBuilder(20);
  const leaf = (keys: number[], data: number): number => {
    const nr = img.alloc();
    writeNode(img, nr, true, keys.map(BigInt), keys.map((_, i) => packValue(data + i, 0)), 8);
    return nr;
  };
  const range = (from: number) => Array.from({ length: 84 }, (_, i) => from + i);
  const a = leaf(range(0), 0);
  const a2 = leaf(range(0), 5000);
  const x = leaf(range(1000), 100); // keys 1000..1083
  const y = leaf(range(600), 200);
  const left = img.alloc();
  writeNode(img, left, false, [0n, 500n], [u64(a), u64(x)], 8); // x under [500, end): fits
  const right = img.alloc();
  writeNode(img, right, false, [0n, 500n, 600n], [u64(a2), u64(x), u64(y)], 8); // x under [500, 600): does not
  for (const same of [true, false]) {
    const err = await runDelta(img, left, right, same).catch((e) => e);
    expect(err).toBeInstanceOf(Error);
    expect(err).toMatchObject({ kind: 'key-range', block: x });
  }
  // The same leaf under the same range on both sides is still skipped unread.
  const right2 = img.alloc();
  writeNode(img, right2, false, [0n, 500n], [u64(a2), u64(x)], 8);
  const r = await runDelta(img, left, right2, false);
  expect(r.stats.sharedSubtrees).toBe(1);
  expect(r.read).toBe(4); // two roots, a and a2; never x
  expect(r.out).toEqual(naive(range(0).map((k) => [k, k, 0]), range(0).map((k) => [k, 5000 + k, 0]), false));
});

describe('on the fixtures', () => {
  test('--root1/--root2 give the same ranges as the devices whose roots they are', async () => {
    using f = fixtureFile('snapshots');
    await using md = await ThinMetadata.open(f.path);
    const roots = await md.deviceRoots();
    const [a, b] = [...roots.keys()].slice(0, 2);
    const byDev = runCli(['delta', '--verbose', '--snap1', String(a), '--snap2', String(b), f.path]);
    const byRoot = runCli(['delta', '--verbose', '--root1', String(roots.get(a)), '--root2', String(roots.get(b)), f.path]);
    expect(byRoot.status).toBe(0);
    expect(byRoot.stdout.replace(/<diff left_root="\d+" right_root="\d+">/, `<diff left="${a}" right="${b}">`)).toBe(byDev.stdout);
  });

  test('-f json lists the library extents', async () => {
    using f = fixtureFile('deep-tree');
    const r = runCli(['delta', '-f', 'json', '--snap1', '1', '--snap2', '2', f.path]);
    expect(r.status).toBe(0);
    const j = JSON.parse(r.stdout);
    await using md = await ThinMetadata.fromBuffer(fixtureImage('deep-tree'));
    const lib = [];
    for await (const e of md.delta(1, 2)) lib.push(e);
    expect(j.left).toBe(1);
    expect(j.right).toBe(2);
    // JSON as docs/json.md: begin a decimal string, absent data blocks null.
    expect(j.extents).toEqual(lib.map((e) => ({ kind: e.kind, begin: String(e.begin), length: e.length, leftData: e.leftData ?? null, rightData: e.rightData ?? null })));
    expect(j.extents.length).toBeGreaterThan(10);
  });

  test('bad arguments exit 1 with one line', () => {
    for (const args of [['delta', '--snap1', '1', 'x'], ['delta', '--root1', '5', '--snap1', '1', '--snap2', '2', 'x'], ['delta', '--snap1', 'a', '--snap2', '2', 'x']]) {
      const r = runCli(args);
      expect(r.status).toBe(1);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    }
  });
});

test('a read that fails anywhere in the walk rejects the delta with that error (with and without same)', async () => {
  const s = scenario(40, 90, [3, 17, 30], 84);
  const blocks = new Set<number>();
  const spy = new MemoryBlockSource(s.img.image);
  const read0 = spy.read.bind(spy);
  spy.read = (bs) => {
    bs.forEach((b) => blocks.add(b));
    return read0(bs);
  };
  for await (const _ of deltaBatches(spy, s.origin.root, s.snap.root, { nrMetadataBlocks: s.img.nrBlocks, nrDataBlocks: 1e9, window: 8 }));
  expect(blocks.size).toBeGreaterThan(40);
  for (const same of [true, false]) {
    for (const bad of blocks) {
      const src = new MemoryBlockSource(s.img.image);
      const read = src.read.bind(src);
      let failed = false;
      src.read = (bs) => {
        if (!bs.includes(bad)) return read(bs);
        failed = true;
        return Promise.reject(Object.assign(new Error(`EIO reading block ${bad}`), { code: 'EIO' }));
      };
      const run = async () => {
        for await (const _ of deltaBatches(src, s.origin.root, s.snap.root, { nrMetadataBlocks: s.img.nrBlocks, nrDataBlocks: 1e9, includeSame: same, window: 8 }));
      };
      if (same) await expect(run()).rejects.toMatchObject({ code: 'EIO', message: `EIO reading block ${bad}` });
      else {
        // Without same, a shared block is never read: the walk either ends well without asking for it or fails on it.
        const r = await run().then(() => 'ok', (e: { code?: string }) => e.code);
        expect(r).toBe(failed ? 'EIO' : 'ok');
      }
    }
  }
});
