/**
 * The walk of many devices at once (dump, ls with EXCLUSIVE/SHARED): roots
 * are read in batches, and a damaged device is still reported as itself,
 * after every device before it. Its output is checked against the fixture's
 * XML (what thin_dump reproduces) and by the oracle suite.
 */
import { MetadataError, ThinMetadata } from '../../src';
import { fixtureImage, fixtureXml } from '../helpers/fixtures';

/** Per device of the fixture's XML, its mapped blocks (sum of single and range lengths). */
function xmlMappedBlocks(xml: string): Map<number, number> {
  const out = new Map<number, number>();
  let dev = -1;
  for (const line of xml.split('\n')) {
    const d = /<device dev_id="(\d+)"/.exec(line);
    if (d) {
      dev = Number(d[1]);
      out.set(dev, 0);
    } else if (line.includes('<single_mapping')) out.set(dev, out.get(dev)! + 1);
    else {
      const r = /<range_mapping [^>]*length="(\d+)"/.exec(line);
      if (r) out.set(dev, out.get(dev)! + Number(r[1]));
    }
  }
  return out;
}

test('all devices of a 700-device pool in a few read batches, with every mapping', async () => {
  const expected = xmlMappedBlocks(fixtureXml('many-devices'));
  expect(expected.size).toBe(700);
  await using md = await ThinMetadata.fromBuffer(fixtureImage('many-devices'));
  const ids = [...(await md.devices()).keys()];
  const before = md.io.stats.batches;
  const seen = new Map<number, number>();
  const order: string[] = [];
  await md.walkDevices(ids, {
    begin: (k) => order.push(`b${k}`),
    runs: (k, b) => {
      let n = 0;
      for (let i = 0; i < b.count; i++) n += b.length[i];
      seen.set(ids[k], (seen.get(ids[k]) ?? 0) + n);
    },
    end: (k, found) => {
      order.push(`e${k}`);
      expect(found).toBe(seen.get(ids[k]) ?? 0);
    },
  });
  expect(order).toEqual(ids.flatMap((_, k) => [`b${k}`, `e${k}`]));
  expect(new Map([...expected].map(([id]) => [id, seen.get(id) ?? 0]))).toEqual(expected);
  // One read per device would be 700 batches; deep trees add their own.
  expect(md.io.stats.batches - before).toBeLessThan(100);
});

test('a device whose root leaf is damaged fails as itself, after the devices before it', async () => {
  const img = fixtureImage('many-devices');
  let victim: number;
  let victimIndex: number;
  let ids: number[];
  {
    await using md = await ThinMetadata.fromBuffer(img);
    const details = await md.devices();
    const roots = await md.deviceRoots();
    ids = [...details.keys()];
    // A device in the middle with a small tree of its own (empty devices share one leaf).
    victimIndex = ids.findIndex((id, k) => k > 300 && details.get(id)!.mappedBlocks > 0 && [...roots.values()].filter((r) => r === roots.get(id)).length === 1);
    expect(victimIndex).toBeGreaterThan(300);
    victim = ids[victimIndex];
    img[roots.get(victim)! * 4096 + 200] ^= 0xff; // checksum no longer matches
  }
  await using md = await ThinMetadata.fromBuffer(img);
  const ended: number[] = [];
  const err = await md
    .walkDevices(ids, { begin: () => {}, runs: () => {}, end: (k) => void ended.push(k) })
    .then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(MetadataError);
  expect((err as MetadataError).devId).toBe(victim);
  expect(ended).toEqual(ids.slice(0, victimIndex).map((_, k) => k));
});
