import { DmParseError, UsageError } from '../../src/errors';
import { parseThinStatus, parseThinTable, thinParams, thinTarget } from '../../src/dm/targets/thin';
import { sectors } from '../../src/units';

describe('thin table line', () => {
  test('build', () => {
    expect(thinParams({ poolDev: '253:3', devId: 1 })).toBe('253:3 1');
    expect(thinParams({ poolDev: { major: 253, minor: 3 }, devId: 16777215n, externalOriginDev: '/dev/sdb' })).toBe('253:3 16777215 /dev/sdb');
    expect(thinTarget(sectors(2048), { poolDev: '/dev/mapper/pool', devId: '42' })).toEqual({ start: 0, length: 2048, type: 'thin', params: '/dev/mapper/pool 42' });
  });

  test('validation', () => {
    expect(() => thinParams({ poolDev: '253:3', devId: 16777216 })).toThrow(UsageError);
    expect(() => thinParams({ poolDev: '253:3', devId: '1 2' })).toThrow(UsageError);
    expect(() => thinParams({ poolDev: '253:3', devId: -1 })).toThrow(UsageError);
    expect(() => thinParams({ poolDev: '253:3 9', devId: 1 })).toThrow(UsageError);
    expect(() => thinParams({ poolDev: '253:3', devId: 1, externalOriginDev: '253:3' })).toThrow(/pool itself/);
  });

  test('parse the kernel table status', () => {
    expect(parseThinTable('253:3 1')).toEqual({ poolDev: '253:3', devId: 1 });
    expect(parseThinTable('253:3 16777215 8:16 ')).toEqual({ poolDev: '253:3', devId: 16777215, externalOriginDev: '8:16' });
  });

  test.each(['', '253:3', '253:3 x', '253:3 16777216', '253:3 1 8:16 extra'])('malformed table %j', (l) => {
    expect(() => parseThinTable(l)).toThrow(DmParseError);
  });
});

describe('thin status', () => {
  test('nothing mapped', () => {
    expect(parseThinStatus('0 -')).toEqual({ kind: 'working', mappedSectors: 0, highestMappedSector: null });
  });

  test('mapped: highest = (highest_block+1)*bs-1', () => {
    // 8 blocks of 128 sectors mapped, highest block 8191.
    expect(parseThinStatus('1024 1048575')).toEqual({ kind: 'working', mappedSectors: 1024, highestMappedSector: 1048575 });
  });

  test('Fail, Error, and no thin device', () => {
    expect(parseThinStatus('Fail')).toEqual({ kind: 'fail' });
    expect(parseThinStatus('Error')).toEqual({ kind: 'error' });
    expect(parseThinStatus('-')).toEqual({ kind: 'unavailable' });
  });

  test.each(['', '1', 'a -', '1 2 3', '- -', '1 x', 'fail'])('malformed status %j', (l) => {
    expect(() => parseThinStatus(l)).toThrow(DmParseError);
  });
});
