/**
 * The addon's whole walk of a device-details tree (native/btree_walk.cc,
 * BlockReader.walkDetails) against the TypeScript walk it stands in for
 * (pdata/btree.ts LeafWalk under thin/device-table.ts readDetailsTable).
 * The addon only says "sound, here are the columns" or "no" (null), and the
 * TypeScript walk then reports what is wrong; so what must hold is:
 * - on sound trees of one, two and three levels it answers, with the
 *   entries the tree holds (read here from the builder's own list);
 * - every rule btree.ts enforces, broken alone, makes it say no, and the
 *   table read through it fails with the TypeScript walk's own error;
 * - on randomly damaged trees (bytes changed, checksums made valid again) it
 *   answers exactly when the TypeScript walk accepts, with the same table;
 * - a file not in the page cache is walked on a worker thread, with the same
 *   answer; an O_DIRECT reader and a closed one get no answer; closing the
 *   reader during a walk on a thread ends it with no answer or a whole one.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, fsyncSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MetadataError } from '../../src/errors';
import { NativeBlockSource } from '../../src/pdata/block-source';
import { BlockType } from '../../src/pdata/checksum';
import { detailsLeaves, readDetailsTable, type DetailsTable } from '../../src/thin/device-table';
import { REPO_ROOT, tempImage } from '../helpers/fixtures';
import { chooser } from '../helpers/seeded';
import { buildTree, ImageBuilder, maxEntries, u64, writeNode } from './tree-builder';

const VS = 24;

interface Entry {
  key: bigint;
  mapped: bigint;
  tx: bigint;
  ct: number;
  st: number;
}

function value(e: Entry): Buffer {
  const b = Buffer.alloc(VS);
  b.writeBigUInt64LE(e.mapped, 0);
  b.writeBigUInt64LE(e.tx, 8);
  b.writeUInt32LE(e.ct, 16);
  b.writeUInt32LE(e.st, 20);
  return b;
}

function entries(n: number, seed = 1): Entry[] {
  const rnd = chooser(seed).next;
  const out: Entry[] = [];
  let key = 0n;
  for (let i = 0; i < n; i++) {
    key += BigInt(1 + Math.floor(rnd() * 3));
    out.push({ key, mapped: BigInt(Math.floor(rnd() * 2 ** 40)), tx: BigInt(Math.floor(rnd() * 2 ** 50)), ct: Math.floor(rnd() * 2 ** 32), st: Math.floor(rnd() * 2 ** 32) });
  }
  return out;
}

/** An image holding one details tree (block 0 unused), `spare` blocks after it. */
function detailsImage(list: Entry[], perLeaf = maxEntries(VS), fanout = 252, spare = 4): { img: ImageBuilder; root: number } {
  const leaves = Math.ceil(list.length / Math.max(1, perLeaf)) + 2;
  const img = new ImageBuilder(2 * leaves + 16 + spare);
  const root = buildTree(img, list.map((e) => ({ key: e.key, value: value(e) })), VS, perLeaf, fanout);
  return { img, root };
}

function rows(t: DetailsTable): Entry[] {
  return Array.from({ length: t.count }, (_, j) => ({
    key: BigInt(t.devId[j]),
    mapped: BigInt(t.mappedBlocks[j]),
    tx: (BigInt(t.transactionHi[j]) << 32n) | BigInt(t.transactionLo[j]),
    ct: t.creationTime[j],
    st: t.snapshottedTime[j],
  }));
}

/** The outcome of readDetailsTable on `image` (a file, read through the page cache), with or without the addon's walk, and what the addon's walk itself said. */
async function readBoth(image: Buffer, root: number, nrMetadataBlocks = image.length / 4096) {
  using f = tempImage(image);
  const run = async (native: boolean) => {
    const saved = detailsLeaves.native;
    detailsLeaves.native = native;
    const io = await NativeBlockSource.open(f.path, { direct: 'never' });
    try {
      const t = await readDetailsTable({ io, detailsRoot: root, nrMetadataBlocks });
      return { ok: true as const, rows: rows(t), max: [t.maxMappedBlocks, t.maxCreationTime, t.maxSnapshottedTime], blocksRead: io.stats.blocksRead };
    } catch (e) {
      return { ok: false as const, error: e as MetadataError };
    } finally {
      detailsLeaves.native = saved;
      await io.close();
    }
  };
  const io = await NativeBlockSource.open(f.path, { direct: 'never' });
  const walked = await io.reader.walkDetails(root, Math.min(nrMetadataBlocks, image.length / 4096), { ioUring });
  await io.close();
  return { withAddon: await run(true), without: await run(false), walked };
}

function maxima(list: Entry[]): number[] {
  return [list.reduce((m, e) => Math.max(m, Number(e.mapped)), 0), list.reduce((m, e) => Math.max(m, e.ct), 0), list.reduce((m, e) => Math.max(m, e.st), 0)];
}

// Each part twice: the addon's reads through io_uring, and one preadv2 a
// block (as where the kernel has no io_uring: detailsLeaves.ioUring false).
let ioUring = true;
describe.each(['io_uring', 'preadv2'])('reads by %s', (how) => {
  beforeAll(() => {
    ioUring = how === 'io_uring';
    detailsLeaves.ioUring = ioUring;
  });
  afterAll(() => {
    ioUring = true;
    detailsLeaves.ioUring = true;
  });

  describe('sound trees: the addon answers, with every entry the tree holds', () => {
    test.each([
      ['an empty root leaf', 0, 126, 252],
      ['one leaf', 100, 126, 252],
      ['two levels', 3000, 126, 252],
      ['two levels of leaves a third full', 3000, 42, 252],
      ['three levels', 12000, 42, 84],
    ])('%s', async (_name, n, perLeaf, fanout) => {
      const list = entries(n);
      const { img, root } = detailsImage(list, perLeaf, fanout);
      const { withAddon, without, walked } = await readBoth(img.image, root);
      expect(walked).not.toBeNull();
      expect(walked!.count).toBe(n);
      expect(withAddon).toEqual({ ok: true, rows: list, max: maxima(list), blocksRead: walked!.blocksRead });
      expect(without.ok && without.rows).toEqual(list);
      // The same blocks as the TypeScript walk reads: every node of the tree once.
      expect(walked!.blocksRead).toBe(without.ok && without.blocksRead);
    });
  });

  /** Rewrites node `nr` of the image with `edit` applied to its bytes, the checksum made valid again. */
  function edit(img: ImageBuilder, nr: number, fn: (b: Buffer) => void): void {
    fn(img.block(nr));
    img.seal(nr, BlockType.BtreeNode);
  }

  /** The tree's nodes as the builder laid them out: leaves, internal nodes, root. */
  function shape(img: ImageBuilder, root: number) {
    const node = (nr: number) => {
      const b = img.block(nr);
      return { nr, leaf: b.readUInt32LE(4) === 2, count: b.readUInt32LE(16), max: b.readUInt32LE(20), vs: b.readUInt32LE(24), b };
    };
    const child = (nr: number, i: number) => {
      const n = node(nr);
      return Number(n.b.readBigUInt64LE(32 + 8 * n.max + 8 * i));
    };
    const internal = [root, ...Array.from({ length: node(root).count }, (_, i) => child(root, i))].filter((x) => !node(x).leaf);
    const mid = internal.filter((x) => x !== root);
    const leafParent = mid.length ? mid[0] : root;
    const leaves = Array.from({ length: node(leafParent).count }, (_, i) => child(leafParent, i));
    const lastParent = mid.length ? mid[mid.length - 1] : root;
    const lastLeaf = child(lastParent, node(lastParent).count - 1);
    return { node, child, mid, leafParent, leaves, lastLeaf };
  }

  describe('each rule broken alone: the addon says no, and the table fails with the TypeScript walk\'s error', () => {
    const list = entries(12000, 7);
    const keyOff = (i: number) => 32 + 8 * i;
    const valueOff = (max: number, vs: number, i: number) => 32 + 8 * max + vs * i;
    const cases: [string, (img: ImageBuilder, root: number) => number | void][] = [
      ['a bad checksum', (img, root) => void (img.block(shape(img, root).leaves[3])[100] ^= 1)],
      ['a node that names another block', (img, root) => edit(img, shape(img, root).leaves[3], (b) => b.writeBigUInt64LE(b.readBigUInt64LE(8) + 1n, 8))],
      ['flags 0', (img, root) => edit(img, shape(img, root).leaves[3], (b) => b.writeUInt32LE(0, 4))],
      ['flags 3', (img, root) => edit(img, shape(img, root).mid[0], (b) => b.writeUInt32LE(3, 4))],
      ['a leaf of value size 16', (img, root) => edit(img, shape(img, root).leaves[3], (b) => b.writeUInt32LE(16, 24))],
      // The value size rule alone (max_entries right for 16 bytes, 168): what keeps the walk's rows within the columns.
      ['a leaf of value size 16 and its max_entries, 168 entries', (img, root) => {
        const leaf = shape(img, root).lastLeaf;
        const keys = Array.from({ length: 168 }, (_, i) => 2n ** 40n + BigInt(i));
        writeNode(img, leaf, true, keys, keys.map(() => Buffer.alloc(16)), 16);
      }],
      ['a root leaf of value size 16 and its max_entries, 126 entries', (img) => {
        const nr = img.alloc();
        const keys = Array.from({ length: 126 }, (_, i) => BigInt(i));
        writeNode(img, nr, true, keys, keys.map(() => Buffer.alloc(16)), 16);
        return nr;
      }],
      ['an internal node of value size 24', (img, root) => edit(img, root, (b) => b.writeUInt32LE(24, 24))],
      ['max_entries 125', (img, root) => edit(img, shape(img, root).leaves[3], (b) => b.writeUInt32LE(125, 20))],
      ['nr_entries over max_entries', (img, root) => edit(img, shape(img, root).leaves[3], (b) => b.writeUInt32LE(127, 16))],
      ['two keys out of order', (img, root) => edit(img, shape(img, root).leaves[3], (b) => {
        const k = b.readBigUInt64LE(keyOff(5));
        b.writeBigUInt64LE(b.readBigUInt64LE(keyOff(6)), keyOff(5));
        b.writeBigUInt64LE(k, keyOff(6));
      })],
      ['a key repeated', (img, root) => edit(img, shape(img, root).leaves[3], (b) => b.writeBigUInt64LE(b.readBigUInt64LE(keyOff(5)), keyOff(6)))],
      ['a first key below the parent\'s', (img, root) => edit(img, shape(img, root).leaves[3], (b) => b.writeBigUInt64LE(b.readBigUInt64LE(keyOff(0)) - 1n, keyOff(0)))],
      ['a last key at the next sibling\'s first', (img, root) => {
        const s = shape(img, root);
        const next = s.node(s.leaves[4]).b.readBigUInt64LE(keyOff(0));
        edit(img, s.leaves[3], (b) => b.writeBigUInt64LE(next, keyOff(b.readUInt32LE(16) - 1)));
      }],
      ['a leaf under a third full', (img, root) => edit(img, shape(img, root).leaves[3], (b) => b.writeUInt32LE(41, 16))],
      ['an internal node under a third full', (img, root) => edit(img, shape(img, root).mid[0], (b) => b.writeUInt32LE(83, 16))],
      ['an internal root with no entries', (img, root) => edit(img, root, (b) => b.writeUInt32LE(0, 16))],
      ['a child that is its parent (a cycle: the key range refuses it first)', (img, root) => {
        const s = shape(img, root);
        edit(img, s.leafParent, (b) => b.writeBigUInt64LE(BigInt(s.leafParent), valueOff(252, 8, 2)));
      }],
      ['a leaf pointed at twice (the key range refuses it first)', (img, root) => {
        const s = shape(img, root);
        edit(img, s.leafParent, (b) => b.writeBigUInt64LE(BigInt(s.leaves[1]), valueOff(252, 8, 2)));
      }],
      ['a pointer beyond the metadata device', (img, root) => {
        const s = shape(img, root);
        edit(img, s.leafParent, (b) => b.writeBigUInt64LE(BigInt(img.nrBlocks + 5), valueOff(252, 8, 2)));
      }],
      ['a pointer of 2^53 and more', (img, root) => {
        const s = shape(img, root);
        edit(img, s.leafParent, (b) => b.writeBigUInt64LE(2n ** 60n + BigInt(s.leaves[2]), valueOff(252, 8, 2)));
      }],
      ['a pointer past the file, inside what the superblock says', (img) => img.nrBlocks + 100],
      ['a root beyond the metadata device', () => undefined],
      ['a device id of 2^53 and more', (img, root) => {
        // The tree's last key (no upper bound from a parent): refused as the details' decoding refuses it.
        edit(img, shape(img, root).lastLeaf, (b) => b.writeBigUInt64LE(2n ** 54n, keyOff(b.readUInt32LE(16) - 1)));
      }],
      ['mapped_blocks of 2^53 and more', (img, root) => edit(img, shape(img, root).leaves[3], (b) => b.writeBigUInt64LE(2n ** 53n, valueOff(126, VS, 4)))],
      ['leaves at two depths (a leaf where an internal node was)', (img, root) => {
        const s = shape(img, root);
        // The root's second child, an internal node, becomes a leaf holding that node's first keys.
        const mid = s.mid[1];
        const keys = Array.from({ length: 60 }, (_, i) => s.node(mid).b.readBigUInt64LE(keyOff(0)) + BigInt(i));
        writeNode(img, mid, true, keys, keys.map(() => Buffer.alloc(VS)), VS);
      }],
      ['17 levels of one-child nodes (the fill rule refuses them first; a sound tree that deep needs 84^16 leaves)', (img, root) => {
        // 17 internal nodes each with one child: refused at the fill rule or the depth cap, either way refused.
        let child = shape(img, root).leaves[0];
        for (let d = 0; d < 17; d++) {
          const nr = img.alloc();
          writeNode(img, nr, false, [0n], [u64(child)], 8);
          child = nr;
        }
        return child;
      }],
    ];

    test.each(cases)('%s', async (name, breakIt) => {
      const { img, root } = detailsImage(list, 42, 84, 24);
      let useRoot = root;
      let nrMetadataBlocks = img.nrBlocks;
      const r = breakIt(img, root);
      if (name.startsWith('a pointer past the file')) {
        nrMetadataBlocks = r as number;
        const s = shape(img, root);
        edit(img, s.leafParent, (b) => b.writeBigUInt64LE(BigInt(img.nrBlocks + 50), valueOff(252, 8, 2)));
      } else if (name === 'a root beyond the metadata device') useRoot = img.nrBlocks + 1;
      else if (typeof r === 'number') useRoot = r;
      const { withAddon, without, walked } = await readBoth(img.image, useRoot, nrMetadataBlocks);
      expect(walked).toBeNull();
      expect(without.ok).toBe(false);
      expect(withAddon.ok).toBe(false);
      if (!withAddon.ok && !without.ok) {
        expect(withAddon.error).toBeInstanceOf(MetadataError);
        expect([withAddon.error.kind, withAddon.error.message]).toEqual([without.error.kind, without.error.message]);
      }
    });
  });

  describe('randomly damaged trees: the addon answers exactly when the TypeScript walk accepts, with its table', () => {
    test('300 trees, one to three nodes changed in header, keys or pointers, checksums valid again', async () => {
      const list = entries(6000, 3);
      const clean = detailsImage(list, 60, 90, 8);
      const nodes: number[] = [];
      for (let b = 1; b < clean.img.next; b++) nodes.push(b);
      const rnd = chooser(11).next;
      const pickInt = (n: number) => Math.floor(rnd() * n);
      let answered = 0;
      let refused = 0;
      for (let iter = 0; iter < 300; iter++) {
        const img = new ImageBuilder(clean.img.nrBlocks);
        clean.img.image.copy(img.image);
        for (let k = 1 + pickInt(3); k > 0; k--) {
          const nr = nodes[pickInt(nodes.length)];
          edit(img, nr, (b) => {
            // Where the rules look: the header, the first keys, the first values (pointers of internal nodes), or anywhere.
            const region = pickInt(4);
            const at = region === 0 ? 4 + pickInt(28) : region === 1 ? 32 + pickInt(64) : region === 2 ? 32 + 8 * b.readUInt32LE(20) + pickInt(64) : 4 + pickInt(4092);
            const kind = pickInt(3);
            if (kind === 0) b[at] ^= 1 << pickInt(8);
            else if (kind === 1) b[at] = pickInt(256);
            else b[at] = (b[at] + (rnd() < 0.5 ? 1 : 255)) & 0xff;
          });
        }
        const { withAddon, without, walked } = await readBoth(img.image, clean.root);
        expect({ iter, addonAnswered: walked !== null }).toEqual({ iter, addonAnswered: without.ok });
        if (without.ok) {
          answered++;
          expect(walked!.count).toBe(without.rows.length);
          expect(withAddon).toEqual(without);
        } else {
          refused++;
          expect(withAddon.ok).toBe(false);
          if (!withAddon.ok) expect([withAddon.error.kind, withAddon.error.message]).toEqual([without.error.kind, without.error.message]);
        }
      }
      // Both outcomes were seen often enough to mean something.
      expect(answered).toBeGreaterThan(30);
      expect(refused).toBeGreaterThan(30);
    }, 120_000);
  });

  describe('where the addon does not walk', () => {
    const list = entries(3000, 5);
    const { img, root } = detailsImage(list);

    /** A temporary copy of the image, written back and dropped from the page cache (GNU dd's nocache; no root needed). */
    function uncached(): ReturnType<typeof tempImage> {
      // Beside the repository, not in /tmp: a tmpfs keeps every page.
      const dir = mkdtempSync(join(REPO_ROOT, '.btree-walk-'));
      const path = join(dir, 'image.bin');
      writeFileSync(path, img.image);
      const cleanup = (): void => rmSync(dir, { recursive: true, force: true });
      const fd = openSync(path, 'r');
      fsyncSync(fd); // dirty pages stay cached
      closeSync(fd);
      const dd = spawnSync('dd', [`if=${path}`, 'iflag=nocache', 'count=0', 'status=none']);
      expect(dd.status).toBe(0);
      // None of it cached now (util-linux fincore), or the test would not test what it says.
      const fc = spawnSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', path], { encoding: 'utf8' });
      expect({ status: fc.status, cached: fc.stdout.trim() }).toEqual({ status: 0, cached: '0' });
      return { path, cleanup, [Symbol.dispose]: cleanup };
    }

    test('a file not in the page cache: walked on a worker thread, the same table', async () => {
      using f = uncached();
      const io = await NativeBlockSource.open(f.path, { direct: 'never' });
      try {
        const r = await io.reader.walkDetails(root, img.nrBlocks, { ioUring });
        expect(r).not.toBeNull();
        expect(r!.waited).toBe(true); // on a worker thread
        expect(r!.count).toBe(list.length);
        expect(r!.blocksRead).toBe(detailsImage(list).img.next - 1);
        const t = await readDetailsTable({ io, detailsRoot: root, nrMetadataBlocks: img.nrBlocks });
        expect(rows(t)).toEqual(list);
      } finally {
        await io.close();
      }
    });

    test('closed during a walk on a thread: no answer, or a whole one; never part of one', async () => {
      for (let i = 0; i < 5; i++) {
        using f = uncached();
        const io = await NativeBlockSource.open(f.path, { direct: 'never' });
        const walking = io.reader.walkDetails(root, img.nrBlocks, { ioUring });
        await io.close();
        const r = await walking;
        if (r !== null) expect(r.count).toBe(list.length);
      }
    });

    test('an O_DIRECT reader, and a closed one: null; bad arguments are refused', async () => {
      using f = tempImage(img.image);
      const direct = await NativeBlockSource.open(f.path, { direct: 'always' }).catch(() => null);
      // tmpfs and some filesystems refuse O_DIRECT: then there is nothing to check here.
      if (direct) {
        expect(direct.direct).toBe(true);
        expect(await direct.reader.walkDetails(root, img.nrBlocks, { ioUring })).toBeNull();
        const t = await readDetailsTable({ io: direct, detailsRoot: root, nrMetadataBlocks: img.nrBlocks });
        expect(rows(t)).toEqual(list);
        await direct.close();
      }
      const io = await NativeBlockSource.open(f.path, { direct: 'never' });
      // (The addon's errors are of the main realm, not jest's: matched by message.)
      await expect(io.reader.walkDetails(-1, 10)).rejects.toThrow(/root and limit must be integers/);
      await expect(io.reader.walkDetails(1.5, 10)).rejects.toThrow(/root and limit must be integers/);
      await expect((io.reader.walkDetails as unknown as (a: string) => Promise<unknown>)('1')).rejects.toThrow(/walkDetails\(root: number, limit: number/);
      // Cached: answered on this thread.
      expect((await io.reader.walkDetails(root, img.nrBlocks, { ioUring }))?.waited).toBe(false);
      await io.close();
      expect(await io.reader.walkDetails(root, img.nrBlocks, { ioUring })).toBeNull();
    });
  });
});
