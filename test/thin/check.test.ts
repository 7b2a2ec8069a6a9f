/**
 * checkMetadata (library) and `dmthin check` (CLI). Clean images must come
 * out clean with counts equal to the fixture manifests (written by the
 * generator from its own model and thin_restore, not by dmthin); each
 * corruption must give exactly the problem its fault implies under the
 * verdict rules (README: fatal = structural or a count below the references;
 * non-fatal = leaks, over-counts, hints, mapped_blocks).
 */
import { AbortError, checkMetadata, CheckReport, MetadataError, openFailureReport, ThinMetadata } from '../../src';
import { blk, corrupt, CORRUPTION_KINDS, CorruptionKind, Fault, listNodes, node, seal, superblock, UNDERFULL_KINDS } from '../helpers/corrupt';
import { fixture, fixtureImage, itOracle, kernelFixtureImage, listFixtures, listKernelFixtures, restoreFlat, tempImage } from '../helpers/fixtures';
import { readFileSync } from 'node:fs';
import { runCli } from '../cli/run-cli';

type Expected = { severity: 'fatal' | 'non-fatal'; kind: string; block?: number; tree?: string; devId?: number };
const P = (severity: Expected['severity'], kind: string, block: number | undefined, tree: string, devId?: number): Expected => ({
  severity,
  kind,
  ...(block !== undefined ? { block } : {}),
  tree,
  ...(devId !== undefined ? { devId } : {}),
});

const F = (s: Expected['severity']) => s;
const dev = (f: Fault) => Number(f.detail!.dev);

/**
 * Fixture and expected problems of every corruption. null: the metadata
 * cannot be opened (the CLI reports what open() threw; see the CLI tests).
 */
const EXPECT: Record<CorruptionKind, { fixture: string; problems: ((f: Fault) => Expected[]) | null }> = {
  // one bad node in device 1's tree: a fatal problem naming that node
  'node-checksum': { fixture: 'range-merge', problems: (f) => [P('fatal', 'checksum', f.block, 'mapping', 1)] },
  'node-blocknr': { fixture: 'range-merge', problems: (f) => [P('fatal', 'blocknr', f.block, 'mapping', 1)] },
  'keys-out-of-order': { fixture: 'range-merge', problems: (f) => [P('fatal', 'key-order', f.block, 'mapping', 1)] },
  'leaf-value-size-16': { fixture: 'range-merge', problems: (f) => [P('fatal', 'value-size', f.block, 'mapping', 1)] },
  'max-entries-not-div3': { fixture: 'range-merge', problems: (f) => [P('fatal', 'max-entries', f.block, 'mapping', 1)] },
  'max-entries-wrong': { fixture: 'range-merge', problems: (f) => [P('fatal', 'max-entries', f.block, 'mapping', 1)] },
  'nr-entries-over-max': { fixture: 'range-merge', problems: (f) => [P('fatal', 'nr-entries', f.block, 'mapping', 1)] },
  'node-flags-3': { fixture: 'range-merge', problems: (f) => [P('fatal', 'node-flags', f.block, 'mapping', 1)] },
  'node-flags-0': { fixture: 'range-merge', problems: (f) => [P('fatal', 'node-flags', f.block, 'mapping', 1)] },
  'wrong-block-type': { fixture: 'range-merge', problems: (f) => [P('fatal', 'block-type', f.block, 'mapping', 1)] },
  // the child, not the parent, holds keys outside the range
  'child-outside-parent-range': { fixture: 'range-merge', problems: (f) => [P('fatal', 'key-range', f.detail!.child as number, 'mapping', 1)] },
  // the pointer is in block f.block
  'child-beyond-device': { fixture: 'range-merge', problems: (f) => [P('fatal', 'block-range', f.block, 'mapping', 1)] },
  // the node reached a second time: itself, or the ancestor it points back to
  'cycle-self': { fixture: 'range-merge', problems: (f) => [P('fatal', 'cycle', f.block, 'mapping', 1)] },
  'cycle-ancestor': { fixture: 'deep-tree', problems: (f) => [P('fatal', 'cycle', f.detail!.ancestor as number, 'mapping', 1)] },
  // the chain's second node (the first non-root one) has 1 entry
  'depth-bomb': { fixture: 'snapshots', problems: (f) => [P('fatal', 'nr-entries', (f.detail!.chain as number[])[1], 'mapping', dev(f))] },
  'underfull-leaf': { fixture: 'range-merge', problems: (f) => [P('fatal', 'nr-entries', f.block, 'mapping', 1)] },
  'underfull-leaf-0': { fixture: 'range-merge', problems: (f) => [P('fatal', 'nr-entries', f.block, 'mapping', 1)] },
  'underfull-internal': { fixture: 'deep-tree', problems: (f) => [P('fatal', 'nr-entries', f.block, 'mapping', 1)] },
  'underfull-internal-0': { fixture: 'deep-tree', problems: (f) => [P('fatal', 'nr-entries', f.block, 'mapping', 1)] },
  'truncate-after-superblock': { fixture: 'range-merge', problems: () => [P('fatal', 'truncated', 0, 'superblock')] },
  'truncate-mid-trees': { fixture: 'range-merge', problems: () => [P('fatal', 'truncated', 0, 'superblock')] },
  'data-block-beyond-end': { fixture: 'snapshots', problems: (f) => [P('fatal', 'data-range', f.block, 'mapping', dev(f))] },
  // a device in one tree only: the other tree is named as the one lacking it
  'details-only-device': { fixture: 'snapshots', problems: (f) => [P('fatal', 'device-mismatch', undefined, 'mapping-top', dev(f))] },
  'mapping-only-device': { fixture: 'snapshots', problems: (f) => [P('fatal', 'device-mismatch', undefined, 'details', dev(f))] },
  'superblock-magic': { fixture: 'range-merge', problems: null },
  'superblock-byte-flip': { fixture: 'range-merge', problems: null },
  'metadata-block-size': { fixture: 'range-merge', problems: null },
  'superblock-version': { fixture: 'range-merge', problems: null },
  // counts below the references: fatal
  'metadata-sm-lowered': { fixture: 'shared-subtree', problems: (f) => [P('fatal', 'sm-count-low', f.block, 'metadata-sm')] },
  'metadata-sm-in-use-free': { fixture: 'range-merge', problems: (f) => [P('fatal', 'sm-in-use-counted-free', f.block, 'metadata-sm')] },
  'data-sm-lowered': { fixture: 'snapshots', problems: (f) => [P('fatal', 'sm-count-low', f.block, 'data-sm')] },
  'data-sm-in-use-free': { fixture: 'range-merge', problems: (f) => [P('fatal', 'sm-in-use-counted-free', f.block, 'data-sm')] },
  'metadata-refcount-lowered': { fixture: 'many-devices', problems: (f) => [P('fatal', 'sm-count-low', f.block, 'metadata-sm')] },
  'data-refcount-lowered': { fixture: 'snapshots', problems: (f) => [P('fatal', 'sm-count-low', f.block, 'data-sm')] },
  // over-counts, leaks, hints, mapped_blocks: non-fatal
  'metadata-sm-raised': { fixture: 'range-merge', problems: (f) => [P('non-fatal', 'sm-count-high', f.block, 'metadata-sm')] },
  'data-sm-raised': { fixture: 'range-merge', problems: (f) => [P('non-fatal', 'sm-count-high', f.block, 'data-sm')] },
  'metadata-refcount-raised': { fixture: 'many-devices', problems: (f) => [P('non-fatal', 'sm-count-high', f.block, 'metadata-sm')] },
  'data-refcount-raised': { fixture: 'snapshots', problems: (f) => [P('non-fatal', 'sm-count-high', f.block, 'data-sm')] },
  'metadata-leak': { fixture: 'range-merge', problems: (f) => [P('non-fatal', 'sm-leak', f.block, 'metadata-sm')] },
  'data-leak': { fixture: 'range-merge', problems: (f) => [P('non-fatal', 'sm-leak', f.block, 'data-sm')] },
  'metadata-nr-free': { fixture: 'range-merge', problems: (f) => [P('non-fatal', 'sm-nr-free', f.block, 'metadata-sm')] },
  'data-nr-free': { fixture: 'range-merge', problems: (f) => [P('non-fatal', 'sm-nr-free', f.block, 'data-sm')] },
  'metadata-nr-allocated': { fixture: 'range-merge', problems: () => [P('non-fatal', 'sm-nr-allocated', 0, 'metadata-sm')] },
  'data-nr-allocated': { fixture: 'range-merge', problems: () => [P('non-fatal', 'sm-nr-allocated', 0, 'data-sm')] },
  'mapped-blocks': { fixture: 'snapshots', problems: (f) => [P('non-fatal', 'mapped-count', undefined, 'details', dev(f))] },
};
void F;

const pick = (r: CheckReport): Expected[] =>
  r.problems.map((p) => ({
    severity: p.severity,
    kind: p.kind,
    ...(p.block !== undefined ? { block: p.block } : {}),
    tree: p.tree!,
    ...(p.devId !== undefined ? { devId: p.devId } : {}),
  }));

/** As the CLI does: metadata too broken to open (checked at open: superblock, sizes) is a one-problem report. */
async function check(img: Buffer, opts: Parameters<typeof checkMetadata>[1] = {}, open: { metadataSnap?: boolean } = {}): Promise<CheckReport> {
  let md: ThinMetadata;
  try {
    md = await ThinMetadata.fromBuffer(img, open);
  } catch (e) {
    if (e instanceof MetadataError) return openFailureReport(e);
    throw e;
  }
  await using _ = md;
  return checkMetadata(md, opts);
}

describe('clean images', () => {
  it.each(listFixtures().map((f) => f.name))('fixture %s is clean, counts as in the manifest', async (name) => {
    const f = fixture(name);
    const r = await check(fixtureImage(name));
    expect(r.problems).toEqual([]);
    expect([r.fatal, r.nonFatal, r.omitted]).toEqual([0, 0, 0]);
    expect(r.spaceMapsChecked).toBe(true);
    expect(r.counts).toEqual({
      devices: f.devices,
      mappings: f.mappings,
      // thin_restore's nr_allocated is one above the blocks in use (manifest skew)
      metadataBlocksInUse: f.metadataAllocated - f.metadataNrAllocatedSkew,
      dataBlocksInUse: expect.any(Number),
      metadataBlocks: f.metadataBlocks,
      dataBlocks: f.nrDataBlocks,
      transactionId: BigInt(f.transaction),
      heldRoot: f.heldRoot ?? 0,
    });
  });

  it.each(listKernelFixtures().map((f) => f.name))('kernel-made %s is clean', async (name) => {
    const k = listKernelFixtures().find((x) => x.name === name)!;
    const r = await check(kernelFixtureImage(name));
    expect(r.problems).toEqual([]);
    expect(r.spaceMapsChecked).toBe(true);
    expect(r.counts.devices).toBe(k.devices.length);
    expect(r.counts.mappings).toBe(k.devices.reduce((n, d) => n + d.mappings, 0));
    expect(r.counts.heldRoot).toBe(k.heldRoot ?? 0);
  });

  it('through the metadata snapshot: the held trees, no space maps', async () => {
    const f = fixture('metadata-snap');
    const r = await check(fixtureImage('metadata-snap'), {}, { metadataSnap: true });
    expect(r.problems).toEqual([]);
    expect(r.spaceMapsChecked).toBe(false);
    expect(r.counts.transactionId).toBe(BigInt(f.held!.transaction));
    expect(r.counts.devices).toBe(f.held!.devices);
    expect(r.counts.mappings).toBe(f.held!.mappings);
  });

  it('superblockOnly and skipMappings check less and say so', async () => {
    const img = fixtureImage('snapshots');
    const s = await check(img, { superblockOnly: true });
    expect([s.fatal, s.nonFatal, s.spaceMapsChecked, s.counts.devices]).toEqual([0, 0, false, 0]);
    const m = await check(img, { skipMappings: true });
    expect([m.fatal, m.nonFatal, m.spaceMapsChecked, m.counts.devices, m.counts.mappings]).toEqual([0, 0, false, 7, 0]);
    // a bad mapping leaf passes --skip-mappings, as with thin_check
    const bad = corrupt(img, 'node-checksum').image;
    expect((await check(bad, { skipMappings: true })).fatal).toBe(0);
    expect((await check(bad)).fatal).toBe(1);
  });

  it('reports phases and aborts with AbortError', async () => {
    const phases: string[] = [];
    await check(fixtureImage('metadata-snap'), { onProgress: (p) => phases.includes(p.phase) || phases.push(p.phase) });
    expect(phases).toEqual(['superblock', 'details', 'mapping-top', 'mappings', 'metadata-snap', 'data-sm', 'metadata-sm']);
    const ac = new AbortController();
    const p = check(fixtureImage('deep-tree'), { signal: ac.signal, onProgress: (x) => x.phase === 'mappings' && ac.abort() });
    await expect(p).rejects.toBeInstanceOf(AbortError);
  });
});

describe('corruptions: exactly the problem the fault implies', () => {
  it('covers every corruption kind', () => {
    expect(Object.keys(EXPECT).sort()).toEqual([...CORRUPTION_KINDS].sort());
  });

  it.each(CORRUPTION_KINDS)('%s', async (kind) => {
    const e = EXPECT[kind];
    const { image, fault } = corrupt(fixtureImage(e.fixture), kind);
    if (e.problems === null) {
      await expect(ThinMetadata.fromBuffer(image)).rejects.toBeInstanceOf(MetadataError);
      return;
    }
    const r = await check(image);
    const want = e.problems(fault);
    expect(pick(r)).toEqual(want);
    expect(r.fatal).toBe(want.filter((p) => p.severity === 'fatal').length);
    expect(r.nonFatal).toBe(want.filter((p) => p.severity === 'non-fatal').length);
    for (const p of r.problems) expect(p.message.length).toBeGreaterThan(20);
  });

  it('node problems carry the key range their parent gives', async () => {
    const { image, fault } = corrupt(fixtureImage('range-merge'), 'underfull-leaf');
    const r = await check(image);
    // range-merge's leaves start every 126 keys (manifest leafFirstKeys): the first leaf holds [0, 126)
    expect(fixture('range-merge').leafFirstKeys!.slice(0, 2)).toEqual([0, 126]);
    expect(r.problems[0]).toMatchObject({ block: fault.block, keys: [0n, 125n] });
  });

  it('under-filled nodes are fatal whatever the count (thin_check 0.9.0 passes 83 entries with --ignore-non-fatal-errors)', () => {
    for (const k of UNDERFULL_KINDS) expect(EXPECT[k].problems).not.toBeNull();
  });
});

describe('a data device recounted a window at a time', () => {
  // The fixtures' data devices (up to 2^21 blocks) span many one-bitmap windows.
  const W = { dataWindow: 16320 };

  it.each(listFixtures().map((f) => f.name))('fixture %s is clean, with the same counts', async (name) => {
    const whole = await check(fixtureImage(name));
    const r = await check(fixtureImage(name), W);
    expect(r.problems).toEqual([]);
    expect(r.spaceMapsChecked).toBe(true);
    expect(r.counts).toEqual(whole.counts);
  });

  it.each(CORRUPTION_KINDS.filter((k) => EXPECT[k].problems !== null))('%s: exactly the problem the fault implies', async (kind) => {
    const e = EXPECT[kind];
    const { image, fault } = corrupt(fixtureImage(e.fixture), kind);
    const r = await check(image, W);
    expect(pick(r)).toEqual(e.problems!(fault));
  });

  it('window 0 is counted during the walk: only leaves mapping into later windows are read again', async () => {
    // deep-tree: 58,388 data blocks, mapped up to 56,352: four windows of 16,320.
    const img = fixtureImage('deep-tree');
    const perWindow = new Map<number, number>();
    for (const n of listNodes(img).filter((x) => x.tree === 'bottom' && x.leaf)) {
      const v = node(img, n.block);
      const windows = new Set<number>();
      for (let i = 0; i < v.nr; i++) windows.add(Math.floor(Number(v.buf.readBigUInt64LE(v.valueOff(i)) >> 24n) / W.dataWindow));
      for (const w of windows) perWindow.set(w, (perWindow.get(w) ?? 0) + 1);
    }
    expect([...perWindow.keys()].sort()).toEqual([0, 1, 2, 3]);
    const reads = async (opts: Parameters<typeof checkMetadata>[1]): Promise<number> => {
      await using md = await ThinMetadata.fromBuffer(img);
      const r = await checkMetadata(md, opts);
      expect(r.problems).toEqual([]);
      return md.io.stats.blocksRead;
    };
    const extra = (await reads(W)) - (await reads({}));
    expect(extra).toBe(perWindow.get(1)! + perWindow.get(2)! + perWindow.get(3)!);
  });

  it('a window that is not whole bitmaps is refused', async () => {
    await expect(check(fixtureImage('basic'), { dataWindow: 1000 })).rejects.toMatchObject({ code: 'EINVAL' });
  });
});

describe('absurd sizes', () => {
  it('a data space map larger than its bitmaps could count is a fatal problem, not a huge allocation', async () => {
    const img = Buffer.from(fixtureImage('basic'));
    const b = blk(img, 0);
    b.writeBigUInt64LE(2n ** 40n, 0x40); // data sm nr_blocks
    seal(b, 'superblock');
    const r = await check(img);
    expect(pick(r)).toEqual([P('fatal', 'space-map', 0, 'superblock')]);
    expect(r.spaceMapsChecked).toBe(false);
  });
});

describe('a device mapping root (a top-level value) outside the metadata device (found by an outside hunt)', () => {
  /** snapshots with the last top-level entry's root set to `root`; returns the image and the device. */
  const damaged = (root: bigint | ((nrMetadataBlocks: number) => bigint)): { img: Buffer; dev: number; root: number } => {
    const img = Buffer.from(fixtureImage('snapshots'));
    const top = listNodes(img).filter((x) => x.tree === 'top' && x.leaf).pop()!;
    const n = node(img, top.block);
    const r = typeof root === 'function' ? root(superblock(img).metaSm.nrBlocks) : root;
    n.buf.writeBigUInt64LE(r, n.valueOff(n.nr - 1));
    seal(n.buf, 'btree');
    return { img, dev: Number(n.key(n.nr - 1)), root: Number(r) };
  };

  it.each([
    ['far beyond (1000000)', 1_000_000n],
    ['the first block past the device (nr_blocks)', (nr: number) => BigInt(nr)],
  ] as const)('%s: one fatal block-range problem, with --skip-mappings as without (ls with a mapping walk refuses it too; ls of details fields reads no mapping tree, as thin_ls)', async (_what, root) => {
    const d = damaged(root);
    const want = [P('fatal', 'block-range', d.root, 'mapping', d.dev)];
    const full = await check(d.img);
    const skip = await check(d.img, { skipMappings: true });
    expect(pick(full)).toEqual(want);
    expect(pick(skip)).toEqual(want);
    expect(skip.problems[0].message).toBe(full.problems[0].message);
    expect(skip.problems[0].message).toMatch(new RegExp(`^root of the mapping tree of device ${d.dev} is block ${d.root}, beyond the metadata device \\(\\d+ blocks\\)$`));
    using f = tempImage(d.img);
    expect(runCli(['check', '--skip-mappings', f.path]).status).toBe(1);
    expect(runCli(['ls', '-o', 'DEV,EXCLUSIVE_BLOCKS', f.path]).status).toBe(1);
    expect(runCli(['ls', f.path]).status).toBe(0);
  });
});

describe('an unbalanced mapping tree: one problem, naming the node out of line, as the walkers do (found by an outside hunt)', () => {
  // Device 2's root becomes [I1, L]: I1 its own internal node (leaves at depth 2), L a leaf of
  // device 1 (depth 1 here), a subtree check skips as validated with device 1. check reported 126
  // problems, one per leaf under I1 ("leaves under block N are at depth 2, others at 1"), never L.
  itOracle('check names leaf L, once, in the words of dump', async () => {
    const xml = [
      '<superblock uuid="" time="1" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="100000">',
      '<device dev_id="1" mapped_blocks="300" transaction="0" creation_time="0" snap_time="0">',
      '<range_mapping origin_begin="60001" data_begin="50000" length="300" time="1"/>',
      '</device>',
      '<device dev_id="2" mapped_blocks="40000" transaction="0" creation_time="0" snap_time="0">',
      '<range_mapping origin_begin="0" data_begin="0" length="40000" time="1"/>',
      '</device>',
      '</superblock>',
    ].join('\n');
    using flat = restoreFlat(xml, 2 << 20, 'unbalanced');
    const img = readFileSync(flat.path);
    const top = listNodes(img).find((x) => x.tree === 'top' && x.leaf)!;
    const t = node(img, top.block);
    const root = (dev: number): number => t.child([0, 1].find((i) => t.key(i) === BigInt(dev))!);
    const n1 = node(img, root(1));
    const n2 = node(img, root(2));
    expect([n1.leaf, n2.leaf, node(img, n2.child(0)).leaf]).toEqual([false, false, false]);
    const L = n1.child(0);
    n2.buf.writeUInt32LE(2, 16);
    n2.buf.writeBigUInt64LE(BigInt(L), n2.valueOff(1));
    seal(n2.buf, 'btree');
    const want = `unbalanced mapping tree of device 2: leaf ${L} at depth 1, others at 2`;
    using f = tempImage(img);
    expect(runCli(['dump', f.path]).stderr).toContain(want);
    const r = await check(img);
    const depth = r.problems.filter((p) => p.kind === 'depth');
    expect(depth.map((p) => [p.severity, p.block, p.devId, p.tree, p.message])).toEqual([['fatal', L, 2, 'mapping', want]]);
    expect(depth[0].keys).toEqual([n2.key(1), 2n ** 64n - 1n]);
  });
});

describe("a held snapshot whose superblock says another data block size (a pool's never changes; found by an outside hunt)", () => {
  const damaged = (): Buffer => {
    const img = Buffer.from(fixtureImage('metadata-snap'));
    const held = blk(img, 0).readUInt32LE(0x38); // held root (low word)
    const h = blk(img, held);
    h.writeUInt32LE(h.readUInt32LE(0x150) * 2, 0x150); // data_block_size
    seal(h, 'superblock');
    return img;
  };

  it('check of the live metadata: a fatal block-size problem at the held superblock', async () => {
    const r = await check(damaged());
    expect(r.problems.map((p) => [p.severity, p.kind, p.block])).toEqual([['fatal', 'block-size', blk(damaged(), 0).readUInt32LE(0x38)]]);
  });

  it('opened through the snapshot (dump -m, check -m): MetadataError block-size, nothing read in the wrong units', async () => {
    await expect(ThinMetadata.fromBuffer(damaged(), { metadataSnap: true })).rejects.toMatchObject({ name: 'MetadataError', kind: 'block-size' });
  });
});

describe('a fault in the data space map index', () => {
  it('is the one problem: its uncounted nodes and bitmaps are not reported as leaked metadata blocks (found by an outside hunt)', async () => {
    const img = Buffer.from(fixtureImage('basic'));
    const b = blk(img, 0);
    // Three more bitmaps' worth of data blocks than the index holds.
    b.writeBigUInt64LE(b.readBigUInt64LE(0x40) + 3n * 16320n, 0x40);
    seal(b, 'superblock');
    const r = await check(img);
    expect(r.problems.map((p) => [p.severity, p.kind])).toEqual([['fatal', 'sm-index']]);
    expect(r.nonFatal).toBe(0);
    expect(r.spaceMapsChecked).toBe(false);
  });

  // basic: the data space map's index is one btree leaf (block 4), the metadata space map's index is block 1.
  it.each([
    ['data', 4, (img: Buffer) => node(img, 4).valueOff(0), 'btree', 2n ** 64n - 1n],
    ['metadata', 1, () => 16, 'index', 2n ** 53n + 1n],
  ] as const)('a %s bitmap location past 2^53 is said as read, with the block holding it (outside hunt F: "block Infinity", no holder)', async (kind, holder, off, type, value) => {
    const img = Buffer.from(fixtureImage('basic'));
    const b = blk(img, holder);
    b.writeBigUInt64LE(value, off(img));
    seal(b, type);
    const r = await check(img);
    expect(r.problems).toEqual([
      expect.objectContaining({
        severity: 'fatal',
        kind: 'sm-index',
        block: holder,
        message: `${kind} space map: bitmap 0 is at block ${value} (its index entry in block ${holder}), beyond the metadata device (256 blocks)`,
      }),
    ]);
  });
});

describe('shared subtrees', () => {
  /**
   * shared-subtree: devices 2-4 are snapshots of 1; device 3's root was
   * copied when it was written, so its children are shared with device 1
   * under device 1's key ranges. Narrowing the range device 3's root gives a
   * shared child must be caught, although device 1 validated that child.
   */
  it('a shared node under a narrower key range in another tree is validated again', async () => {
    const img = fixtureImage('shared-subtree');
    const nodes = listNodes(img);
    const roots = nodes.filter((n) => n.tree === 'bottom' && n.level === 1 && !n.leaf);
    const r3 = roots.find((n) => n.dev === 3n)!;
    const r1 = roots.find((n) => n.dev === 1n)!;
    expect(r3.block).not.toBe(r1.block);
    const n3 = node(img, r3.block);
    const n1 = node(img, r1.block);
    // a child both roots point to under the same key
    let i = -1;
    for (let k = 1; k < n3.nr; k++) if (n3.child(k) === n1.child(k) && n3.key(k) === n1.key(k)) i = k;
    expect(i).toBeGreaterThan(0);
    const shared = n3.child(i);
    const bad = Buffer.from(img);
    const b = node(bad, r3.block);
    b.buf.writeBigUInt64LE(b.key(i) + 1n, 32 + 8 * i);
    seal(b.buf, 'btree');
    const r = await check(bad);
    expect(pick(r)).toEqual([P('fatal', 'key-range', shared, 'mapping', 3)]);
  });

  it('a root of one tree reached below the root of another is held to the minimum fill there (found by an outside hunt: check passed it, the readers refused it)', async () => {
    const img = fixtureImage('many-devices');
    const rootLeaves = listNodes(img).filter((n) => n.tree === 'bottom' && n.level === 1 && n.leaf);
    const [a, b] = rootLeaves;
    expect(b).toBeDefined();
    expect(a.nr).toBeLessThan(84); // a root is exempt from the fill: under another root it is not
    // Device b's root becomes an internal node whose only child, under [0, end), is device a's root leaf.
    const bad = Buffer.from(img);
    const r = blk(bad, b.block);
    r.fill(0);
    r.writeUInt32LE(1, 4); // INTERNAL
    r.writeBigUInt64LE(BigInt(b.block), 8);
    r.writeUInt32LE(1, 16);
    r.writeUInt32LE(252, 20);
    r.writeUInt32LE(8, 24);
    r.writeBigUInt64LE(0n, 32);
    r.writeBigUInt64LE(BigInt(a.block), 32 + 8 * 252);
    seal(r, 'btree');
    const rep = await check(bad);
    expect(rep.problems.filter((p) => p.kind === 'nr-entries')).toEqual([
      expect.objectContaining({ severity: 'fatal', kind: 'nr-entries', block: a.block, tree: 'mapping', devId: Number(b.dev) }),
    ]);
    // What the readers say of it (dump refuses it): the same words.
    await using md = await ThinMetadata.fromBuffer(bad);
    const err = await (async () => {
      for await (const _ of md.mappingBatches(Number(b.dev))) void _;
    })().catch((e: unknown) => e);
    expect(err).toMatchObject({ kind: 'nr-entries' });
  });

  it.each([
    ['top-level mapping', 0x140],
    ['device details', 0x148],
  ])('a superblock %s root beyond the metadata device: the readers name the root and its tree (found by an outside hunt: "block N points to block N")', async (tree, at) => {
    const bad = Buffer.from(fixtureImage('basic'));
    const sb = blk(bad, 0);
    sb.writeBigUInt64LE(10_000_000n, at as number);
    seal(sb, 'superblock');
    await using md = await ThinMetadata.fromBuffer(bad);
    const n = md.nrMetadataBlocks;
    const want = { kind: 'block-range', message: `the root of the ${tree} tree is block 10000000, beyond the metadata device (${n} blocks)` };
    await expect(md.deviceTable()).rejects.toMatchObject(want);
  });

  it('a shared node is read once when ranges contain each other', async () => {
    // every device of shared-subtree is checked, yet shared nodes are not re-read
    await using md = await ThinMetadata.fromBuffer(fixtureImage('shared-subtree'));
    const before = md.io.stats.blocksRead;
    const r = await checkMetadata(md, {});
    expect(r.fatal + r.nonFatal).toBe(0);
    const bottom = new Set(listNodes(fixtureImage('shared-subtree')).filter((n) => n.tree === 'bottom').map((n) => n.block));
    // bottom nodes once, plus details/top/space-map blocks (fewer than 20 here)
    expect(md.io.stats.blocksRead - before).toBeLessThan(bottom.size + 20);
  });

  it('a cycle across a held snapshot tree and a live tree is a share, not a cycle', async () => {
    const r = await check(fixtureImage('metadata-snap-diverged'));
    expect(r.problems).toEqual([]);
    expect(r.counts.heldRoot).toBe(8);
  });
});

describe('CLI', () => {
  const run = (img: Buffer, args: string[]) => {
    using f = tempImage(img);
    return runCli(['check', ...args, f.path]);
  };
  const clean = fixtureImage('snapshots');

  it('clean: exit 0, phase lines and a summary on stdout, nothing on stderr', () => {
    const r = run(clean, []);
    expect(r.status).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/^checking the superblock$/m);
    expect(r.stdout).toMatch(/^7 devices, 1921 mappings, transaction 9$/m);
    expect(r.stdout).toMatch(/^space maps checked: 32 of 512 metadata blocks/m);
    expect(r.stdout).toMatch(/no problems found\n$/);
  });

  it('what --super-block-only and --skip-mappings did not read is said so, not counted as 0 (found by an outside hunt)', () => {
    expect(run(clean, ['--super-block-only']).stdout).toMatch(/^devices and mappings not read, transaction 9$/m);
    expect(run(clean, ['--skip-mappings']).stdout).toMatch(/^7 devices, mappings not read, transaction 9$/m);
  });

  it('-q prints nothing, in every verdict', () => {
    for (const img of [clean, corrupt(clean, 'data-leak').image, corrupt(clean, 'node-checksum').image]) {
      const r = run(img, ['-q']);
      expect([r.stdout, r.stderr]).toEqual(['', '']);
    }
    expect(run(clean, ['-q']).status).toBe(0);
    expect(run(corrupt(clean, 'node-checksum').image, ['-q']).status).toBe(1);
  });

  it('--json: one object with the fields, u64s as strings', () => {
    const { image, fault } = corrupt(fixtureImage('high-values'), 'data-leak');
    const r = run(image, ['--json']);
    expect(r.status).toBe(1);
    const j = JSON.parse(r.stdout);
    expect(Object.keys(j).sort()).toEqual(['counts', 'fatal', 'nonFatal', 'omitted', 'problems', 'spaceMapsChecked']);
    expect(j.counts.transactionId).toBe(fixture('high-values').transaction); // 2^64-1 exactly
    expect(j.problems).toEqual([
      { severity: 'non-fatal', kind: 'sm-leak', block: fault.block, nrBlocks: null, devId: null, tree: 'data-sm', keys: null, message: expect.stringContaining(`data block ${fault.block}`) },
    ]);
    expect([j.fatal, j.nonFatal, j.spaceMapsChecked]).toEqual([0, 1, true]);
    const k = JSON.parse(run(corrupt(fixtureImage('range-merge'), 'underfull-leaf').image, ['--json']).stdout);
    expect(k.problems[0].keys).toEqual(['0', '125']);
  });

  it('exit codes: fatal 1 always; non-fatal 1 unless --ignore-non-fatal-errors (then 0 with the warning)', () => {
    const leak = corrupt(clean, 'data-leak').image;
    const r1 = run(leak, []);
    expect(r1.status).toBe(1);
    expect(r1.stdout).toMatch(/^warning \[sm-leak\] \(block \d+, data space map\): data block \d+: counted 1 but not referenced/m);
    expect(r1.stderr).toMatch(/^dmthin check: .+: 1 non-fatal problem found \[EUCLEAN\]\n$/);
    const r2 = run(leak, ['--ignore-non-fatal-errors']);
    expect([r2.status, r2.stderr]).toEqual([0, '']);
    expect(r2.stdout).toMatch(/^warning \[sm-leak\]/m);
    const fatal = corrupt(clean, 'data-sm-in-use-free').image;
    expect(run(fatal, []).status).toBe(1);
    // The summary on stdout: counted nouns agree ("1 fatal, 0 non-fatal problem found" before).
    expect(r1.stdout).toMatch(/\n1 problem found: 0 fatal, 1 non-fatal\n$/);
    expect(run(fatal, []).stdout).toMatch(/\n\d+ problems? found: [1-9]\d* fatal, \d+ non-fatal\n$/);
    const r3 = run(fatal, ['--ignore-non-fatal-errors']);
    expect(r3.status).toBe(1);
    expect(r3.stdout).toMatch(/^error \[sm-in-use-counted-free\] \(block \d+, data space map\): .*overwrite live data/m);
    expect(r3.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('--super-block-only and --skip-mappings', () => {
    const bad = corrupt(clean, 'node-checksum').image;
    const s = run(bad, ['--super-block-only']);
    expect(s.status).toBe(0);
    expect(s.stdout).toMatch(/^checking the superblock\n/);
    expect(s.stdout).not.toMatch(/device details/);
    expect(s.stdout).toMatch(/space maps not checked \(--super-block-only\)/);
    const m = run(bad, ['--skip-mappings']);
    expect(m.status).toBe(0);
    expect(m.stdout).toMatch(/space maps not checked \(--skip-mappings\)/);
    expect(run(corrupt(clean, 'superblock-byte-flip').image, ['--super-block-only']).status).toBe(1);
    // --json: what was not read is null, as the text says "not read" (it said 0: outside hunt).
    const counts = (args: string[]) => JSON.parse(run(clean, [...args, '--json']).stdout).counts;
    expect(counts(['--super-block-only'])).toMatchObject({ devices: null, mappings: null, metadataBlocksInUse: null, dataBlocksInUse: null, transactionId: expect.any(String) });
    expect(counts(['--skip-mappings'])).toMatchObject({ devices: expect.any(Number), mappings: null, metadataBlocksInUse: null, dataBlocksInUse: null });
    expect(counts([])).toMatchObject({ devices: expect.any(Number), mappings: expect.any(Number), metadataBlocksInUse: expect.any(Number), dataBlocksInUse: expect.any(Number) });
    expect(JSON.parse(run(corrupt(clean, 'superblock-magic').image, ['--json']).stdout).counts).toEqual({
      devices: null,
      mappings: null,
      metadataBlocksInUse: null,
      dataBlocksInUse: null,
      metadataBlocks: null,
      dataBlocks: null,
      transactionId: null,
      heldRoot: null,
    });
  });

  it('-m: the held snapshot, and the output says the space maps were not checked', () => {
    const r = run(fixtureImage('metadata-snap'), ['-m']);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^reading the metadata snapshot at block 8$/m);
    expect(r.stdout).toMatch(/space maps not checked \(read through the metadata snapshot/);
  });

  it('metadata that cannot be opened is a fatal problem, not a crash', () => {
    const r = run(corrupt(clean, 'superblock-magic').image, ['--json']);
    expect(r.status).toBe(1);
    const j = JSON.parse(r.stdout);
    expect(j.problems.map((p: { kind: string }) => p.kind)).toEqual(['magic']);
    expect(j.fatal).toBe(1);
    const t = run(corrupt(clean, 'superblock-byte-flip').image, []);
    expect(t.status).toBe(1);
    expect(t.stdout).toMatch(/^error \[checksum\] \(block 0, superblock\)/m);
    // Nothing was read, and the summary says so (it said "0 devices, 0 mappings, transaction 0").
    expect(t.stdout).toMatch(/^devices, mappings and transaction not read\nspace maps not checked \(the metadata could not be opened\)$/m);
    expect(t.stdout).not.toMatch(/0 devices/);
  });

  it('a problem line names its tree in words, as the reader does ("(block 4, data-sm-index tree)" before)', () => {
    // basic: the data space map's index is one btree leaf, block 4.
    const img = Buffer.from(fixtureImage('basic'));
    blk(img, 4)[100] ^= 1;
    const r = run(img, []);
    expect(r.status).toBe(1);
    expect(r.stdout).toMatch(/^error \[checksum\] \(block 4, data space map index tree\): bad checksum in btree node \(block 4, data space map index tree\)$/m);
  });

  it('a missing file is an error line, not a verdict', () => {
    const r = runCli(['check', '/nonexistent/dir/meta.bin']);
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^dmthin check: .*ENOENT.*\n$/);
  });
});

