/**
 * The device table (thin/device-table.ts): every device as columns, the
 * start of dump, ls, rmap and walkDevices. Checked against the Maps the
 * public API reads the same trees into (devices(), deviceRoots()), whose
 * contents the oracle suite checks against thin_dump; the mismatch errors are
 * checked in corruption.test.ts through every command.
 */
import { ThinMetadata } from '../../src';
import { deviceAt, rowOf } from '../../src/thin/device-table';
import { fixtureImage } from '../helpers/fixtures';

for (const fixture of ['many-devices', 'snapshots', 'high-values', 'empty']) {
  test(`${fixture}: one row per device in id order, as devices() and deviceRoots() read them`, async () => {
    await using md = await ThinMetadata.fromBuffer(fixtureImage(fixture));
    const t = await md.deviceTable();
    const details = await md.devices();
    const roots = await md.deviceRoots();
    expect(t.count).toBe(details.size);
    expect([...t.devId]).toEqual([...details.keys()].sort((a, b) => a - b));
    for (let r = 0; r < t.count; r++) {
      const id = t.devId[r];
      if (r > 0) expect(id).toBeGreaterThan(t.devId[r - 1]);
      expect(deviceAt(t, r)).toEqual(details.get(id));
      expect(t.root[r]).toBe(roots.get(id));
      expect(rowOf(t, id)).toBe(r);
    }
    // The maxima ls takes its column widths from.
    const max = (k: 'mappedBlocks' | 'creationTime' | 'snapshottedTime'): number => Math.max(0, ...[...details.values()].map((d) => d[k]));
    expect([t.maxMappedBlocks, t.maxCreationTime, t.maxSnapshottedTime]).toEqual([max('mappedBlocks'), max('creationTime'), max('snapshottedTime')]);
    // checkedDevices is the same table as objects.
    const checked = await md.checkedDevices();
    expect([...checked.keys()]).toEqual([...t.devId]);
    for (const [id, d] of checked) expect(d).toEqual({ ...details.get(id), root: roots.get(id) });
    // Read once, kept.
    expect(await md.deviceTable()).toBe(t);
  });
}

test('rowOf: -1 for an id between, before or after the rows', async () => {
  await using md = await ThinMetadata.fromBuffer(fixtureImage('snapshots'));
  const t = await md.deviceTable();
  expect(t.count).toBeGreaterThan(2);
  const ids = [...t.devId];
  const missing = [ids[0] - 1, ids[t.count - 1] + 1, ...ids.slice(1).map((id, k) => (id - ids[k] > 1 ? id - 1 : NaN)).filter((x) => !Number.isNaN(x))];
  expect(missing.length).toBeGreaterThan(2);
  for (const id of missing) expect(rowOf(t, id)).toBe(-1);
});

test('walkDevices of an id the pool does not have: ENODEV, before any device is walked', async () => {
  await using md = await ThinMetadata.fromBuffer(fixtureImage('snapshots'));
  const t = await md.deviceTable();
  const begun: number[] = [];
  const err = await md
    .walkDevices([t.devId[0], t.devId[t.count - 1] + 1], { begin: (k) => void begun.push(k), runs: () => {}, end: () => {} })
    .then(() => undefined, (e: unknown) => e);
  expect((err as { code?: string }).code).toBe('ENODEV');
  expect(begun).toEqual([]);
});
