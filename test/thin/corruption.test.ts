/**
 * Corrupted metadata: every fault the corruption helpers can make must give a
 * typed MetadataError naming the block (library) and exit status 1 with one
 * line on stderr (CLI), never a crash or a hang. Random faults (fuzzing) must
 * give either a clean result or a MetadataError.
 */
import fc from 'fast-check';
import { DmthinError, MetadataError, ThinMetadata, dump, deviceUsage } from '../../src';
import { ACCOUNTING_KINDS, blk, corrupt, CORRUPTION_KINDS, CorruptionKind, listNodes, node, seal, blockType } from '../helpers/corrupt';
import { fixtureImage, tempImage } from '../helpers/fixtures';
import { runCli } from '../cli/run-cli';
import { Writable } from 'node:stream';

/**
 * Which fixture each fault is applied to, and the MetadataError kind(s) expected.
 * Not here: the space-map faults (ACCOUNTING_KINDS but mapped_blocks: the
 * space maps and their hints), which only `check` reads. A wrong
 * mapped_blocks is caught by every whole-device walk (mapped-count), an
 * under-filled node by every walk (the fill rule).
 */
const EXPECT: Partial<Record<CorruptionKind, { fixture: string; kinds: string[]; locates?: boolean }>> = {
  'node-checksum': { fixture: 'range-merge', kinds: ['checksum'], locates: true },
  'node-blocknr': { fixture: 'range-merge', kinds: ['blocknr'], locates: true },
  'superblock-magic': { fixture: 'range-merge', kinds: ['magic'], locates: true },
  'superblock-byte-flip': { fixture: 'range-merge', kinds: ['checksum'], locates: true },
  'truncate-after-superblock': { fixture: 'range-merge', kinds: ['truncated'] },
  'truncate-mid-trees': { fixture: 'range-merge', kinds: ['truncated'] },
  'cycle-self': { fixture: 'range-merge', kinds: ['cycle'] },
  'cycle-ancestor': { fixture: 'deep-tree', kinds: ['cycle'] },
  'child-beyond-device': { fixture: 'range-merge', kinds: ['block-range'], locates: true },
  'keys-out-of-order': { fixture: 'range-merge', kinds: ['key-order'], locates: true },
  'child-outside-parent-range': { fixture: 'range-merge', kinds: ['key-range'] },
  'leaf-value-size-16': { fixture: 'range-merge', kinds: ['value-size'], locates: true },
  'max-entries-not-div3': { fixture: 'range-merge', kinds: ['max-entries'], locates: true },
  'max-entries-wrong': { fixture: 'range-merge', kinds: ['max-entries'], locates: true },
  'nr-entries-over-max': { fixture: 'range-merge', kinds: ['nr-entries'], locates: true },
  'node-flags-3': { fixture: 'range-merge', kinds: ['node-flags'], locates: true },
  'node-flags-0': { fixture: 'range-merge', kinds: ['node-flags'], locates: true },
  'wrong-block-type': { fixture: 'range-merge', kinds: ['block-type'], locates: true },
  'data-block-beyond-end': { fixture: 'snapshots', kinds: ['data-range'] },
  'details-only-device': { fixture: 'snapshots', kinds: ['device-mismatch'] },
  'mapping-only-device': { fixture: 'snapshots', kinds: ['device-mismatch'] },
  'depth-bomb': { fixture: 'snapshots', kinds: ['nr-entries', 'depth', 'cycle'] },
  'metadata-block-size': { fixture: 'range-merge', kinds: ['block-size'], locates: true },
  'superblock-version': { fixture: 'range-merge', kinds: ['version'], locates: true },
  'underfull-leaf': { fixture: 'range-merge', kinds: ['nr-entries'], locates: true },
  'underfull-leaf-0': { fixture: 'range-merge', kinds: ['nr-entries'], locates: true },
  'underfull-internal': { fixture: 'deep-tree', kinds: ['nr-entries'], locates: true },
  'underfull-internal-0': { fixture: 'deep-tree', kinds: ['nr-entries'], locates: true },
  'mapped-blocks': { fixture: 'snapshots', kinds: ['mapped-count'] },
};

const devNull = () =>
  new Writable({
    write(_c, _e, cb) {
      cb();
    },
  });

/** Everything a user can do with the image: open, list, dump, ls. */
async function readAll(image: Buffer): Promise<void> {
  await using md = await ThinMetadata.fromBuffer(image);
  await md.devices();
  await dump(md, devNull());
  await deviceUsage(md);
}

const READER_KINDS = CORRUPTION_KINDS.filter((k) => !ACCOUNTING_KINDS.includes(k) || k === 'mapped-blocks');

test('every structural corruption kind has an expectation', () => {
  expect(Object.keys(EXPECT).sort()).toEqual([...READER_KINDS].sort());
});

describe.each(READER_KINDS)('%s', (kind) => {
  const e = EXPECT[kind]!;
  const { image, fault } = corrupt(fixtureImage(e.fixture), kind);

  test('library: a typed MetadataError that names the block', async () => {
    const err = await readAll(image).then(
      () => undefined,
      (x) => x,
    );
    expect(err).toBeInstanceOf(MetadataError);
    expect(e.kinds).toContain((err as MetadataError).kind);
    expect(['EILSEQ', 'ENOTBLK', 'EUCLEAN']).toContain((err as MetadataError).code);
    expect(typeof (err as MetadataError).errno).toBe('number');
    if (e.locates) expect((err as MetadataError).block).toBe(fault.block);
  });

  test('CLI: dump and ls exit 1 with one line on stderr', () => {
    using f = tempImage(image);
    for (const cmd of [['dump'], ['ls', '-o', 'DEV,EXCLUSIVE_BLOCKS']]) {
      const r = runCli([...cmd, f.path], { timeoutMs: 30_000 });
      expect(r.signal).toBeNull();
      expect(r.status).toBe(1);
      const lines = r.stderr.trim().split('\n');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(new RegExp(`^dmthin ${cmd[0]}: .+\\[(EILSEQ|ENOTBLK|EUCLEAN)\\]$`));
    }
  });
});

describe('fuzzing: random faults never crash, hang or escape as untyped errors', () => {
  const bases = ['snapshots', 'deep-tree', 'metadata-snap', 'shared-subtree'].map((n) => ({ n, img: fixtureImage(n) }));

  test('single-byte changes in live nodes, with the checksum re-sealed (structural faults)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.nat(), fc.nat(), fc.integer({ min: 4, max: 4095 }), fc.integer({ min: 1, max: 255 }), async (bi, ni, off, x) => {
        const base = bases[bi % bases.length].img;
        const nodes = listNodes(base);
        const target = nodes[ni % nodes.length].block;
        const img = Buffer.from(base);
        const b = img.subarray(target * 4096, (target + 1) * 4096);
        const type = blockType(b);
        b[off] ^= x;
        if (type) seal(b, type);
        try {
          await readAll(img);
        } catch (err) {
          if (!(err instanceof MetadataError)) throw err;
        }
      }),
      { numRuns: 400 },
    );
  }, 120_000);

  test('random pointers and counts written into node headers and values', async () => {
    await fc.assert(
      fc.asyncProperty(fc.nat(), fc.nat(), fc.nat({ max: 1023 }), fc.oneof(fc.nat(), fc.constant(0xffffffff), fc.nat({ max: 300 })), async (bi, ni, word, value) => {
        const base = bases[bi % bases.length].img;
        const nodes = listNodes(base);
        const target = nodes[ni % nodes.length].block;
        const img = Buffer.from(base);
        const b = img.subarray(target * 4096, (target + 1) * 4096);
        const type = blockType(b);
        b.writeUInt32LE(value >>> 0, Math.max(4, word * 4));
        if (type) seal(b, type);
        try {
          await readAll(img);
        } catch (err) {
          if (!(err instanceof DmthinError)) throw err;
          expect(err).toBeInstanceOf(MetadataError);
        }
      }),
      { numRuns: 400 },
    );
  }, 120_000);
});

/**
 * The promise behind every exit status: a structural fault with a valid
 * checksum (node headers, internal keys, child pointers, tree roots) either
 * leaves the dump byte-identical to the clean image's or is refused. A lowered
 * nr_entries that still leaves a node a third full is caught by the mapping
 * count the details tree keeps; everything else by the node and tree checks.
 */
describe('property: a structural fault changes nothing or is refused', () => {
  const names = ['snapshots', 'deep-tree', 'shared-subtree', 'metadata-snap', 'range-merge'];
  const bases = names.map((n) => ({ n, img: fixtureImage(n) }));
  const dumpOf = async (image: Buffer): Promise<Buffer> => {
    const chunks: Buffer[] = [];
    const out = new Writable({
      write(c, _e, cb) {
        chunks.push(c);
        cb();
      },
    });
    await using md = await ThinMetadata.fromBuffer(image);
    await dump(md, out, { format: 'xml' });
    return Buffer.concat(chunks);
  };
  const clean = new Map<string, Buffer>();
  beforeAll(async () => {
    for (const b of bases) clean.set(b.n, await dumpOf(b.img));
  });

  type Fault = 'nr-entries' | 'max-entries' | 'value-size' | 'flags' | 'internal-key' | 'child' | 'dev-root' | 'sb-root';
  const FAULTS: Fault[] = ['nr-entries', 'max-entries', 'value-size', 'flags', 'internal-key', 'child', 'dev-root', 'sb-root'];

  test('dump output identical to the clean image, or a MetadataError', async () => {
    let refused = 0;
    let unchanged = 0;
    await fc.assert(
      fc.asyncProperty(fc.nat(), fc.constantFrom(...FAULTS), fc.nat(), fc.nat(), fc.nat({ max: 2 ** 32 - 1 }), async (bi, fault, ni, ii, r) => {
        const base = bases[bi % bases.length];
        const img = Buffer.from(base.img);
        const nodes = listNodes(img);
        const blocks = img.length / 4096;
        // Re-pointing a reference at another device's subtree makes a different
        // tree that is structurally valid; only the space maps tell (dmthin check).
        const bottom = new Set(nodes.filter((n) => n.tree === 'bottom').map((n) => n.block));
        const pointer = r % (blocks + 8);
        if (fault === 'sb-root') {
          fc.pre(!bottom.has(pointer) && !nodes.some((n) => n.block === pointer));
          const sb = img.subarray(0, 4096);
          sb.writeBigUInt64LE(BigInt(pointer), r % 2 ? 0x140 : 0x148);
          seal(sb, 'superblock');
        } else {
          const pool = fault === 'internal-key' || fault === 'child' ? nodes.filter((n) => !n.leaf) : fault === 'dev-root' ? nodes.filter((n) => n.tree === 'top' && n.leaf) : nodes;
          fc.pre(pool.length > 0);
          const target = pool[ni % pool.length];
          const b = img.subarray(target.block * 4096, (target.block + 1) * 4096);
          const nr = b.readUInt32LE(16);
          const max = b.readUInt32LE(20);
          const vsize = b.readUInt32LE(24);
          const i = nr ? ii % nr : 0;
          switch (fault) {
            case 'nr-entries':
              b.writeUInt32LE(r % (max + 2), 16);
              break;
            case 'max-entries':
              b.writeUInt32LE(r % 400, 20);
              break;
            case 'value-size':
              b.writeUInt32LE(r % 40, 24);
              break;
            case 'flags':
              b.writeUInt32LE(r % 4, 4);
              break;
            case 'internal-key': {
              const k = b.readBigUInt64LE(32 + 8 * i);
              const delta = BigInt((r % 2001) - 1000);
              b.writeBigUInt64LE(BigInt.asUintN(64, k + delta), 32 + 8 * i);
              break;
            }
            case 'child':
            case 'dev-root':
              fc.pre(!bottom.has(pointer));
              b.writeBigUInt64LE(BigInt(pointer), 32 + 8 * max + vsize * i);
              break;
          }
          seal(b, 'btree');
        }
        let out: Buffer;
        try {
          out = await dumpOf(img);
        } catch (err) {
          if (!(err instanceof MetadataError)) throw err;
          refused++;
          return;
        }
        expect(out.equals(clean.get(base.n)!)).toBe(true);
        unchanged++;
      }),
      { numRuns: 600 },
    );
    // Both outcomes occur: the property is not vacuous.
    expect(refused).toBeGreaterThan(100);
    expect(unchanged).toBeGreaterThan(5);
  }, 180_000);

  test('a reader\'s line names the tree and device of the block at fault (outside hunt F: "block 255: expected a btree node", "the value of entry 30 in block 266 exceeds 2^53", "superblock field at offset 328")', async () => {
    const line = async (img: Buffer) => {
      using f = tempImage(img, 'named.bin');
      const r = runCli(['dump', f.path]);
      expect(r.status).toBe(1);
      return r.stderr.replace(`${f.path}: `, '');
    };
    // basic: the top-level leaf is block 7, device 1's root its value 0; block 255 is all zeros.
    const zeroRoot = Buffer.from(fixtureImage('basic'));
    const top = node(zeroRoot, 7);
    expect(zeroRoot.subarray(255 * 4096, 256 * 4096).every((b) => b === 0)).toBe(true);
    top.buf.writeBigUInt64LE(255n, top.valueOff(0));
    seal(top.buf, 'btree');
    expect(await line(zeroRoot)).toBe('dmthin dump: block 255 (mapping tree of device 1): expected a btree node, found an all-zero block [EILSEQ]\n');
    // An internal node of a device's mapping tree, its first child pointer past the device and past 2^53.
    const deep = fixtureImage('deep-tree');
    const inner = listNodes(deep).find((n) => n.tree === 'bottom' && !n.leaf)!;
    for (const [to, said] of [
      [BigInt(deep.length / 4096), `points to block ${deep.length / 4096}, beyond the metadata device (${deep.length / 4096} blocks)`],
      [2n ** 64n - 1n, 'points to block 18446744073709551615, beyond any metadata device'],
    ] as const) {
      const img = Buffer.from(deep);
      const n = node(img, inner.block);
      n.buf.writeBigUInt64LE(to, n.valueOff(0));
      seal(n.buf, 'btree');
      expect(await line(img)).toBe(`dmthin dump: block ${inner.block} (mapping tree of device ${inner.dev}) ${said} [EUCLEAN]\n`);
    }
    const sb = Buffer.from(fixtureImage('basic'));
    blk(sb, 0).writeBigUInt64LE(2n ** 61n, 0x148);
    seal(blk(sb, 0), 'superblock');
    expect(await line(sb)).toBe("dmthin dump: superblock: the device details tree's root (offset 328) is 2305843009213693952, beyond any metadata device [EUCLEAN]\n");
  });

  test('a device with a mapping tree and no details entry: delta (with and without `same`), lookup and the CLI\'s delta refuse it, as dump and check do (an outside test: delta exited 0, and with a leaf of that device cut short printed a wrong diff)', async () => {
    const { image, fault } = corrupt(fixtureImage('snapshots'), 'mapping-only-device');
    const dev = Number((fault.detail as { dev: bigint | number }).dev);
    await using md = await ThinMetadata.fromBuffer(image);
    const other = [...(await md.deviceRoots()).keys()].find((id) => id !== dev)!;
    const refusal = { kind: 'device-mismatch', devId: dev, message: `device ${dev} has a mapping tree but no details entry` };
    for (const includeSame of [true, false]) {
      for (const [l, r] of [[other, dev], [dev, other]]) {
        await using fresh = await ThinMetadata.fromBuffer(image);
        const err = await (async () => {
          for await (const _ of fresh.delta(l, r, { includeSame }));
        })().catch((e) => e);
        expect(err).toBeInstanceOf(MetadataError);
        expect(err).toMatchObject(refusal);
      }
    }
    await using fresh = await ThinMetadata.fromBuffer(image);
    await expect(fresh.lookup(dev, 0n)).rejects.toMatchObject(refusal);
    using f = tempImage(image, 'mapping-only.bin');
    for (const extra of [[], ['--no-same']]) {
      const r = runCli(['delta', ...extra, '--snap1', String(other), '--snap2', String(dev), f.path]);
      expect(r).toMatchObject({ status: 1, stdout: '', stderr: `dmthin delta: device ${dev} has a mapping tree but no details entry [EUCLEAN]\n` });
    }
  });

  test('a leaf of one device only, cut short within the fill rule: the delta without `same` (which skips shared subtrees) refuses it by the two devices\' counts, in the library and the CLI (an outside test: delta --no-same, an incremental send and backup exited 0 without its mappings)', async () => {
    const img = Buffer.from(fixtureImage('shared-subtree'));
    // Listed under device 3: a leaf device 1's tree does not have (listNodes lists a shared node under its first device).
    const leaf = listNodes(img).find((n) => n.tree === 'bottom' && n.leaf && n.dev === 3n && n.nr > 90)!;
    expect(leaf).toBeDefined();
    using intact = tempImage(Buffer.from(img), 'intact.bin');
    const b = img.subarray(leaf.block * 4096, (leaf.block + 1) * 4096);
    b.writeUInt32LE(leaf.nr - 6, 16);
    seal(b, 'btree');
    await using md = await ThinMetadata.fromBuffer(img);
    const walk = async (left: number, right: number) => {
      for await (const _ of md.delta(left, right, { includeSame: false }));
    };
    for (const [l, r] of [[1, 3], [3, 1]]) {
      const err = await walk(l, r).catch((e) => e);
      expect(err).toBeInstanceOf(MetadataError);
      expect(err).toMatchObject({ kind: 'mapped-count', expected: expect.any(Number), found: expect.any(Number) });
      expect(Math.abs(err.expected - err.found)).toBe(6);
    }
    using f = tempImage(img, 'cut.bin');
    const r = runCli(['delta', '--no-same', '--snap1', '1', '--snap2', '3', f.path]);
    expect(r).toMatchObject({ status: 1, stdout: '' });
    expect(r.stderr).toMatch(/^dmthin delta: devices 1 and 3: outside the subtrees they share, .* mappings are missing or the details are stale \(run dmthin check\) \[EUCLEAN\]\n$/);
    // The same pair, intact: accepted.
    expect(runCli(['delta', '--no-same', '--snap1', '1', '--snap2', '3', intact.path]).status).toBe(0);
  });

  test('a device id beyond 2^53 in a node a lookup reads is refused, not only the id looked up (an outside test: delta and an incremental send of two other devices exited 0)', async () => {
    const img = Buffer.from(fixtureImage('snapshots'));
    // The last device (16777215) becomes 2^53 + 1 in the leaves of both device trees: the keys stay increasing.
    for (const tree of ['details', 'top'] as const) {
      const leaf = listNodes(img).find((n) => n.tree === tree && n.leaf)!;
      const b = img.subarray(leaf.block * 4096, (leaf.block + 1) * 4096);
      const at = 32 + 8 * (leaf.nr - 1);
      expect(b.readBigUInt64LE(at)).toBe(16777215n);
      b.writeBigUInt64LE(2n ** 53n + 1n, at);
      seal(b, 'btree');
    }
    await using md = await ThinMetadata.fromBuffer(img);
    const err = await (async () => {
      for await (const _ of md.delta(1, 2, { includeSame: false }));
    })().catch((e) => e);
    expect(err).toMatchObject({ kind: 'key-range' });
    expect(err.message).toMatch(/^the key of entry \d+ in block \d+ exceeds 2\^53/);
    using f = tempImage(img, 'key.bin');
    for (const args of [['delta', '--snap1', '1', '--snap2', '2'], ['delta', '--no-same', '--snap1', '1', '--snap2', '2'], ['dump', '--dev-id', '1']]) {
      const r = runCli([...args, f.path]);
      expect([args.join(' '), r.status, r.stdout]).toEqual([args.join(' '), 1, '']);
      expect(r.stderr).toMatch(/the key of entry \d+ in block \d+ exceeds 2\^53 \[EUCLEAN\]\n$/);
    }
  });

  test('a device id beyond 2^53 in a leaf no lookup path passes (a device tree of several leaves) is refused too (a review: delta of two devices of the first leaf exited 0)', async () => {
    const img = Buffer.from(fixtureImage('many-devices'));
    for (const tree of ['details', 'top'] as const) {
      const leaves = listNodes(img).filter((n) => n.tree === tree && n.leaf);
      expect(leaves.length).toBeGreaterThan(1);
      const last = leaves.find((n) => node(img, n.block).key(n.nr - 1) === 16777215n)!;
      expect(last.nr).toBeGreaterThan(1); // not the first key: the parent's keys stay below 2^53
      const b = img.subarray(last.block * 4096, (last.block + 1) * 4096);
      b.writeBigUInt64LE(2n ** 53n + 1n, 32 + 8 * (last.nr - 1));
      seal(b, 'btree');
    }
    const first = listNodes(img).find((n) => n.tree === 'details' && n.leaf)!;
    const [a, b] = [Number(node(img, first.block).key(0)), Number(node(img, first.block).key(1))];
    await using md = await ThinMetadata.fromBuffer(img);
    const err = await (async () => {
      for await (const _ of md.delta(a, b, { includeSame: false }));
    })().catch((e) => e);
    expect(err).toMatchObject({ kind: 'key-range' });
    using f = tempImage(img, 'key-wide.bin');
    const r = runCli(['delta', '--snap1', String(a), '--snap2', String(b), f.path]);
    expect([r.status, r.stdout]).toEqual([1, '']);
    expect(r.stderr).toMatch(/the key of entry \d+ in block \d+ exceeds 2\^53 \[EUCLEAN\]\n$/);
  });

  test('a non-root leaf whose nr_entries was lowered but stays a third full: refused by the mapping count', async () => {
    const img = Buffer.from(fixtureImage('deep-tree'));
    const leaf = listNodes(img).find((n) => n.tree === 'bottom' && n.leaf && n.level > 1 && n.nr > 90)!;
    const b = img.subarray(leaf.block * 4096, (leaf.block + 1) * 4096);
    b.writeUInt32LE(leaf.nr - 5, 16);
    seal(b, 'btree');
    const err = await dumpOf(img).catch((e) => e);
    expect(err).toBeInstanceOf(MetadataError);
    expect(err).toMatchObject({ kind: 'mapped-count', devId: Number(leaf.dev), found: expect.any(Number), expected: expect.any(Number) });
    expect(err.expected - err.found).toBe(5);
    using f = tempImage(img);
    for (const args of [['dump'], ['ls', '-o', 'DEV,EXCLUSIVE_BLOCKS'], ['delta', '--snap1', String(leaf.dev), '--snap2', String(leaf.dev)]]) {
      const r = runCli([...args, f.path]);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/mapping tree holds \d+ mappings but its details say \d+/);
    }
  });
});
