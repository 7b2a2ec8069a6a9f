/**
 * The ThinMetadata library API on the committed fixtures, checked against
 * independent sources: the XML each fixture was restored from (which
 * thin_dump reproduces exactly) and the test helpers' own block decoder.
 */
import { AbortError, MetadataSnapError, ThinMetadata, dump, DmthinError, writeDelta, deviceUsage, checkMetadata, rmap } from '../../src';
import { MemoryBlockSource, NativeBlockSource } from '../../src/pdata/block-source';
import { fixture, fixtureFile, fixtureImage, fixtureXml, listFixtures } from '../helpers/fixtures';
import { node, superblock } from '../helpers/corrupt';
import { Writable } from 'node:stream';

interface XmlDevice {
  devId: number;
  mappedBlocks: number;
  transaction: bigint;
  creationTime: number;
  snapTime: number;
  /** virtual block -> [data block, time] */
  map: Map<bigint, [number, number]>;
}

/** A deliberately simple reader of the fixtures' input XML (thin_dump format). */
function parseXml(xml: string): { time: number; transaction: bigint; devices: XmlDevice[] } {
  const attrs = (s: string) => Object.fromEntries([...s.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
  const sb = attrs(/<superblock ([^>]*)>/.exec(xml)![1]);
  const devices: XmlDevice[] = [];
  let cur: XmlDevice | undefined;
  for (const line of xml.split('\n')) {
    const t = line.trim();
    if (t.startsWith('<device ')) {
      const a = attrs(t);
      cur = {
        devId: Number(a.dev_id),
        mappedBlocks: Number(a.mapped_blocks),
        transaction: BigInt(a.transaction),
        creationTime: Number(a.creation_time),
        snapTime: Number(a.snap_time),
        map: new Map(),
      };
      devices.push(cur);
    } else if (t.startsWith('<range_mapping ')) {
      const a = attrs(t);
      for (let i = 0n; i < BigInt(a.length); i++) cur!.map.set(BigInt(a.origin_begin) + i, [Number(a.data_begin) + Number(i), Number(a.time)]);
    } else if (t.startsWith('<single_mapping ')) {
      const a = attrs(t);
      cur!.map.set(BigInt(a.origin_block), [Number(a.data_block), Number(a.time)]);
    }
  }
  return { time: Number(sb.time), transaction: BigInt(sb.transaction), devices };
}

const plain = listFixtures().filter((f) => f.dumpMatchesInput);

describe.each(plain.map((f) => [f.name] as const))('%s: library reads what the XML says', (name) => {
  const xml = parseXml(fixtureXml(name));
  let md: ThinMetadata;
  beforeAll(async () => {
    md = await ThinMetadata.fromBuffer(fixtureImage(name));
  });
  afterAll(() => md.close());

  test('superblock', () => {
    expect(md.superblock.time).toBe(xml.time);
    expect(md.superblock.transactionId).toBe(xml.transaction);
    expect(md.nrDataBlocks).toBe(fixture(name).nrDataBlocks);
    expect(md.metadataSnap).toBeNull();
  });

  test('devices', async () => {
    const devs = await md.devices();
    expect([...devs.keys()]).toEqual(xml.devices.map((d) => d.devId).sort((a, b) => a - b));
    for (const d of xml.devices) {
      expect(devs.get(d.devId)).toEqual({
        devId: d.devId,
        mappedBlocks: d.mappedBlocks,
        transactionId: d.transaction,
        creationTime: d.creationTime,
        snapshottedTime: d.snapTime,
      });
    }
  });

  test('mappings, expanded, equal the XML', async () => {
    for (const d of xml.devices) {
      const got = new Map<bigint, [number, number]>();
      let prevEnd = -1n;
      for await (const r of md.mappings(d.devId)) {
        expect(BigInt(r.originBegin)).toBeGreaterThanOrEqual(prevEnd); // virtual-block order
        for (let i = 0; i < r.length; i++) got.set(BigInt(r.originBegin) + BigInt(i), [r.dataBegin + i, r.time]);
        prevEnd = BigInt(r.originBegin) + BigInt(r.length);
      }
      expect(got).toEqual(d.map);
    }
  });

  test('lookup of mapped and unmapped blocks', async () => {
    for (const d of xml.devices) {
      const keys = [...d.map.keys()];
      const sample = keys.filter((_, i) => i % Math.max(1, Math.floor(keys.length / 25)) === 0);
      for (const k of sample) {
        const want = d.map.get(k)!;
        expect(await md.lookup(d.devId, k)).toEqual({ dataBlock: want[0], time: want[1] });
        if (!d.map.has(k + 1n)) expect(await md.lookup(d.devId, k + 1n)).toBeNull();
      }
    }
  });
});

/**
 * Data block reference counts as the kernel keeps them: one per entry of each
 * distinct bottom-level leaf reachable from the live or the held trees.
 */
function expectedDataCounts(img: Buffer): Map<number, number> {
  const counts = new Map<number, number>();
  const seen = new Set<number>();
  const bottom = (b: number): void => {
    if (seen.has(b)) return;
    seen.add(b);
    const n = node(img, b);
    for (let i = 0; i < n.nr; i++) {
      if (n.leaf) {
        const d = Number(n.buf.readBigUInt64LE(n.valueOff(i)) >> 24n);
        counts.set(d, (counts.get(d) ?? 0) + 1);
      } else bottom(n.child(i));
    }
  };
  const top = (b: number): void => {
    const n = node(img, b);
    for (let i = 0; i < n.nr; i++) (n.leaf ? bottom : top)(n.child(i));
  };
  const sb = superblock(img);
  top(sb.mappingRoot);
  if (sb.heldRoot) top(superblock(img, sb.heldRoot).mappingRoot);
  return counts;
}

describe.each(listFixtures().map((f) => [f.name] as const))('%s: data space map', (name) => {
  test('refCount of every data block equals the count of leaf entries that use it', async () => {
    const img = fixtureImage(name);
    const want = expectedDataCounts(img);
    await using md = await ThinMetadata.fromBuffer(img);
    const sm = md.spaceMap('data');
    const n = Math.min(md.nrDataBlocks, 70_000);
    for (let b = 0; b < n; b++) {
      const got = await sm.refCount(b);
      if (got !== (want.get(b) ?? 0)) throw new Error(`data block ${b}: refCount ${got}, expected ${want.get(b) ?? 0}`);
    }
    // A block number read from metadata past the end is corruption; one a caller passes is a bad argument.
    await expect(sm.refCount(md.nrDataBlocks)).rejects.toMatchObject({ kind: 'data-range', code: 'EUCLEAN' });
    await expect(md.refCount('data', md.nrDataBlocks)).rejects.toMatchObject({ name: 'UsageError', code: 'EINVAL' });
  });
});

describe('bad arguments are UsageError (EINVAL), never reported as corrupt metadata', () => {
  test.each([
    ['data', -1],
    ['data', NaN],
    ['data', 1.5],
    ['data', 2 ** 60],
    ['metadata', 1e9],
    ['bogus', 0],
  ] as const)('refCount(%p, %p)', async (kind, block) => {
    await using md = await ThinMetadata.fromBuffer(fixtureImage('basic'));
    const e = await md.refCount(kind as 'data', block).catch((x: unknown) => x);
    expect(e).toMatchObject({ name: 'UsageError', code: 'EINVAL' });
    expect((e as Error).message).toMatch(kind === 'bogus' ? /^unknown space map "bogus": it is 'data' or 'metadata'$/ : /^bad \w+ block \S+: it must be an integer 0\.\.\d+ \(the \w+ space map has \d+ blocks\)$/);
  });

  test('mappings() with end before begin, fromBuffer() of no buffer, dump() of ids that cannot be thin ids', async () => {
    await using md = await ThinMetadata.fromBuffer(fixtureImage('basic'));
    const id = [...(await md.devices()).keys()][0];
    const walk = async () => {
      for await (const _ of md.mappings(id, { begin: 150n, end: 50n })) void _;
    };
    await expect(walk()).rejects.toMatchObject({ name: 'UsageError', code: 'EINVAL', message: 'bad range: end 50 is before begin 150 (end is one past the last block)' });
    await expect(ThinMetadata.fromBuffer(null as unknown as Buffer)).rejects.toMatchObject({ name: 'UsageError', message: 'fromBuffer takes a Buffer or Uint8Array of a metadata image, got null' });
    const u8 = new Uint8Array(fixtureImage('basic'));
    await using md2 = await ThinMetadata.fromBuffer(u8);
    expect([...(await md2.devices()).keys()]).toEqual([...(await md.devices()).keys()]);
    const out = new Writable({ write: (_c, _e, cb) => cb() });
    for (const bad of [-1, 1.5, '1', 2 ** 53, 1n, null]) {
      await expect(dump(md, out, { devIds: [bad as number] })).rejects.toMatchObject({ name: 'UsageError', code: 'EINVAL' });
    }
    await expect(dump(md, out, { devIds: 5 as unknown as number[] })).rejects.toMatchObject({ name: 'UsageError', message: 'devIds must be an array of thin device ids' });
    await expect(writeDelta(md, out, undefined as unknown as { left: number; right: number })).rejects.toMatchObject({ name: 'UsageError', code: 'EINVAL' });
  });

  test('null options are taken as none (as Node\'s own APIs take them), and rmap regions that are not regions are UsageError', async () => {
    const f = fixtureFile('basic');
    try {
      await using md = await ThinMetadata.open(f.path, null as unknown as undefined);
      await using md2 = await ThinMetadata.fromBuffer(fixtureImage('basic'), null as unknown as undefined);
      const none = null as unknown as undefined;
      const out = new Writable({ write: (_c, _e, cb) => cb() });
      await dump(md, out, none);
      const ids = [...(await md.devices()).keys()];
      await writeDelta(md2, out, { left: ids[0], right: ids[ids.length - 1] }, none);
      expect((await deviceUsage(md, none)).length).toBe(ids.length);
      expect((await checkMetadata(md, none)).fatal).toBe(0);
      for await (const _ of rmap(md, [{ begin: 0, end: 10 }], none)) void _;
      for (const bad of [[null], null, [5]]) {
        const walk = async () => {
          for await (const _ of rmap(md, bad as unknown as { begin: number; end: number }[])) void _;
        };
        await expect(walk()).rejects.toMatchObject({ name: 'UsageError', code: 'EINVAL' });
      }
    } finally {
      f.cleanup();
    }
  });

  test('dump() and writeDelta() with a format they do not write: UsageError naming the formats, nothing written', async () => {
    await using md = await ThinMetadata.fromBuffer(fixtureImage('basic'));
    let written = 0;
    const out = new Writable({ write: (c: Buffer, _e, cb) => ((written += c.length), cb()) });
    await expect(dump(md, out, { format: 'yaml' as 'xml' })).rejects.toMatchObject({ name: 'UsageError', code: 'EINVAL', message: "unknown format 'yaml' (xml, human_readable, json)" });
    const ids = [...(await md.devices()).keys()];
    await expect(writeDelta(md, out, { left: ids[0], right: ids[0] }, { format: 'csv' as 'xml' })).rejects.toMatchObject({ name: 'UsageError', code: 'EINVAL', message: "unknown format 'csv' (xml, json)" });
    expect(written).toBe(0);
  });
});

describe('metadata snapshots', () => {
  const snaps = listFixtures('metadata-snap');
  test('there are snapshot fixtures', () => expect(snaps.length).toBeGreaterThan(0));

  test.each(snaps.map((f) => [f.name, f] as const))('%s: held root, explicit block, live vs snapshot', async (name, f) => {
    const img = fixtureImage(name);
    await using live = await ThinMetadata.fromBuffer(img);
    await using snap = await ThinMetadata.fromBuffer(img, { metadataSnap: true });
    expect(snap.metadataSnap).toBe(f.heldRoot);
    expect(snap.superblock.location).toBe(f.heldRoot);
    expect(snap.superblock.transactionId).toBe(BigInt(f.held!.transaction));
    expect(live.superblock.transactionId).toBe(BigInt(f.transaction));
    expect((await snap.devices()).size).toBe(f.held!.devices);
    // The snapshot copy has no space maps: sizes come from the live superblock.
    expect(snap.superblock.dataSpaceMap.nrBlocks).toBe(0);
    expect(snap.nrDataBlocks).toBe(f.nrDataBlocks);
    await using byBlock = await ThinMetadata.fromBuffer(img, { metadataSnap: f.heldRoot });
    expect(byBlock.metadataSnap).toBe(f.heldRoot);
    await expect(ThinMetadata.fromBuffer(img, { metadataSnap: f.heldRoot! + 1 })).rejects.toMatchObject({
      name: 'MetadataSnapError',
      code: 'EINVAL',
    });
  });

  test('no held snapshot: ENODATA', async () => {
    const err = await ThinMetadata.fromBuffer(fixtureImage('basic'), { metadataSnap: true }).catch((e) => e);
    expect(err).toBeInstanceOf(MetadataSnapError);
    expect(err).toMatchObject({ code: 'ENODATA', errno: -61 });
  });

  test('bad metadataSnap values are usage errors', async () => {
    await expect(ThinMetadata.fromBuffer(fixtureImage('basic'), { metadataSnap: -3 })).rejects.toMatchObject({ code: 'EINVAL', name: 'UsageError' });
  });
});

describe('resources, cancellation, progress', () => {
  test('await using closes the metadata (and its file)', async () => {
    using f = fixtureFile('range-merge');
    let kept: ThinMetadata | undefined;
    {
      await using md = await ThinMetadata.open(f.path);
      kept = md;
      expect((await md.devices()).size).toBe(1);
    }
    await expect(kept!.devices()).rejects.toMatchObject({ code: 'EBADF' });
  });

  test('a regular-file image is read through the page cache unless O_DIRECT is asked for', async () => {
    using f = fixtureFile('range-merge');
    {
      await using md = await ThinMetadata.open(f.path);
      expect((md.io as NativeBlockSource).direct).toBe(false);
      expect((await md.devices()).size).toBe(1);
    }
    await using md = await ThinMetadata.open(f.path, { direct: 'always' });
    expect((md.io as NativeBlockSource).direct).toBe(true);
  });

  test('an aborted walk stops with AbortError', async () => {
    await using md = await ThinMetadata.fromBuffer(fixtureImage('deep-tree'));
    const [dev] = (await md.devices()).keys();
    const ac = new AbortController();
    let runs = 0;
    const err = await (async () => {
      for await (const _ of md.mappings(dev, { signal: ac.signal })) {
        if (++runs === 10) ac.abort();
      }
    })().catch((e) => e);
    expect(err).toBeInstanceOf(AbortError);
    expect(err).toMatchObject({ code: 'ABORT_ERR' });
    const pre = AbortSignal.abort();
    await expect(dump(md, new Writable({ write: (_c, _e, cb) => cb() }), { signal: pre })).rejects.toBeInstanceOf(AbortError);
  });

  test('an already-aborted signal stops a short delta too, before it yields (it used to look at the signal every 1024 steps only: outside hunt)', async () => {
    await using md = await ThinMetadata.fromBuffer(fixtureImage('basic'));
    const ids = [...(await md.devices()).keys()];
    const pre = AbortSignal.abort();
    const drain = async (it: AsyncIterable<unknown>): Promise<number> => {
      let n = 0;
      for await (const _ of it) n++;
      return n;
    };
    expect(await drain(md.delta(ids[0], ids[ids.length - 1]))).toBeGreaterThan(0);
    await expect(drain(md.delta(ids[0], ids[ids.length - 1], { signal: pre }))).rejects.toBeInstanceOf(AbortError);
    const root = (await md.deviceRoots()).get(ids[0])!;
    await expect(drain(md.deltaOfRoots(root, root, { signal: pre }))).rejects.toBeInstanceOf(AbortError);
    await expect(writeDelta(md, new Writable({ write: (_c, _e, cb) => cb() }), { left: ids[0], right: ids[ids.length - 1] }, { signal: pre })).rejects.toBeInstanceOf(AbortError);
  });

  test('progress callbacks count up to the mappings walked', async () => {
    await using md = await ThinMetadata.fromBuffer(fixtureImage('deep-tree'));
    const seen: number[] = [];
    let total = 0;
    for (const id of (await md.devices()).keys()) {
      seen.length = 0;
      let n = 0;
      for await (const r of md.mappings(id, { onProgress: (p) => seen.push(p.mappings) })) n += r.length;
      total += n;
      expect(seen.length).toBeGreaterThan(1);
      expect([...seen].sort((a, b) => a - b)).toEqual(seen);
      expect(seen[seen.length - 1]).toBe(n);
    }
    expect(total).toBe(fixture('deep-tree').mappings);
  });

  test('the native and in-memory sources give the same dump', async () => {
    const collect = async (md: ThinMetadata) => {
      let s = '';
      await dump(md, new Writable({ write: (c, _e, cb) => ((s += c.toString()), cb()) }));
      return s;
    };
    using f = fixtureFile('deep-tree');
    await using a = await ThinMetadata.open(f.path);
    await using b = await ThinMetadata.open('x', { source: new MemoryBlockSource(fixtureImage('deep-tree')) });
    const [x, y] = [await collect(a), await collect(b)];
    expect(x.length).toBeGreaterThan(1e5);
    expect(x).toBe(y);
  });

  test('unknown device ids are ENODEV', async () => {
    await using md = await ThinMetadata.fromBuffer(fixtureImage('basic'));
    const err = await md.lookup(999, 0n).catch((e) => e);
    expect(err).toBeInstanceOf(DmthinError);
    expect(err).toMatchObject({ code: 'ENODEV' });
  });
});
