/**
 * Replication and migration between two real pools: pool A holds an origin
 * written in three rounds (with unmapped blocks between rounds) and a snapshot
 * after each round; snapshot 1 is sent in full into a thin device of pool B,
 * then 2 and 3 incrementally. After each step pool B's device reads exactly
 * like the source snapshot (sha256), and blocks unmapped at the source arrive
 * as discards (pool B's device maps exactly as many blocks as the source
 * snapshot). A stream for the wrong base, a truncated stream and a stream
 * with one flipped byte are each refused and leave the target unchanged.
 */
import { sectors } from '../../src/units';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { ThinDevice } from '../../src/pool/thin-device';
import type { ThinPool } from '../../src/pool/thin-pool';
import { ThinMetadata } from '../../src/thin/metadata';
import { BlockWriter } from '../../src/native/block-writer';
import { receive } from '../../src/ops/receive';
import { send } from '../../src/ops/send';
import { StreamError } from '../../src/errors';
import { describeVm, DmSandbox, MiB } from './helpers';
import { createTestPool, sha256OfDevice } from './pool-helpers';

const VOL = 16 * MiB; // small: everything is read back and hashed under emulation
const BS = 64 * 1024; // data block size of both pools
const BLOCKS = VOL / BS;

/** Deterministic, distinct content for block b written in round r. */
function content(b: number, r: number): Buffer {
  const buf = Buffer.alloc(BS);
  for (let i = 0; i < BS; i += 16) {
    buf.writeUInt32LE(b, i);
    buf.writeUInt32LE(r, i + 4);
    buf.writeUInt32LE(i, i + 8);
    buf.writeUInt32LE((b * 2654435761 + r * 40503 + i) >>> 0, i + 12);
  }
  return buf;
}

/** A seeded choice of `n` distinct blocks. */
function pick(n: number, seed: number, from = 0, to = BLOCKS): number[] {
  const out = new Set<number>();
  let x = seed >>> 0 || 1;
  while (out.size < n) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out.add(from + (x % (to - from)));
  }
  return [...out].sort((a, b) => a - b);
}

describeVm('replication between two pools (full + incremental streams)', () => {
  let sb: DmSandbox;
  let A: ThinPool;
  let B: ThinPool;
  let target: ThinDevice;
  const timings: string[] = [];

  async function sourceHash(devId: number): Promise<string> {
    const d = await ThinDevice.activate(A, { name: sb.adopt(`ro${devId}`), devId, length: sectors(VOL / 512), readOnly: true });
    try {
      return await sha256OfDevice(d.path, 0, VOL);
    } finally {
      await d.deactivate();
    }
  }

  /** Mapped blocks of a source snapshot, from pool A's metadata (through a metadata snapshot). */
  async function sourceMapped(devId: number): Promise<number> {
    await using snap = await A.reserveMetadataSnap();
    await using md = await snap.open();
    let n = 0;
    for await (const r of md.mappings(devId)) n += r.length;
    return n;
  }

  async function targetMapped(): Promise<number> {
    const s = await target.status();
    if (s.kind !== 'working') throw new Error(`target status ${s.kind}`);
    return Number(s.mappedSectors) / (BS / 512);
  }

  async function write(dev: string, list: number[], round: number): Promise<void> {
    const blocks = [...new Set(list)].sort((a, b) => a - b);
    const w = await BlockWriter.open(dev);
    try {
      for (let i = 0; i < blocks.length; i += 64) await w.write(blocks.slice(i, i + 64).map((b) => ({ offset: b * BS, data: content(b, round) })));
      await w.fsync();
    } finally {
      w.close();
    }
  }

  async function unmap(dev: string, list: number[]): Promise<void> {
    const blocks = [...new Set(list)];
    const w = await BlockWriter.open(dev);
    try {
      for (const b of blocks) expect(await w.discard(b * BS, BS)).toBe('blkdiscard');
    } finally {
      w.close();
    }
  }

  async function sendTimed(label: string, snap: number, base: number | undefined, out: string) {
    const t0 = performance.now();
    const r = await send({ pool: A, snap, base, output: out, deviceSize: VOL });
    const ms = performance.now() - t0;
    timings.push(`${label}: ${r.dataBlocks} data blocks, ${r.discardBlocks} discarded, stream ${statSync(out).size} bytes, send ${ms.toFixed(0)} ms`);
    return r;
  }

  async function receiveTimed(label: string, input: string, stateDir: string) {
    const t0 = performance.now();
    const r = await receive({ target: target.path, input, stateDir });
    timings.push(`${label}: receive ${(performance.now() - t0).toFixed(0)} ms`);
    return r;
  }

  beforeAll(async () => {
    sb = new DmSandbox('replication');
    ({ pool: A } = await createTestPool(sb, { label: 'poolA', dataBytes: 96 * MiB, metaBytes: 16 * MiB, blockSectors: BS / 512 }));
    ({ pool: B } = await createTestPool(sb, { label: 'poolB', dataBytes: 48 * MiB, metaBytes: 16 * MiB, blockSectors: BS / 512 }));
    await A.createThin(1);
    const origin = await ThinDevice.activate(A, { name: sb.adopt('origin'), devId: 1, length: sectors(VOL / 512) });
    // Round 1: 120 scattered blocks of 256. Snapshot 11.
    const round1 = pick(120, 1);
    await write(origin.path, round1, 1);
    await A.createSnap(11, 1);
    // Round 2: rewrite 30 of them, write 30 new ones, unmap 20. Snapshot 12.
    await write(origin.path, [...pick(30, 2, 0, 120).map((i) => round1[i]), ...pick(30, 3)], 2);
    await unmap(origin.path, pick(20, 4, 0, 120).map((i) => round1[i]));
    await A.createSnap(12, 1);
    // Round 3: a contiguous range and a few rewrites, unmap another 15. Snapshot 13.
    await write(origin.path, [...Array.from({ length: 24 }, (_, i) => 200 + i), ...pick(10, 5)], 3);
    await unmap(origin.path, pick(15, 6, 0, 128));
    await A.createSnap(13, 1);
    await origin.deactivate();

    await B.createThin(1);
    target = await ThinDevice.activate(B, { name: sb.adopt('replica'), devId: 1, length: sectors(VOL / 512) });
  }, 300_000);

  afterAll(() => {
    // eslint-disable-next-line no-console
    console.log(`replication timings (16 MiB volume, 64 KiB blocks):\n  ${timings.join('\n  ')}`);
    sb?.cleanup();
  });

  test('full send of snapshot 1, then incrementals 2 and 3: the replica equals each snapshot', async () => {
    const stateDir = `${sb.dir}/state`;
    const steps: [string, number, number | undefined][] = [
      ['snap 11 full', 11, undefined],
      ['snap 12 from 11', 12, 11],
      ['snap 13 from 12', 13, 12],
    ];
    for (const [label, snap, base] of steps) {
      const out = `${sb.dir}/${snap}.stream`;
      const s = await sendTimed(label, snap, base, out);
      expect((await A.workingStatus()).heldMetadataRoot).toBeNull();
      if (base !== undefined) expect(s.discardBlocks).toBeGreaterThan(0); // unmapped at the source
      const r = await receiveTimed(label, out, stateDir);
      if (base !== undefined) expect(r.zeroing).toHaveProperty('blkdiscard');
      expect(await sha256OfDevice(target.path, 0, VOL)).toBe(await sourceHash(snap));
      // Discards arrived as discards: the replica maps exactly what the snapshot maps.
      expect(await targetMapped()).toBe(await sourceMapped(snap));
    }
  }, 600_000);

  test('wrong base, truncated stream, flipped byte: refused, target unchanged', async () => {
    const stateDir = `${sb.dir}/state`;
    const before = await sha256OfDevice(target.path, 0, VOL);

    // The replica is at 13; a stream from base 11 to 12 is for another base.
    const wrong = await receive({ target: target.path, input: `${sb.dir}/12.stream`, stateDir }).catch((e) => e);
    expect(wrong).toBeInstanceOf(StreamError);
    expect(wrong).toMatchObject({ reason: 'base-mismatch' });
    expect(String(wrong.message)).toMatch(/against device 11 .* the target holds device 13/);
    expect(wrong.code).toBe('ESTALE');
    expect(await sha256OfDevice(target.path, 0, VOL)).toBe(before);

    // A fresh full stream of 13, cut in the middle, and one with a flipped byte.
    const full = `${sb.dir}/13full.stream`;
    await send({ pool: A, snap: 13, output: full, deviceSize: VOL });
    const bytes = readFileSync(full);
    const cut = `${sb.dir}/cut.stream`;
    writeFileSync(cut, bytes.subarray(0, Math.floor(bytes.length / 2)));
    const flipped = `${sb.dir}/flipped.stream`;
    const f = Buffer.from(bytes);
    f[Math.floor(f.length * 0.6)] ^= 0x40;
    writeFileSync(flipped, f);
    for (const [bad, reasons] of [
      [cut, ['truncated']],
      [flipped, ['crc', 'digest', 'malformed']],
    ] as const) {
      const e = await receive({ target: target.path, input: bad, stateDir }).catch((x) => x);
      expect(e).toBeInstanceOf(StreamError);
      expect(reasons).toContain(e.reason);
      expect(await sha256OfDevice(target.path, 0, VOL)).toBe(before);
    }

    // And the untouched full stream still applies (the target's state is intact).
    await receive({ target: target.path, input: full, stateDir });
    expect(await sha256OfDevice(target.path, 0, VOL)).toBe(await sourceHash(13));
  }, 600_000);

  test('pool.changedBlocks(12, 13) on the live pool: what the incremental stream carried; the snapshot is released', async () => {
    const counts = { different: 0, left_only: 0, right_only: 0, same: 0 };
    for await (const e of A.changedBlocks(12, 13)) counts[e.kind] += e.length;
    expect((await A.workingStatus()).heldMetadataRoot).toBeNull();
    const s = await send({ pool: A, snap: 13, base: 12, output: `${sb.dir}/13again.stream`, deviceSize: VOL });
    expect(counts.same).toBe(0);
    expect(counts.different + counts.right_only).toBe(s.dataBlocks);
    expect(counts.left_only).toBe(s.discardBlocks);
  });

  test('a migrated volume: pool B holds the same mappings count as pool A through its own metadata', async () => {
    await using snap = await B.reserveMetadataSnap();
    await using md: ThinMetadata = await snap.open();
    let n = 0;
    for await (const r of md.mappings(1)) n += r.length;
    expect(n).toBe(await sourceMapped(13));
  });
});
