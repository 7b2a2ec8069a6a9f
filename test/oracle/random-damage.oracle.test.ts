/**
 * Random damage that checksums do not catch: a seeded edit of one field of
 * one block (a node's key, entry count, capacity, flags, value size or child
 * pointer, a bit of a space-map block, a superblock root or count), the block
 * then resealed. corruption.test.ts covers each kind of fault by name; this
 * covers what nobody named. Whatever the damage, every read-only command
 * must keep its promises:
 * - exit 0 or 1, never a signal, a hang or a stack trace; an error is one line;
 * - check fails wherever thin_check 0.9.0 fails (it may fail more often: it
 *   also checks the data space map, which 0.9.0 does not);
 * - where check passes, dump and ls print exactly what thin_dump and
 *   thin_ls print;
 * - a dump that exits 0 equals thin_dump's whenever thin_dump exits 0 too.
 * DMTHIN_RANDOM_DAMAGE=N runs N edits per base image (default 6).
 */
import { runCli, type CliResult } from '../cli/run-cli';
import { blk, blockType, listNodes, seal, type BlockType } from '../helpers/corrupt';
import { describeOracle, fixture, fixtureImage, runOracle, tempImage } from '../helpers/fixtures';
import { chooser } from '../helpers/seeded';

const BASES = ['snapshots', 'many-devices', 'shared-subtree', 'deep-tree', 'metadata-snap-diverged'];
const PER_BASE = Number(process.env.DMTHIN_RANDOM_DAMAGE ?? 6);

/** One seeded edit of a clean image, never a no-op; returns a description of it. */
function damage(img: Buffer, seed: number): string {
  const before = Buffer.from(img);
  const { what, block: b, type } = edit(img, seed);
  if (!img.equals(before)) return what;
  // The edit wrote the value that was there: flip a bit of the same block instead.
  const at = b === 0 ? 0x2c : 40;
  blk(img, b)[at] ^= 1;
  seal(blk(img, b), type);
  return `${what} (a no-op: bit 0 of byte ${at} flipped instead)`;
}

/** The edit, and the block it made (resealed as `type`). */
function edit(img: Buffer, seed: number): { what: string; block: number; type: BlockType } {
  const c = chooser(seed);
  const nblocks = img.length / 4096;
  const nodes = listNodes(img);
  const r = c.next();
  if (r < 0.75) {
    // A node of a tree: choose the tree and level first, so the few internal
    // and top-level nodes are hit as often as the many bottom-level leaves.
    const groups = new Map<string, number[]>();
    for (const n of nodes) {
      const k = `${n.tree}-${n.leaf ? 'leaf' : 'internal'}`;
      groups.set(k, [...(groups.get(k) ?? []), n.block]);
    }
    const b = c.pick(c.pick([...groups.values()]));
    const buf = blk(img, b);
    const nr = buf.readUInt32LE(16);
    const max = buf.readUInt32LE(20);
    const vsize = buf.readUInt32LE(24);
    const keyAt = (i: number): number => 32 + 8 * i;
    const valAt = (i: number): number => 32 + 8 * max + i * vsize;
    const what = c.int(0, 7);
    let desc: string;
    if (what === 0 && nr > 0) {
      const i = c.int(0, nr - 1);
      const old = buf.readBigUInt64LE(keyAt(i));
      const v = BigInt.asUintN(64, c.pick([0n, old + 1n, old - 1n, BigInt(c.int(0, 1e6)), 2n ** 63n]));
      buf.writeBigUInt64LE(v, keyAt(i));
      desc = `key ${i}: ${old} -> ${v}`;
    } else if (what === 1 && nr > 1) {
      const i = c.int(0, nr - 2);
      const a = buf.readBigUInt64LE(keyAt(i));
      buf.writeBigUInt64LE(buf.readBigUInt64LE(keyAt(i + 1)), keyAt(i));
      buf.writeBigUInt64LE(a, keyAt(i + 1));
      desc = `keys ${i} and ${i + 1} swapped`;
    } else if (what === 2) {
      const v = c.pick([0, nr + 1, Math.max(0, nr - 1), max, max + 1, 0xffffffff]);
      buf.writeUInt32LE(v >>> 0, 16);
      desc = `nr_entries ${nr} -> ${v}`;
    } else if (what === 3) {
      const v = c.pick([max - 1, max + 1, 0, 1, 0xffffffff]);
      buf.writeUInt32LE(v >>> 0, 20);
      desc = `max_entries ${max} -> ${v}`;
    } else if (what === 4) {
      const v = c.pick([0, 1, 2, 3]);
      desc = `flags ${buf.readUInt32LE(4)} -> ${v}`;
      buf.writeUInt32LE(v, 4);
    } else if (what === 5) {
      const v = c.pick([0, 4, 8, 16, 24]);
      buf.writeUInt32LE(v, 24);
      desc = `value_size ${vsize} -> ${v}`;
    } else if (nr > 0 && vsize >= 8) {
      const i = c.int(0, nr - 1);
      const old = buf.readBigUInt64LE(valAt(i));
      const v = BigInt.asUintN(64, c.pick([BigInt(c.pick(nodes).block), BigInt(b), 0n, BigInt(nblocks), old + 1n, old ^ (1n << BigInt(c.int(0, 63)))]));
      buf.writeBigUInt64LE(v, valAt(i));
      desc = `value ${i}: ${old} -> ${v}`;
    } else {
      const off = c.int(32, 4095);
      buf[off] ^= 1 << c.int(0, 7);
      desc = `bit flip at byte ${off}`;
    }
    seal(buf, 'btree');
    return { what: `node ${b}: ${desc}`, block: b, type: 'btree' };
  }
  if (r < 0.85) {
    const sb = blk(img, 0);
    const [off, width, name] = c.pick([
      [0x2c, 4, 'time'], [0x30, 8, 'transaction'], [0x38, 8, 'held root'], [0x40, 8, 'data sm nr_blocks'],
      [0x48, 8, 'data sm nr_allocated'], [0x50, 8, 'data sm bitmap root'], [0x58, 8, 'data sm ref-count root'],
      [0xc0, 8, 'metadata sm nr_blocks'], [0xc8, 8, 'metadata sm nr_allocated'], [0xd0, 8, 'metadata sm index'],
      [0x140, 8, 'mapping root'], [0x148, 8, 'details root'], [0x150, 4, 'data_block_size'], [0x158, 8, 'metadata nr_blocks'],
    ] as const);
    let desc: string;
    if (width === 8) {
      const old = sb.readBigUInt64LE(off);
      const v = BigInt.asUintN(64, c.pick([0n, old + 1n, old - 1n, BigInt(c.pick(nodes).block), 2n ** 40n]));
      sb.writeBigUInt64LE(v, off);
      desc = `${old} -> ${v}`;
    } else {
      const old = sb.readUInt32LE(off);
      const v = c.pick([0, old + 1, old - 1, 128, 8]) >>> 0;
      sb.writeUInt32LE(v, off);
      desc = `${old} -> ${v}`;
    }
    seal(sb, 'superblock');
    return { what: `superblock ${name}: ${desc}`, block: 0, type: 'superblock' };
  }
  const sm: [number, BlockType][] = [];
  for (let b = 1; b < nblocks; b++) {
    const t = blockType(blk(img, b));
    if (t === 'bitmap' || t === 'index') sm.push([b, t]);
  }
  const [b, t] = c.pick(sm);
  const off = c.int(16, 4095);
  blk(img, b)[off] ^= 1 << c.int(0, 7);
  seal(blk(img, b), t);
  return { what: `${t} block ${b}: bit flip at byte ${off}`, block: b, type: t };
}

/** The promises every run keeps, damaged input or not. */
function sane(cmd: string, r: CliResult): void {
  expect({ cmd, status: r.status, signal: r.signal }).toEqual({ cmd, status: r.status === 0 ? 0 : 1, signal: null });
  expect(r.stderr).not.toMatch(/\n\s+at |TypeError|RangeError|ReferenceError|Assertion/);
  if (r.status !== 0) expect(r.stderr).toMatch(new RegExp(`^dmthin ${cmd}: [^\\n]+\\n$`));
}

describeOracle('random damage with valid checksums: exit statuses keep their promise', () => {
  describe.each(BASES.map((b) => [b]))('%s', (base) => {
    const clean = fixtureImage(base);
    const nr = fixture(base).nrDataBlocks;
    let devs: string[] = [];
    beforeAll(() => {
      using f = tempImage(clean, `${base}.bin`);
      devs = [...runOracle('thin_dump', ['--skip-mappings', f.path]).stdout.matchAll(/dev_id="(\d+)"/g)].map((m) => m[1]);
      expect(devs.length).toBeGreaterThan(1);
    });
    test.each(Array.from({ length: PER_BASE }, (_, i) => [i + 1]))('edit %i', (i) => {
      const img = Buffer.from(clean);
      const what = damage(img, i * 7919 + BASES.indexOf(base));
      using f = tempImage(img, `${base}-damaged.bin`);
      const run = (args: string[]): CliResult => runCli([...args, f.path], { timeoutMs: 60_000 });
      const check = run(['check']);
      const dump = run(['dump']);
      const ls = run(['ls', '-o', 'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS,CREATE_TIME']);
      const rmap = run(['rmap', '--region', `0..${nr}`]);
      const delta = run(['delta', '--snap1', devs[0], '--snap2', devs[devs.length - 1]]);
      for (const [cmd, r] of [['check', check], ['dump', dump], ['ls', ls], ['rmap', rmap], ['delta', delta]] as const) sane(cmd, r);

      const refCheck = runOracle('thin_check', [f.path]);
      if (refCheck.status !== 0) expect({ what, check: check.status }).toEqual({ what, check: 1 });
      if (check.status === 0) {
        const refDump = runOracle('thin_dump', [f.path]);
        const refLs = runOracle('thin_ls', ['-o', 'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS,CREATE_TIME', f.path]);
        expect({ what, dump: dump.stdout, ls: ls.stdout }).toEqual({ what, dump: refDump.stdout, ls: refLs.stdout });
      }
      if (dump.status === 0) {
        const refDump = runOracle('thin_dump', [f.path]);
        if (refDump.status === 0) expect({ what, dump: dump.stdout }).toEqual({ what, dump: refDump.stdout });
      }
      expect(img.equals(clean)).toBe(false); // damage() never writes a value back unchanged
    });
  });
});
