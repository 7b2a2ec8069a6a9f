import fc from 'fast-check';
import { DmParseError, UsageError } from '../../src/errors';
import { U64_MAX } from '../../src/dm/targets/args';
import {
  MAX_THIN_ID,
  PoolMessage,
  parsePoolMessage,
  parseThinPoolStatus,
  parseThinPoolTable,
  thinPoolParams,
  thinPoolTarget,
} from '../../src/dm/targets/thin-pool';
import { dataBlocks, sectors } from '../../src/units';

describe('thin-pool status', () => {
  test('current kernel line (docs/metadata-format.md §10.2)', () => {
    expect(parseThinPoolStatus('0 1648/16384 0/8192 - rw discard_passdown queue_if_no_space - 1024')).toEqual({
      kind: 'working',
      transactionId: 0n,
      usedMetadata: 1648,
      totalMetadata: 16384,
      usedData: 0,
      totalData: 8192,
      heldMetadataRoot: null,
      mode: 'rw',
      discard: 'discard_passdown',
      noSpacePolicy: 'queue',
      needsCheck: false,
      metadataLowWatermark: 1024,
      extra: [],
    });
  });

  test('held root, trailing space as the kernel prints it, error policy, needs_check', () => {
    const s = parseThinPoolStatus('18446744073709551615 1700/16384 8000/8192 23 out_of_data_space no_discard_passdown error_if_no_space needs_check 1024 ');
    expect(s).toMatchObject({
      kind: 'working',
      transactionId: 18446744073709551615n,
      heldMetadataRoot: 23,
      mode: 'out_of_data_space',
      discard: 'no_discard_passdown',
      noSpacePolicy: 'error',
      needsCheck: true,
    });
  });

  test('ignore_discard is a valid discard field', () => {
    expect(parseThinPoolStatus('3 10/100 0/10 - ro ignore_discard queue_if_no_space - 25')).toMatchObject({ mode: 'ro', discard: 'ignore_discard' });
  });

  test('Fail and Error', () => {
    expect(parseThinPoolStatus('Fail')).toEqual({ kind: 'fail' });
    expect(parseThinPoolStatus('Error')).toEqual({ kind: 'error' });
    expect(parseThinPoolStatus('Fail ')).toEqual({ kind: 'fail' });
  });

  test('older kernels: shorter lines leave later fields undefined', () => {
    const v310 = parseThinPoolStatus('0 141/4161600 0/1638400 -');
    expect(v310).toMatchObject({ kind: 'working', usedMetadata: 141, totalMetadata: 4161600, totalData: 1638400, heldMetadataRoot: null, extra: [] });
    expect(v310).not.toHaveProperty('mode');
    expect(v310).not.toHaveProperty('discard');
    expect(v310).not.toHaveProperty('needsCheck');
    expect(parseThinPoolStatus('1 141/4161600 5/1638400 - rw discard_passdown')).toMatchObject({ mode: 'rw', discard: 'discard_passdown' });
    const v314 = parseThinPoolStatus('1 141/4161600 5/1638400 - rw no_discard_passdown error_if_no_space');
    expect(v314).toMatchObject({ noSpacePolicy: 'error' });
    expect(v314).not.toHaveProperty('needsCheck');
    const v315 = parseThinPoolStatus('1 141/4161600 5/1638400 - rw discard_passdown queue_if_no_space -');
    expect(v315).toMatchObject({ needsCheck: false });
    expect(v315).not.toHaveProperty('metadataLowWatermark');
  });

  test('vendor tokens after the known fields are kept', () => {
    const s = parseThinPoolStatus('0 1648/16384 0/8192 - rw discard_passdown queue_if_no_space - 1024 vendor_x 42 ');
    expect(s.kind === 'working' && s.extra).toEqual(['vendor_x', '42']);
  });

  test.each([
    '',
    '0 1648/16384 0/8192',
    'x 1/2 3/4 -',
    '-1 1/2 3/4 -',
    '0 12 3/4 -',
    '0 1/2/3 3/4 -',
    '0 1/2 3/4 root',
    '0 1/2 3/4 - bogus',
    '0 1/2 3/4 - rw discard',
    '0 1/2 3/4 - rw discard_passdown queue',
    '0 1/2 3/4 - rw discard_passdown queue_if_no_space maybe',
    '0 1/2 3/4 - rw discard_passdown queue_if_no_space - 10x',
    '18446744073709551616 1/2 3/4 -',
    'fail',
  ])('malformed: %j', (line) => {
    expect(() => parseThinPoolStatus(line)).toThrow(DmParseError);
  });
});

describe('thin-pool table line', () => {
  const base = { metadataDev: '253:1', dataDev: '253:2', dataBlockSize: sectors(128), lowWaterMark: dataBlocks(0) };

  test('build', () => {
    expect(thinPoolParams(base)).toBe('253:1 253:2 128 0');
    expect(thinPoolParams({ ...base, metadataDev: { major: 8, minor: 17 }, dataDev: '/dev/vg/data', lowWaterMark: dataBlocks(32768), features: ['skip_block_zeroing', 'error_if_no_space'] })).toBe(
      '8:17 /dev/vg/data 128 32768 2 skip_block_zeroing error_if_no_space',
    );
    expect(thinPoolTarget(sectors(1 << 21), base)).toEqual({ start: 0, length: 1 << 21, type: 'thin-pool', params: '253:1 253:2 128 0' });
  });

  test('block size 128..2097152, multiple of 128', () => {
    for (const ok of [128, 256, 1024, 2097152]) expect(() => thinPoolParams({ ...base, dataBlockSize: sectors(ok) })).not.toThrow();
    for (const bad of [0, 64, 127, 130, 192.5, 2097280, 4194304]) expect(() => thinPoolParams({ ...base, dataBlockSize: sectors(bad) })).toThrow(UsageError);
  });

  test('features: at most 4, known, no repeats', () => {
    expect(() => thinPoolParams({ ...base, features: ['skip_block_zeroing', 'ignore_discard', 'no_discard_passdown', 'read_only', 'error_if_no_space'] })).toThrow(/at most 4/);
    expect(() => thinPoolParams({ ...base, features: ['bogus' as never] })).toThrow(/unknown/);
    expect(() => thinPoolParams({ ...base, features: ['read_only', 'read_only'] })).toThrow(/twice/);
  });

  test('devices: different, single tokens', () => {
    expect(() => thinPoolParams({ ...base, dataDev: '253:1' })).toThrow(/different/);
    expect(() => thinPoolParams({ ...base, dataDev: { major: 253, minor: 1 } })).toThrow(/different/);
    expect(() => thinPoolParams({ ...base, dataDev: '253:2 1' })).toThrow(UsageError);
    expect(() => thinPoolParams({ ...base, dataDev: '' })).toThrow(UsageError);
    expect(() => thinPoolParams({ ...base, dataDev: 'a\\ b' })).toThrow(UsageError);
  });

  test('low water mark: plain non-negative integer', () => {
    expect(() => thinPoolParams({ ...base, lowWaterMark: dataBlocks(-1) })).toThrow(UsageError);
    expect(() => thinPoolParams({ ...base, lowWaterMark: dataBlocks(1.5) })).toThrow(UsageError);
  });

  test('parse the kernel table status: count always present, trailing spaces', () => {
    expect(parseThinPoolTable('253:1 253:2 128 32768 0 ')).toEqual({ metadataDev: '253:1', dataDev: '253:2', dataBlockSize: 128, lowWaterMark: 32768, features: [], extra: [] });
    expect(parseThinPoolTable('253:1 253:2 1024 0 2 skip_block_zeroing no_discard_passdown ').features).toEqual(['skip_block_zeroing', 'no_discard_passdown']);
    expect(parseThinPoolTable('253:1 253:2 1024 0 1 Skip_Block_Zeroing').features).toEqual(['skip_block_zeroing']);
    expect(parseThinPoolTable('253:1 253:2 1024 0 2 skip_block_zeroing vendor_flag').extra).toEqual(['vendor_flag']);
  });

  test('parse what we build', () => {
    const args = { ...base, features: ['ignore_discard', 'read_only'] as const };
    expect(parseThinPoolTable(thinPoolParams({ ...args, features: [...args.features] }))).toMatchObject({ features: ['ignore_discard', 'read_only'], dataBlockSize: 128 });
  });

  test.each(['', '253:1 253:2 128', '253:1 253:2 x 0', '253:1 253:2 128 0 3 skip_block_zeroing'])('malformed table %j', (line) => {
    expect(() => parseThinPoolTable(line)).toThrow(DmParseError);
  });
});

describe('pool messages', () => {
  test('the six messages', () => {
    expect(PoolMessage.createThin(0)).toBe('create_thin 0');
    expect(PoolMessage.createSnap(2, 1)).toBe('create_snap 2 1');
    expect(PoolMessage.delete(MAX_THIN_ID)).toBe('delete 16777215');
    expect(PoolMessage.setTransactionId(0n, 18446744073709551615n)).toBe('set_transaction_id 0 18446744073709551615');
    expect(PoolMessage.reserveMetadataSnap()).toBe('reserve_metadata_snap');
    expect(PoolMessage.releaseMetadataSnap()).toBe('release_metadata_snap');
  });

  test('digit strings are canonicalised', () => {
    expect(PoolMessage.createThin('007')).toBe('create_thin 7');
    expect(PoolMessage.setTransactionId('18446744073709551615', '0')).toBe('set_transaction_id 18446744073709551615 0');
  });

  const smuggles: unknown[] = [
    ' 1', '1 ', '1\n', '1\t', '+1', '-1', '0x10', '1e3', '1.0', '1\0', '1 2', '1;delete 2', 'create_thin 1', '١', '１', '', '1\\ 2',
    -1, 1.5, NaN, Infinity, -0.5, 2 ** 53, -1n, null, undefined, {}, [1], true,
  ];
  test.each(smuggles.map((v) => [v]))('rejects %p', (v) => {
    expect(() => PoolMessage.createThin(v as never)).toThrow(UsageError);
    expect(() => PoolMessage.createSnap(1, v as never)).toThrow(UsageError);
    expect(() => PoolMessage.setTransactionId(v as never, 1)).toThrow(UsageError);
  });

  test('thin ids above 2^24-1 and transaction ids above 2^64-1 are rejected', () => {
    expect(() => PoolMessage.createThin(MAX_THIN_ID + 1)).toThrow(/between 0 and 16777215/);
    expect(() => PoolMessage.delete(2n ** 24n)).toThrow(UsageError);
    expect(() => PoolMessage.setTransactionId(0, 2n ** 64n)).toThrow(UsageError);
  });

  const thinId = fc.oneof(
    fc.integer({ min: 0, max: MAX_THIN_ID }),
    fc.bigInt({ min: 0n, max: BigInt(MAX_THIN_ID) }),
    fc.integer({ min: 0, max: MAX_THIN_ID }).map((n) => String(n)),
  );
  const u64 = fc.oneof(fc.bigInt({ min: 0n, max: U64_MAX }), fc.nat().map((n) => String(n)));

  test('property: an accepted message re-parses to exactly one message with the same args', () => {
    fc.assert(
      fc.property(thinId, thinId, u64, u64, (a, b, c, d) => {
        const cases: [string, string, unknown[]][] = [
          [PoolMessage.createThin(a), 'create_thin', [a]],
          [PoolMessage.createSnap(a, b), 'create_snap', [a, b]],
          [PoolMessage.delete(b), 'delete', [b]],
          [PoolMessage.setTransactionId(c, d), 'set_transaction_id', [c, d]],
        ];
        for (const [text, name, args] of cases) {
          expect(text).toMatch(/^[a-z_]+( [0-9]+)*$/); // one line, single spaces, digits only
          const p = parsePoolMessage(text);
          expect(p.name).toBe(name);
          expect(p.args).toEqual(args.map((x) => BigInt(x as never)));
          // The kernel splits on any whitespace: same token count either way.
          expect(text.split(/\s+/)).toHaveLength(1 + args.length);
        }
      }),
    );
  });

  test('property: any string argument is either a plain decimal in range or rejected', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.string({ unit: 'binary' }), fc.stringMatching(/^[0-9 +\-\n\t\0x.e]{0,12}$/)), (s) => {
        let text: string;
        try {
          text = PoolMessage.createSnap(s, 1);
        } catch (e) {
          expect(e).toBeInstanceOf(UsageError);
          expect(!/^[0-9]+$/.test(s) || BigInt(s) > BigInt(MAX_THIN_ID)).toBe(true);
          return;
        }
        expect(/^[0-9]+$/.test(s)).toBe(true);
        expect(parsePoolMessage(text)).toEqual({ name: 'create_snap', args: [BigInt(s), 1n] });
      }),
      { numRuns: 2000 },
    );
  });

  test('parsePoolMessage is strict', () => {
    for (const bad of ['create_thin', 'create_thin 1 2', 'create_thin  1', 'create_thin 01', 'trim 1', 'Create_thin 1', 'delete -1', 'reserve_metadata_snap 1', 'constructor 1', 'toString'])
      expect(() => parsePoolMessage(bad)).toThrow(UsageError);
  });
});
