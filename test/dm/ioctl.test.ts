import fc from 'fast-check';
import { UsageError } from '../../src/errors';
import {
  IOCTL,
  MAJOR_MAX,
  MINOR_MAX,
  TARGET_SPEC,
  checkNewName,
  checkTargetType,
  decodeDev,
  decodeHeader,
  decodeMessageOutput,
  decodeNameList,
  decodeTargetSpecs,
  decodeTargetVersions,
  encodeDev,
  encodeRequest,
  encodeTargetMsg,
  encodeTargetSpecs,
  idFields,
  resolveDeviceRef,
  resultArea,
  versionAtLeast,
} from '../../src/dm/ioctl';
import { sectors } from '../../src/units';

describe('dev_t', () => {
  test('huge encoding round-trips and fits 32 bits', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: MAJOR_MAX }), fc.integer({ min: 0, max: MINOR_MAX }), (major, minor) => {
        const v = encodeDev({ major, minor });
        expect(v).toBeLessThan(1n << 32n);
        expect(decodeDev(v)).toEqual({ major, minor });
      }),
    );
  });

  test('known values', () => {
    expect(encodeDev({ major: 253, minor: 0 })).toBe(0xfd00n);
    expect(encodeDev({ major: 253, minor: 256 })).toBe(0x10fd00n);
    expect(decodeDev(0x10fd00n)).toEqual({ major: 253, minor: 256 });
  });

  test('out of range is a UsageError', () => {
    expect(() => encodeDev({ major: 4096, minor: 0 })).toThrow(UsageError);
    expect(() => encodeDev({ major: 1, minor: 1 << 20 })).toThrow(UsageError);
    expect(() => encodeDev({ major: -1, minor: 0 })).toThrow(UsageError);
    expect(() => encodeDev({ major: 1.5, minor: 0 })).toThrow(UsageError);
  });
});

describe('names and device references', () => {
  test('name limit is 127 bytes (UTF-8), uuid 128', () => {
    expect(resolveDeviceRef('a'.repeat(127))).toEqual({ name: 'a'.repeat(127) });
    expect(() => resolveDeviceRef('a'.repeat(128))).toThrow(UsageError);
    expect(() => resolveDeviceRef('é'.repeat(64))).toThrow(/128 bytes/); // 64 chars, 128 bytes
    expect(resolveDeviceRef({ uuid: 'u'.repeat(128) })).toEqual({ uuid: 'u'.repeat(128) });
    expect(() => resolveDeviceRef({ uuid: 'u'.repeat(129) })).toThrow(UsageError);
    expect(() => resolveDeviceRef('')).toThrow(UsageError);
    expect(() => resolveDeviceRef('a\0b')).toThrow(/NUL/);
  });

  test('exactly one of name, uuid, dev', () => {
    expect(() => resolveDeviceRef({} as never)).toThrow(/exactly one.*none/);
    expect(() => resolveDeviceRef({ name: 'a', uuid: 'b' } as never)).toThrow(/name and uuid/);
    expect(() => resolveDeviceRef({ name: 'a', dev: { major: 1, minor: 2 } } as never)).toThrow(UsageError);
    expect(resolveDeviceRef({ dev: { major: 253, minor: 3 } })).toEqual({ dev: { major: 253, minor: 3 } });
    expect(idFields({ dev: { major: 253, minor: 3 } })).toEqual({ dev: 0xfd03n });
    expect(idFields({ uuid: 'x' })).toEqual({ uuid: 'x' });
  });

  test('new names: no slash, ".", "..", "control"', () => {
    for (const bad of ['a/b', '.', '..', 'control', '/']) expect(() => checkNewName(bad)).toThrow(UsageError);
    expect(checkNewName('pool.meta')).toBe('pool.meta');
  });

  test('target types: 1..15 bytes, no whitespace', () => {
    expect(checkTargetType('thin-pool')).toBe('thin-pool');
    expect(() => checkTargetType('a'.repeat(16))).toThrow(UsageError);
    expect(() => checkTargetType('thin pool')).toThrow(UsageError);
  });
});

describe('encoders refuse what the kernel would refuse', () => {
  const t = (start: number, length: number, type = 'zero', params = '') => ({ start: sectors(start), length: sectors(length), type, params });

  test('tables start at 0, are contiguous and non-empty', () => {
    expect(() => encodeTargetSpecs([])).toThrow(/at least one/);
    expect(() => encodeTargetSpecs([t(8, 8)])).toThrow(/starts at 8, expected 0/);
    expect(() => encodeTargetSpecs([t(0, 8), t(16, 8)])).toThrow(/expected 8/);
    expect(() => encodeTargetSpecs([t(0, 0)])).toThrow(/length 0/);
    expect(() => encodeTargetSpecs([t(0, 8, 'zero', 'a\0b')])).toThrow(/NUL/);
    expect(() => encodeTargetSpecs([t(0, -1)])).toThrow(UsageError);
    expect(() => encodeTargetSpecs([t(0, 2 ** 53)])).toThrow(UsageError);
  });

  test('spec records: next = own size, params padded to 8', () => {
    const b = encodeTargetSpecs([t(0, 8, 'zero', 'abc'), t(8, 8, 'error', '')]);
    expect(b.readUInt32LE(TARGET_SPEC.next)).toBe(48); // 40 + "abc\0" -> 48
    expect(b.length).toBe(48 + 48);
    expect(b.toString('utf8', 48 + TARGET_SPEC.target_type, 48 + TARGET_SPEC.target_type + 5)).toBe('error');
  });

  test('target message: non-empty, no NUL', () => {
    expect(() => encodeTargetMsg(sectors(0), '')).toThrow(UsageError);
    expect(() => encodeTargetMsg(sectors(0), 'a\0b')).toThrow(UsageError);
    expect(encodeTargetMsg(sectors(0), '1234567').length).toBe(16);
    expect(encodeTargetMsg(sectors(0), '12345678').length).toBe(24);
  });

  test('request: data_size is the whole request, data_start 312', () => {
    const r = encodeRequest({ version: [4, 2, 0] }, Buffer.alloc(10));
    expect(r.length).toBe(312 + 16);
    expect(r.readUInt32LE(IOCTL.data_size)).toBe(r.length);
    expect(r.readUInt32LE(IOCTL.data_start)).toBe(312);
  });
});

describe('decoders distrust the buffer', () => {
  function result(payload: Buffer, fields: { targetCount?: number; flags?: number } = {}): Buffer {
    const b = encodeRequest({ version: [4, 47, 0], ...fields }, payload);
    b.writeUInt32LE(312 + payload.length, IOCTL.data_size);
    return b;
  }

  test('header shorter than the struct', () => {
    expect(() => decodeHeader(Buffer.alloc(100))).toThrow(expect.objectContaining({ code: 'EPROTO' }));
  });

  test('empty results decode to nothing', () => {
    const b = encodeRequest({ version: [4, 47, 0] });
    expect(resultArea(b).length).toBe(0);
    expect(decodeNameList(resultArea(b), [4, 47, 0], true)).toEqual([]);
    expect(decodeTargetVersions(resultArea(b))).toEqual([]);
    expect(decodeTargetSpecs(resultArea(b), 0)).toEqual([]);
  });

  test('a spec whose next goes backwards', () => {
    const specs = encodeTargetSpecs([
      { start: sectors(0), length: sectors(8), type: 'zero', params: '' },
      { start: sectors(8), length: sectors(8), type: 'zero', params: '' },
    ]);
    specs.writeUInt32LE(0, TARGET_SPEC.next); // STATUS-style next must point forward
    expect(() => decodeTargetSpecs(specs, 2)).toThrow(/bad next/);
  });

  test('params without NUL', () => {
    const spec = Buffer.alloc(48, 0x41);
    spec.fill(0, 0, 40);
    expect(() => decodeTargetSpecs(spec, 1)).toThrow(/NUL/);
  });

  test('name list record pointing past the end', () => {
    const rec = Buffer.alloc(32);
    rec.writeBigUInt64LE(0xfd00n, 0);
    rec.writeUInt32LE(64, 8);
    rec.write('a', 12);
    expect(() => decodeNameList(rec, [4, 47, 0], false)).toThrow(/past the end/);
  });

  test('message output must be NUL-terminated', () => {
    expect(decodeMessageOutput(Buffer.from('hi\0junk'))).toBe('hi');
    expect(() => decodeMessageOutput(Buffer.from('hi'))).toThrow(/NUL/);
  });

  test('data_size beyond the buffer', () => {
    const b = result(Buffer.alloc(16));
    b.writeUInt32LE(4096, IOCTL.data_size);
    expect(() => resultArea(b)).toThrow(/claims 4096 bytes/);
  });
});

test('versionAtLeast', () => {
  expect(versionAtLeast([4, 47, 0], [4, 37, 0])).toBe(true);
  expect(versionAtLeast([4, 37, 0], [4, 37, 0])).toBe(true);
  expect(versionAtLeast([4, 36, 9], [4, 37, 0])).toBe(false);
  expect(versionAtLeast([5, 0, 0], [4, 37, 0])).toBe(true);
});
