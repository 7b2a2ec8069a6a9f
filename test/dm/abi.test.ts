/**
 * src/dm/ioctl.ts against <linux/dm-ioctl.h>: a C program compiled here
 * reports the header's layout, walks requests we encode the way the kernel
 * does, and builds result buffers for our decoders.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import {
  CMD_NAMES,
  Cmd,
  DATA_START,
  DM_MAX_TYPE_NAME,
  DM_NAME_LEN,
  DM_UUID_LEN,
  Flag,
  IOCTL,
  NAME_LIST,
  TARGET_DEPS,
  TARGET_MSG,
  TARGET_SPEC,
  TARGET_VERSIONS,
  assertNativeLayout,
  decodeDeps,
  decodeHeader,
  decodeNameList,
  decodeTargetSpecs,
  decodeTargetVersions,
  encodeCString,
  encodeDev,
  encodeRequest,
  encodeTargetMsg,
  encodeTargetSpecs,
  resultArea,
} from '../../src/dm/ioctl';
import { native } from '../../src/native/binding';
import { sectors } from '../../src/units';
import { Scratch, compile, run } from './helpers/cc';

interface Layout {
  [struct: string]: Record<string, number>;
}

let scratch: Scratch;
let abi: string;
let layout: Layout & { version: number[]; requests: Record<string, number>; commands: Record<string, number>; flags: Record<string, number>; lengths: Record<string, number> };

beforeAll(() => {
  scratch = new Scratch();
  abi = compile(scratch, 'dm_abi.c', 'dm_abi');
  layout = JSON.parse(run(abi, ['layout']));
});
afterAll(() => scratch.cleanup());

function parseRequest(req: Buffer): any {
  const f = scratch.path('req.bin');
  writeFileSync(f, req);
  return JSON.parse(run(abi, ['parse', f]));
}

function made(mode: string, ...args: string[]): Buffer {
  const f = scratch.path(`${mode}.bin`);
  run(abi, [mode, f, ...args]);
  return readFileSync(f);
}

describe('layout matches the header', () => {
  test.each([
    ['dm_ioctl', IOCTL],
    ['dm_target_spec', TARGET_SPEC],
    ['dm_target_deps', TARGET_DEPS],
    ['dm_name_list', NAME_LIST],
    ['dm_target_versions', TARGET_VERSIONS],
    ['dm_target_msg', TARGET_MSG],
  ])('%s', (struct, ours) => {
    expect({ ...ours }).toEqual(layout[struct]);
  });

  test('results start right after the struct, 8-aligned', () => {
    expect(DATA_START).toBe(layout.dm_ioctl.size);
    expect(DATA_START % 8).toBe(0);
  });

  test('name/uuid/type lengths', () => {
    expect(layout.lengths).toEqual({ DM_NAME_LEN, DM_UUID_LEN, DM_MAX_TYPE_NAME });
  });

  test('command numbers', () => {
    CMD_NAMES.forEach((n, i) => expect(layout.commands[`${n}_CMD`]).toBe(i));
    expect(Object.keys(layout.commands)).toHaveLength(CMD_NAMES.length);
  });

  test('flags', () => {
    for (const [k, v] of Object.entries(Flag)) {
      const name = k === 'DEFERRED_REMOVE' ? 'DM_DEFERRED_REMOVE' : `DM_${k}_FLAG`;
      expect([name, layout.flags[name]]).toEqual([name, v]);
    }
  });

  test('the addon was built from the same header: request codes, layout, flags', () => {
    const c = native().dmConstants;
    expect(c.requests).toEqual(Object.fromEntries(CMD_NAMES.map((n) => [n, layout.requests[n]])));
    expect(c.headerVersion).toEqual({ major: layout.version[0], minor: layout.version[1], patch: layout.version[2] });
    for (const s of ['dm_ioctl', 'dm_target_spec', 'dm_target_deps', 'dm_name_list', 'dm_target_versions', 'dm_target_msg'])
      expect(c.layout[s]).toEqual(layout[s]);
    for (const [k, v] of Object.entries(layout.flags)) expect(c.flags[k]).toBe(v);
    expect(() => assertNativeLayout(c)).not.toThrow();
  });

  test('assertNativeLayout notices a different layout', () => {
    const c = structuredClone(native().dmConstants);
    c.layout.dm_ioctl.dev = 44;
    expect(() => assertNativeLayout(c)).toThrow(/dm_ioctl.dev/);
  });
});

describe('requests as the kernel reads them', () => {
  test('header fields, name and dev', () => {
    const req = encodeRequest({ version: [4, 2, 0], flags: Flag.NOFLUSH | Flag.SUSPEND, eventNr: 77, name: 'pool-é', dev: encodeDev({ major: 253, minor: 70000 }) });
    const p = parseRequest(req);
    expect(p).toMatchObject({ bytes: 312, version: [4, 2, 0], data_size: 312, data_start: 312, flags: Flag.NOFLUSH | Flag.SUSPEND, event_nr: 77, name: 'pool-é', uuid: '' });
    expect([p.major, p.minor]).toEqual([253, 70000]);
  });

  test('longest name and uuid fit with their NUL', () => {
    const name = 'n'.repeat(127);
    const uuid = 'u'.repeat(128);
    const p = parseRequest(encodeRequest({ version: [4, 0, 0], name, uuid }));
    expect(p.name).toBe(name);
    expect(p.uuid).toBe(uuid);
    expect(() => encodeRequest({ version: [4, 0, 0], name: 'n'.repeat(128) })).toThrow(/limit is 127/);
    expect(() => encodeRequest({ version: [4, 0, 0], uuid: 'u'.repeat(129) })).toThrow(/limit is 128/);
  });

  test('TABLE_LOAD: specs chained from the current spec, params NUL-terminated and 8-aligned', () => {
    const targets = [
      { start: sectors(0), length: sectors(2097152), type: 'thin-pool', params: '253:1 253:2 128 32768 1 skip_block_zeroing' },
      { start: sectors(2097152), length: sectors(8), type: 'zero', params: '' },
      { start: sectors(2097160), length: sectors(1 << 30), type: 'linear', params: '8:16 2048' },
    ];
    const req = encodeRequest({ version: [4, 0, 0], name: 'pool', targetCount: targets.length }, encodeTargetSpecs(targets));
    const p = parseRequest(req);
    expect(p.specs).toHaveLength(3);
    p.specs.forEach((s: any, i: number) => {
      expect(s).toMatchObject({ start: targets[i].start, length: targets[i].length, type: targets[i].type, params: targets[i].params, aligned: 1 });
    });
    expect(p.data_size).toBe(req.length);
  });

  test('TARGET_MSG: sector and message at data_start', () => {
    const p = parseRequest(encodeRequest({ version: [4, 2, 0], name: 'pool' }, encodeTargetMsg(sectors(4096), 'create_thin 7')));
    expect(p).toMatchObject({ msg_sector: 4096, msg_valid: 1, msg: 'create_thin 7' });
  });

  test('string payload (rename)', () => {
    const p = parseRequest(encodeRequest({ version: [4, 0, 0], name: 'old' }, encodeCString('new-name')));
    expect(p.string).toBe('new-name');
    expect(p.bytes % 8).toBe(0);
  });
});

describe('results as the kernel writes them', () => {
  test('TABLE_STATUS: next measured from the first spec', () => {
    const b = made('make-status');
    const h = decodeHeader(b);
    expect(h).toMatchObject({ version: [4, 47, 0], targetCount: 3, name: 'pool', dev: { major: 253, minor: 7 } });
    expect(decodeTargetSpecs(resultArea(b, h), h.targetCount)).toEqual([
      { start: 0, length: 2097152, type: 'thin-pool', params: '0 1648/16384 0/8192 - rw discard_passdown queue_if_no_space - 1024 ' },
      { start: 2097152, length: 2048, type: 'linear', params: '8:16 2048' },
      { start: 2099200, length: 1000, type: 'thin', params: '1024 2047' },
    ]);
  });

  test('LIST_DEVICES with uuids', () => {
    const b = made('make-names', '1');
    const h = decodeHeader(b);
    expect(decodeNameList(resultArea(b, h), h.version, true)).toEqual([
      { name: 'pool', dev: { major: 253, minor: 0 }, eventNr: 100, uuid: 'LVM-abc' },
      { name: 'thin-with-a-rather-long-name-0123456789', dev: { major: 253, minor: 300 }, eventNr: 101, uuid: null },
      { name: 'x', dev: { major: 4095, minor: 1048575 }, eventNr: 102, uuid: 'CRYPT-0123456789abcdef' },
    ]);
  });

  test('LIST_DEVICES without uuids; a pre-4.37 kernel reports no event_nr', () => {
    const b = made('make-names', '0');
    const h = decodeHeader(b);
    const list = decodeNameList(resultArea(b, h), h.version, false);
    expect(list.map((e) => [e.name, e.eventNr, e.uuid])).toEqual([
      ['pool', 100, undefined],
      ['thin-with-a-rather-long-name-0123456789', 101, undefined],
      ['x', 102, undefined],
    ]);
    expect(decodeNameList(resultArea(b, h), [4, 36, 0], false).map((e) => e.eventNr)).toEqual([undefined, undefined, undefined]);
  });

  test('LIST_DEVICES: the empty list is one record with dev 0', () => {
    const b = made('make-names-empty');
    expect(decodeNameList(resultArea(b), [4, 47, 0], true)).toEqual([]);
  });

  test('LIST_VERSIONS', () => {
    const b = made('make-versions');
    expect(decodeTargetVersions(resultArea(b))).toEqual([
      { name: 'thin-pool', version: [1, 23, 0] },
      { name: 'thin', version: [1, 23, 0] },
      { name: 'linear', version: [1, 4, 0] },
    ]);
  });

  test('TABLE_DEPS', () => {
    const b = made('make-deps');
    expect(decodeDeps(resultArea(b))).toEqual([
      { major: 8, minor: 16 },
      { major: 259, minor: 3 },
      { major: 253, minor: 70000 },
    ]);
  });

  test('a result cut short is refused, not half-decoded', () => {
    const b = made('make-status');
    const h = decodeHeader(b);
    expect(() => resultArea(b.subarray(0, b.length - 8), h)).toThrow(expect.objectContaining({ code: 'EPROTO' }));
    const full = Buffer.from(b);
    full.writeUInt32LE(h.flags | Flag.BUFFER_FULL, IOCTL.flags);
    expect(() => resultArea(full)).toThrow(/BUFFER_FULL/);
    // A header claiming more targets than the results hold.
    expect(() => decodeTargetSpecs(resultArea(b, h), 5)).toThrow(expect.objectContaining({ name: 'DmParseError' }));
    // Records chopped mid-name.
    const names = made('make-names', '1');
    expect(() => decodeNameList(resultArea(names).subarray(0, 20), [4, 47, 0], true)).toThrow(expect.objectContaining({ code: 'EPROTO' }));
  });

  test('Cmd values are the header numbers', () => {
    for (const [k, v] of Object.entries(Cmd)) expect(layout.commands[`DM_${k}_CMD`]).toBe(v);
  });
});
