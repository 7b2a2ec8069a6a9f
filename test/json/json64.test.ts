/**
 * The 64-bit policy (docs/json.md) through every JSON output and the API:
 * metadata whose transaction ids and virtual blocks lie below 2^53, above it
 * and at 2^64-1. JSON.parse of each output must give back the exact value
 * (as a decimal string), and each output's shape (every key with its JSON
 * type) must be the same whatever the values.
 *
 * Images are the `high-values` fixture with fields rewritten in place, from
 * the on-disk layout (docs/thin-metadata.md), not through the reader: the
 * superblock's transaction id, the details' transaction ids, and the keys of
 * the two one-leaf mapping trees.
 */
import fc from 'fast-check';
import { Writable } from 'node:stream';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlockType, blockChecksum } from '../../src/pdata/checksum';
import { ThinMetadata } from '../../src/thin/metadata';
import { dump } from '../../src/thin/dump';
import { writeDelta } from '../../src/thin/delta-format';
import { deviceUsage, LS_FIELDS, lsJson } from '../../src/thin/ls';
import { checkMetadata } from '../../src/thin/check';
import { rmap } from '../../src/thin/rmap';
import { reportJson } from '../../src/cli/check';
import { statusJson } from '../../src/cli/pool';
import { toJson } from '../../src/cli/json';
import { parseThinPoolStatus } from '../../src/dm/targets/thin-pool';
import { fixture, fixtureFile, fixtureImage } from '../helpers/fixtures';
import { runCli } from '../cli/run-cli';
import { scratch, writeDataFile } from '../stream/helpers';

const MAX64 = (1n << 64n) - 1n;
const TWO53 = 1n << 53n;
/** The fixture's devices: A maps one block (key KA), B maps two (keys KB, KB+1). */
const A = 16777214;
const B = 16777215;

interface Values {
  /** Superblock transaction id. */
  t: bigint;
  /** Details transaction ids of A and B. */
  ta: bigint;
  tb: bigint;
  /** A's one key; B's first key (B maps KB and KB+1). */
  ka: bigint;
  kb: bigint;
}

const u64At = (b: Buffer, off: number) => Number(b.readBigUInt64LE(off));
const block = (img: Buffer, nr: number) => img.subarray(nr * 4096, (nr + 1) * 4096);

/** A btree leaf's entries: keys at 32, values after max_entries keys. */
function leaf(img: Buffer, nr: number) {
  const b = block(img, nr);
  if ((b.readUInt32LE(4) & 2) === 0) throw new Error(`block ${nr} is not a leaf: the fixture changed`);
  const n = b.readUInt32LE(16);
  const max = b.readUInt32LE(20);
  const vs = b.readUInt32LE(24);
  const find = (key: number) => {
    for (let i = 0; i < n; i++) if (b.readBigUInt64LE(32 + 8 * i) === BigInt(key)) return i;
    throw new Error(`key ${key} not in leaf ${nr}`);
  };
  return { b, n, keyOff: (i: number) => 32 + 8 * i, valueOff: (i: number) => 32 + 8 * max + vs * i, find, seal: () => b.writeUInt32LE(blockChecksum(b, BlockType.BtreeNode), 0) };
}

/** `high-values` with the values rewritten; `badDataA` makes A's mapping point past the data device (a check problem keyed by KA). */
function image(v: Values, badDataA = false): Buffer {
  const img = Buffer.from(fixtureImage('high-values'));
  const sb = block(img, 0);
  sb.writeBigUInt64LE(v.t, 0x30);
  sb.writeUInt32LE(blockChecksum(sb, BlockType.Superblock), 0);
  // Details: 24-byte values, transaction id at +8.
  const details = leaf(img, u64At(sb, 0x148));
  details.b.writeBigUInt64LE(v.ta, details.valueOff(details.find(A)) + 8);
  details.b.writeBigUInt64LE(v.tb, details.valueOff(details.find(B)) + 8);
  details.seal();
  // Top-level tree: device id -> root of its mapping tree (both one leaf).
  const top = leaf(img, u64At(sb, 0x140));
  const la = leaf(img, u64At(top.b, top.valueOff(top.find(A))));
  la.b.writeBigUInt64LE(v.ka, la.keyOff(0));
  if (badDataA) la.b.writeBigUInt64LE((64n << 24n) | 1n, la.valueOff(0));
  la.seal();
  const lb = leaf(img, u64At(top.b, top.valueOff(top.find(B))));
  lb.b.writeBigUInt64LE(v.kb, lb.keyOff(0));
  lb.b.writeBigUInt64LE(v.kb + 1n, lb.keyOff(1));
  lb.seal();
  return img;
}

/** Collects a Writable's text. */
function sink(): { w: Writable; text: () => string } {
  const parts: Buffer[] = [];
  const w = new Writable({
    write(c, _e, cb) {
      parts.push(Buffer.from(c));
      cb();
    },
  });
  return { w, text: () => Buffer.concat(parts).toString('utf8') };
}

/** Delta extents in kind order: which side has no data block follows the kind, not the values. */
function byKind<T extends { delta: { extents: { kind: string }[] } }>(o: T): T {
  o.delta.extents.sort((a, b) => a.kind.localeCompare(b.kind));
  return o;
}

/** Every leaf replaced by its JSON type: two outputs with equal shapes have the same keys with the same types. */
function shape(x: unknown): unknown {
  if (Array.isArray(x)) return x.map(shape);
  if (x !== null && typeof x === 'object') return Object.fromEntries(Object.entries(x).map(([k, v]) => [k, shape(v)]));
  return x === null ? 'null' : typeof x;
}

/** All JSON outputs of the library for one image, parsed. */
async function outputs(v: Values) {
  await using md = await ThinMetadata.fromBuffer(image(v));
  const d = sink();
  await dump(md, d.w, { format: 'json' });
  const dl = sink();
  await writeDelta(md, dl.w, { left: A, right: B }, { format: 'json', verbose: true });
  const ls = lsJson(await deviceUsage(md), LS_FIELDS, md.superblock.dataBlockSize);
  await using bad = await ThinMetadata.fromBuffer(image(v, true));
  const check = JSON.parse(toJson(reportJson(await checkMetadata(bad))));
  const status = JSON.parse(toJson(statusJson('p', parseThinPoolStatus(`${v.t} 10/100 5/64 - rw discard_passdown queue_if_no_space - 0`))));
  return byKind({ dump: JSON.parse(d.text()), delta: JSON.parse(dl.text()), ls: JSON.parse(JSON.stringify(ls)), check, status });
}

/** The exact values each output must carry, as decimal strings. */
function expectValues(o: Awaited<ReturnType<typeof outputs>>, v: Values): void {
  const s = (x: bigint) => x.toString();
  expect(o.dump.superblock.transactionId).toBe(s(v.t));
  const [da, db] = o.dump.devices;
  expect([da.devId, da.transactionId, da.mappings[0].originBegin]).toEqual([A, s(v.ta), s(v.ka)]);
  expect([db.devId, db.transactionId, db.mappings[0].originBegin, db.mappings[0].length]).toEqual([B, s(v.tb), s(v.kb), 2]);
  expect(o.delta.superblock.transactionId).toBe(s(v.t));
  const begins = o.delta.extents.map((e: { begin: string }) => e.begin).sort((x: string, y: string) => (BigInt(x) < BigInt(y) ? -1 : 1));
  // A's one block is left_only, B's two right_only (the keys never overlap here).
  expect(begins).toEqual([v.ka, v.kb].sort((x, y) => (x < y ? -1 : 1)).map(s));
  expect(o.ls.map((r: { transactionId: string }) => r.transactionId)).toEqual([s(v.ta), s(v.tb)]);
  expect(o.check.counts.transactionId).toBe(s(v.t));
  const range = o.check.problems.find((p: { kind: string }) => p.kind === 'data-range');
  expect(range.keys).toEqual([s(v.ka), s(v.ka)]);
  expect(o.status.transactionId).toBe(s(v.t));
}

const small: Values = { t: 1n, ta: 2n, tb: 3n, ka: 5n, kb: 100n };
const huge: Values = { t: MAX64, ta: TWO53 + 1n, tb: MAX64, ka: MAX64, kb: MAX64 - 2n };

describe('JSON outputs keep u64s exact, with one type per field', () => {
  let reference: unknown;
  beforeAll(async () => {
    const o = await outputs(small);
    expectValues(o, small);
    reference = shape(o);
  });

  test('the largest values: 2^64-1 and 2^53+1 read back exactly, shapes unchanged', async () => {
    const o = await outputs(huge);
    expectValues(o, huge);
    expect(shape(o)).toEqual(reference);
  });

  test('property: any u64 values read back exactly, shapes unchanged', async () => {
    const u64 = fc.oneof(fc.bigInt({ min: 0n, max: TWO53 - 1n }), fc.bigInt({ min: TWO53 - 2n, max: TWO53 + 2n }), fc.bigInt({ min: TWO53, max: MAX64 }), fc.constant(MAX64));
    // Keys: A's anywhere, B's pair at or below 2^64-2; kept apart so the delta has exactly one extent per device.
    const keys = fc.tuple(fc.oneof(fc.bigInt({ min: 0n, max: TWO53 }), fc.bigInt({ min: TWO53, max: MAX64 })), fc.bigInt({ min: 0n, max: MAX64 - 1n }));
    await fc.assert(
      fc.asyncProperty(u64, u64, u64, keys, async (t, ta, tb, [ka, kb]) => {
        fc.pre(ka !== kb && ka !== kb + 1n); // overlapping keys are the delta tests' business
        const v = { t, ta, tb, ka, kb };
        const o = await outputs(v);
        expectValues(o, v);
        expect(shape(o)).toEqual(reference);
      }),
      { numRuns: 40 },
    );
  });
});

describe('the API: u64 values are bigints, whatever their size', () => {
  test.each([
    ['small', small],
    ['huge', huge],
  ])('%s values', async (_n, v) => {
    await using md = await ThinMetadata.fromBuffer(image(v));
    expect(md.superblock.transactionId).toBe(v.t);
    const devs = await md.devices();
    expect(devs.get(A)!.transactionId).toBe(v.ta);
    const runsA = [];
    for await (const r of md.mappings(A)) runsA.push(r);
    expect(runsA).toEqual([{ originBegin: v.ka, dataBegin: 63, length: 1, time: 16777215 }]);
    const runsB = [];
    for await (const r of md.mappings(B)) runsB.push(r);
    // Ordinary arithmetic type-checks and is exact: the end of B's run.
    expect(runsB[0].originBegin + BigInt(runsB[0].length)).toBe(v.kb + 2n);
    expect(await md.lookup(A, v.ka)).toEqual({ dataBlock: 63, time: 16777215 });
    expect(await md.lookup(B, v.kb + 1n)).toEqual({ dataBlock: 1, time: 16777215 });
    const ext = [];
    for await (const e of md.delta(A, B)) ext.push(e);
    for (const e of ext) expect(typeof e.begin).toBe('bigint');
    expect(ext.map((e) => e.begin)).toContain(v.ka);
    const rm = [];
    for await (const r of rmap(md, [{ begin: 0, end: 64 }])) rm.push(r);
    expect(rm.map((r) => [r.devId, r.virtualBegin])).toEqual([
      [B, v.kb],
      [A, v.ka],
    ]);
    for (const d of await deviceUsage(md)) expect(typeof d.transactionId).toBe('bigint');
  });
});

describe('the CLI prints the same policy', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'dmthin-json64-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const cliOutputs = (v: Values, name: string) => {
    const f = join(dir, name);
    writeFileSync(f, image(v));
    const bad = join(dir, `bad-${name}`);
    writeFileSync(bad, image(v, true));
    const run = (args: string[], ok = 0) => {
      const r = runCli(args);
      expect([r.status, r.stderr]).toEqual([ok, '']);
      return JSON.parse(r.stdout);
    };
    return byKind({
      dump: run(['dump', '-f', 'json', f]),
      delta: run(['delta', '-f', 'json', '--verbose', '--snap1', String(A), '--snap2', String(B), f]),
      ls: run(['ls', '--json', '-o', LS_FIELDS.join(','), f]),
      check: run(['check', '--json', '-q', bad], 1),
    });
  };

  test('dump, delta, ls and check with 2^64-1 and 2^53+1: exact, and shaped as with small values', () => {
    const s = cliOutputs(small, 'small.bin');
    const h = cliOutputs(huge, 'huge.bin');
    expect(h.dump.superblock.transactionId).toBe(String(MAX64));
    expect(h.dump.devices.map((d: { transactionId: string }) => d.transactionId)).toEqual([String(huge.ta), String(huge.tb)]);
    expect(h.dump.devices[0].mappings[0].originBegin).toBe(String(MAX64));
    expect(h.delta.extents.map((e: { begin: string }) => e.begin).sort()).toEqual([String(MAX64 - 2n), String(MAX64)].sort());
    expect(h.ls[1]).toMatchObject({ devId: B, transactionId: String(MAX64), mappedBlocks: 2, mappedSectors: String(2n * 2097152n), mappedBytes: String(2n * 2097152n * 512n) });
    expect(h.check.counts.transactionId).toBe(String(MAX64));
    expect(h.check.problems.find((p: { kind: string }) => p.kind === 'data-range').keys).toEqual([String(MAX64), String(MAX64)]);
    expect(shape(h)).toEqual(shape(s));
    // ls --json prints numbers and strings, never thin_ls's human units.
    expect(JSON.stringify(h.ls)).not.toMatch(/iB"/);
  });

  test('dump -f json --skip-mappings: each device\'s mappings are null (not read), not [] (none); found by an outside hunt', () => {
    using f = fixtureFile('basic');
    const r = runCli(['dump', '-f', 'json', '--skip-mappings', f.path]);
    expect([r.status, r.stderr]).toEqual([0, '']);
    const devices = JSON.parse(r.stdout).devices as { mappedBlocks: number; mappings: unknown }[];
    expect(devices.length).toBeGreaterThan(0);
    for (const d of devices) expect(d.mappings).toBeNull();
    const all = JSON.parse(runCli(['dump', '-f', 'json', f.path]).stdout).devices as { mappings: unknown[] }[];
    expect(all.every((d) => Array.isArray(d.mappings))).toBe(true);
  });

  test('heldRoot (dump -f json, check --json) is null when no metadata snapshot is held, the block when one is (it was 0; outside review)', () => {
    for (const [name, held] of [['basic', null], ['metadata-snap', fixture('metadata-snap').heldRoot]] as const) {
      using f = fixtureFile(name);
      const d = runCli(['dump', '-f', 'json', f.path]);
      const c = runCli(['check', '--json', f.path]);
      expect([name, d.status, c.status]).toEqual([name, 0, 0]);
      expect([name, JSON.parse(d.stdout).superblock.heldRoot, JSON.parse(c.stdout).counts.heldRoot]).toEqual([name, held, held]);
    }
    expect(fixture('metadata-snap').heldRoot).toBeGreaterThan(0);
  });

  test('send --json and receive --json: a snapshot whose transaction id is 2^64-1', async () => {
    const s = scratch();
    try {
      // metadata-snap-diverged's device 4, its details transaction id rewritten.
      const img = Buffer.from(fixtureImage('metadata-snap-diverged'));
      const sb = block(img, 0);
      const details = leaf(img, u64At(sb, 0x148));
      details.b.writeBigUInt64LE(MAX64, details.valueOff(details.find(4)) + 8);
      details.seal();
      const meta = s.path('meta.bin');
      const data = s.path('data.bin');
      writeFileSync(meta, img);
      await writeDataFile(img, data, 65536);
      const stream = s.path('s');
      const sent = runCli(['send', '--metadata', meta, '--data', data, '--snap', '4', '--size', `${300 * 64}K`, '-o', stream, '-q', '--json']);
      expect(sent.status).toBe(0);
      const sj = JSON.parse(sent.stderr);
      for (const k of ['records', 'dataBlocks', 'discardBlocks', 'dataBytes', 'bytes']) expect(typeof sj[k]).toBe('number');
      const got = runCli(['receive', '--target', s.path('t'), '-i', stream, '--create', '-q', '--json']);
      expect([got.status, got.stderr]).toEqual([0, '']);
      const r = JSON.parse(got.stdout);
      expect(r.header.target.transactionId).toBe(String(MAX64));
      expect(r.resizedFrom).toBeNull();
      const state = JSON.parse(readFileSync(r.stateFile, 'utf8'));
      expect(state.current.snapshot.transactionId).toBe(String(MAX64));
    } finally {
      s.cleanup();
    }
  });
});
