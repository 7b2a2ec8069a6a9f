/**
 * The CLI's ls writes its table and its JSON from the device table's columns
 * (writeDetailsTable, writeLsJson), without an object per device. Their bytes
 * must be what the row-based functions give: formatLsTable (the thin_ls table
 * the oracle suite checks against thin_ls 0.9.0) and JSON.stringify of
 * lsJson (the JSON documented in docs/json.md), for every field, with and
 * without the EXCLUSIVE column, headers or not.
 */
import { Writable } from 'node:stream';
import { ThinMetadata } from '../../src';
import { DEFAULT_LS_FIELDS, deviceUsage, exclusiveUsage, formatLsTable, LS_FIELDS, lsJson, needsMappings, writeDetailsTable, writeLsJson, type LsField } from '../../src/thin/ls';
import { fixtureImage } from '../helpers/fixtures';

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
      }
      const j = collector();
      await writeLsJson(table, fields, dbs, j.target, excl);
      expect(j.text()).toBe(JSON.stringify(lsJson(rows, fields, dbs), null, 2) + '\n');
    }
  });
}

test('a field that needs the mapping walk, without EXCLUSIVE given: the same refusal as the rows', async () => {
  await using md = await ThinMetadata.fromBuffer(fixtureImage('snapshots'));
  const table = await md.deviceTable();
  const dbs = md.superblock.dataBlockSize;
  await expect(writeDetailsTable(table, ['EXCLUSIVE_BLOCKS'], dbs, true, collector().target)).rejects.toThrow(/needs the mapping walk/);
  await expect(writeLsJson(table, ['SHARED_BYTES'], dbs, collector().target)).rejects.toThrow(/needs the mapping walk/);
});
