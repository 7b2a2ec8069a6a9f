/**
 * The native dm layer on a host without device-mapper: Node-shaped errors,
 * argument checks, the node helpers, and — under an LD_PRELOAD stand-in for
 * the dm ioctls (oracle/fake_dm.c) — the BUFFER_FULL retry, the EINTR retry
 * and errno propagation of the real addon code.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DeviceMapper } from '../../src/dm/device-mapper';
import { Cmd, encodeRequest } from '../../src/dm/ioctl';
import { DmIoctlError, SetupError } from '../../src/errors';
import { native } from '../../src/native/binding';
import { addonFile } from '../../src/native/addon-file';
import { sectors } from '../../src/units';
import { Scratch, compile } from './helpers/cc';
import { testAsRoot } from '../helpers/root';

/** Error-class match that works across realms (the addon throws main-realm errors). */
const named = (name: string) => expect.objectContaining({ name });


let scratch: Scratch;
beforeAll(() => {
  scratch = new Scratch();
});
afterAll(() => scratch.cleanup());

describe('dmIoctl', () => {
  // A control path that does not exist stands for a machine without device-mapper
  // (whether this host has /dev/mapper/control or not), so these always run.
  test('no control node: Node-shaped ENOENT from open', async () => {
    const absent = scratch.path('absent-control');
    const err = await native()
      .dmIoctl(Cmd.VERSION, encodeRequest({ version: [4, 0, 0] }), { controlPath: absent })
      .catch((e: unknown) => e);
    // Addon errors come from the main realm, not jest's sandbox: check the tag, not instanceof.
    expect(Object.prototype.toString.call(err)).toBe('[object Error]');
    expect(err).toMatchObject({ code: 'ENOENT', errno: -2, syscall: 'open', path: absent, ioctl: 'DM_VERSION' });
  });

  test('no control node: DeviceMapper says device-mapper is missing (SetupError), naming no ioctl', async () => {
    const absent = scratch.path('absent-control');
    const err = await new DeviceMapper({ controlPath: absent }).targetMessage('pool', sectors(0), 'release_metadata_snap').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SetupError);
    expect(err).not.toBeInstanceOf(DmIoctlError);
    expect(err).toMatchObject({ kind: 'no-device-mapper', code: 'ENOENT', errno: -2, syscall: 'open', path: absent, device: 'pool', targetMessage: 'release_metadata_snap' });
    expect((err as Error).message).toBe(
      `device-mapper is not available: ${absent} does not exist; load it as root with 'modprobe dm_thin_pool' (which loads dm_mod too), then check that ${absent} exists ('dmsetup mknodes' creates it)`,
    );
  });

  test('a control path that is not the dm control node: ENOTTY from ioctl, with the device name', async () => {
    const f = scratch.path('not-control');
    writeFileSync(f, '');
    await expect(native().dmIoctl(Cmd.TARGET_MSG, encodeRequest({ version: [4, 2, 0], name: 'pool' }), { controlPath: f })).rejects.toMatchObject({
      code: 'ENOTTY',
      errno: -25,
      syscall: 'ioctl',
      ioctl: 'DM_TARGET_MSG',
      device: 'pool',
    });
    await expect(native().dmIoctl(Cmd.DEV_STATUS, encodeRequest({ version: [4, 0, 0], uuid: 'U-9' }), { controlPath: f })).rejects.toMatchObject({ device: 'U-9' });
  });

  test('argument checks are synchronous programming errors', () => {
    const req = encodeRequest({ version: [4, 0, 0] });
    expect(() => native().dmIoctl(18, req)).toThrow(named('RangeError'));
    expect(() => native().dmIoctl(-1, req)).toThrow(named('RangeError'));
    expect(() => native().dmIoctl(1.5, req)).toThrow(named('RangeError'));
    expect(() => native().dmIoctl(0, req.subarray(0, 311))).toThrow(named('RangeError'));
    expect(() => native().dmIoctl(0, 'x' as never)).toThrow(named('TypeError'));
    expect(() => native().dmIoctl(0, new Uint16Array(200) as never)).toThrow(named('TypeError'));
    expect(() => native().dmIoctl(0, req, { controlPath: 5 as never })).toThrow(named('TypeError'));
    expect(() => native().dmIoctl(0, req, { maxBufferSize: 10 })).toThrow(named('RangeError'));
  });

  test('constants come from the header', () => {
    const c = native().dmConstants;
    expect(c.controlPath).toBe('/dev/mapper/control');
    expect(c.initialBufferSize).toBe(16384);
    expect(c.headerVersion.major).toBe(4);
    expect(c.commandNames[Cmd.TARGET_MSG]).toBe('DM_TARGET_MSG');
  });

  test('the constants are made on first use (not at load): one object, also through a frozen or derived exports object; an assignment replaces them', () => {
    // Fresh loads: this process's addon may have been asked already.
    const r = spawnSync(process.execPath, [
      '-e',
      `'use strict';
       const load = () => { const m = { exports: {} }; process.dlopen(m, ${JSON.stringify(addonFile(join(__dirname, '..', '..')))}); return m.exports; };
       const a = load();
       const getter = typeof Object.getOwnPropertyDescriptor(a, 'dmConstants').get;
       const c = a.dmConstants;
       const f = load();
       Object.freeze(f);
       const d = load();
       const w = load();
       w.dmConstants = { mock: 1 };
       let frozenAssign = '';
       try { f.dmConstants = 1; } catch (e) { frozenAssign = e.name; }
       console.log(JSON.stringify({ getter, keys: Object.keys(a).includes('dmConstants'), same: a.dmConstants === c, path: c.controlPath,
         frozen: f.dmConstants === f.dmConstants && f.dmConstants.controlPath, derived: Object.create(d).dmConstants === d.dmConstants,
         assigned: w.dmConstants, frozenAssign }));`,
    ]);
    expect(r.stderr.toString()).toBe('');
    expect(JSON.parse(r.stdout.toString())).toEqual({
      getter: 'function',
      keys: true,
      same: true,
      path: '/dev/mapper/control',
      frozen: '/dev/mapper/control',
      derived: true,
      assigned: { mock: 1 },
      frozenAssign: 'TypeError',
    });
  });
});

describe('node helpers', () => {
  testAsRoot('mknodBlock sets the exact mode whatever the umask; unlinkNode only removes the matching node', () => {
    const dir = scratch.path('nodes');
    mkdirSync(dir);
    const p = join(dir, 'pool');
    const old = process.umask(0o077);
    try {
      native().mknodBlock(p, 253, 70000, 0o660);
    } finally {
      process.umask(old);
    }
    const st = lstatSync(p);
    expect(st.isBlockDevice()).toBe(true);
    expect(st.mode & 0o7777).toBe(0o660);
    expect(st.rdev).toBe(253 * 256 + (70000 & 0xff) + (70000 - (70000 & 0xff)) * 4096);
    expect(() => native().mknodBlock(p, 253, 1, 0o600)).toThrow(expect.objectContaining({ code: 'EEXIST', syscall: 'mknod', path: p, errno: -17 }));
    expect(native().unlinkNode(p, 253, 1)).toBe(false);
    expect(existsSync(p)).toBe(true);
    expect(native().unlinkNode(p, 253, 70000)).toBe(true);
    expect(existsSync(p)).toBe(false);
    expect(native().unlinkNode(p, 253, 70000)).toBe(false);
    writeFileSync(p, '');
    expect(native().unlinkNode(p, 0, 0)).toBe(false);
    expect(existsSync(p)).toBe(true);
  });

  test('argument checks', () => {
    expect(() => native().mknodBlock('/tmp/x', 4096, 0, 0o600)).toThrow(named('TypeError'));
    expect(() => native().mknodBlock('/tmp/x', 1, 1 << 20, 0o600)).toThrow(named('TypeError'));
    expect(() => native().mknodBlock('/tmp/x', 1, 1, 0o10000)).toThrow(named('TypeError'));
    expect(() => native().unlinkNode('/tmp/x', -1, 0)).toThrow(named('TypeError'));
  });

  test('mknod failures are Node-shaped', () => {
    expect(() => native().mknodBlock(scratch.path('missing-dir/x'), 1, 1, 0o600)).toThrow(expect.objectContaining({ code: 'ENOENT', syscall: 'mknod' }));
  });
});

describe('the addon binary', () => {
  test('exports only what native/exports.ver lists: Node\'s entry points and exception type_info (no BLAKE3 or template symbols)', () => {
    const addon = join(__dirname, '../../build/Release/dmthin.node');
    expect(existsSync(addon)).toBe(true);
    const nm = spawnSync('nm', ['-D', '--defined-only', addon], { encoding: 'utf8' });
    expect(nm.error).toBeUndefined(); // binutils: the toolchain that built the addon has it
    expect(nm.status).toBe(0);
    const names = nm.stdout
      .split('\n')
      .filter(Boolean)
      .map((l) => l.trim().split(/\s+/).pop()!);
    expect(names).toEqual(expect.arrayContaining(['napi_register_module_v1', 'node_api_module_get_api_version_v1']));
    expect(names.filter((n) => !/^(napi_register_module_v1|node_api_module_get_api_version_v1|_ZTI.*|_ZTS.*)$/.test(n))).toEqual([]);
    // The vendored BLAKE3 is still linked in, as local symbols.
    const all = spawnSync('nm', [addon], { encoding: 'utf8' });
    expect(all.stdout).toMatch(/ t blake3_hash_many_sse2\b/);
  });
});

describe('under a fake dm kernel (LD_PRELOAD)', () => {
  type Call = { nr: number; size: number; version: string; flags: number; name: string };
  type Outcome = { ok?: any; error?: Record<string, unknown>; calls: Call[] };
  let r: Record<string, Outcome>;

  beforeAll(() => {
    const so = compile(scratch, 'fake_dm.c', 'fake_dm.so', ['-shared', '-fPIC', '-ldl']);
    const control = scratch.path('control');
    writeFileSync(control, '');
    const logs = scratch.path('logs');
    mkdirSync(logs);
    const child = spawnSync(process.execPath, [join(__dirname, 'helpers', 'fake-kernel-child.js'), control, logs], {
      env: { ...process.env, LD_PRELOAD: so },
      encoding: 'utf8',
      timeout: 60000,
    });
    if (child.status !== 0) throw new Error(`fake-kernel child failed (${child.status}): ${child.stderr}`);
    r = JSON.parse(child.stdout);
  });

  const sizes = (o: Outcome) => o.calls.map((c) => c.size);

  test('a command without results uses just the struct', () => {
    expect(r.version.ok).toEqual([4, 47, 0]);
    expect(sizes(r.version)).toEqual([312]);
  });

  test('EINTR is retried', () => {
    expect(r.eintr.ok).toEqual({ length: 312, version: [4, 47, 0] });
    expect(r.eintr.calls).toHaveLength(2);
  });

  test('BUFFER_FULL: 16 KiB, then doubled until the list fits', () => {
    expect(sizes(r['list-300'])).toEqual([16384, 32768, 65536]);
    expect(r['list-300'].ok.count).toBe(300);
    expect(r['list-300'].ok.last).toMatchObject({ dev: { major: 253, minor: 299 }, eventNr: 299 });
  });

  test('the empty device list', () => {
    expect(r['list-0'].ok).toEqual([]);
  });

  test('a target message whose output overflowed is resent intact with a bigger buffer', () => {
    // fake_dm scribbles over the input on BUFFER_FULL and answers EINVAL to a garbled resend.
    expect(r['msg-big'].ok).toEqual({ length: 40000, allX: true });
    expect(sizes(r['msg-big'])).toEqual([16384, 32768, 65536]);
    expect(r['msg-big'].calls.every((c) => c.version === '4.2.0' && c.name === 'pool')).toBe(true);
  });

  test('DATA_OUT text comes back; none without it', () => {
    expect(r['msg-echo'].ok).toBe('hello there');
    expect(r['msg-quiet'].ok).toBe(true);
  });

  test('errno from the ioctl becomes a DmIoctlError', () => {
    expect(r['msg-eexist'].error).toMatchObject({ name: 'DmIoctlError', code: 'EEXIST', errno: -17, syscall: 'ioctl', ioctl: 'DM_TARGET_MSG', device: 'pool', targetMessage: 'fail-eexist' });
    expect(r.enxio.error).toMatchObject({ code: 'ENXIO', errno: -6, ioctl: 'DM_TABLE_STATUS', device: 'missing' });
    expect(r.enotty.error).toMatchObject({ code: 'ENOTTY', ioctl: 'DM_DEV_STATUS', device: 'U-1' });
  });

  test('the retry stops at the cap with ENOBUFS', () => {
    expect(sizes(r['never-fits'])).toEqual([16384, 32768, 65536]);
    expect(r['never-fits'].error).toMatchObject({ code: 'ENOBUFS', errno: -105, ioctl: 'DM_TABLE_STATUS', device: 'never-fits' });
  });
});
