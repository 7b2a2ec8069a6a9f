/**
 * Everything a receive must refuse, and what it must leave behind when it
 * does: a typed error, the target byte-identical to before, the state file
 * unchanged, no spool file and no lock file. Plus what happens when an apply is
 * interrupted, and --force.
 */
import { existsSync, linkSync, mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import fc from 'fast-check';
import { AbortError, DmthinError, StreamError, SystemCallError, UsageError } from '../../src/errors';
import { BlockWriter } from '../../src/native/block-writer';
import { receive } from '../../src/ops/receive';
import { sendStream } from '../../src/stream/send/send-stream';
import { crc32cOf, RECORD_HEADER_SIZE } from '../../src/stream/format/records';
import { ThinMetadata } from '../../src/thin/metadata';
import { fixtureImage } from '../helpers/fixtures';
import { expectedSha, junkFile, PatternSource, scratch, sha256File, type Scratch } from './helpers';

const BS = 65536;
const SIZE = 210 * BS; // metadata-snap-diverged (held): devices 1, 2, 3, 5 all end below block 210

let s: Scratch;
let md: ThinMetadata;
const streams: Record<string, Buffer> = {};

async function make(snap: number, base?: number, size = SIZE, formatVersion?: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of sendStream({ metadata: md, snap, base, source: new PatternSource(BS), deviceSize: size, poolId: 'p', formatVersion })) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

beforeAll(async () => {
  s = scratch();
  md = await ThinMetadata.fromBuffer(fixtureImage('metadata-snap-diverged'), { metadataSnap: true });
  streams.full1 = await make(1);
  streams.full2 = await make(2);
  streams.inc2from1 = await make(2, 1);
  streams.inc3from2 = await make(3, 2);
  streams.inc3from1 = await make(3, 1);
});
afterAll(async () => {
  await md.close();
  s.cleanup();
});

let n = 0;
/** A target holding device 1 (received in full), or junk with no state. */
async function target(kind: 'dev1' | 'junk', size = SIZE): Promise<string> {
  const t = s.path(`t${n++}`);
  junkFile(t, size, n);
  if (kind === 'dev1') await receive({ target: t, input: Readable.from([streams.full1]) });
  return t;
}

function snapshotOf(t: string): { data: string; state: string | null } {
  const sf = `${t}.dmthin-state.json`;
  return { data: sha256File(t), state: existsSync(sf) ? readFileSync(sf, 'utf8') : null };
}

const spoolDir = (): string => {
  const d = s.path('spool');
  if (!existsSync(d)) mkdirSync(d);
  return d;
};

/** Receives `bytes` (from a file in place, or piped through the spool) and expects a refusal that changes nothing. */
async function refused(t: string, bytes: Buffer, how: 'file' | 'pipe', extra: object = {}): Promise<DmthinError> {
  const before = snapshotOf(t);
  const input = how === 'file' ? s.path(`in${n++}`) : Readable.from([bytes.subarray(0, bytes.length >> 1), bytes.subarray(bytes.length >> 1)]);
  if (typeof input === 'string') writeFileSync(input, bytes);
  let err: unknown;
  try {
    await receive({ target: t, input, spoolDir: spoolDir(), ...extra });
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(DmthinError);
  expect(snapshotOf(t)).toEqual(before);
  expect(readdirSync(spoolDir())).toEqual([]);
  // Nothing keeps the target open (an O_EXCL open of a device would then fail with EBUSY).
  expect(openFdsOn(t)).toEqual([]);
  // Nor is its lock file left beside it.
  expect(existsSync(`${t}.dmthin-state.json.lock`)).toBe(false);
  return err as DmthinError;
}

/** This process's descriptors open on `path`. */
function openFdsOn(path: string): string[] {
  return readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === path;
    } catch {
      return false;
    }
  });
}

describe.each(['file', 'pipe'] as const)('input through a %s', (how) => {
  test('an incremental stream whose base the target does not hold', async () => {
    const t = await target('dev1');
    const e = await refused(t, streams.inc3from2, how);
    expect(e).toBeInstanceOf(StreamError);
    expect(e).toMatchObject({ reason: 'base-mismatch', code: 'ESTALE', errno: -116 });
    expect(e.message).toMatch(/against device 2 .* the target holds device 1/);
  });

  test('the incremental stream the target already holds, sent again, is accepted; another one against the old base is not', async () => {
    // A sender that lost the confirmation (killed after the receiver finished) sends the same stream again.
    const t = await target('dev1');
    const input = () => (how === 'file' ? (writeFileSync(s.path(`in${n}`), streams.inc2from1), s.path(`in${n++}`)) : Readable.from([streams.inc2from1]));
    await receive({ target: t, input: input(), spoolDir: spoolDir() });
    const once = sha256File(t);
    expect(once).toBe(await expectedSha(md, 2, SIZE));
    await receive({ target: t, input: input(), spoolDir: spoolDir() });
    expect(sha256File(t)).toBe(once);
    expect(await refused(t, streams.inc3from1, how)).toMatchObject({ reason: 'base-mismatch' });
  });

  test('an incremental stream on a target with no recorded state', async () => {
    const t = await target('junk');
    expect(await refused(t, streams.inc2from1, how)).toMatchObject({ reason: 'base-mismatch' });
  });

  test('a stream cut short anywhere', async () => {
    const t = await target('dev1');
    const full = streams.inc2from1;
    const firstData = RECORD_HEADER_SIZE + full.readUInt32LE(8);
    for (const cut of [0, 1, 23, 24, 100, firstData, firstData + 30, firstData + 5000, full.length - 96, full.length - 1]) {
      const e = await refused(t, full.subarray(0, cut), how);
      expect([cut, (e as StreamError).reason]).toEqual([cut, 'truncated']);
    }
  });

  test('a target smaller than the device', async () => {
    const t = await target('junk', SIZE - 512);
    expect(await refused(t, streams.full1, how)).toMatchObject({
      reason: 'target-size',
      code: 'ENOSPC',
      targetSize: SIZE - 512,
      deviceSize: SIZE,
      message: expect.stringContaining(`the stream's device is ${SIZE} bytes: option create grows the file, or give a target of at least ${SIZE} bytes`),
    });
  });

  test('trailing bytes, another format version, not a stream at all', async () => {
    const t = await target('dev1');
    expect(await refused(t, Buffer.concat([streams.inc2from1, Buffer.from('x')]), how)).toMatchObject({ reason: 'trailing' });
    const v5 = Buffer.from(streams.inc2from1);
    const len = v5.readUInt32LE(8);
    v5.writeUInt32LE(5, RECORD_HEADER_SIZE + 8); // a version this build does not read
    v5.writeUInt32LE(crc32cOf([v5.subarray(0, 20), v5.subarray(RECORD_HEADER_SIZE, RECORD_HEADER_SIZE + len)]), 20);
    expect(await refused(t, v5, how)).toMatchObject({ reason: 'version', code: 'EPROTONOSUPPORT' });
    expect(await refused(t, Buffer.from('#!/bin/sh\necho not a stream\n'), how)).toMatchObject({ reason: 'magic' });
  });
});

test('flipped bytes anywhere: refused, target untouched', async () => {
  const t = await target('dev1');
  const before = snapshotOf(t);
  const inc = streams.inc2from1;
  await fc.assert(
    fc.asyncProperty(fc.nat({ max: inc.length - 1 }), fc.integer({ min: 1, max: 255 }), fc.boolean(), async (pos, x, pipe) => {
      const bad = Buffer.from(inc);
      bad[pos] ^= x;
      const e = await refused(t, bad, pipe ? 'pipe' : 'file');
      expect(e).toBeInstanceOf(StreamError);
    }),
    { numRuns: 80 },
  );
  // Also across the much longer full stream, fewer runs.
  await fc.assert(
    fc.asyncProperty(fc.nat({ max: streams.full2.length - 1 }), async (pos) => {
      const bad = Buffer.from(streams.full2);
      bad[pos] ^= 0x80;
      expect(await refused(t, bad, 'file')).toBeInstanceOf(StreamError);
    }),
    { numRuns: 20 },
  );
  expect(snapshotOf(t)).toEqual(before);
});

test('a byte range repeated or left out anywhere: refused, target untouched', async () => {
  // Flips keep every offset; these shift all that follows (a resent or lost
  // piece of a pipe or a file copy), so records land where the decoder
  // expects a header.
  const t = await target('dev1');
  const before = snapshotOf(t);
  for (const src of [streams.inc2from1, streams.full2]) {
    await fc.assert(
      fc.asyncProperty(fc.nat({ max: src.length - 1 }), fc.integer({ min: 1, max: 8192 }), fc.boolean(), fc.boolean(), async (pos, len, repeat, pipe) => {
        const bad = repeat
          ? Buffer.concat([src.subarray(0, pos + len), src.subarray(pos)])
          : Buffer.concat([src.subarray(0, pos), src.subarray(pos + len)]);
        expect(await refused(t, bad, pipe ? 'pipe' : 'file')).toBeInstanceOf(StreamError);
      }),
      { numRuns: 30 },
    );
  }
  expect(snapshotOf(t)).toEqual(before);
});

test('a missing target is not created unless asked', async () => {
  const t = s.path('missing');
  await expect(receive({ target: t, input: Readable.from([streams.full1]) })).rejects.toMatchObject({ code: 'ENOENT' });
  expect(existsSync(t)).toBe(false);
  expect(existsSync(`${t}.dmthin-state.json`)).toBe(false);
  const r = await receive({ target: t, input: Readable.from([streams.full1]), create: true });
  expect(r.created).toBe(true);
  expect(sha256File(t)).toBe(await expectedSha(md, 1, SIZE));
});

test('a state path ending in / (no such directory): refused before anything is made (found by an outside hunt: the directory was made, then a false "exists and is not a regular file")', async () => {
  const t = s.path('slash-target');
  const st = s.path('slash-state') + '/';
  await expect(receive({ target: t, input: Readable.from([streams.full1]), create: true, stateFile: st })).rejects.toMatchObject({
    name: 'UsageError',
    message: expect.stringMatching(/^the receive state file .*slash-state\/ ends in \/, which names a directory: give the path of a file for it$/),
  });
  expect(existsSync(t)).toBe(false);
  expect(existsSync(s.path('slash-state'))).toBe(false);
  // The lock every job takes beside its state refuses the same (merge and replicate reach it with their own state paths).
  const { JobLock } = await import('../../src/native/job-lock');
  expect(() => new JobLock('merge').lockStateFile(st, () => 'busy')).toThrow(/^the merge state file .*slash-state\/ ends in \/, which names a directory/);
  expect(existsSync(s.path('slash-state'))).toBe(false);
});

test('an unreadable state file refuses incremental streams, not full ones', async () => {
  const t = await target('dev1');
  writeFileSync(`${t}.dmthin-state.json`, '{ not json');
  await refused(t, streams.inc2from1, 'file');
  await receive({ target: t, input: Readable.from([streams.full2]) });
  await receive({ target: t, input: Readable.from([streams.inc3from2]) });
  expect(sha256File(t)).toBe(await expectedSha(md, 3, SIZE));
});

test('--force applies an incremental stream whatever the state says', async () => {
  const t = await target('junk');
  await receive({ target: t, input: Readable.from([streams.full2]) });
  await refused(t, streams.inc3from1, 'pipe');
  // Forced onto device 2 the result is not device 3 (it assumed device 1): that is what --force means.
  const r = await receive({ target: t, input: Readable.from([streams.inc3from2]), force: true });
  expect(r.header.target.devId).toBe(3);
  expect(sha256File(t)).toBe(await expectedSha(md, 3, SIZE));
});

test('an interrupted apply leaves the target marked inconsistent until that stream or a full one is applied', async () => {
  const big = await make(1, undefined, 400 * BS); // a 2.9 MiB stream, its data in one record
  const bigInc = await make(2, 1, 400 * BS);
  const t = s.path('interrupted');
  junkFile(t, 400 * BS, 99);
  const ac = new AbortController();
  const file = s.path('big.stream');
  writeFileSync(file, big);
  await expect(
    // Aborted once the last chunk is parsed: its records are written, the target not yet fsynced nor recorded as holding the stream.
    receive({ target: t, input: file, signal: ac.signal, onProgress: (p) => p.phase === 'apply' && p.bytes === p.totalBytes && ac.abort() }),
  ).rejects.toBeInstanceOf(AbortError);
  const state = JSON.parse(readFileSync(`${t}.dmthin-state.json`, 'utf8'));
  expect(state.current).toBeNull();
  expect(state.pending.snapshot.devId).toBe(1);
  // Half written: no incremental may follow.
  await refused(t, bigInc, 'file');
  // The same stream again completes it.
  await receive({ target: t, input: file });
  expect(sha256File(t)).toBe(await expectedSha(md, 1, 400 * BS));

  // An abort before the first write (device 2 from 1 starts with data records, still batched when it comes) changes nothing.
  const ac2 = new AbortController();
  await expect(
    receive({ target: t, input: Readable.from([bigInc]), signal: ac2.signal, onProgress: (p) => p.phase === 'apply' && ac2.abort() }),
  ).rejects.toBeInstanceOf(AbortError);
  const st1 = JSON.parse(readFileSync(`${t}.dmthin-state.json`, 'utf8'));
  expect([st1.current.snapshot.devId, st1.pending]).toEqual([1, null]);
  expect(sha256File(t)).toBe(await expectedSha(md, 1, 400 * BS));

  // Interrupted after a write (device 5 from 1 discards blocks 10..39 early on): marked pending.
  const inc5 = await make(5, 1, 400 * BS);
  const ac3 = new AbortController();
  await expect(
    receive({ target: t, input: Readable.from([inc5]), signal: ac3.signal, onProgress: (p) => p.phase === 'apply' && ac3.abort() }),
  ).rejects.toBeInstanceOf(AbortError);
  const st2 = JSON.parse(readFileSync(`${t}.dmthin-state.json`, 'utf8'));
  expect([st2.current.snapshot.devId, st2.pending.snapshot.devId, st2.pending.formatVersion]).toEqual([1, 5, 4]);
  // Another incremental from device 1 is refused, though its base is the "current" one.
  expect(await refused(t, bigInc, 'pipe')).toMatchObject({ reason: 'base-mismatch' });
  expect((await refused(t, bigInc, 'pipe')).message).toMatch(/interrupted/);
  // As the other format version (another digest for the same records) but of another size: not that stream.
  expect((await refused(t, await make(5, 1, 401 * BS, 1), 'file')).message).toMatch(/interrupted/);
  // The same records as format version 1 (a sender downgraded, retrying): its header has no mapping root, so it
  // cannot show that snapshot 5 was not written since the version-4 attempt: refused, not taken as the same stream.
  const inc5v1 = await make(5, 1, 400 * BS, 1);
  expect(inc5v1.readUInt32LE(RECORD_HEADER_SIZE + 8)).toBe(1);
  expect((await refused(t, inc5v1, 'pipe')).message).toMatch(/interrupted/);
  // The version-4 stream again completes it.
  await receive({ target: t, input: Readable.from([inc5]) });
  expect(sha256File(t)).toBe(await expectedSha(md, 5, 400 * BS));
  const st3 = JSON.parse(readFileSync(`${t}.dmthin-state.json`, 'utf8'));
  expect([st3.current.snapshot.devId, st3.current.formatVersion, st3.pending]).toEqual([5, 4, null]);
  // And again (the target holds what it carries: a sender that never saw the confirmation) it is taken too.
  await receive({ target: t, input: Readable.from([inc5]) });
  expect(sha256File(t)).toBe(await expectedSha(md, 5, 400 * BS));
  expect(JSON.parse(readFileSync(`${t}.dmthin-state.json`, 'utf8')).pending).toBeNull();
});

test('a stream of another format version is the same stream only when both carry the same mapping root: a version-4 stream after a version-3 receive is not (found by an outside hunt: taken as applied, exit 0, old content)', async () => {
  const t = s.path('crossver');
  junkFile(t, 400 * BS, 98);
  await receive({ target: t, input: Readable.from([await make(1, undefined, 400 * BS)]) });
  const inc5v3 = await make(5, 1, 400 * BS, 3);
  const inc5v4 = await make(5, 1, 400 * BS);
  // Interrupted after a write as version 3: marked pending, with no mapping root.
  const ac = new AbortController();
  await expect(
    receive({ target: t, input: Readable.from([inc5v3]), signal: ac.signal, onProgress: (p) => p.phase === 'apply' && ac.abort() }),
  ).rejects.toBeInstanceOf(AbortError);
  const st = JSON.parse(readFileSync(`${t}.dmthin-state.json`, 'utf8'));
  expect([st.pending.formatVersion, st.pending.mappingRoot]).toEqual([3, undefined]);
  // The version-4 stream of the same identity cannot show that snapshot 5 was not written since: not the retry.
  expect((await refused(t, inc5v4, 'pipe')).message).toMatch(/interrupted/);
  await receive({ target: t, input: Readable.from([inc5v3]) }); // the same version-3 stream completes it
  expect(sha256File(t)).toBe(await expectedSha(md, 5, 400 * BS));
  // Received as version 3, sent again as version 4: not "the stream the target holds" either (its base is not held).
  expect(await refused(t, inc5v4, 'file')).toMatchObject({ reason: 'base-mismatch' });
  // The version-3 stream again is (same digest).
  await receive({ target: t, input: Readable.from([inc5v3]) });
  expect(sha256File(t)).toBe(await expectedSha(md, 5, 400 * BS));
});

test('a file target that cannot grow (EFBIG) with create: nothing written, the receive state as it was, the chain goes on (found by an outside hunt: left pending, every incremental refused)', async () => {
  const t = await target('dev1');
  const before = snapshotOf(t);
  const bigger = await make(2, undefined, 2 * SIZE);
  const spy = jest.spyOn(BlockWriter.prototype, 'extend').mockRejectedValue(new SystemCallError('EFBIG', 'File too large', { syscall: 'ftruncate', path: t }));
  let e: unknown;
  try {
    e = await receive({ target: t, input: Readable.from([bigger]), create: true }).catch((x: unknown) => x);
  } finally {
    spy.mockRestore();
  }
  expect(e).toMatchObject({ code: 'EFBIG', message: expect.stringMatching(/^cannot grow the target .* to \d+ bytes, the stream's device size: its filesystem does not take a file that large; nothing was written and its receive state is as it was$/) });
  expect(snapshotOf(t)).toEqual(before);
  // Still device 1's target: the next incremental applies.
  await receive({ target: t, input: Readable.from([streams.inc2from1]) });
  expect(sha256File(t)).toBe(await expectedSha(md, 2, SIZE));
});

/** Flips a byte of the last data record's payload and seals the record's CRC again: only a digest of the whole stream sees it. */
function resealedChange(stream: Buffer): Buffer {
  const b = Buffer.from(stream);
  let off = 0;
  let lastData = -1;
  while (off < b.length) {
    const type = b.readUInt16LE(off + 4);
    const len = b.readUInt32LE(off + 8);
    if (type === 2) lastData = off;
    off += RECORD_HEADER_SIZE + len;
  }
  expect(lastData).toBeGreaterThan(0);
  const len = b.readUInt32LE(lastData + 8);
  b[lastData + RECORD_HEADER_SIZE + len - 1] ^= 0x5a; // a data byte, not the prefix
  const payload = b.subarray(lastData + RECORD_HEADER_SIZE, lastData + RECORD_HEADER_SIZE + len);
  b.writeUInt32LE(crc32cOf([b.subarray(lastData, lastData + 20), payload]), lastData + 20);
  return b;
}

test.each([
  [2, 'its keyed GMAC', /differs from the one verified before/],
  [3, 'its digest computed again', /^the input changed after it was verified: the stream's digest \(format version 3, docs\/stream-format\.md §6\) does not match the end record/],
])('format version %d: a change between the passes that keeps every record CRC valid is caught by the second pass (%s), nothing written', async (version, _how, message) => {
  const t = await target('dev1');
  const stateBefore = readFileSync(`${t}.dmthin-state.json`, 'utf8');
  const file = s.path(`resealed-v${version}.stream`);
  const stream = await make(2, 1, SIZE, version);
  expect(stream.readUInt32LE(RECORD_HEADER_SIZE + 8)).toBe(version);
  writeFileSync(file, stream);
  const changed = resealedChange(stream);
  // The resealed stream is whole record by record: only its digest is wrong.
  const alone = await receive({ target: await target('dev1'), input: Readable.from([changed]) }).catch((x: unknown) => x);
  expect(alone).toMatchObject({ reason: 'digest' });
  let swapped = false;
  const e = await receive({
    target: t,
    input: file,
    onProgress: (p) => {
      if (p.phase === 'verify' && p.bytes === stream.length && !swapped) {
        swapped = true;
        writeFileSync(file, changed); // same inode
      }
    },
  }).catch((x: unknown) => x);
  expect(swapped).toBe(true);
  expect(e).toBeInstanceOf(StreamError);
  expect(e).toMatchObject({ reason: 'changed' });
  expect((e as Error).message).toMatch(message);
  // This stream is smaller than one write batch: the change is found before anything is written.
  expect(readFileSync(`${t}.dmthin-state.json`, 'utf8')).toBe(stateBefore);
  expect(sha256File(t)).toBe(await expectedSha(md, 1, SIZE));
});

test('the target is the input stream (same path, or a hard link to it): refused before anything is read or written', async () => {
  // A stream larger than its device fits "the target is large enough": without the check the apply pass wrote over the stream it read.
  const file = s.path('self.stream');
  writeFileSync(file, streams.full1);
  const link = s.path('self-link.stream');
  linkSync(file, link);
  for (const target of [file, link]) {
    const e = await receive({ target, input: file, create: true }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(UsageError);
    expect((e as Error).message).toMatch(/^the target .* is the input stream.*: writing there would destroy it; choose another path$/);
    expect(readFileSync(file).equals(streams.full1)).toBe(true);
    expect(existsSync(`${target}.dmthin-state.json`)).toBe(false);
  }
});

test('a verified file that changes before it is applied is caught', async () => {
  // Verified in place, then modified between the passes: the second pass refuses it.
  const t = await target('dev1');
  const file = s.path('changing.stream');
  writeFileSync(file, streams.inc2from1);
  let flipped = false;
  await expect(
    receive({
      target: t,
      input: file,
      onProgress: (p) => {
        if (p.phase === 'verify' && p.bytes === streams.inc2from1.length && !flipped) {
          flipped = true;
          const b = readFileSync(file);
          b[b.length - 200] ^= 1;
          writeFileSync(file, b);
        }
      },
    }),
  ).rejects.toMatchObject({ reason: 'changed' });
});
