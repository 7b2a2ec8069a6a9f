/**
 * The stream format on its own: payload codecs, the encoder's invariants,
 * and the verifier against encoded streams split at arbitrary points, plus
 * every way a stream can be refused that does not need a target.
 */
import fc from 'fast-check';
import { blake3 } from '@noble/hashes/blake3';
import { createHash, randomBytes } from 'node:crypto';
import { StreamError, UsageError } from '../../src/errors';
import { StreamEncoder, type StreamHeaderInit } from '../../src/stream/format/encoder';
import {
  crc32cOf,
  decodeHeaderPayload,
  encodeEndPayload,
  encodeHeaderPayload,
  encodeRecord,
  decodeEndPayload,
  identityKey,
  MAX_DATA_BYTES,
  RECORD_HEADER_SIZE,
  RecordType,
  type SnapshotIdentity,
  type StreamHeader,
} from '../../src/stream/format/records';
import { StreamVerifier, type StreamRecord } from '../../src/stream/format/verifier';
import { newStreamMacKey } from '../../src/stream/format/stream-mac';

const where = { offset: 0, record: 0 };
const id = (devId: number, extra: Partial<SnapshotIdentity> = {}): SnapshotIdentity => ({ pool: 'dm-uuid:LVM-abc-tpool', devId, creationTime: devId * 2, transactionId: BigInt(devId) * 7n, ...extra });

function header(o: Partial<StreamHeaderInit> = {}): StreamHeaderInit {
  return { dataBlockSize: 128, deviceSize: 64 * 65536, target: id(2), base: id(1), ...o };
}

/** `b` cut at the positions `cuts` (those outside (0, length) ignored), in order. */
function cutInto(b: Buffer, cuts: number[]): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  for (const c of [...cuts.filter((x) => x > 0 && x < b.length).sort((x, y) => x - y), b.length]) {
    if (c > at) out.push(b.subarray(at, c));
    at = Math.max(at, c);
  }
  return out;
}

/** Every record of a whole stream, through a verifier fed in the given chunk sizes. */
function verify(bytes: Buffer, cuts: number[] = []): { records: StreamRecord[]; summary: ReturnType<StreamVerifier['finish']> } {
  const v = new StreamVerifier();
  const records: StreamRecord[] = [];
  for (const chunk of cutInto(bytes, cuts)) records.push(...v.push(chunk));
  return { records, summary: v.finish() };
}

function refusal(f: () => unknown): StreamError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(StreamError);
    return e as StreamError;
  }
  throw new Error('expected a StreamError');
}

function small(): Buffer {
  const e = new StreamEncoder(header());
  const parts = [...e.start(), ...e.data(0, 0, Buffer.alloc(65536, 1)), ...e.discard(1, 3), ...e.data(4, 64, Buffer.alloc(512, 2)), ...e.finish().parts];
  return Buffer.concat(parts);
}

/** Re-seals the record at `off` after `edit` changed its bytes (so only the semantic check can catch it). */
function reseal(stream: Buffer, off: number, edit: (rec: Buffer) => void): Buffer {
  const s = Buffer.from(stream);
  const len = s.readUInt32LE(off + 8);
  const rec = s.subarray(off, off + RECORD_HEADER_SIZE + len);
  edit(rec);
  rec.writeUInt32LE(crc32cOf([rec.subarray(0, 20), rec.subarray(RECORD_HEADER_SIZE)]), 20);
  return s;
}

/** Byte offsets of the records of a stream. */
function offsets(s: Buffer): number[] {
  const out: number[] = [];
  for (let o = 0; o < s.length; o += RECORD_HEADER_SIZE + s.readUInt32LE(o + 8)) out.push(o);
  return out;
}

/** Feeds a stream to `v` through records(), cut at `cuts` (taken modulo its length), and finishes it. */
function feed(v: StreamVerifier, b: Buffer, cuts: number[]): ReturnType<StreamVerifier['finish']> {
  for (const chunk of cutInto(b, cuts.map((x) => x % (b.length + 1)))) for (const x of v.records(chunk)) void x;
  return v.finish();
}

/** One bit (chosen by `pick`) of a record's payload flipped, the record's CRC sealed again: record checks pass. */
function resealOneBit(bytes: Buffer, pick: number): Buffer {
  const offs = offsets(bytes).slice(0, -1).filter((o) => bytes.readUInt32LE(o + 8) > 0);
  const o = offs[pick % offs.length];
  const len = bytes.readUInt32LE(o + 8);
  return reseal(bytes, o, (rec) => (rec[RECORD_HEADER_SIZE + ((pick >> 3) % len)] ^= 1 << (pick & 7)));
}

describe('codecs', () => {
  test('CRC-32C is the Castagnoli check value', () => {
    expect(crc32cOf([Buffer.from('123456789')])).toBe(0xe3069283);
    expect(crc32cOf([Buffer.from('1234'), Buffer.from('56789')])).toBe(0xe3069283);
  });

  test('header payload round trip, full and incremental, edge values', () => {
    const cases: StreamHeader[] = [
      { version: 1, dataBlockSize: 128, deviceSize: 0, target: id(0), base: null },
      { version: 1, dataBlockSize: 2097152, deviceSize: 2 ** 53 - 512, target: id(16777215, { transactionId: 2n ** 64n - 1n, creationTime: 2 ** 32 - 1 }), base: id(3, { pool: 'ünïcødé pool ✓' }) },
      { version: 1, dataBlockSize: 1024, deviceSize: 512, target: id(5, { pool: '' }), base: id(4, { pool: '' }) },
    ];
    for (const h of cases) expect(decodeHeaderPayload(encodeHeaderPayload(h), where)).toEqual(h);
    // Version 4 carries the mapping-root digests (the base's only with a base); older versions drop them.
    const [r1, r2] = ['a'.repeat(64), '0123456789abcdef'.repeat(4)];
    const v4: StreamHeader[] = [
      { version: 4, dataBlockSize: 128, deviceSize: 4096, target: id(1), base: null, targetRoot: r1 },
      { version: 4, dataBlockSize: 128, deviceSize: 4096, target: id(2), base: id(1), targetRoot: r1, baseRoot: r2 },
    ];
    for (const h of v4) {
      const b = encodeHeaderPayload(h);
      expect(b.readUInt32LE(12) & 2).toBe(2);
      expect(decodeHeaderPayload(b, where)).toEqual(h);
    }
    const old = decodeHeaderPayload(encodeHeaderPayload({ ...v4[1], version: 3 }), where);
    expect([old.targetRoot, old.baseRoot]).toEqual([undefined, undefined]);
    expect(() => encodeHeaderPayload({ ...v4[1], baseRoot: undefined })).toThrow(UsageError);
    expect(() => encodeHeaderPayload({ ...v4[0], targetRoot: 'xyz' })).toThrow(UsageError);
  });

  test('header payload refusals', () => {
    const good = encodeHeaderPayload({ version: 1, ...header() });
    const bad = (edit: (b: Buffer) => void) => {
      const b = Buffer.from(good);
      edit(b);
      return refusal(() => decodeHeaderPayload(b, where));
    };
    expect(bad((b) => (b[0] = 0x41)).reason).toBe('magic');
    expect(bad((b) => b.writeUInt32LE(5, 8))).toMatchObject({ reason: 'version', code: 'EPROTONOSUPPORT' });
    expect(bad((b) => b.writeUInt32LE(5, 8)).message).toMatch(/^stream format version 5 is not supported \(this build reads versions 1, 2, 3 and 4\): upgrade dmthin/);
    expect(bad((b) => b.writeUInt32LE(0, 8))).toMatchObject({ reason: 'version', code: 'EPROTONOSUPPORT' });
    // Version 0 is no newer dmthin's: not "upgrade dmthin" (outside hunt).
    expect(bad((b) => b.writeUInt32LE(0, 8)).message).toMatch(/^stream format version 0 is not supported \(.*\): no dmthin writes it: the stream is damaged or not from dmthin$/);
    expect(decodeHeaderPayload(good, where).version).toBe(1);
    expect(decodeHeaderPayload(Buffer.from(good).fill(2, 8, 9), where).version).toBe(2);
    expect(decodeHeaderPayload(Buffer.from(good).fill(3, 8, 9), where).version).toBe(3);
    expect(decodeHeaderPayload(Buffer.from(good).fill(4, 8, 9), where).version).toBe(4);
    // Flag bit 1 (mapping-root digests) only from version 4 on, and then the digests must be there.
    expect(bad((b) => b.writeUInt32LE(1 | 2, 12)).message).toMatch(/unknown flags 0x3/);
    expect(bad((b) => (b.writeUInt32LE(4, 8), b.writeUInt32LE(1 | 2, 12))).message).toMatch(/too short for its mapping-root digests/);
    expect(bad((b) => b.writeUInt32LE(3, 12)).reason).toBe('malformed');
    expect(bad((b) => b.writeUInt32LE(100, 16)).reason).toBe('malformed');
    expect(bad((b) => b.writeUInt32LE(1, 20)).reason).toBe('malformed');
    expect(bad((b) => b.writeUInt32LE(513, 24)).reason).toBe('malformed');
    expect(bad((b) => b.writeUInt32LE(0, 12)).reason).toBe('malformed'); // base bytes left over
    expect(refusal(() => decodeHeaderPayload(Buffer.concat([good, Buffer.alloc(1)]), where)).reason).toBe('malformed');
    expect(() => encodeHeaderPayload({ version: 1, ...header({ dataBlockSize: 129 }) })).toThrow(UsageError);
    expect(() => encodeHeaderPayload({ version: 1, ...header({ deviceSize: 100 }) })).toThrow(UsageError);
  });

  test('end payload round trip', () => {
    const e = { records: 2 ** 40, dataBlocks: 3, discardBlocks: 2 ** 53 - 1, dataBytes: 0, streamBytes: 123456789, sha256: Buffer.alloc(32, 0xab) };
    expect(decodeEndPayload(encodeEndPayload(e), where)).toEqual(e);
  });

  test('identity keys are canonical and distinguish every field', () => {
    const a = id(1);
    expect(identityKey(a)).toBe(identityKey({ ...a }));
    for (const b of [id(2), { ...a, pool: 'x' }, { ...a, creationTime: 3 }, { ...a, transactionId: 8n }]) expect(identityKey(b)).not.toBe(identityKey(a));
  });
});

describe('encoder invariants', () => {
  test('refuses what a receiver would refuse', () => {
    const e = new StreamEncoder(header({ deviceSize: 4 * 65536 }));
    expect(() => e.data(0, 0, Buffer.alloc(512))).toThrow(/header record comes first/);
    e.start();
    expect(() => e.data(0, 0, Buffer.alloc(100))).toThrow(UsageError);
    expect(() => e.data(0, 0, Buffer.alloc(MAX_DATA_BYTES + 512))).toThrow(UsageError);
    expect(() => e.data(0, 128, Buffer.alloc(512))).toThrow(UsageError);
    expect(() => e.data(3, 0, Buffer.alloc(2 * 65536))).toThrow(UsageError); // beyond the device
    e.data(1, 0, Buffer.alloc(512));
    expect(() => e.data(0, 0, Buffer.alloc(512))).toThrow(UsageError); // backwards
    expect(() => e.discard(2, 3)).toThrow(UsageError); // beyond
    e.discard(2, 2);
    e.finish();
    expect(() => e.discard(3, 1)).toThrow(/ended/);
  });

  test('counts: a block split over records counts once; discards clip at the device end', () => {
    const e = new StreamEncoder(header({ dataBlockSize: 32768, deviceSize: 3 * 16 * 2 ** 20 - 512 })); // 16 MiB blocks, last one short
    e.start();
    e.data(0, 0, Buffer.alloc(MAX_DATA_BYTES));
    e.data(0, 16384, Buffer.alloc(MAX_DATA_BYTES));
    e.data(1, 0, Buffer.alloc(4096));
    e.discard(2, 1);
    const { end } = e.finish();
    expect(end).toMatchObject({ records: 5, dataBlocks: 2, discardBlocks: 1, dataBytes: 2 * MAX_DATA_BYTES + 4096 });
  });
});

// ---------------------------------------------------------------- streams

interface Op {
  kind: 'data' | 'discard';
  gap: number;
  len: number;
}

/** Random valid streams: block sizes below and above the 8 MiB record limit, data and discards in order. */
const streamArb = fc
  .record({
    dbs: fc.oneof({ arbitrary: fc.constantFrom(128, 256, 1024), weight: 6 }, { arbitrary: fc.constantFrom(16384, 32768), weight: 1 }),
    blocks: fc.integer({ min: 1, max: 40 }),
    tailSectors: fc.integer({ min: 0, max: 127 }),
    incremental: fc.boolean(),
    ops: fc.array(fc.record({ kind: fc.constantFrom<'data' | 'discard'>('data', 'discard'), gap: fc.integer({ min: 0, max: 3 }), len: fc.integer({ min: 1, max: 4 }) }), { maxLength: 12 }),
  })
  .map((r) => {
    const bs = r.dbs * 512;
    // Keep the data small: a few blocks only when blocks are 8 MiB and more.
    if (r.dbs >= 16384) r = { ...r, blocks: Math.min(r.blocks, 3), ops: r.ops.slice(0, 3).map((o) => ({ ...o, len: 1 })) };
    const deviceSize = r.blocks * bs - (r.tailSectors < r.dbs ? r.tailSectors * 512 : 0);
    return { ...r, bs, deviceSize };
  });

function build(r: { dbs: number; bs: number; blocks: number; deviceSize: number; incremental: boolean; ops: Op[] }, version?: number) {
  const enc = new StreamEncoder({ ...(version === undefined ? {} : { version }), dataBlockSize: r.dbs, deviceSize: r.deviceSize, target: id(9), base: r.incremental ? id(8) : null });
  const parts = [...enc.start()];
  const expected: { type: string; start: number; length: number; fill?: number }[] = [];
  let block = 0;
  let n = 0;
  for (const op of r.ops) {
    block += op.gap;
    if (block >= r.blocks) break;
    const len = Math.min(op.len, r.blocks - block);
    if (op.kind === 'discard') {
      parts.push(...enc.discard(block, len));
      expected.push({ type: 'discard', start: block * r.bs, length: Math.min((block + len) * r.bs, r.deviceSize) - block * r.bs });
    } else {
      // Whole blocks per record below 8 MiB, 8 MiB pieces above, as the sender cuts them.
      const end = Math.min((block + len) * r.bs, r.deviceSize);
      const piece = r.bs <= MAX_DATA_BYTES ? Math.floor(MAX_DATA_BYTES / r.bs) * r.bs : MAX_DATA_BYTES;
      for (let off = block * r.bs; off < end; ) {
        const l = Math.min(piece, end - off);
        const b = Math.floor(off / r.bs);
        const fill = ++n & 0xff;
        parts.push(...enc.data(b, (off - b * r.bs) / 512, Buffer.alloc(l, fill)));
        expected.push({ type: 'data', start: off, length: l, fill });
        off += l;
      }
    }
    block += len;
  }
  const { parts: endParts, end } = enc.finish();
  return { bytes: Buffer.concat([...parts, ...endParts]), expected, end };
}

/**
 * Version 2's digest as docs/stream-format.md §6 defines it, computed here
 * with node:crypto from the text (not with the addon's pipe or the
 * library's fallback): segments of 1 MiB, each one's SHA-256 in order
 * between the prefix and the length.
 */
function specDigest(b: Buffer, version: 2 | 3): string {
  // Version 3's BLAKE3 from @noble/hashes (pure JavaScript), not the addon's vendored C.
  const h = (x: Uint8Array): Buffer => (version === 2 ? createHash('sha256').update(x).digest() : Buffer.from(blake3(x)));
  const S = 1 << 20;
  const size = Buffer.alloc(4);
  size.writeUInt32LE(S);
  const parts: Buffer[] = [Buffer.from(`dmthin stream digest ${version}\0`, 'latin1'), size];
  for (let i = 0; i < b.length; i += S) parts.push(h(b.subarray(i, Math.min(i + S, b.length))));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(b.length));
  return h(Buffer.concat([...parts, len])).toString('hex');
}

describe('digests', () => {
  /** docs/stream-format.md §10's example, as the given version. */
  function example(version: number): Buffer {
    const ex = (devId: number, tx: bigint, time: number): SnapshotIdentity => ({ pool: 'dm-name:pool', devId, creationTime: time, transactionId: tx });
    const e = new StreamEncoder({ version, dataBlockSize: 128, deviceSize: 196608, target: ex(2, 5n, 1), base: ex(1, 3n, 0) });
    return Buffer.concat([...e.start(), ...e.data(0, 0, Buffer.alloc(65536, 0xab)), ...e.discard(1, 2), ...e.finish().parts]);
  }

  test("docs/stream-format.md §10's example: the values printed there (computed apart from dmthin), as versions 1, 2 and 3", () => {
    const v1 = example(1);
    const v2 = example(2);
    const v3 = example(3);
    expect(v1.length).toBe(0x000100c4 + 96);
    expect(v1.subarray(0x14, 0x18).toString('hex')).toBe('093d3890');
    expect(v1.subarray(0x000100d8, 0x000100dc).toString('hex')).toBe('77a9e712');
    expect(v1.subarray(-32).toString('hex')).toBe('817a37a7816f7eb8e453bfc565524b42422de43aca36bf881e788613de098e3a');
    expect(v2.subarray(0x20, 0x24).toString('hex')).toBe('02000000');
    expect(v2.subarray(0x14, 0x18).toString('hex')).toBe('cc53ffb4');
    expect(v2.subarray(0x000100d8, 0x000100dc).toString('hex')).toBe('1bc95a22');
    expect(v2.subarray(-32).toString('hex')).toBe('dce35fcd5837eb94c8de04452bc2611dcfa677003f3dea113e4c5c0bc6314e9e');
    expect(v3.subarray(0x20, 0x24).toString('hex')).toBe('03000000');
    expect(v3.subarray(0x14, 0x18).toString('hex')).toBe('8f89bda8');
    expect(v3.subarray(0x000100d8, 0x000100dc).toString('hex')).toBe('eb948f3a');
    expect(v3.subarray(-32).toString('hex')).toBe('85c52c0ca539c111a7a8948d865128937f1f6923c533f46e3d4d18c679411674');
    // Nothing else differs.
    for (const v of [v2, v3]) {
      const diff = [...v1.keys()].filter((i) => v1[i] !== v[i]);
      expect(diff.every((i) => (i >= 0x14 && i < 0x18) || i === 0x20 || (i >= 0x000100d8 && i < 0x000100dc) || i >= v1.length - 32)).toBe(true);
    }
    expect(verify(v1, [7, 0x20, 70000]).summary.digest).toBe('817a37a7816f7eb8e453bfc565524b42422de43aca36bf881e788613de098e3a');
    expect(verify(v2, [7, 0x21, 70000]).summary.digest).toBe('dce35fcd5837eb94c8de04452bc2611dcfa677003f3dea113e4c5c0bc6314e9e');
    expect(verify(v3, [7, 0x21, 70000]).summary.digest).toBe('85c52c0ca539c111a7a8948d865128937f1f6923c533f46e3d4d18c679411674');
  });

  test('streams of many segments: versions 2 and 3 are the digests of §6, version 1 the SHA-256 of the bytes; the verifier agrees fed in any pieces', () => {
    const data = randomBytes(5 * MAX_DATA_BYTES);
    // Record boundaries fall anywhere in the 1 MiB segments: odd data lengths, a discard between.
    const lens = [MAX_DATA_BYTES, 512, MAX_DATA_BYTES - 4096, 3 * 512, (1 << 20) + 512, MAX_DATA_BYTES];
    for (const version of [1, 2, 3]) {
      const e = new StreamEncoder(header({ version, deviceSize: 1024 * 65536 }));
      const parts = [...e.start()];
      let block = 0;
      let at = 0;
      for (const [i, n] of lens.entries()) {
        parts.push(...e.data(block, 0, data.subarray(at, at + n), i % 2 === 0));
        at += n;
        block += Math.ceil(n / 65536) + 1;
        if (i === 2) parts.push(...e.discard(block++, 1));
      }
      const { parts: endParts, end } = e.finish();
      const before = Buffer.concat(parts);
      const want = version === 1 ? createHash('sha256').update(before).digest('hex') : specDigest(before, version as 2 | 3);
      expect(before.length).toBeGreaterThan(5 << 20);
      expect(end.sha256.toString('hex')).toBe(want);
      const bytes = Buffer.concat([before, ...endParts]);
      for (const cuts of [[], [1, 2, 3, 1 << 20, (1 << 20) + 1, 5_000_000], Array.from({ length: 40 }, (_, i) => i * 777_777)]) {
        expect(verify(bytes, cuts).summary.digest).toBe(want);
      }
    }
  });

  test('the encoder writes version 4 unless told 1, 2 or 3, and refuses a version it cannot write', () => {
    const e = new StreamEncoder(header());
    expect(e.header.version).toBe(4);
    expect(Buffer.concat(e.start()).readUInt32LE(RECORD_HEADER_SIZE + 8)).toBe(4);
    e.abort();
    for (const v of [0, 5]) expect(() => new StreamEncoder(header({ version: v }))).toThrow(UsageError);
  });
});

describe('verifier', () => {
  test('round trip of random streams fed in random chunks', () => {
    fc.assert(
      fc.property(streamArb, fc.array(fc.nat(), { maxLength: 8 }), (r, rawCuts) => {
        const { bytes, expected, end } = build(r);
        const cuts = rawCuts.map((c) => c % (bytes.length + 1));
        const { records, summary } = verify(bytes, cuts);
        expect(records[0]).toMatchObject({ type: 'header', header: { dataBlockSize: r.dbs, deviceSize: r.deviceSize } });
        const got = records.slice(1, -1).map((x) =>
          x.type === 'data' ? { type: 'data', start: x.start, length: x.data.length, fill: x.data[0] } : x.type === 'discard' ? { type: 'discard', start: x.start, length: x.length } : x,
        );
        expect(got).toEqual(expected);
        for (const x of records) if (x.type === 'data') expect(x.data.every((b) => b === x.data[0])).toBe(true);
        expect(summary.end).toEqual(end);
        expect(summary.bytes).toBe(bytes.length);
        expect(summary.digest).toBe(end.sha256.toString('hex'));
      }),
      { numRuns: 60 },
    );
  });

  test.each([1, 2])('recheck, format version %d: a second pass over the same bytes in other chunks passes by the keyed GMAC; one resealed byte or another key is refused', (version) => {
    fc.assert(
      fc.property(streamArb, fc.array(fc.nat(), { maxLength: 6 }), fc.array(fc.nat(), { maxLength: 6 }), fc.nat(), (r, cuts1, cuts2, pick) => {
        const { bytes } = build(r, version);
        const first = feed(new StreamVerifier({ mac: newStreamMacKey() }), bytes, cuts1);
        expect(first.mac?.tag).toHaveLength(16);
        const again = feed(new StreamVerifier({ recheck: first }), bytes, cuts2);
        expect(again).toEqual({ header: first.header, end: first.end, digest: first.digest, bytes: first.bytes });
        // Another key: the tag differs, so the same bytes are refused.
        expect(() => feed(new StreamVerifier({ recheck: { ...first, mac: { ...first.mac!, key: randomBytes(32) } } }), bytes, cuts2)).toThrow(/differs from the one verified before/);
        // One byte changed inside a record's payload, its CRC sealed again: record checks pass, the tag does not.
        refusal(() => feed(new StreamVerifier({ recheck: first }), resealOneBit(bytes, pick), cuts2));
      }),
      { numRuns: 60 },
    );
  });

  test('recheck, format version 3: no GMAC (BLAKE3 is cheaper to compute again); the second pass recomputes the digest and refuses one resealed byte', () => {
    fc.assert(
      fc.property(streamArb, fc.array(fc.nat(), { maxLength: 6 }), fc.array(fc.nat(), { maxLength: 6 }), fc.nat(), (r, cuts1, cuts2, pick) => {
        const { bytes } = build(r, 3);
        const first = feed(new StreamVerifier({ mac: newStreamMacKey() }), bytes, cuts1);
        expect(first.mac).toBeUndefined();
        const again = feed(new StreamVerifier({ recheck: first }), bytes, cuts2);
        expect(again).toEqual({ header: first.header, end: first.end, digest: first.digest, bytes: first.bytes });
        refusal(() => feed(new StreamVerifier({ recheck: first }), resealOneBit(bytes, pick), cuts2));
      }),
      { numRuns: 60 },
    );
  });

  test('reuseBuffers: records read from reused chunks and assembled in reused buffers carry their own bytes (push and records)', () => {
    // Distinct random data per record, so a record handed out in a buffer another one overwrote is seen.
    const pieces = [65536, 3 * 512, 131072, 512, 65536 + 4096, 200 * 512, 65536].map((n) => randomBytes(n));
    const e = new StreamEncoder(header({ deviceSize: 16 * 65536 }));
    const parts = [...e.start()];
    let block = 0;
    for (const p of pieces) {
      parts.push(...e.data(block, 0, p));
      block += Math.ceil(p.length / 65536);
    }
    parts.push(...e.finish().parts);
    const bytes = Buffer.concat(parts);
    for (const [chunk, lazy] of [700, 4096 + 7, 70000, 150001].flatMap((c) => [[c, false], [c, true]] as const)) {
      const v = new StreamVerifier({ reuseBuffers: true });
      const scratch = Buffer.alloc(chunk); // one input buffer, overwritten by every chunk (as file-chunks.ts does)
      const seen: string[] = [];
      for (let at = 0; at < bytes.length; at += chunk) {
        const n = bytes.copy(scratch, 0, at, Math.min(at + chunk, bytes.length));
        // A record's bytes are valid until the next push: use them now.
        // push(): all at once, each valid until the next push; records(): each valid until the next is taken.
        const it = lazy ? v.records(scratch.subarray(0, n)) : v.push(scratch.subarray(0, n));
        for (const r of it) if (r.type === 'data') seen.push(createHash('sha256').update(r.data).digest('hex'));
      }
      expect(v.finish().bytes).toBe(bytes.length);
      expect(seen).toEqual(pieces.map((p) => createHash('sha256').update(p).digest('hex')));
    }
  });

  test("dataPieces: 'emit' hands out each data record's bytes in pieces that join to the record; 'skip' none; both end with the same summary", () => {
    fc.assert(
      fc.property(streamArb, fc.array(fc.nat(), { maxLength: 8 }), (r, rawCuts) => {
        const { bytes } = build(r);
        const cuts = rawCuts.map((c) => c % (bytes.length + 1));
        const whole = verify(bytes, cuts);
        const wantData = whole.records.filter((x) => x.type === 'data').map((x) => ({ seq: x.seq, start: x.start, data: Buffer.from(x.data) }));
        for (const mode of ['emit', 'skip'] as const) {
          const v = new StreamVerifier({ dataPieces: mode });
          const got: { seq: number; start: number; data: Buffer }[] = [];
          const others: string[] = [];
          for (const chunk of cutInto(bytes, cuts)) {
            for (const x of v.records(chunk)) {
              if (x.type !== 'data') others.push(x.type);
              else {
                const prev = got[got.length - 1];
                // A piece continues its record exactly where the last one ended.
                if (prev && prev.seq === x.seq) {
                  expect(x.start).toBe(prev.start + prev.data.length);
                  prev.data = Buffer.concat([prev.data, x.data]);
                } else got.push({ seq: x.seq, start: x.start, data: Buffer.from(x.data) });
              }
            }
          }
          expect(v.finish()).toEqual(whole.summary);
          expect(others).toEqual(whole.records.filter((x) => x.type !== 'data').map((x) => x.type));
          // Digests, not the bytes: jest compares large Buffers one element at a time.
          const digestOf = (l: { seq: number; start: number; data: Buffer }[]) => l.map((x) => [x.seq, x.start, x.data.length, createHash('sha256').update(x.data).digest('hex')]);
          expect(digestOf(got)).toEqual(mode === 'emit' ? digestOf(wantData) : []);
        }
      }),
      { numRuns: 80 },
    );
  });

  test("a flipped bit is refused for the same reason with dataPieces 'skip' as with whole records (CRC before fields); 'emit' refuses it too", () => {
    fc.assert(
      fc.property(streamArb, fc.nat(), fc.integer({ min: 0, max: 7 }), fc.array(fc.nat(), { maxLength: 3 }), (r, pos, bit, rawCuts) => {
        const { bytes } = build({ ...r, ops: r.ops.map((o) => ({ ...o, len: Math.min(o.len, 2) })) });
        const bad = Buffer.from(bytes);
        bad[pos % bad.length] ^= 1 << bit;
        const cuts = rawCuts.map((c) => c % bad.length);
        const run = (mode?: 'skip' | 'emit'): StreamError => {
          const v = new StreamVerifier({ dataPieces: mode });
          return refusal(() => {
            for (const chunk of cutInto(bad, cuts)) for (const x of v.records(chunk)) void x;
            v.finish();
          });
        };
        const want = run();
        expect(run('skip')).toMatchObject({ reason: want.reason, offset: want.offset, record: want.record });
        run('emit');
      }),
      { numRuns: 150 },
    );
  });

  test('a flipped bit anywhere is refused with a StreamError', () => {
    fc.assert(
      fc.property(streamArb, fc.nat(), fc.integer({ min: 0, max: 7 }), fc.array(fc.nat(), { maxLength: 3 }), (r, pos, bit, cuts) => {
        const { bytes } = build({ ...r, ops: r.ops.map((o) => ({ ...o, len: Math.min(o.len, 2) })) });
        const bad = Buffer.from(bytes);
        const p = pos % bad.length;
        bad[p] ^= 1 << bit;
        refusal(() => verify(bad, cuts.map((c) => c % bad.length)));
      }),
      { numRuns: 150 },
    );
  });

  test('every cut short of the whole stream is refused as truncated', () => {
    const s = small();
    for (let cut = 1; cut < s.length; cut += cut < 100 ? 1 : 997) {
      expect(refusal(() => verify(s.subarray(0, cut))).reason).toBe('truncated');
    }
    expect(refusal(() => verify(s.subarray(0, s.length - 1))).reason).toBe('truncated');
    expect(refusal(() => verify(Buffer.alloc(0)))).toMatchObject({ reason: 'truncated', code: 'EBADMSG' });
    expect(verify(s).summary.bytes).toBe(s.length);
  });

  test('bad magic, trailing bytes', () => {
    expect(refusal(() => verify(Buffer.from('hello, this is not a stream at all'))).reason).toBe('magic');
    expect(refusal(() => verify(Buffer.from('XY'))).reason).toBe('magic');
    const s = small();
    expect(refusal(() => verify(Buffer.concat([s, Buffer.alloc(1)])))).toMatchObject({ reason: 'trailing', offset: s.length });
    expect(refusal(() => verify(Buffer.concat([s, s]))).reason).toBe('trailing');
  });

  test('re-sealed records: version, type, flags, sequence, ranges, order, counts, digest', () => {
    const s = small();
    const [h, d1, disc, d2, end] = offsets(s);
    const cases: [number, (r: Buffer) => void, string][] = [
      [h, (r) => r.writeUInt32LE(5, RECORD_HEADER_SIZE + 8), 'version'],
      [d1, (r) => r.writeUInt16LE(9, 4), 'malformed'],
      [d1, (r) => r.writeUInt16LE(1, 6), 'malformed'],
      [d1, (r) => r.writeUInt32LE(7, 12), 'order'], // sequence
      [d1, (r) => r.writeUInt16LE(RecordType.Header, 4), 'order'], // a second header
      [disc, (r) => r.writeUInt32LE(64, RECORD_HEADER_SIZE + 8), 'malformed'], // discard beyond the device
      [disc, (r) => r.writeUInt32LE(0, RECORD_HEADER_SIZE), 'order'], // overlaps the data before
      [d2, (r) => r.writeUInt32LE(128, RECORD_HEADER_SIZE + 8), 'malformed'], // offset outside the block
      [d2, (r) => r.writeUInt32LE(2, RECORD_HEADER_SIZE + 12), 'malformed'], // sectors vs bytes
      [d2, (r) => r.writeUInt32LE(64, RECORD_HEADER_SIZE), 'malformed'], // beyond the device
      [end, (r) => r.writeUInt32LE(9, RECORD_HEADER_SIZE), 'counts'],
      [end, (r) => r.writeUInt32LE(0, RECORD_HEADER_SIZE + 16), 'counts'],
      [end, (r) => (r[RECORD_HEADER_SIZE + 40] ^= 1), 'digest'],
    ];
    for (const [off, edit, reason] of cases) expect([reason, refusal(() => verify(reseal(s, off, edit))).reason]).toEqual([reason, reason]);
    // A data record at block 2^53 - 1: named by block and exact byte, not a rounded byte range (outside hunt).
    const far = refusal(() => verify(reseal(s, d2, (r) => (r.writeUInt32LE(0xffffffff, RECORD_HEADER_SIZE), r.writeUInt32LE(0x1fffff, RECORD_HEADER_SIZE + 4)))));
    const inBlock = BigInt(s.readUInt32LE(d2 + RECORD_HEADER_SIZE + 8) * 512); // the record's offset in its block
    expect(far.message).toMatch(new RegExp(`^data record: block ${2 ** 53 - 1} \\(byte ${(2n ** 53n - 1n) * 65536n + inBlock} on\\) is beyond the device`));
    // A second header, a missing header.
    const hdr = s.subarray(h, d1);
    expect(refusal(() => verify(Buffer.concat([hdr, hdr]))).reason).toBe('order');
    expect(refusal(() => verify(s.subarray(d1))).reason).toBe('order');
    // A record too large to be one.
    const huge = encodeRecord(RecordType.Data, 1, [Buffer.alloc(16 + MAX_DATA_BYTES + 512)]);
    expect(refusal(() => verify(Buffer.concat([hdr, ...huge]))).reason).toBe('malformed');
  });

  test('the header names the digest: a stream relabelled as another version (header re-sealed) is refused as digest', () => {
    for (const [from, to] of [
      [1, 2],
      [2, 1],
      [2, 3],
      [3, 2],
      [3, 1],
    ]) {
      const e = new StreamEncoder(header({ version: from }));
      const bytes = Buffer.concat([...e.start(), ...e.data(0, 0, randomBytes((3 << 20) + 512)), ...e.finish().parts]);
      expect(verify(bytes).summary.header.version).toBe(from);
      const relabelled = reseal(bytes, 0, (r) => r.writeUInt32LE(to, RECORD_HEADER_SIZE + 8));
      expect(refusal(() => verify(relabelled, [100, 1 << 20]))).toMatchObject({ reason: 'digest', code: 'EILSEQ' });
    }
  });

  test('crc and digest faults carry EILSEQ, the record and its offset', () => {
    const s = small();
    const [, d1] = offsets(s);
    const bad = Buffer.from(s);
    bad[d1 + RECORD_HEADER_SIZE + 100] ^= 0x10;
    expect(refusal(() => verify(bad))).toMatchObject({ reason: 'crc', code: 'EILSEQ', record: 1, offset: d1 });
    // The same byte changed with the record's CRC sealed again: only the digest sees it, and says which one it is.
    const resealed = reseal(s, d1, (r) => (r[RECORD_HEADER_SIZE + 100] ^= 0x10));
    const e = refusal(() => verify(resealed));
    expect(e).toMatchObject({ reason: 'digest', code: 'EILSEQ' });
    expect(e.message).toMatch(/^the stream's digest \(format version 4, docs\/stream-format\.md §6\) does not match the end record \(record \d+ at byte \d+\)$/);
  });

  test('the header is available before the rest arrives', () => {
    const s = small();
    let seen: StreamHeader | null = null;
    const v = new StreamVerifier({ onHeader: (h) => (seen = h) });
    v.push(s.subarray(0, offsets(s)[1]));
    expect(seen).toMatchObject({ target: id(2), base: id(1) });
  });
});
