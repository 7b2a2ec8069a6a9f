/**
 * A caller's mistake at a library entry point is a UsageError (EINVAL) naming
 * the argument, before anything is opened: not a TypeError from deep inside,
 * not an I/O error of the output, not silently accepted (README "Errors").
 * And a caller's own callback that throws comes back as itself.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { Writable } from 'node:stream';
import * as d from '../../src';
import {
  backup,
  checkMetadata,
  dataBlocks,
  chunkSizeFor,
  deviceUsage,
  dump,
  receive,
  Repository,
  restore,
  rmap,
  sectors,
  send,
  ThinMetadata,
  ThinPool,
  thinPoolTarget,
  thinTarget,
  UsageError,
  writeDelta,
} from '../../src';
import { fixtureFile, fixtureImage, itOracle, largeImage } from '../helpers/fixtures';
import { scratch, writeDataFile } from '../stream/helpers';

const s = scratch();
afterAll(() => s.cleanup());
const sink = (): Writable => new Writable({ write: (_c, _e, cb) => cb() });

let S: { metadata: string; data: string; snap: number; deviceSize: number };
beforeAll(async () => {
  const img = fixtureImage('basic');
  const md = await ThinMetadata.fromBuffer(img);
  const bs = md.superblock.dataBlockSize * 512;
  await md.close();
  writeFileSync(s.path('m.bin'), img);
  await writeDataFile(img, s.path('data.bin'), bs);
  S = { metadata: s.path('m.bin'), data: s.path('data.bin'), snap: 1, deviceSize: 4096 * bs };
});

const usage = (message: RegExp) => expect.objectContaining({ name: 'UsageError', code: 'EINVAL', message: expect.stringMatching(message) });
// Found by an outside hunt: each gave a TypeError, EUNKNOWN, an EIO "cannot write the output", or was accepted.
const cases: [string, () => Promise<unknown>, RegExp][] = [
  ['send()', () => (send as (o?: unknown) => Promise<unknown>)(), /^send needs an options object/],
  ['send output undefined', () => send({ ...S, output: undefined as unknown as string }), /^output must be a path or a Writable/],
  ['send signal {}', () => send({ ...S, output: sink(), signal: {} as AbortSignal }), /^signal must be an AbortSignal, got a plain object/],
  ['send poolId 5', () => send({ ...S, output: sink(), poolId: 5 as unknown as string }), /^poolId must be a well-formed string/],
  ['send poolId with a lone surrogate', () => send({ ...S, output: sink(), poolId: '\ud800pool' }), /^poolId must be a well-formed string \(no lone surrogates\)/],
  ['receive()', () => (receive as (o?: unknown) => Promise<unknown>)(), /^receive needs an options object/],
  ['receive target undefined', () => receive({ target: undefined as unknown as string, input: S.metadata }), /^target must be a non-empty string, got undefined/],
  ['receive input undefined', () => receive({ target: s.path('t.img'), input: undefined as unknown as string, create: true }), /^input must be a path, '-' \(stdin\) or a Readable/],
  ['receive zero bogus', () => receive({ target: s.path('t.img'), input: S.metadata, create: true, zero: 'bogus' as 'auto' }), /^zero must be one of 'auto', 'discard', 'zeroout', 'punch', got "bogus"/],
  ['receive direct x', () => receive({ target: s.path('t.img'), input: S.metadata, create: true, direct: 'x' as 'auto' }), /^direct must be one of/],
  ['ThinMetadata.open(undefined)', () => ThinMetadata.open(undefined as unknown as string), /^path must be a non-empty string/],
  ["ThinMetadata.open(p, { direct: 'x' })", () => ThinMetadata.open(S.metadata, { direct: 'x' as 'auto' }), /^direct must be one of/],
  ['ThinPool.open(5)', () => ThinPool.open(5 as unknown as string), /^pool name must be a non-empty string/],
];


// Options of backup and restore, counts and sizes (outside review, hunt G item 3): restore took zero 'bogus' and punched
// holes, direct 'x' was EUNKNOWN, onProgress 'x' a TypeError, no backup/target ENOENT/ERR_INVALID_ARG_TYPE; backup without
// data EUNKNOWN (the native signature), without metadata "path"; negative or fractional counts were taken; scrypt N 3 a RangeError.
// An empty repository: each refusal comes before the backup is looked up (which would be ENOENT).
let R: { repo: string; backup: string };
beforeAll(async () => {
  const repo = s.path('repo');
  await (await Repository.create(repo)).close();
  R = { repo, backup: '20240101T000000Z-00000000' };
});
const restoreTo = (o: object) => restore({ ...R, target: s.path('r.img'), create: true, ...o } as Parameters<typeof restore>[0]);
const backupOf = (o: object) => backup({ repo: R.repo, volume: 'v', snap: S.snap, metadata: S.metadata, data: S.data, deviceSize: S.deviceSize, ...o });
const optionCases: [string, () => Promise<unknown>, RegExp][] = [
  ['restore zero bogus', () => restoreTo({ zero: 'bogus' }), /^zero must be one of 'auto', 'discard', 'zeroout', 'punch', got "bogus"/],
  ["restore direct 'x'", () => restoreTo({ direct: 'x' }), /^direct must be one of 'auto', 'always', 'never', got "x"/],
  ["restore onProgress 'x'", () => restoreTo({ onProgress: 'x' }), /^onProgress must be a function, got "x"/],
  ['restore without backup', () => restoreTo({ backup: undefined }), /^backup must be a non-empty string, got undefined/],
  ['restore without target', () => restoreTo({ target: undefined }), /^target must be a non-empty string, got undefined/],
  ['restore concurrency 0', () => restoreTo({ concurrency: 0 }), /^concurrency must be an integer of at least 1, got number 0/],
  ["backup onProgress 'x'", () => backupOf({ onProgress: 'x' }), /^onProgress must be a function, got "x"/],
  ['backup without data', () => backupOf({ data: undefined }), /^data must be a non-empty string, got undefined/],
  ['backup without metadata', () => backupOf({ metadata: undefined }), /^metadata must be a non-empty string, got undefined/],
  ['backup concurrency -1', () => backupOf({ concurrency: -1 }), /^concurrency must be an integer of at least 1, got number -1/],
  ['backup uploads 0', () => backupOf({ uploads: 0 }), /^uploads must be an integer of at least 1, got number 0/],
  ['backup batchBytes 1.5', () => backupOf({ batchBytes: 1.5 }), /^batchBytes must be an integer of at least 1, got number 1.5/],
  ['send batchBytes -1', () => send({ ...S, output: sink(), batchBytes: -1 }), /^batchBytes must be an integer of at least 1, got number -1/],
  ['checkMetadata maxProblems -1', async () => { await using md = await ThinMetadata.open(S.metadata); return checkMetadata(md, { maxProblems: -1 }); }, /^maxProblems must be an integer of at least 0, got number -1/],
  ['checkMetadata maxProblems 2.5', async () => { await using md = await ThinMetadata.open(S.metadata); return checkMetadata(md, { maxProblems: 2.5 }); }, /^maxProblems must be an integer of at least 0, got number 2.5/],
  ['chunkSizeFor(-1)', async () => chunkSizeFor(-1), /^blockBytes must be an integer of at least 1, got number -1/],
  ['thinPoolTarget(-5)', async () => thinPoolTarget(-5 as ReturnType<typeof sectors>, { metadataDev: '253:1', dataDev: '253:2', dataBlockSize: sectors(128), lowWaterMark: dataBlocks(0) }), /^length must be an integer of at least 1, got number -5/],
  ['thinTarget(1.5)', async () => thinTarget(1.5 as ReturnType<typeof sectors>, { poolDev: '253:3', devId: 1 }), /^length must be an integer of at least 1, got number 1.5/],
  ['Repository.create scrypt N 3', () => Repository.create(s.path('weak1'), { key: { passphrase: 'p' }, scrypt: { N: 3, r: 8, p: 1 } }), /^scrypt.N must be a power of two of at least 2\^14 \(16384\), got 3/],
  ['Repository.create scrypt N 2^13', () => Repository.create(s.path('weak2'), { key: { passphrase: 'p' }, scrypt: { N: 1 << 13, r: 8, p: 1 } }), /^scrypt.N must be a power of two of at least 2\^14/],
  ['Repository.create scrypt r 0', () => Repository.create(s.path('weak3'), { key: { passphrase: 'p' }, scrypt: { N: 1 << 14, r: 0, p: 1 } }), /^scrypt.r must be an integer of at least 1, got number 0/],
  ['Repository.create scrypt N 2^21 r 8 (2 GiB)', () => Repository.create(s.path('big1'), { key: { passphrase: 'p' }, scrypt: { N: 1 << 21, r: 8, p: 1 } }), /^scrypt takes 128·N·r bytes of memory, at most 1 GiB \(N·r at most 2\^23\), got N 2097152 and r 8/],
  ['Repository.create scrypt p 17', () => Repository.create(s.path('big2'), { key: { passphrase: 'p' }, scrypt: { N: 1 << 14, r: 8, p: 17 } }), /^scrypt.p must be at most 16, got 17/],
];
cases.push(...optionCases);

test('refused options touch nothing: no restore target, no repository', async () => {
  for (const [, call] of optionCases) await call().catch(() => undefined);
  expect([existsSync(s.path('r.img')), existsSync(s.path('weak1')), existsSync(s.path('weak2')), existsSync(s.path('weak3'))]).toEqual([false, false, false, false]);
});

// No options object, not an object, a required option missing, or a metadata argument that is not a ThinMetadata
// (outside review, hunt G items 1 and 2): each was a TypeError from inside (or ENODEV, or a path of "undefined").
const A = d as unknown as Record<string, (...a: unknown[]) => unknown>;
const drain = async (it: unknown): Promise<void> => {
  for await (const _ of it as AsyncIterable<unknown>);
};
const argumentCases: [string, () => Promise<unknown>, RegExp][] = [
  ['dump(path)', async () => A.dump(S.metadata, sink()), /^metadata must be a ThinMetadata, got "/],
  ['deviceUsage(null)', async () => A.deviceUsage(null), /^metadata must be a ThinMetadata, got null/],
  ['checkMetadata(null)', async () => A.checkMetadata(null), /^metadata must be a ThinMetadata, got null/],
  ['rmap(null)', () => drain(A.rmap(null, [{ begin: 0, end: 10 }])), /^metadata must be a ThinMetadata, got null/],
  ['writeDelta(null)', async () => A.writeDelta(null, sink(), { left: 1, right: 2 }), /^metadata must be a ThinMetadata, got null/],
  ['offlinePoolId(null)', async () => A.offlinePoolId(null, 1), /^metadata must be a ThinMetadata, got null/],
  ['sendStream()', async () => A.sendStream(), /^sendStream needs an options object, got undefined/],
  ['sendStream({metadata: path})', async () => A.sendStream({ metadata: S.metadata, snap: 1, source: {}, deviceSize: 65536 }), /^metadata must be a ThinMetadata, got "/],
  ['dump(md, null)', async () => { await using md = await ThinMetadata.open(S.metadata); return A.dump(md, null); }, /^out must be a Writable \(with write, on\), got null/],
  ['dump(md, {})', async () => { await using md = await ThinMetadata.open(S.metadata); return A.dump(md, {}); }, /^out must be a Writable \(with write, on\), got a plain object/],
  ['writeDelta(md, {})', async () => { await using md = await ThinMetadata.open(S.metadata); return A.writeDelta(md, {}, { left: 1, right: 1 }); }, /^out must be a Writable/],
  ['ThinMetadata.open(p, {source: {}})', () => ThinMetadata.open(S.metadata, { source: {} as never }), /^source must be a BlockSource \(with read, close\), got a plain object/],
  ['restore()', async () => A.restore(), /^restore needs an options object, got undefined/],
  ['restore(null)', async () => A.restore(null), /^restore needs an options object, got null/],
  ['restore({})', async () => A.restore({}), /^repo must be a non-empty string or a Repository, got undefined/],
  ['backup()', async () => A.backup(), /^backup needs an options object, got undefined/],
  ['backup without repo', async () => A.backup({ volume: 'v', snap: 1, metadata: S.metadata, data: S.data, deviceSize: S.deviceSize }), /^repo must be a non-empty string or a Repository, got undefined/],
  ['prune()', async () => A.prune(), /^prune needs an options object, got undefined/],
  ['prune({keepLast: 1})', async () => A.prune({ keepLast: 1 }), /^repo must be a non-empty string or a Repository, got undefined/],
  ['replicate().next()', async () => (A.replicate() as AsyncGenerator).next(), /^replicate needs an options object, got undefined/],
  ['mergeSnapshot()', async () => A.mergeSnapshot(), /^pool must be a non-empty string or a ThinPool, got undefined/],
  ["mergeSnapshot('pool')", async () => A.mergeSnapshot('pool'), /^mergeSnapshot needs an options object, got undefined/],
  ["mergeIntoExternalOrigin('pool')", async () => A.mergeIntoExternalOrigin('pool'), /^mergeIntoExternalOrigin needs an options object, got undefined/],
  ['ThinPool.create()', async () => (ThinPool.create as (o?: unknown) => unknown)(), /^ThinPool.create needs an options object, got undefined/],
  ['ThinDevice.activate()', async () => (d.ThinDevice.activate as (...a: unknown[]) => unknown)(), /^pool must be a ThinPool, got undefined/],
  ['withMetadataSnapshot()', async () => A.withMetadataSnapshot(), /^pool must be a ThinPool, got undefined/],
  ["changedBlocks('pool')", async () => drain(A.changedBlocks('pool', 1, 2)), /^pool must be a ThinPool, got "pool"/],
  ['NativeDataSource.open()', async () => (d.NativeDataSource.open as (...a: unknown[]) => unknown)(), /^path must be a non-empty string, got undefined/],
  ['NativeDataSource.open(p)', async () => (d.NativeDataSource.open as (...a: unknown[]) => unknown)(S.data), /^NativeDataSource.open needs an options object, got undefined/],
  ['createKeyFile()', async () => A.createKeyFile(), /^path must be a non-empty string, got undefined/],
  ['defaultStateFile()', async () => A.defaultStateFile(), /^target must be a non-empty string, got undefined/],
  ['defaultRestoreStateFile()', async () => A.defaultRestoreStateFile(), /^target must be a non-empty string, got undefined/],
  ['defaultReplicateStateFile()', async () => A.defaultReplicateStateFile(), /^poolName must be a non-empty string, got undefined/],
  ["defaultReplicateStateFile('p', -1)", async () => A.defaultReplicateStateFile('p', -1), /^thin must be an integer of at least 0, got number -1/],
  ['selectKept([], undefined)', async () => A.selectKept([], undefined), /^selectKept needs an options object, got undefined/],
  ['selectKept(null, {keepLast: 1})', async () => A.selectKept(null, { keepLast: 1 }), /^backups must be an array/],
  ['parseThinPoolStatus()', async () => A.parseThinPoolStatus(), /^the line to parse must be a string, got undefined/],
  ['parseThinStatus(5)', async () => A.parseThinStatus(5), /^the line to parse must be a string, got number/],
  ['parseThinTable(null)', async () => A.parseThinTable(null), /^the line to parse must be a string, got null/],
  ['parsePoolMessage()', async () => A.parsePoolMessage(), /^text must be a non-empty string, got undefined/],
  ['thinPoolTarget(10, null)', async () => A.thinPoolTarget(10, null), /^thinPoolTarget needs an options object, got null/],
  ['devPathOf(null)', async () => A.devPathOf(null), /^a device number must be \{ major, minor \}, got null/],
  ["devPathOf('1:3')", async () => A.devPathOf('1:3'), /^a device number must be \{ major, minor \}, got "1:3"/],
];
cases.push(...argumentCases);

test.each(cases)('%s: UsageError naming the argument', async (_name, call, message) => {
  await expect(call()).rejects.toEqual(usage(message));
  await expect(call()).rejects.toBeInstanceOf(UsageError);
});

// The walks' own options (outside review): onProgress 5 was a TypeError once the walk ran, signal {} was taken silently,
// mappings(1, null) a TypeError from inside.
describe('walk entry points check their options', () => {
  const walks: [string, (md: ThinMetadata, o: unknown) => Promise<unknown>][] = [
    ['md.mappings', async (md, o) => { for await (const _ of md.mappings(1, o as undefined)); }],
    ['md.delta', async (md, o) => { for await (const _ of md.delta(1, 1, o as undefined)); }],
    ['md.devices', (md, o) => md.devices(o as undefined)],
    ['dump', (md, o) => dump(md, sink(), o as undefined)],
    ['writeDelta', (md, o) => writeDelta(md, sink(), { left: 1, right: 1 }, o as undefined)],
    ['deviceUsage', (md, o) => deviceUsage(md, o as undefined)],
    ['rmap', async (md, o) => { for await (const _ of rmap(md, [{ begin: 0, end: 10 }], o as undefined)); }],
  ];
  test.each(walks)('%s', async (_name, walk) => {
    using f = fixtureFile('basic');
    await using md = await ThinMetadata.open(f.path);
    await expect(walk(md, { onProgress: 5 })).rejects.toEqual(usage(/^onProgress must be a function, got number 5/));
    await expect(walk(md, { signal: {} })).rejects.toEqual(usage(/^signal must be an AbortSignal, got a plain object/));
    await expect(walk(md, { signal: 'x' })).rejects.toEqual(usage(/^signal must be an AbortSignal, got "x"/));
    await expect(walk(md, 7)).rejects.toEqual(usage(/options must be an object, got number 7/));
    await expect(walk(md, null)).resolves.not.toThrow(); // null is no options, as Node's own APIs take it
  });
});

// An abort was seen a batch later: delta yielded 63,871 more extents, rmap 49,992 more runs (outside review).
itOracle('an abort stops md.mappings, md.delta and rmap at the next item', async () => {
  const img = largeImage(200_000);
  await using md = await ThinMetadata.open(img.path);
  const iters: [string, (signal: AbortSignal) => AsyncIterable<unknown>][] = [
    ['mappings', (signal) => md.mappings(4, { signal })],
    ['delta', (signal) => md.delta(1, 4, { signal })],
    ['rmap', (signal) => rmap(md, [{ begin: 0, end: img.nrDataBlocks }], { signal })],
  ];
  for (const [name, iter] of iters) {
    const ac = new AbortController();
    let seen = 0;
    let after = 0;
    const e = await (async () => {
      for await (const _ of iter(ac.signal)) {
        if (ac.signal.aborted) after++;
        if (++seen === 10) ac.abort();
      }
    })().catch((x: unknown) => x);
    expect([name, (e as Error).name, after]).toEqual([name, 'AbortError', 0]);
    let all = 0;
    for await (const _ of iter(new AbortController().signal)) all++;
    expect(all).toBeGreaterThan(1000); // thousands more than the 10 before the abort: the test can tell
  }
});

test('checkMetadata with an onProgress that is not a function: UsageError', async () => {
  using f = fixtureFile('basic');
  await using md = await ThinMetadata.open(f.path);
  await expect(checkMetadata(md, { onProgress: 5 as unknown as () => void })).rejects.toEqual(usage(/^onProgress must be a function, got number 5/));
});

test("a caller's onProgress that throws: that error, not an output I/O error (into a Writable and into a file)", async () => {
  const mine = new RangeError('bug in my callback');
  const onProgress = (): void => {
    throw mine;
  };
  await expect(send({ ...S, output: sink(), onProgress })).rejects.toBe(mine);
  await expect(send({ ...S, output: s.path('x.stream'), onProgress })).rejects.toBe(mine);
});

test('poolState and reportFails given no status or report: UsageError naming what they take (outside hunt G: raw TypeErrors)', () => {
  expect(() => (d.poolState as (s: unknown) => unknown)(null)).toThrow(usage(/^status must be a ThinPoolStatus \(from parseThinPoolStatus or ThinPool.status\(\)\), got null/));
  expect(() => (d.reportFails as (r: unknown) => unknown)(undefined)).toThrow(usage(/^report must be a CheckReport \(from checkMetadata or openFailureReport\), got undefined/));
  expect(d.reportFails({ fatal: 0, nonFatal: 1 } as Parameters<typeof d.reportFails>[0], true)).toBe(false);
});

test('values no message can print (a Symbol, a bigint) and arguments of the wrong kind: UsageError naming them, never a raw TypeError (outside hunt O)', async () => {
  using f = fixtureFile('basic');
  await using md = await ThinMetadata.open(f.path);
  const sym = Symbol('x');
  const rejects = async (call: () => unknown, message: RegExp) => {
    await expect((async () => call())()).rejects.toEqual(usage(message));
  };
  await rejects(() => md.refCount(1n as unknown as 'data', 0), /^unknown space map bigint 1: it is 'data' or 'metadata'$/);
  await rejects(() => md.spaceMap(1n as unknown as 'data'), /^unknown space map bigint 1/);
  await rejects(() => ThinMetadata.open(f.path, { metadataSnap: sym as unknown as number }), /^metadataSnap must be true or a block number > 0, got symbol Symbol\(x\)$/);
  await rejects(() => md.deltaOfRoots(sym as unknown as number, 1).next(), /^left root must be a metadata block number 0\.\.\d+, got symbol Symbol\(x\)$/);
  await rejects(() => writeDelta(md, sink(), { left: sym as unknown as number, right: 1 }), /^the left device id must be an integer 0\.\.2\^53-1 given as a number, got symbol Symbol\(x\)$/);
  await rejects(() => writeDelta(md, sink(), { leftRoot: sym as unknown as number, rightRoot: 1 }), /^leftRoot must be an integer of at least 0, got symbol Symbol\(x\)$/);
  await rejects(() => rmap(md, [{ begin: sym as unknown as number, end: 10 }]).next(), /^bad data-block region symbol Symbol\(x\)\.\.number 10/);
  await rejects(() => rmap(md, [{ begin: 0, end: 10 }], { runsInMemory: 4 }).next(), /^runsInMemory must be an integer of at least 16, got number 4$/);
  for (const w of [0, -5, NaN, 'x', Infinity]) {
    await rejects(() => md.delta(1, 1, { window: w as number }).next(), /^window must be an integer of at least 1/);
  }
  expect(() => d.openFailureReport(undefined as unknown as d.DmthinError)).toThrow(usage(/^openFailureReport error \(what ThinMetadata.open threw\) must be a DmthinError, got undefined$/));
  expect(() => d.reportFails({} as d.CheckReport)).toThrow(usage(/^report\.fatal \(report must be a CheckReport/));
  expect(() => d.reportFails({ fatal: 0, nonFatal: 1 } as d.CheckReport, 'no' as unknown as boolean)).toThrow(usage(/^ignoreNonFatalErrors must be true or false, got "no"$/));
  await rejects(() => ThinMetadata.fromBuffer(fixtureImage('basic'), 42 as unknown as object), /^ThinMetadata\.fromBuffer options must be an object, got number 42$/);
  await rejects(() => dump(md, sink(), { format: 'json', skipMappings: 1 as unknown as boolean }), /^skipMappings must be true or false, got number 1$/);
  await expect(ThinMetadata.fromBuffer(Buffer.alloc(1000))).rejects.toMatchObject({ kind: 'truncated', message: '<memory> is 1000 bytes: too small to hold a superblock' });
});

test("receive's boolean options and BlockWriter's ranges are checked (outside hunt S: force 'yes' was taken as false; zeroOut(-512) was EUNKNOWN with the addon's signature as its message)", async () => {
  for (const k of ['force', 'resized', 'create'] as const) {
    await expect(receive({ target: '/nonexistent/t', input: '/nonexistent/s', [k]: 'yes' as unknown as boolean })).rejects.toEqual(usage(new RegExp(`^${k} must be true or false, got "yes"$`)));
  }
  const s = scratch();
  try {
    const file = s.path('w.img');
    writeFileSync(file, Buffer.alloc(4096));
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { BlockWriter } = require('../../src/native/block-writer') as typeof import('../../src/native/block-writer');
    await using w = await BlockWriter.open(file, { direct: 'never' });
    await expect(w.zeroOut(-512, 512)).rejects.toEqual(usage(/^offset must be an integer of at least 0, got number -512$/));
    await expect(w.discard(0, 1.5)).rejects.toEqual(usage(/^length must be an integer of at least 0, got number 1\.5$/));
    await expect(w.extend(NaN)).rejects.toEqual(usage(/^size must be an integer of at least 0, got number NaN$/));
  } finally {
    s.cleanup();
  }
});

test('an already aborted signal rejects also where the answer is cached (outside hunt O)', async () => {
  using f = fixtureFile('basic');
  await using md = await ThinMetadata.open(f.path);
  await md.devices();
  await md.deviceTable();
  const signal = AbortSignal.abort();
  for (const call of [() => md.devices({ signal }), () => md.deviceRoots({ signal }), () => md.checkedDevices({ signal }), () => deviceUsage(md, { exclusive: false, signal })]) {
    await expect(call()).rejects.toMatchObject({ name: 'AbortError' });
  }
});

test('dump and writeDelta into an output nobody reads: the signal ends the wait with AbortError (outside hunt O: it hung)', async () => {
  using f = fixtureFile('basic');
  await using md = await ThinMetadata.open(f.path);
  const { PassThrough } = await import('node:stream');
  const t0 = Date.now();
  await expect(dump(md, new PassThrough({ highWaterMark: 16 }), { signal: AbortSignal.timeout(200) })).rejects.toMatchObject({ name: 'AbortError' });
  await expect(writeDelta(md, new PassThrough({ highWaterMark: 16 }), { left: 1, right: 1 }, { signal: AbortSignal.timeout(200), verbose: true })).rejects.toMatchObject({ name: 'AbortError' });
  // A write whose callback never comes: flush's wait for it ends too.
  const never = new Writable({ write: () => undefined });
  await expect(dump(md, never, { signal: AbortSignal.timeout(200) })).rejects.toMatchObject({ name: 'AbortError' });
  expect(Date.now() - t0).toBeLessThan(5000);
});

test("a device id that is not a number is named as what it is (outside hunt G: 'bad device id 1' for the string '1' and for 1n)", async () => {
  using f = fixtureFile('basic');
  await using md = await ThinMetadata.open(f.path);
  const walk = async (id: unknown) => {
    for await (const _ of md.mappings(id as number));
  };
  await expect(walk('1')).rejects.toEqual(usage(/^the device id must be an integer 0\.\.2\^53-1 given as a number, got "1"$/));
  await expect(walk(1n)).rejects.toEqual(usage(/got bigint 1n$/));
  await expect(walk(-1)).rejects.toEqual(usage(/got number -1$/));
  await expect((async () => {
    for await (const _ of md.delta(1, '2' as unknown as number));
  })()).rejects.toEqual(usage(/^the right device id must be an integer/));
});

test('outside hunt V: arguments that reached the addon or node:crypto, and options given as strings, are UsageErrors; a directory or a missing file as receive input is a SystemCallError naming it', async () => {
  // batchBytes beyond 1 GiB was a plain RangeError from the addon's buffer.
  await expect(send({ ...S, output: sink(), batchBytes: 2 ** 31 })).rejects.toEqual(usage(/^batchBytes must be at most 1073741824 \(1 GiB\), got 2147483648$/));
  // NativeDataSource.readBlocks: EUNKNOWN from the addon before.
  await using src = await d.NativeDataSource.open(S.data, { addressing: 'data' });
  await expect(src.readBlocks(65536, [-1])).rejects.toEqual(usage(/^block numbers must be integers of at least 0, got number -1$/));
  await expect(src.readBlocks(100, [0])).rejects.toEqual(usage(/^unitBytes must be a positive multiple of 512, got number 100$/));
  await expect(src.readBlocks(65536, Array.from({ length: 20_000 }, (_, i) => i))).rejects.toEqual(usage(/more than 1 GiB/));
  expect((await src.readBlocks(512, [0, 1])).length).toBe(1024);
  // chunkId: null was node:crypto's TypeError, a string was hashed as UTF-8.
  await using repo = await Repository.create(s.path(`repo-${Date.now()}`));
  for (const v of [null, 'abc', 5]) expect(() => repo.chunkId(v as unknown as Uint8Array)).toThrow(usage(/^chunkId needs the chunk's bytes \(a Buffer or Uint8Array\)/));
  // Booleans given as strings were taken (exclusive: 'no' computed EXCLUSIVE).
  await using md = await ThinMetadata.open(S.metadata);
  await expect(checkMetadata(md, { superblockOnly: 'yes' as unknown as boolean })).rejects.toEqual(usage(/^superblockOnly must be true or false, got "yes"$/));
  await expect(checkMetadata(md, { skipMappings: 1 as unknown as boolean })).rejects.toEqual(usage(/^skipMappings must be true or false, got number 1$/));
  await expect(deviceUsage(md, { exclusive: 'no' as unknown as boolean })).rejects.toEqual(usage(/^exclusive must be true or false, got "no"$/));
  await expect(ThinMetadata.open(S.metadata, { exclusive: 'yes' as unknown as boolean })).rejects.toEqual(usage(/^exclusive must be true or false, got "yes"$/));
  // receive's input: a directory gave Node's raw EISDIR without a path; a missing file a DmthinError with Node's message.
  await expect(receive({ target: s.path('t-dir.img'), input: s.dir, create: true })).rejects.toMatchObject({ name: 'SystemCallError', code: 'EISDIR', path: s.dir, message: expect.stringMatching(/is a directory, not a stream/) });
  await expect(receive({ target: s.path('t-dir.img'), input: s.path('none'), create: true })).rejects.toMatchObject({
    name: 'SystemCallError',
    code: 'ENOENT',
    message: `cannot open ${s.path('none')} for reading: no such file or directory`,
  });
});

test('outside hunt V (7): writeDelta given both kinds of subject, and deleteBackups given one id as a string, are UsageErrors (one subject was taken silently; the string was iterated character by character)', async () => {
  await using md = await ThinMetadata.open(S.metadata);
  await expect(writeDelta(md, sink(), { left: 1, right: 1, leftRoot: 3, rightRoot: 4 } as never)).rejects.toEqual(usage(/^writeDelta takes a subject of \{left, right\} thin device ids or of \{leftRoot, rightRoot\}, not both$/));
  await using repo = await Repository.create(s.path(`repo-del-${Date.now()}`));
  await expect(repo.deleteBackups('20260101T000000Z-00000000' as never)).rejects.toEqual(usage(/^deleteBackups needs an array of backup ids, got "20260101T000000Z-00000000"$/));
});
