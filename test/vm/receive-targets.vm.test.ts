/**
 * receive onto targets unlike the source: the same full + incremental streams
 * (pool A, 128 KiB blocks) applied to
 *   - a thin device of a pool with smaller blocks (64 KiB): discards unprovision whole blocks;
 *   - a thin device of a pool with larger blocks that are no multiple of the
 *     source's (192 KiB): a discarded source block straddles target blocks, so
 *     only whole target blocks are discarded and the edges are zeroed;
 *   - a thin device of an `ignore_discard` pool: BLKDISCARD is refused, receive
 *     falls back to zeroing;
 *   - a thin device with an external origin: a discarded block would read the
 *     origin's bytes again, so receive must zero, not discard;
 *   - a 4Kn block device (loop with 4096-byte logical sectors);
 * and streams from a source pool whose block size (192 KiB) is no power of two.
 * Each target starts with other bytes on it where it can, and after each
 * stream must read exactly like the source snapshot (sha256).
 */
import { sectors } from '../../src/units';
import { writeFileSync } from 'node:fs';
import { ThinDevice } from '../../src/pool/thin-device';
import type { ThinPool } from '../../src/pool/thin-pool';
import { BlockWriter } from '../../src/native/block-writer';
import { receive } from '../../src/ops/receive';
import { send } from '../../src/ops/send';
import { describeVm, DmSandbox, KiB, MiB, run } from './helpers';
import { createTestPool, sha256OfDevice } from './pool-helpers';
import { junkBytes, sha256File } from '../stream/helpers';

const VOL = 16 * MiB;
const BS = 128 * KiB; // source pool's data block size
const BLOCKS = VOL / BS;

function content(b: number, r: number): Buffer {
  const buf = Buffer.alloc(BS);
  for (let i = 0; i < BS; i += 8) {
    buf.writeUInt32LE(b ^ 0x5a5a0000, i);
    buf.writeUInt32LE((r * 977 + i) >>> 0, i + 4);
  }
  return buf;
}

async function writeBlocks(dev: string, blocks: number[], round: number): Promise<void> {
  const w = await BlockWriter.open(dev);
  try {
    await w.write(blocks.map((b) => ({ offset: b * BS, data: content(b, round) })));
    await w.fsync();
  } finally {
    w.close();
  }
}

async function fill(dev: string, seed: number): Promise<void> {
  const w = await BlockWriter.open(dev);
  try {
    await w.write([{ offset: 0, data: junkBytes(VOL, seed) }]);
    await w.fsync();
  } finally {
    w.close();
  }
}

describeVm('receive onto targets with another block size, no discard, an external origin, 4Kn sectors', () => {
  let sb: DmSandbox;
  let A: ThinPool;
  const streams: { full: string; inc: string } = { full: '', inc: '' };
  const hashes = new Map<number, string>();

  beforeAll(async () => {
    sb = new DmSandbox('recv-targets');
    ({ pool: A } = await createTestPool(sb, { label: 'src', dataBytes: 40 * MiB, metaBytes: 8 * MiB, blockSectors: BS / 512 }));
    await A.createThin(1);
    const origin = await ThinDevice.activate(A, { name: sb.adopt('origin'), devId: 1, length: sectors(VOL / 512) });
    // Round 1: every third block, plus a run at the end. Snapshot 11.
    const r1 = [...Array.from({ length: BLOCKS / 3 }, (_, i) => i * 3), ...Array.from({ length: 16 }, (_, i) => BLOCKS - 16 + i)];
    await writeBlocks(origin.path, [...new Set(r1)].sort((a, b) => a - b), 1);
    await A.createSnap(11, 1);
    // Round 2: rewrite some, write new ones, unmap a run and scattered blocks. Snapshot 12.
    await writeBlocks(origin.path, [1, 2, 4, 5, 30, 31, 32, 60, 61], 2);
    const w = await BlockWriter.open(origin.path);
    try {
      expect(await w.discard(9 * BS, 12 * BS)).toBe('blkdiscard'); // blocks 9..20 (some mapped)
      for (const b of [45, 48, 51, BLOCKS - 3]) await w.discard(b * BS, BS);
    } finally {
      w.close();
    }
    await A.createSnap(12, 1);
    await origin.deactivate();

    for (const id of [11, 12]) {
      const d = await ThinDevice.activate(A, { name: sb.adopt(`ro${id}`), devId: id, length: sectors(VOL / 512), readOnly: true });
      hashes.set(id, await sha256OfDevice(d.path, 0, VOL));
      await d.deactivate();
    }
    expect(hashes.get(11)).not.toBe(hashes.get(12));
    streams.full = `${sb.dir}/11.stream`;
    streams.inc = `${sb.dir}/12from11.stream`;
    await send({ pool: A, snap: 11, output: streams.full, deviceSize: VOL });
    const inc = await send({ pool: A, snap: 12, base: 11, output: streams.inc, deviceSize: VOL });
    expect(inc.discardBlocks).toBeGreaterThan(4);
  }, 300_000);

  afterAll(() => sb?.cleanup());

  /** Full then incremental onto `path`: equal to the source after each; the zeroing methods used. */
  async function replicate(path: string, stateDir: string): Promise<Record<string, number>[]> {
    const used = [];
    for (const [input, id] of [
      [streams.full, 11],
      [streams.inc, 12],
    ] as const) {
      const r = await receive({ target: path, input, stateDir });
      used.push(r.zeroing);
      expect(await sha256OfDevice(path, 0, VOL)).toBe(hashes.get(id));
    }
    return used;
  }

  async function thinTarget(label: string, blockKiB: number, opts: { features?: 'ignore_discard'[]; externalOrigin?: string } = {}) {
    const { pool } = await createTestPool(sb, { label, dataBytes: 48 * MiB, metaBytes: 8 * MiB, blockSectors: (blockKiB * KiB) / 512, features: opts.features });
    await pool.createThin(1);
    const dev = await ThinDevice.activate(pool, { name: sb.adopt(`${label}-t`), devId: 1, length: sectors(VOL / 512), externalOrigin: opts.externalOrigin });
    return { pool, dev };
  }

  async function mappedBlocks(dev: ThinDevice, blockKiB: number): Promise<number> {
    const s = await dev.status();
    if (s.kind !== 'working') throw new Error(`thin status ${s.kind}`);
    return Number(s.mappedSectors) / ((blockKiB * KiB) / 512);
  }

  test('a pool with smaller blocks (64 KiB): equal, and discards unprovision', async () => {
    const { dev } = await thinTarget('p64', 64);
    await fill(dev.path, 1);
    const [, inc] = await replicate(dev.path, `${sb.dir}/state`);
    expect(inc.blkdiscard).toBeGreaterThan(0);
    // Every source block is two target blocks; nothing of the junk stays provisioned.
    await using snap = await A.reserveMetadataSnap();
    await using md = await snap.open();
    let n = 0;
    for await (const r of md.mappings(12)) n += r.length;
    expect(await mappedBlocks(dev, 64)).toBe(2 * n);
  }, 300_000);

  test('a pool with larger blocks that are no multiple of the source (192 KiB): equal; whole blocks discarded, edges zeroed', async () => {
    const { dev } = await thinTarget('p192', 192);
    await fill(dev.path, 2);
    const [full, inc] = await replicate(dev.path, `${sb.dir}/state`);
    expect(full.blkdiscard).toBeGreaterThan(0);
    expect(Object.keys(inc).some((k) => k !== 'blkdiscard')).toBe(true); // ragged edges zeroed
    // Kernels that split such discards at power-of-two boundaries leave some
    // blocks mapped; receive reads discarded ranges back and zeroes those.
    // eslint-disable-next-line no-console
    console.log(`192 KiB pool: discards not honoured by this kernel and zeroed instead: full ${full['discard-not-honoured'] ?? 0}, incremental ${inc['discard-not-honoured'] ?? 0}`);
  }, 300_000);

  test('an ignore_discard pool: discards refused, zeroed instead; equal', async () => {
    const { dev } = await thinTarget('pnd', 128, { features: ['ignore_discard'] });
    await fill(dev.path, 3);
    const [full, inc] = await replicate(dev.path, `${sb.dir}/state`);
    for (const z of [full, inc]) expect(z.blkdiscard).toBeUndefined();
    expect(Object.keys(inc).length).toBeGreaterThan(0);
  }, 300_000);

  test('a thin device with an external origin: zeroed, never discarded (that would show the origin); equal', async () => {
    const originLoop = sb.loop(VOL, 'ext-origin');
    writeFileSync(originLoop.file, junkBytes(VOL, 4));
    run('blockdev', ['--flushbufs', originLoop.path]);
    const { dev } = await thinTarget('pext', 64, { externalOrigin: originLoop.path });
    const [full, inc] = await replicate(dev.path, `${sb.dir}/state`);
    for (const z of [full, inc]) expect(z.blkdiscard).toBeUndefined();
  }, 300_000);

  test('a source pool with 192 KiB blocks (not a power of two), partial-block writes and discards: full + incremental into a file, equal', async () => {
    const SB = 192 * KiB;
    const { pool: S } = await createTestPool(sb, { label: 's192', dataBytes: 40 * MiB, metaBytes: 8 * MiB, blockSectors: SB / 512 });
    await S.createThin(1);
    const t = await ThinDevice.activate(S, { name: sb.adopt('s192-t'), devId: 1, length: sectors(VOL / 512) });
    const w = await BlockWriter.open(t.path);
    try {
      // 64 KiB writes: most provision a 192 KiB block with a third of it written.
      const put = (units: number[], r: number) => w.write(units.map((u) => ({ offset: u * 64 * KiB, data: content(u, r).subarray(0, 64 * KiB) })));
      await put(Array.from({ length: 60 }, (_, i) => i * 4), 1);
      await w.fsync();
      await S.createSnap(21, 1);
      await put([1, 2, 3, 100, 101, 250], 2);
      await w.discard(10 * SB, 6 * SB); // whole blocks 10..15
      await w.fsync();
      await S.createSnap(22, 1);
    } finally {
      w.close();
    }
    await t.deactivate();
    const want = new Map<number, string>();
    for (const id of [21, 22]) {
      const d = await ThinDevice.activate(S, { name: sb.adopt(`s192-ro${id}`), devId: id, length: sectors(VOL / 512), readOnly: true });
      want.set(id, await sha256OfDevice(d.path, 0, VOL));
      await d.deactivate();
    }
    const file = `${sb.dir}/s192.img`;
    writeFileSync(file, junkBytes(VOL, 6));
    const full = await send({ pool: S, snap: 21, output: `${sb.dir}/21.stream`, deviceSize: VOL });
    expect(full.dataBlocks).toBe(60);
    const r = await receive({ target: file, input: `${sb.dir}/21.stream` });
    expect(r.header.dataBlockSize).toBe(SB / 512);
    expect(sha256File(file)).toBe(want.get(21));
    const inc = await send({ pool: S, snap: 22, base: 21, output: `${sb.dir}/22.stream`, deviceSize: VOL });
    // Blocks 10, 12, 13 and 14 were mapped; how many the discard unmapped depends
    // on the kernel (6.1 drops parts of discards on such pools), so: some.
    expect(inc.discardBlocks).toBeGreaterThan(0);
    await receive({ target: file, input: `${sb.dir}/22.stream` });
    expect(sha256File(file)).toBe(want.get(22));
  }, 300_000);

  test('a 4Kn block device (4096-byte logical sectors): equal', async () => {
    const loop = sb.loop(VOL, 'fourk', { sectorSize: 4096 });
    expect(run('blockdev', ['--getss', loop.path]).stdout.trim()).toBe('4096');
    await fill(loop.path, 5);
    const [, inc] = await replicate(loop.path, `${sb.dir}/state`);
    expect(Object.keys(inc).length).toBeGreaterThan(0);
  }, 300_000);
});
