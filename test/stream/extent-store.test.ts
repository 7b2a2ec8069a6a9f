/** ExtentStore: order kept, continuing extents merged, spilled to a temp file past its memory limit and removed on close. */
import { existsSync, readdirSync } from 'node:fs';
import fc from 'fast-check';
import { ExtentStore, type SendExtent } from '../../src/stream/send/extent-store';
import { scratch } from './helpers';

/** Reference: merge what continues the previous extent. */
function merged(xs: SendExtent[]): SendExtent[] {
  const out: SendExtent[] = [];
  for (const e of xs) {
    const l = out[out.length - 1];
    if (l && l.kind === e.kind && l.begin + l.length === e.begin && (e.kind === 'zero' || l.source + l.length === e.source)) l.length += e.length;
    else out.push({ ...e, source: e.kind === 'zero' ? 0 : e.source });
  }
  return out;
}

const extentsArb = fc
  .array(fc.record({ kind: fc.constantFrom<'data' | 'zero'>('data', 'zero'), gap: fc.constantFrom(0, 0, 1, 5), length: fc.integer({ min: 1, max: 9 }), jump: fc.boolean() }), { maxLength: 3000 })
  .map((xs) => {
    let b = 0;
    let src = 1000;
    return xs.map((x) => {
      b += x.gap;
      if (x.jump) src += 17;
      const e: SendExtent = { kind: x.kind, begin: b, length: x.length, source: x.kind === 'data' ? src : 0 };
      b += x.length;
      if (x.kind === 'data') src += x.length;
      return e;
    });
  });

test('round trip in memory and through a spill file', async () => {
  const s = scratch();
  try {
    await fc.assert(
      fc.asyncProperty(extentsArb, fc.boolean(), async (xs, spill) => {
        const store = new ExtentStore({ memoryLimit: spill ? 1 : undefined, tmpDir: s.dir });
        for (const e of xs) await store.add(e);
        await store.seal();
        const want = merged(xs);
        const got: SendExtent[] = [];
        for await (const e of store) got.push(e);
        expect(got).toEqual(want);
        // Readable twice.
        let again = 0;
        for await (const _ of store) again++;
        expect(again).toBe(want.length);
        expect(store.totals.dataBlocks).toBe(xs.filter((x) => x.kind === 'data').reduce((n, x) => n + x.length, 0));
        if (spill && want.length > 2 * (1 << 14)) expect(store.spilled).toBe(true);
        await store.close();
        expect(readdirSync(s.dir)).toEqual([]);
      }),
      { numRuns: 30 },
    );
    // Enough extents to spill several chunks.
    const store = new ExtentStore({ memoryLimit: 1, tmpDir: s.dir });
    for (let i = 0; i < 100_000; i++) await store.add({ kind: i % 2 ? 'data' : 'zero', begin: i * 2, length: 2, source: i * 3 });
    await store.seal();
    expect(store.spilled).toBe(true);
    let n = 0;
    let last = -1;
    for await (const e of store) {
      expect(e.begin).toBeGreaterThan(last);
      last = e.begin;
      n++;
    }
    expect(n).toBe(100_000);
    await store.close();
    expect(existsSync(s.dir) && readdirSync(s.dir)).toEqual([]);
  } finally {
    s.cleanup();
  }
});
