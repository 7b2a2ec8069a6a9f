/**
 * The CLI's ls writes its table and its JSON from the device table's columns
 * (writeDetailsTable, writeLsJson), without an object per device. Their bytes
 * must be what the row-based functions give: formatLsTable (the thin_ls table
 * the oracle suite checks against thin_ls 0.9.0) and JSON.stringify of
 * lsJson (the JSON documented in docs/json.md), for every field, with and
 * without the EXCLUSIVE column, headers or not.
 */
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { ThinMetadata } from '../../src';
import { DEFAULT_LS_FIELDS, deviceUsage, exclusiveUsage, formatLsTable, LS_FIELDS, lsJson, needsMappings, tableCells, writeDetailsTable, writeLsJson, type LsField } from '../../src/thin/ls';
import { fixtureImage, itOracle, largeImage } from '../helpers/fixtures';
import type { DetailsTable } from '../../src/thin/device-table';
import { native } from '../../src/native/binding';
import { FdWriter } from '../../src/output/fd-writer';

/** Collects what a writer writes. */
function collector(): { target: Writable; text: () => string } {
  const chunks: Buffer[] = [];
  const target = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(Buffer.from(chunk));
      cb();
    },
  });
  return { target, text: () => Buffer.concat(chunks).toString('latin1') };
}

const FIELD_SETS: LsField[][] = [[...LS_FIELDS], [...DEFAULT_LS_FIELDS], ['DEV', 'EXCLUSIVE_BLOCKS', 'SHARED_BLOCKS'], ['SHARED', 'EXCLUSIVE', 'DEV'], ['SNAP_TIME']];

for (const fixture of ['many-devices', 'snapshots', 'high-values', 'basic', 'empty', 'dbs-1gib-full']) {
  test(`${fixture}: table and JSON from the columns equal the row-based text`, async () => {
    await using md = await ThinMetadata.fromBuffer(fixtureImage(fixture));
    const dbs = md.superblock.dataBlockSize;
    const rows = await deviceUsage(md);
    const { table, exclusive } = await exclusiveUsage(md);
    for (const fields of FIELD_SETS) {
      // EXCLUSIVE given only where a field needs it, as the CLI does.
      const excl = fields.some(needsMappings) ? exclusive : undefined;
      for (const headers of [true, false]) {
        const t = collector();
        await writeDetailsTable(table, fields, dbs, headers, t.target, excl);
        expect(t.text()).toBe(formatLsTable(rows, fields, dbs, headers));
        // That table came from the addon's cells (a lookup that finds no function would fall back to JS silently).
        expect(typeof tableCells.write).toBe('function');
        // The integer cells through the addon (the default) and through the JS loops used without it: the same bytes.
        const saved = { ...tableCells };
        tableCells.write = null;
        tableCells.units = null;
        try {
          const js = collector();
          await writeDetailsTable(table, fields, dbs, headers, js.target, excl);
          expect(js.text()).toBe(t.text());
        } finally {
          Object.assign(tableCells, saved);
        }
      }
      const j = collector();
      await writeLsJson(table, fields, dbs, j.target, excl);
      expect(j.text()).toBe(JSON.stringify(lsJson(rows, fields, dbs), null, 2) + '\n');
    }
  });
}

test('a table or JSON array larger than one output chunk is written through chunks of one huge-page mapping, the same bytes as through the sink\'s own', async () => {
  // 20,000 devices made up in columns (no metadata needed): ~620 KB of table.
  const n = 20_000;
  const col = (f: (i: number) => number) => Float64Array.from({ length: n }, (_, i) => f(i));
  const u32 = (f: (i: number) => number) => Uint32Array.from({ length: n }, (_, i) => f(i));
  const table: DetailsTable = {
    count: n,
    devId: col((i) => 3 * i + 1),
    mappedBlocks: col((i) => (i * 7919) % 4_000_000),
    transactionLo: u32((i) => i),
    transactionHi: u32(() => 0),
    creationTime: u32((i) => i % 977),
    snapshottedTime: u32((i) => i % 1009),
    maxMappedBlocks: 0,
    maxCreationTime: 976,
    maxSnapshottedTime: 1008,
  };
  table.maxMappedBlocks = table.mappedBlocks.reduce((m, v) => Math.max(m, v), 0);
  const small: DetailsTable = { ...table, count: 10 };
  const saved = { ...tableCells };
  const asked: number[] = [];
  const written = async (t: DetailsTable, json: boolean) => {
    const c = collector();
    if (json) await writeLsJson(t, [...DEFAULT_LS_FIELDS], 128, c.target);
    else await writeDetailsTable(t, [...DEFAULT_LS_FIELDS], 128, true, c.target);
    return c.text();
  };
  try {
    tableCells.huge = (bytes: number) => {
      asked.push(bytes);
      return new ArrayBuffer(bytes);
    };
    const viaHuge = [await written(table, false), await written(table, true)];
    // One mapping of one huge page (2 MiB) for each.
    expect(asked).toEqual([2 << 20, 2 << 20]);
    asked.length = 0;
    const smallViaHuge = [await written(small, false), await written(small, true)];
    expect(asked).toEqual([]); // one chunk's worth: a huge page would be zeroed whole for it
    tableCells.huge = null;
    expect([await written(table, false), await written(table, true)]).toEqual(viaHuge);
    expect([await written(small, false), await written(small, true)]).toEqual(smallViaHuge);
    expect(viaHuge[0].length).toBeGreaterThan(2 * 256 * 1024);
  } finally {
    Object.assign(tableCells, saved);
  }
});

test("with the addon's own huge-page mapping, a 20,000-device table to a file (chunks reused once written) is the sink's own bytes; the DEV column goes to the addon's cells as the table's f64 ids, not a copy", async () => {
  const n = 20_000;
  const table: DetailsTable = {
    count: n,
    devId: Float64Array.from({ length: n }, (_, i) => 2 * i),
    mappedBlocks: Float64Array.from({ length: n }, (_, i) => i * 31),
    transactionLo: new Uint32Array(n),
    transactionHi: new Uint32Array(n),
    creationTime: new Uint32Array(n).fill(7),
    snapshottedTime: new Uint32Array(n).fill(9),
    maxMappedBlocks: (n - 1) * 31,
    maxCreationTime: 7,
    maxSnapshottedTime: 9,
  };
  const dir = mkdtempSync(join(tmpdir(), 'dmthin-ls-huge-'));
  const saved = { ...tableCells };
  try {
    const toFile = async (name: string): Promise<Buffer> => {
      const path = join(dir, name);
      const fd = openSync(path, 'w');
      try {
        await writeDetailsTable(table, [...DEFAULT_LS_FIELDS], 128, true, new FdWriter(fd));
      } finally {
        closeSync(fd);
      }
      return readFileSync(path);
    };
    const real = native().hugeArrayBuffer;
    let mapped = 0;
    const cellArrays: unknown[] = [];
    const cells = native().writeDecimalCells;
    tableCells.huge = (bytes: number) => (mapped++, real(bytes));
    tableCells.write = ((...a: Parameters<typeof cells>) => (cellArrays.push(a[3]), cells(...a))) as typeof cells;
    const viaHuge = await toFile('huge');
    expect(mapped).toBe(1);
    expect(cellArrays).toContain(table.devId);
    tableCells.huge = null;
    tableCells.write = saved.write;
    expect((await toFile('own')).equals(viaHuge)).toBe(true);
    expect(viaHuge.length).toBeGreaterThan(2 * 256 * 1024);
  } finally {
    Object.assign(tableCells, saved);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a field that needs the mapping walk, without EXCLUSIVE given: the same refusal as the rows', async () => {
  await using md = await ThinMetadata.fromBuffer(fixtureImage('snapshots'));
  const table = await md.deviceTable();
  const dbs = md.superblock.dataBlockSize;
  await expect(writeDetailsTable(table, ['EXCLUSIVE_BLOCKS'], dbs, true, collector().target)).rejects.toThrow(/needs the mapping walk/);
  await expect(writeLsJson(table, ['SHARED_BYTES'], dbs, collector().target)).rejects.toThrow(/needs the mapping walk/);
});

// deviceUsage reported progress once a window of 256 devices: on a pool of a few large devices, once, at the end
// (outside review, hunt G item 4). Now as the mappings are walked: 4 devices, 200,000 mappings.
itOracle('deviceUsage and exclusiveUsage report progress as the mappings are walked, up to the total', async () => {
  const img = largeImage(200_000);
  expect(img.devices).toBeLessThan(256); // one window: the case that reported only at the end
  await using md = await ThinMetadata.open(img.path);
  const walks: [string, (o: { onProgress: (p: { mappings: number; total: number }) => void }) => Promise<unknown>][] = [
    ['deviceUsage', (o) => deviceUsage(md, o)],
    ['exclusiveUsage, owner map', (o) => exclusiveUsage(md, o)],
    ['exclusiveUsage, use counts (two passes)', (o) => exclusiveUsage(md, { ...o, flatLimits: { ownerBytes: 0, counts: img.nrDataBlocks } })],
  ];
  for (const [name, walk] of walks) {
    const seen: { mappings: number; total: number }[] = [];
    await walk({ onProgress: (p) => seen.push(p) });
    const total = seen[0]?.total;
    const m = seen.map((p) => p.mappings);
    expect([name, seen.length > 2, seen.every((p) => p.total === total), m.every((v, i) => i === 0 || v > m[i - 1]), m[m.length - 1]]).toEqual([name, true, true, true, total]);
    expect(total).toBeGreaterThanOrEqual(img.mappings);
  }
});

// With use counts and no block shared the second pass is skipped: the last report said half the total.
test('exclusiveUsage without a shared block: the last progress report is the total', async () => {
  await using md = await ThinMetadata.fromBuffer(fixtureImage('basic'));
  const seen: { mappings: number; total: number }[] = [];
  await exclusiveUsage(md, { flatLimits: { ownerBytes: 0, counts: md.nrDataBlocks }, onProgress: (p) => seen.push(p) });
  expect(seen[seen.length - 1]).toEqual({ mappings: 64, total: 64 });
});

test('an addon built before writeDecimalCells and diskUnits existed (a checkout updated without a rebuild): the JS loops write the table (a review: "cells is not a function")', async () => {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const addon = (require('../../src/native/binding') as typeof import('../../src/native/binding')).native() as unknown as Record<string, unknown>;
  await using md = await ThinMetadata.fromBuffer(fixtureImage('many-devices'));
  const table = await md.detailsTable();
  const dbs = md.superblock.dataBlockSize;
  const want = collector();
  await writeDetailsTable(table, [...DEFAULT_LS_FIELDS], dbs, true, want.target);
  const saved = { writeDecimalCells: addon.writeDecimalCells, diskUnits: addon.diskUnits };
  const savedCells = { ...tableCells };
  delete addon.writeDecimalCells;
  delete addon.diskUnits;
  tableCells.write = undefined;
  tableCells.units = undefined;
  try {
    const got = collector();
    await writeDetailsTable(table, [...DEFAULT_LS_FIELDS], dbs, true, got.target);
    expect(got.text()).toBe(want.text());
    expect([tableCells.write, tableCells.units]).toEqual([null, null]);
  } finally {
    Object.assign(addon, saved);
    Object.assign(tableCells, savedCells);
  }
});
