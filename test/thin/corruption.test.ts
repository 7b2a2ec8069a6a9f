/**
 * Corrupted metadata: every fault the corruption helpers can make must give a
 * typed MetadataError naming the block (library) and exit status 1 with one
 * line on stderr (CLI), never a crash or a hang. Random faults (fuzzing) must
 * give either a clean result or a MetadataError.
 */
import fc from 'fast-check';
import { DmthinError, MetadataError, ThinMetadata, dump, deviceUsage } from '../../src';
import { ACCOUNTING_KINDS, corrupt, CORRUPTION_KINDS, CorruptionKind, listNodes, seal, blockType, UNDERFULL_KINDS } from '../helpers/corrupt';
import { fixtureImage, tempImage } from '../helpers/fixtures';
import { runCli } from '../cli/run-cli';
import { Writable } from 'node:stream';

/**
 * Which fixture each fault is applied to, and the MetadataError kind(s) expected.
 * Not here: the accounting faults (ACCOUNTING_KINDS: space maps, hints,
 * mapped_blocks), which only `check` reads, and the under-filled nodes
 * (UNDERFULL_KINDS), until the reader's TreeValidator applies the minimum fill.
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
  'depth-bomb': { fixture: 'snapshots', kinds: ['depth', 'cycle'] },
  'metadata-block-size': { fixture: 'range-merge', kinds: ['block-size'], locates: true },
  'superblock-version': { fixture: 'range-merge', kinds: ['version'], locates: true },
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

const READER_KINDS = CORRUPTION_KINDS.filter((k) => !ACCOUNTING_KINDS.includes(k) && !UNDERFULL_KINDS.includes(k));

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
