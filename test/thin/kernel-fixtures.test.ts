/**
 * Metadata written by a real kernel (test/fixtures/kernel): snapshots that
 * share subtrees, copied paths, a held metadata snapshot, stale nodes in free
 * blocks. The library must read it as the manifest (made with thin_dump and a
 * model of the scenario) says, and the delta walker must prove its pruning:
 * blocks read grow with the leaves that differ, not with the device size.
 */
import { ThinMetadata } from '../../src';
import { MemoryBlockSource } from '../../src/pdata/block-source';
import { kernelFixtureImage, listKernelFixtures, type KernelDevice, type ChangedLeaves } from '../helpers/fixtures';

const fixtures = listKernelFixtures();

test('kernel fixtures exist', () => {
  expect(fixtures.map((f) => f.name)).toEqual(expect.arrayContaining(['kernel-held', 'kernel-snapshots']));
});

function views(f: (typeof fixtures)[number]): [string, boolean, KernelDevice[], ChangedLeaves[]][] {
  const out: [string, boolean, KernelDevice[], ChangedLeaves[]][] = [[`${f.name} live`, false, f.devices, f.changedLeaves]];
  if (f.held) out.push([`${f.name} held`, true, f.held.devices, f.held.changedLeaves]);
  return out;
}

describe.each(fixtures.flatMap(views).map((v) => [v[0], v] as const))('%s', (_label, [, snap, devices, changed]) => {
  const name = _label.split(' ')[0];

  test('devices, roots and mapping counts as the manifest says', async () => {
    await using md = await ThinMetadata.fromBuffer(kernelFixtureImage(name), { metadataSnap: snap || undefined });
    const got = await md.checkedDevices();
    expect([...got.keys()].sort((a, b) => a - b)).toEqual(devices.map((d) => d.devId).sort((a, b) => a - b));
    for (const d of devices) {
      expect(got.get(d.devId)).toMatchObject({ mappedBlocks: d.mappedBlocks, root: d.root });
      let n = 0;
      for await (const r of md.mappings(d.devId)) n += r.length;
      expect(n).toBe(d.mappings);
    }
  });

  test.each(changed.map((c) => [`${c.from}->${c.to}`, c] as const))('delta %s: differing blocks, and reads bounded by the differing leaves', async (_p, c) => {
    const img = kernelFixtureImage(name);
    const src = new MemoryBlockSource(img);
    await using md = await ThinMetadata.open('kernel', { source: src, metadataSnap: snap || undefined });
    await md.checkedDevices(); // reads the details and top-level trees first
    const a = devices.find((d) => d.devId === c.from)!;
    const b = devices.find((d) => d.devId === c.to)!;

    const before = src.stats.blocksRead;
    let differing = 0;
    const g = md.delta(c.from, c.to, { includeSame: false });
    let r = await g.next();
    for (; !r.done; r = await g.next()) {
      expect(r.value.kind).not.toBe('same');
      differing += r.value.length;
    }
    const pruned = src.stats.blocksRead - before;
    expect(differing).toBe(c.differingBlocks);

    // A full walk of both trees reads every node of both.
    const full = a.leaves + a.internalNodes + b.leaves + b.internalNodes;
    // Pruned: the leaves only one side has, plus at most the internal nodes
    // on both sides (depth - 1 levels of a few nodes each), plus a window of
    // read-ahead that may touch leaves later found shared.
    const bound = c.leavesOnlyInFirst + c.leavesOnlyInSecond + a.internalNodes + b.internalNodes + 2;
    expect(pruned).toBeGreaterThanOrEqual(c.leavesOnlyInFirst + c.leavesOnlyInSecond);
    expect(pruned).toBeLessThanOrEqual(bound);
    expect(pruned).toBeLessThan(full);
    // The counters the walk returns agree with the IO engine.
    expect(r.value.blocksRead).toBe(pruned);
    // eslint-disable-next-line no-console
    console.log(`${name}${snap ? ' (held)' : ''} delta ${c.from}->${c.to}: ${pruned} blocks read with pruning vs ${full} for a full walk of both trees (${c.leavesOnlyInFirst}+${c.leavesOnlyInSecond} differing leaves, ${c.sharedLeaves} shared)`);
  });
});

test('pruned reads grow with the number of differing leaves', async () => {
  const f = fixtures.find((x) => x.name === 'kernel-held')!;
  const pairs = [...f.changedLeaves, ...(f.held ? f.held.changedLeaves : [])];
  expect(pairs.length).toBeGreaterThanOrEqual(2);
  const small = f.held!.changedLeaves.find((c) => c.from === 2 && c.to === 4)!;
  const large = f.held!.changedLeaves.find((c) => c.from === 2 && c.to === 3)!;
  expect(large.leavesOnlyInFirst).toBeGreaterThan(small.leavesOnlyInFirst * 2);
  const count = async (c: ChangedLeaves) => {
    const src = new MemoryBlockSource(kernelFixtureImage(f.name));
    await using md = await ThinMetadata.open('kernel', { source: src, metadataSnap: true });
    await md.checkedDevices();
    const before = src.stats.blocksRead;
    for await (const _ of md.delta(c.from, c.to, { includeSame: false }));
    return src.stats.blocksRead - before;
  };
  const [rs, rl] = [await count(small), await count(large)];
  expect(rl).toBeGreaterThan(rs * 2);
});
