/**
 * The merge's planning, without devices: which blocks a merge copies and
 * discards (checked by applying the plan to a model of the two thins and
 * comparing block by block), how the work is cut into steps, and the state
 * file's checks.
 */
import fc from 'fast-check';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MergeError, UsageError } from '../../src/errors';
import { MergePlanBuilder, firstBlockBeyond, mergeSteps, planFromDelta, planFromMappings, type MergePlan, type MergeRange } from '../../src/ops/merge-plan';
import { mergeStateProblem, readMergeState, sameOrigin } from '../../src/ops/merge-state';
import type { DeltaExtent, DeltaKind } from '../../src/thin/delta';

/** Delta extents of two block maps (block -> data block), written out here independently of thin/delta.ts. */
function referenceDelta(left: Map<number, number>, right: Map<number, number>, end: number): (Omit<DeltaExtent, "begin"> & { begin: number })[] {
  const out: (Omit<DeltaExtent, "begin"> & { begin: number })[] = [];
  for (let b = 0; b < end; b++) {
    const l = left.get(b);
    const r = right.get(b);
    let kind: DeltaKind | undefined;
    if (l !== undefined && r !== undefined) kind = l === r ? 'same' : 'different';
    else if (l !== undefined) kind = 'left_only';
    else if (r !== undefined) kind = 'right_only';
    if (!kind) continue;
    const last = out[out.length - 1];
    if (last && last.kind === kind && Number(last.begin) + last.length === b) last.length++;
    else out.push({ kind, begin: b, length: 1 });
  }
  return out;
}

describe('in-pool plan from the delta ORIGIN -> SNAP', () => {
  test('a hand-made delta: different and right_only copied (merged when adjacent), left_only discarded, same left alone', () => {
    const plan = planFromDelta([
      { kind: 'same', begin: 0, length: 4 },
      { kind: 'different', begin: 4, length: 2 },
      { kind: 'right_only', begin: 6, length: 3 },
      { kind: 'left_only', begin: 20, length: 5 },
      { kind: 'different', begin: 30, length: 1 },
    ]);
    expect(plan).toEqual({
      ranges: [
        { op: 'copy', begin: 4, length: 5 },
        { op: 'discard', begin: 20, length: 5 },
        { op: 'copy', begin: 30, length: 1 },
      ],
      copyBlocks: 6,
      discardBlocks: 5,
      endBlock: 31,
    });
  });

  test('a streaming builder hands out the same ranges through take(), keeping none itself', () => {
    const extents: [boolean, number, number][] = [[true, 0, 2], [true, 2, 3], [false, 5, 1], [false, 9, 2], [true, 11, 1], [true, 20, 4]];
    const kept = new MergePlanBuilder();
    const streaming = new MergePlanBuilder(false);
    const taken: MergeRange[] = [];
    for (const [copy, begin, length] of extents) {
      kept.add(copy ? 'copy' : 'discard', begin, length);
      streaming.add(copy ? 'copy' : 'discard', begin, length);
      taken.push(...streaming.take());
    }
    const k = kept.done();
    const st = streaming.done();
    taken.push(...streaming.take());
    expect(taken).toEqual([
      { op: 'copy', begin: 0, length: 5 },
      { op: 'discard', begin: 5, length: 1 },
      { op: 'discard', begin: 9, length: 2 },
      { op: 'copy', begin: 11, length: 1 },
      { op: 'copy', begin: 20, length: 4 },
    ]);
    expect(k.ranges).toEqual(taken);
    expect(st).toEqual({ ranges: [], copyBlocks: 10, discardBlocks: 3, endBlock: 24 });
  });

  test('extents out of order are refused', () => {
    expect(() =>
      planFromDelta([
        { kind: 'different', begin: 10, length: 2 },
        { kind: 'left_only', begin: 5, length: 1 },
      ]),
    ).toThrow(UsageError);
  });

  test('property: applying the plan makes ORIGIN map what SNAP maps, block by block, with the data SNAP has', () => {
    const blockMap = fc.array(fc.tuple(fc.integer({ min: 0, max: 199 }), fc.integer({ min: 0, max: 3 })), { maxLength: 120 });
    fc.assert(
      fc.property(blockMap, blockMap, (lo, ro) => {
        // Data blocks: shared ones (same number on both sides) and private ones.
        const left = new Map(lo.map(([b, d]) => [b, d === 0 ? 1000 + b : 2000 + b * 4 + d]));
        const right = new Map(ro.map(([b, d]) => [b, d === 0 ? 1000 + b : 3000 + b * 4 + d]));
        const plan = planFromDelta(referenceDelta(left, right, 200));
        const origin = new Map(left);
        let copied = 0;
        let discarded = 0;
        for (const r of plan.ranges) {
          for (let b = r.begin; b < r.begin + r.length; b++) {
            if (r.op === 'copy') {
              expect(right.has(b)).toBe(true);
              origin.set(b, right.get(b)!);
              copied++;
            } else {
              expect([left.has(b), right.has(b)]).toEqual([true, false]);
              origin.delete(b);
              discarded++;
            }
          }
        }
        expect([...origin].sort((a, b) => a[0] - b[0])).toEqual([...right].sort((a, b) => a[0] - b[0]));
        expect([plan.copyBlocks, plan.discardBlocks]).toEqual([copied, discarded]);
        // Nothing shared is touched.
        for (const r of plan.ranges) for (let b = r.begin; b < r.begin + r.length; b++) expect(left.get(b) === right.get(b) && left.has(b)).toBe(false);
      }),
      { numRuns: 300 },
    );
  });
});

describe('external-origin plan from the mapping runs', () => {
  test('every mapped block is copied, adjacent runs merged', () => {
    const plan = planFromMappings([
      { originBegin: 0, length: 3 },
      { originBegin: 3, length: 1 },
      { originBegin: 10, length: 2 },
    ]);
    expect(plan.ranges).toEqual([
      { op: 'copy', begin: 0, length: 4 },
      { op: 'copy', begin: 10, length: 2 },
    ]);
    expect([plan.copyBlocks, plan.endBlock]).toEqual([6, 12]);
  });

  test('blocks beyond the target: one starting at or after its end is reported; one straddling it is not', () => {
    const bs = 65536;
    const plan = planFromMappings([{ originBegin: 2, length: 2 }]); // bytes [131072, 262144)
    expect(firstBlockBeyond(plan, bs, 262144)).toBeNull();
    expect(firstBlockBeyond(plan, bs, 200704)).toBeNull(); // block 3 straddles the end
    expect(firstBlockBeyond(plan, bs, 196608)).toBe(3); // block 3 starts at the end
    expect(firstBlockBeyond(plan, bs, 65536)).toBe(2);
  });

  test('a virtual block past 2^53 is refused, not rounded', () => {
    expect(() => planFromMappings([{ originBegin: 2n ** 60n, length: 1 }])).toThrow(UsageError);
  });
});

describe('steps', () => {
  const KiB = 1024;
  const plan = (ranges: MergePlan['ranges']): MergePlan => ({
    ranges,
    copyBlocks: ranges.filter((r) => r.op === 'copy').reduce((n, r) => n + r.length, 0),
    discardBlocks: ranges.filter((r) => r.op === 'discard').reduce((n, r) => n + r.length, 0),
    endBlock: ranges.length ? ranges[ranges.length - 1].begin + ranges[ranges.length - 1].length : 0,
  });

  test('copies cut at the batch size, discards whole; blocks counted once each', () => {
    const bs = 192 * KiB;
    const steps = [...mergeSteps(plan([{ op: 'copy', begin: 1, length: 3 }, { op: 'discard', begin: 10, length: 4 }]), bs, 256 * KiB)];
    expect(steps).toEqual([
      { op: 'copy', offset: 192 * KiB, length: 256 * KiB, blocks: 1 }, // block 1 done; block 2 half
      { op: 'copy', offset: 448 * KiB, length: 256 * KiB, blocks: 1 }, // block 2 done
      { op: 'copy', offset: 704 * KiB, length: 64 * KiB, blocks: 1 }, // block 3 done
      { op: 'discard', offset: 1920 * KiB, length: 768 * KiB, blocks: 4 },
    ]);
  });

  test('a limit cuts the last block and drops what lies beyond', () => {
    const bs = 64 * KiB;
    const steps = [...mergeSteps(plan([{ op: 'copy', begin: 0, length: 4 }]), bs, 128 * KiB, 200 * KiB)];
    expect(steps).toEqual([
      { op: 'copy', offset: 0, length: 128 * KiB, blocks: 2 },
      { op: 'copy', offset: 128 * KiB, length: 72 * KiB, blocks: 2 },
    ]);
  });

  test('property: steps tile the ranges exactly, in order, none larger than the batch', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 5 }), fc.integer({ min: 1, max: 9 })), { maxLength: 20 }),
        fc.integer({ min: 1, max: 8 }),
        fc.integer({ min: 1, max: 6 }),
        (parts, blockUnits, batchUnits) => {
          const bs = blockUnits * 64 * KiB;
          let at = 0;
          const ranges = parts.map(([copy, gap, len]) => {
            const r = { op: copy ? ('copy' as const) : ('discard' as const), begin: at + gap + 1, length: len };
            at = r.begin + len;
            return r;
          });
          const p = plan(ranges);
          const steps = [...mergeSteps(p, bs, batchUnits * 64 * KiB)];
          let blocks = 0;
          let i = 0;
          for (const r of p.ranges) {
            let off = r.begin * bs;
            while (off < (r.begin + r.length) * bs) {
              const s = steps[i++];
              expect([s.op, s.offset]).toEqual([r.op, off]);
              if (s.op === 'copy') expect(s.length).toBeLessThanOrEqual(batchUnits * 64 * KiB);
              off += s.length;
              blocks += s.blocks;
            }
            expect(off).toBe((r.begin + r.length) * bs);
          }
          expect(i).toBe(steps.length);
          expect(blocks).toBe(p.copyBlocks + p.discardBlocks);
        },
      ),
      { numRuns: 300 },
    );
  });

  test('a batch that is not a multiple of 64 KiB is refused', () => {
    expect(() => [...mergeSteps(plan([]), 65536, 4096)]).toThrow(UsageError);
  });
});

describe('merge state file', () => {
  const good = {
    format: 'dmthin-merge-state',
    version: 1,
    pool: 'dm-name:pool',
    snap: { devId: 5, creationTime: 3, transactionId: '7' },
    origin: { kind: 'external', path: '/dev/loop3', dev: '7:3' },
    phase: 'copying',
    at: '2026-01-01T00:00:00.000Z',
  };

  // Found by an outside hunt: a block device as --state was read whole and called damaged JSON, "remove the file".
  test('a state path naming no regular file (a device, a FIFO): refused as such, not read', async () => {
    const d = mkdtempSync(join(tmpdir(), 'dmthin-mstate-'));
    try {
      const fifo = join(d, 'fifo');
      expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
      for (const f of ['/dev/null', fifo]) {
        await expect(readMergeState(f)).rejects.toMatchObject({ reason: 'state-file', message: expect.stringMatching(/is not a regular file \(a state is a file dmthin writes\): give the path of a file for it$/) });
      }
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });

  test('a complete state is accepted; each damage is named', () => {
    expect(mergeStateProblem(good)).toBeNull();
    expect(mergeStateProblem({ ...good, phase: 'done' })).toMatch(/phase/);
    expect(mergeStateProblem({ ...good, version: 2 })).toMatch(/version 2/);
    expect(mergeStateProblem({ ...good, snap: { devId: 5 } })).toMatch(/snap/);
    expect(mergeStateProblem({ ...good, origin: { kind: 'external', path: '/dev/x', dev: 'x' } })).toMatch(/origin/);
    expect(mergeStateProblem({ ...good, origin: { kind: 'in-pool', thin: { devId: 1, creationTime: 0, transactionId: 'a' } } })).toMatch(/origin/);
    expect(mergeStateProblem([])).toMatch(/JSON object/);
  });

  test('origins compare by device number (external) or identity (in-pool)', () => {
    expect(sameOrigin({ kind: 'external', path: '/dev/a', dev: '7:3' }, { kind: 'external', path: '/dev/b', dev: '7:3' })).toBe(true);
    expect(sameOrigin({ kind: 'external', path: '/dev/a', dev: '7:3' }, { kind: 'external', path: '/dev/a', dev: '7:4' })).toBe(false);
    const t = { devId: 1, creationTime: 2, transactionId: '3' };
    expect(sameOrigin({ kind: 'in-pool', thin: t }, { kind: 'in-pool', thin: { ...t, creationTime: 4 } })).toBe(false);
    expect(sameOrigin({ kind: 'in-pool', thin: t }, { kind: 'external', path: '/dev/a', dev: '7:3' })).toBe(false);
  });

  test('reading: none is null, a cut-short file is refused as damaged (EUCLEAN), a good one is returned', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'merge-state-'));
    try {
      expect(await readMergeState(join(dir, 'none.json'))).toBeNull();
      const f = join(dir, 's.json');
      writeFileSync(f, JSON.stringify(good).slice(0, 40));
      const e = await readMergeState(f).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(MergeError);
      expect(e).toMatchObject({ reason: 'state-file', code: 'EUCLEAN', path: f });
      writeFileSync(f, JSON.stringify(good));
      expect(await readMergeState(f)).toEqual(good);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('MergeError', () => {
  test.each([
    ['origin-busy', 'EBUSY', -16],
    ['origin-shared', 'EBUSY', -16],
    ['thin-active', 'EBUSY', -16],
    ['beyond-end', 'ENOSPC', -28],
    ['origin-mismatch', 'EINVAL', -22],
    ['no-such-thin', 'ENOENT', -2],
    ['lvm-pool', 'EOPNOTSUPP', -95],
    ['state-file', 'EUCLEAN', -117],
  ] as const)('%s: code %s, errno %d (Linux numbers)', (reason, code, errno) => {
    const e = new MergeError(reason, 'm', { path: '/dev/x' });
    expect({ name: e.name, reason: e.reason, code: e.code, errno: e.errno, path: e.path }).toEqual({ name: 'MergeError', reason, code, errno, path: '/dev/x' });
  });
});
