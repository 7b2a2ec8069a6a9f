/**
 * send() from a live pool, with the pool faked (no kernel here): the fake
 * reserves a "metadata snapshot" that opens a fixture image, and activating a
 * thin device makes a file holding that device's content appear in devDir,
 * as the kernel would make /dev/mapper/<name>. Checked: the metadata
 * snapshot is released before the data copy starts and after every failure,
 * a temporary device is removed after success, failure and abort (or left
 * to deferred removal), an already active device is used as is, and the
 * stream received equals the device. The real dm path runs in the VM suite.
 */
import { closeSync, existsSync, ftruncateSync, mkdirSync, openSync, readdirSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { Writable } from 'node:stream';
import { AbortError, UsageError } from '../../src/errors';
import { ThinPool } from '../../src/pool/thin-pool';
import { receive } from '../../src/ops/receive';
import { send } from '../../src/ops/send';
import { changedBlocks } from '../../src/pool/live-metadata';
import { ThinMetadata } from '../../src/thin/metadata';
import { fixtureImage } from '../helpers/fixtures';
import { expectedSha, patternBlock, scratch, sha256File, type Scratch } from './helpers';

const BS = 65536;
let s: Scratch;
beforeAll(() => (s = scratch()));
afterAll(() => s.cleanup());

interface Log {
  events: string[];
  reserved: number;
  released: number;
}

/** Writes what thin device `devId` reads as (the pattern of its data blocks) to `path`. */
async function materialize(image: Buffer, devId: number, path: string, bytes: number): Promise<void> {
  const md = await ThinMetadata.fromBuffer(image);
  const fd = openSync(path, 'w');
  ftruncateSync(fd, bytes);
  for await (const r of md.mappings(devId)) {
    for (let i = 0; i < r.length; i++) {
      const off = (Number(r.originBegin) + i) * BS;
      if (off < bytes) writeSync(fd, patternBlock(r.dataBegin + i, BS), 0, Math.min(BS, bytes - off), off);
    }
  }
  closeSync(fd);
  await md.close();
}

function fakePool(image: Buffer, o: { devDir: string; active?: { name: string; devId: number; bytes: number }; deferred?: boolean; uuid?: string }) {
  const log: Log = { events: [], reserved: 0, released: 0 };
  const dm = {
    devDir: o.devDir,
    // The devices there are: the active thin's (no temporary one a killed send left; see send-receive.vm).
    async listDevices() {
      return o.active ? [{ name: o.active.name, dev: { major: 253, minor: 5 } }] : [];
    },
    async table(name: string) {
      if (o.active && name === o.active.name) return [{ start: 0, length: o.active.bytes / 512, type: 'thin', params: `253:0 ${o.active.devId}` }];
      throw new Error(`no table for ${name}`);
    },
    async createWithTable(name: string, targets: { length: number; params: string }[], opts: { readOnly?: boolean }) {
      log.events.push(`activate ${name} ${targets[0].params} ro=${opts.readOnly}`);
      const devId = Number(targets[0].params.split(' ')[1]);
      await materialize(image, devId, `${o.devDir}/${name}`, targets[0].length * 512);
      return { name, dev: { major: 253, minor: 9 } };
    },
    async remove(name: string, opts: { deferred?: boolean } = {}) {
      log.events.push(`remove ${name}${opts.deferred ? ' deferred' : ''}`);
      if (opts.deferred) return { deferred: o.deferred === true };
      rmSync(`${o.devDir}/${name}`);
      return { deferred: false };
    },
  };
  const pool = {
    name: 'fake-pool',
    dev: { major: 253, minor: 0 },
    dm,
    async info() {
      return { uuid: o.uuid };
    },
    async activeThins() {
      return o.active ? [{ name: o.active.name, devId: o.active.devId, dev: { major: 253, minor: 5 } }] : [];
    },
    async reserveMetadataSnap() {
      log.reserved++;
      log.events.push('reserve');
      const release = async () => {
        log.released++;
        log.events.push('release');
      };
      return { open: () => ThinMetadata.fromBuffer(image), release, [Symbol.asyncDispose]: release };
    },
  };
  // ThinPool's own methods (changedBlocks) over the faked ones.
  Object.setPrototypeOf(pool, ThinPool.prototype);
  return { pool: pool as unknown as ThinPool, log };
}

/** A Writable collecting the stream that notes when its first byte arrived. */
function sink(log: Log): Writable & { chunks: Buffer[] } {
  const chunks: Buffer[] = [];
  const w = new Writable({
    write(c: Buffer, _e, cb) {
      if (chunks.length === 0) log.events.push('first byte out');
      chunks.push(c);
      cb();
    },
  });
  return Object.assign(w, { chunks });
}

const image = fixtureImage('shared-subtree');

test('temporary activation: snapshot released before the data copy, device removed after, content exact', async () => {
  const devDir = s.path('dev1');
  mkdirSync(devDir);
  const { pool, log } = fakePool(image, { devDir, uuid: 'POOL-xyz-tpool' });
  const out = sink(log);
  const summary = await send({ pool, snap: 3, output: out, deviceSize: 400 * BS });
  expect(log.events).toEqual([
    'reserve',
    'release', // before anything is streamed
    expect.stringMatching(/^activate dmthin-send-\d+-3-\w+ 253:0 3 ro=true$/),
    expect.stringMatching(/^remove dmthin-send-.* deferred$/), // refused by this "kernel": removed explicitly
    'first byte out',
    expect.stringMatching(/^remove dmthin-send-\d+-3-[0-9a-z]+$/), // explicit: no ' deferred' suffix
  ]);
  expect(readdirSync(devDir)).toEqual([]);
  expect(summary.dataBlocks).toBe(400);
  const file = s.path('pool3.stream');
  writeFileSync(file, Buffer.concat(out.chunks));
  const r = await receive({ target: s.path('pool3.target'), input: file, create: true });
  expect(r.header.target).toMatchObject({ pool: 'dm-uuid:POOL-xyz-tpool', devId: 3 });
  const md = await ThinMetadata.fromBuffer(image);
  expect(sha256File(s.path('pool3.target'))).toBe(await expectedSha(md, 3, 400 * BS));

  // Incremental 2 from 3 through the same path, onto that target.
  const { pool: pool2, log: log2 } = fakePool(image, { devDir, uuid: 'POOL-xyz-tpool' });
  const inc = s.path('pool2.stream');
  await send({ pool: pool2, snap: 2, base: 3, output: inc, deviceSize: 400 * BS });
  expect([log2.reserved, log2.released]).toEqual([1, 1]);
  await receive({ target: s.path('pool3.target'), input: inc });
  expect(sha256File(s.path('pool3.target'))).toBe(await expectedSha(md, 2, 400 * BS));
  await md.close();
});

test('an active snapshot device is read where it is, at its size; no activation', async () => {
  const devDir = s.path('dev2');
  mkdirSync(devDir);
  await materialize(image, 3, `${devDir}/vg-snap3`, 450 * BS);
  const { pool, log } = fakePool(image, { devDir, active: { name: 'vg-snap3', devId: 3, bytes: 450 * BS } });
  const out = sink(log);
  const summary = await send({ pool, snap: 3, output: out });
  expect(log.events.filter((e) => e.startsWith('activate') || e.startsWith('remove'))).toEqual([]);
  expect([log.reserved, log.released]).toEqual([1, 1]);
  expect(summary).toMatchObject({ dataBlocks: 400, discardBlocks: 50 });
  expect(existsSync(`${devDir}/vg-snap3`)).toBe(true);
});

test('deferred removal: the kernel removes the device when it is closed; send does not', async () => {
  const devDir = s.path('dev3');
  mkdirSync(devDir);
  const { pool, log } = fakePool(image, { devDir, deferred: true });
  await send({ pool, snap: 1, output: sink(log), deviceSize: 400 * BS });
  expect(log.events.filter((e) => e.startsWith('remove'))).toEqual([expect.stringMatching(/deferred$/)]);
});

test('failures and aborts: snapshot released, temporary device removed, output file removed', async () => {
  const devDir = s.path('dev4');
  mkdirSync(devDir);
  // A base that does not exist: fails during the walk.
  const a = fakePool(image, { devDir });
  await expect(send({ pool: a.pool, snap: 3, base: 77, output: s.path('x.stream'), deviceSize: 400 * BS })).rejects.toMatchObject({ code: 'ENODEV' });
  expect([a.log.reserved, a.log.released]).toEqual([1, 1]);
  expect(existsSync(s.path('x.stream'))).toBe(false);

  // Aborted while streaming data.
  const b = fakePool(image, { devDir });
  const ac = new AbortController();
  const out = s.path('y.stream');
  await expect(
    send({ pool: b.pool, snap: 1, output: out, deviceSize: 400 * BS, batchBytes: 1 << 20, signal: ac.signal, onProgress: (p) => p.phase === 'data' && p.dataBlocks > 32 && ac.abort() }),
  ).rejects.toBeInstanceOf(AbortError);
  expect([b.log.reserved, b.log.released]).toEqual([1, 1]);
  expect(b.log.events.at(-1)).toMatch(/^remove dmthin-send-/);
  expect(readdirSync(devDir)).toEqual([]);
  expect(existsSync(out)).toBe(false);

  // A consumer that fails.
  const c = fakePool(image, { devDir });
  const bad = new Writable({ write: (_c, _e, cb) => cb(new Error('disk full')) });
  await expect(send({ pool: c.pool, snap: 1, output: bad, deviceSize: 400 * BS })).rejects.toThrow('disk full');
  expect(readdirSync(devDir)).toEqual([]);
});

test('changedBlocks: the delta through a metadata snapshot held for the walk only', async () => {
  const { pool, log } = fakePool(image, { devDir: s.dir });
  const got = [];
  for await (const e of changedBlocks(pool, 1, 3)) got.push(e);
  expect(got.length).toBeGreaterThan(0);
  expect(got.every((e) => e.kind !== 'same')).toBe(true);
  expect([log.reserved, log.released]).toEqual([1, 1]);
  // Stopping early releases too.
  const { pool: p2, log: l2 } = fakePool(image, { devDir: s.dir });
  for await (const _ of changedBlocks(p2, 1, 3)) break;
  expect([l2.reserved, l2.released]).toEqual([1, 1]);
  // The method is the same walk; a failing walk (unknown device) releases too.
  const { pool: p3, log: l3 } = fakePool(image, { devDir: s.dir });
  const viaMethod = [];
  for await (const e of p3.changedBlocks(1, 3)) viaMethod.push(e);
  expect(viaMethod).toEqual(got);
  await expect(
    (async () => {
      for await (const _ of p3.changedBlocks(1, 999)) void _;
    })(),
  ).rejects.toMatchObject({ code: expect.any(String) });
  expect([l3.reserved, l3.released]).toEqual([2, 2]);
});

describe('sizes and LVM-managed pools', () => {
  const VG_UUID = 'aaaaaa-bbbb-cccc-dddd-eeee-ffff-gggggg'.replace(/-/g, '').padEnd(32, 'x');
  const LV_UUID = 'Pool01-hhhh-iiii-jjjj-kkkk-llll-mmmmmm'.replace(/-/g, '').padEnd(32, 'y');
  const LVM_UUID = `LVM-${VG_UUID}${LV_UUID}-tpool`;
  let savedPath: string | undefined;
  afterEach(() => {
    if (savedPath !== undefined) process.env.PATH = savedPath;
    savedPath = undefined;
  });

  /** An `lvs` on PATH that prints `rows` as lvs --reportformat json would. */
  function fakeLvs(rows: object[]): void {
    const dir = s.path(`lvs-${Math.random().toString(36).slice(2)}`);
    mkdirSync(dir);
    writeFileSync(`${dir}/lvs`, `#!/bin/sh\ncat <<'EOF'\n${JSON.stringify({ report: [{ lv: rows }] })}\nEOF\n`, { mode: 0o755 });
    savedPath = process.env.PATH;
    process.env.PATH = `${dir}:${process.env.PATH}`;
  }

  test('an inactive snapshot of a plain pool without a size is refused before anything is reserved or activated', async () => {
    const { pool, log } = fakePool(image, { devDir: s.dir });
    const e = await send({ pool, snap: 3, base: 1, output: sink(log) }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(UsageError);
    expect(e).toMatchObject({ code: 'EINVAL', devId: 3, option: 'deviceSize' });
    expect((e as Error).message).toMatch(/^thin device 3 of pool fake-pool is not active, so its size is unknown: activate it, or give its size in bytes/);
    expect((e as Error).message).toMatch(/lvs -o lv_size --units b/);
    expect((e as Error).message).not.toMatch(/--size/); // a library error names no dmthin flag
    expect(log.events).toEqual([]);
  });

  test('an inactive thin of an LVM pool is never activated: refused with the lvchange to run, even with a size', async () => {
    fakeLvs([
      { vg_name: 'vg0', lv_name: 'other', thin_id: '3', pool_lv_uuid: 'zz', vg_uuid: VG_UUID, lv_size: '1' },
      { vg_name: 'vg0', lv_name: 'snap3', thin_id: '3', pool_lv_uuid: LV_UUID, vg_uuid: VG_UUID, lv_size: String(400 * BS) },
    ]);
    const { pool, log } = fakePool(image, { devDir: s.dir, uuid: LVM_UUID });
    for (const deviceSize of [undefined, 400 * BS]) {
      const e = await send({ pool, snap: 3, output: sink(log), deviceSize }).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(UsageError);
      expect((e as Error).message).toMatch(/thin device 3 of LVM pool fake-pool is not active.*`lvchange -ay -K vg0\/snap3`/);
      expect(e).toMatchObject({ lv: 'vg0/snap3', devId: 3 });
    }
    expect(log.events).toEqual([]);
    // Without a matching LV (or without lvm2) the advice is generic.
    fakeLvs([]);
    const g = await send({ pool, snap: 3, output: sink(log), deviceSize: 400 * BS }).catch((x: unknown) => x);
    expect((g as Error).message).toMatch(/`lvchange -ay -K VG\/LV`.*lvs -o vg_name,lv_name,thin_id/);
    expect(log.events).toEqual([]);
  });

  test('an active thin of an LVM pool is read through the LV device, at its table size', async () => {
    const devDir = s.path('lvm-active');
    mkdirSync(devDir);
    await materialize(image, 3, `${devDir}/vg0-snap3`, 400 * BS);
    const { pool, log } = fakePool(image, { devDir, uuid: LVM_UUID, active: { name: 'vg0-snap3', devId: 3, bytes: 400 * BS } });
    const out = sink(log);
    const summary = await send({ pool, snap: 3, output: out });
    expect(summary).toMatchObject({ dataBlocks: 400, discardBlocks: 0 });
    expect(log.events.filter((e) => /^(activate|remove)/.test(e))).toEqual([]);
    // A size that contradicts the active device is refused, not trusted.
    const e = await send({ pool, snap: 3, output: sink(log), deviceSize: 399 * BS }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(UsageError);
    expect((e as Error).message).toMatch(/differs from the size of active thin device vg0-snap3 \(26214400 bytes\)/);
  });
});
