/**
 * DeviceMapper over a scripted transport: what each method sends (command,
 * minimum version, flags, identifiers, payload), how it reads the answer,
 * how failures become DmIoctlError, and /dev/mapper node handling in a temp
 * directory.
 */
import { existsSync, lstatSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeviceMapper } from '../../src/dm/device-mapper';
import {
  Cmd,
  Flag,
  IOCTL,
  type IoctlHeader,
  TARGET_SPEC,
  decodeHeader,
  encodeDev,
  encodeRequest,
} from '../../src/dm/ioctl';
import { DmIoctlError, DmthinError, SetupError, SystemCallError, UsageError } from '../../src/errors';
import { PoolMessage } from '../../src/dm/targets/thin-pool';
import { sectors } from '../../src/units';
import { statusResults } from './helpers/kernel-replies';
import { testAsRoot } from '../helpers/root';

interface Sent {
  cmd: Cmd;
  h: IoctlHeader;
  payload: Buffer;
}

type Reply = (s: Sent) => Buffer | Error;

/** A reply: the request's header echoed with the kernel's version, plus results. */
function reply(s: Sent, o: { flags?: number; results?: Buffer; targetCount?: number; dev?: { major: number; minor: number }; name?: string } = {}): Buffer {
  const results = o.results ?? Buffer.alloc(0);
  const b = encodeRequest(
    {
      version: [4, 47, 0],
      flags: o.flags ?? 0,
      targetCount: o.targetCount ?? 0,
      name: o.name ?? s.h.name,
      dev: encodeDev(o.dev ?? { major: 253, minor: 5 }),
      eventNr: 9,
    },
    results,
  );
  b.writeUInt32LE(o.results ? IOCTL.size + results.length : IOCTL.data, IOCTL.data_size);
  return b;
}

function errnoError(code: string, errno: number, syscall = 'ioctl'): Error {
  return Object.assign(new Error(`${code}: something, ${syscall} (DM_X)`), { code, errno, syscall });
}

function fake(handler: Reply = (s) => reply(s)) {
  const sent: Sent[] = [];
  const dm = new DeviceMapper({
    nodes: 'never',
    // wait(): a poller that is never readable (the fake's counter never moves).
    eventPoller: () => ({ arm: () => undefined, readable: () => new Promise<boolean>(() => undefined), close: () => undefined }),
    transport: async (cmd, req) => {
      const s = { cmd, h: decodeHeader(req), payload: req.subarray(IOCTL.size) };
      sent.push(s);
      const r = handler(s);
      if (r instanceof Error) throw r;
      return r;
    },
  });
  return { dm, sent };
}

describe('requests', () => {
  test('minimum interface version per command', async () => {
    const { dm, sent } = fake((s) => (s.cmd === Cmd.LIST_VERSIONS ? reply(s, { results: Buffer.alloc(0) }) : reply(s)));
    await dm.version();
    await dm.info('a');
    await dm.listVersions();
    await dm.targetMessage('pool', sectors(0), 'reserve_metadata_snap');
    await dm.remove('a', { deferred: true });
    expect(sent.map((s) => [s.cmd, s.h.version])).toEqual([
      [Cmd.VERSION, [4, 0, 0]],
      [Cmd.DEV_STATUS, [4, 0, 0]],
      [Cmd.LIST_VERSIONS, [4, 1, 0]],
      [Cmd.TARGET_MSG, [4, 2, 0]],
      [Cmd.DEV_REMOVE, [4, 27, 0]],
    ]);
    expect(await dm.version()).toEqual([4, 47, 0]);
  });

  test('identify by name, uuid or dev: only that field is set', async () => {
    const { dm, sent } = fake();
    await dm.info('by-name');
    await dm.info({ uuid: 'LVM-123' });
    await dm.info({ dev: { major: 253, minor: 300 } });
    expect(sent.map((s) => [s.h.name, s.h.uuid, s.h.dev])).toEqual([
      ['by-name', '', { major: 0, minor: 0 }],
      ['', 'LVM-123', { major: 0, minor: 0 }],
      ['', '', { major: 253, minor: 300 }],
    ]);
  });

  test('bad references fail before anything is sent', async () => {
    const { dm, sent } = fake();
    await expect(dm.info({ name: 'a', uuid: 'b' } as never)).rejects.toThrow(UsageError);
    await expect(dm.info('x'.repeat(128))).rejects.toThrow(UsageError);
    await expect(dm.create('a/b')).rejects.toThrow(UsageError);
    await expect(dm.loadTable('a', [])).rejects.toThrow(UsageError);
    await expect(dm.targetMessage('pool', sectors(0), '')).rejects.toThrow(UsageError);
    expect(sent).toHaveLength(0);
  });

  test('create: name, uuid, fixed minor', async () => {
    const { dm, sent } = fake();
    const info = await dm.create('pool', { uuid: 'DMTHIN-pool', minor: 70000 });
    expect(sent[0].cmd).toBe(Cmd.DEV_CREATE);
    expect(sent[0].h).toMatchObject({ name: 'pool', uuid: 'DMTHIN-pool', flags: Flag.PERSISTENT_DEV, dev: { major: 0, minor: 70000 } });
    expect(info).toMatchObject({ name: 'pool', dev: { major: 253, minor: 5 }, eventNr: 9, kernelVersion: [4, 47, 0] });
  });

  test('suspend / resume flags', async () => {
    const { dm, sent } = fake((s) => reply(s, { flags: s.h.flags & Flag.SUSPEND ? Flag.SUSPEND | Flag.ACTIVE_PRESENT : Flag.ACTIVE_PRESENT }));
    expect((await dm.suspend('p', { noflush: true, skipLockfs: true })).suspended).toBe(true);
    expect((await dm.suspend('p')).suspended).toBe(true);
    expect((await dm.resume('p')).suspended).toBe(false);
    expect(sent.map((s) => [s.cmd, s.h.flags])).toEqual([
      [Cmd.DEV_SUSPEND, Flag.SUSPEND | Flag.NOFLUSH | Flag.SKIP_LOCKFS],
      [Cmd.DEV_SUSPEND, Flag.SUSPEND],
      [Cmd.DEV_SUSPEND, 0],
    ]);
  });

  test('resume passes noflush/skipLockfs for the swap', async () => {
    const { dm, sent } = fake();
    await dm.resume('p', { noflush: true, skipLockfs: true });
    expect(sent[0].h.flags).toBe(Flag.NOFLUSH | Flag.SKIP_LOCKFS);
  });

  test('createWithTable: create, load, resume; removes the device if the load fails', async () => {
    const table = [{ start: sectors(0), length: sectors(8), type: 'zero', params: '' }];
    const ok = fake();
    await ok.dm.createWithTable('vol', table, { uuid: 'U-vol' });
    expect(ok.sent.map((s) => [s.cmd, s.h.name])).toEqual([
      [Cmd.DEV_CREATE, 'vol'],
      [Cmd.TABLE_LOAD, 'vol'],
      [Cmd.DEV_SUSPEND, 'vol'],
    ]);
    const bad = fake((s) => (s.cmd === Cmd.TABLE_LOAD ? errnoError('EINVAL', -22) : reply(s)));
    await expect(bad.dm.createWithTable('vol', table)).rejects.toMatchObject({ code: 'EINVAL', ioctl: 'DM_TABLE_LOAD', device: 'vol' });
    expect(bad.sent.map((s) => s.cmd)).toEqual([Cmd.DEV_CREATE, Cmd.TABLE_LOAD, Cmd.DEV_REMOVE]);
    const none = fake();
    await expect(none.dm.createWithTable('vol', [])).rejects.toThrow(UsageError);
    expect(none.sent).toHaveLength(0);
  });

  test('loadTable: target_count, readOnly, specs payload', async () => {
    const { dm, sent } = fake((s) => reply(s, { flags: Flag.INACTIVE_PRESENT }));
    const info = await dm.loadTable(
      'pool',
      [
        { start: sectors(0), length: sectors(100), type: 'linear', params: '8:16 0' },
        { start: sectors(100), length: sectors(28), type: 'zero', params: '' },
      ],
      { readOnly: true },
    );
    expect(info.inactiveTable).toBe(true);
    expect(sent[0].h).toMatchObject({ targetCount: 2, flags: Flag.READONLY });
    expect(sent[0].payload.readUInt32LE(TARGET_SPEC.next)).toBe(48);
  });

  test('status / table / wait decode the results; flags for inactive and noflush', async () => {
    const lines = [
      { start: 0, length: 2097152, type: 'thin-pool', params: '0 1648/16384 0/8192 - rw discard_passdown queue_if_no_space - 1024 ' },
      { start: 2097152, length: 8, type: 'error', params: '' },
    ];
    const { dm, sent } = fake((s) => reply(s, { results: statusResults(lines), targetCount: 2 }));
    expect(await dm.status('pool', { noflush: true })).toEqual(lines);
    expect(await dm.table('pool', { inactive: true })).toEqual(lines);
    const w = await dm.wait('pool', 41, { noflush: true }); // the fake's counter is 9: returns at once
    expect(w.targets).toEqual(lines);
    expect(w.info.targetCount).toBe(2);
    expect(sent.map((s) => [s.cmd, s.h.flags, s.h.eventNr])).toEqual([
      [Cmd.TABLE_STATUS, Flag.NOFLUSH, 0],
      [Cmd.TABLE_STATUS, Flag.STATUS_TABLE | Flag.QUERY_INACTIVE_TABLE, 0],
      [Cmd.DEV_STATUS, 0, 0],
      [Cmd.TABLE_STATUS, Flag.NOFLUSH, 0],
    ]);
  });

  test('targetMessage: output only with DM_DATA_OUT_FLAG', async () => {
    const out = Buffer.from('stats output\0\0\0\0');
    const { dm, sent } = fake((s) => (s.payload.toString('utf8', 8).startsWith('@stats') ? reply(s, { flags: Flag.DATA_OUT, results: out }) : reply(s, { results: Buffer.alloc(0) })));
    expect(await dm.targetMessage('pool', sectors(0), PoolMessage.createThin(1))).toBeUndefined();
    expect(await dm.targetMessage('vol', sectors(8), '@stats_list')).toBe('stats output');
    expect(sent[0].payload.readBigUInt64LE(0)).toBe(0n);
    expect(sent[0].payload.toString('utf8', 8, 8 + 13)).toBe('create_thin 1');
    expect(sent[1].payload.readBigUInt64LE(0)).toBe(8n);
  });

  test('rename: new name or new uuid in the payload', async () => {
    const { dm, sent } = fake();
    await dm.rename('old', { name: 'new' });
    await dm.rename('new', { uuid: 'UUID-1' });
    expect(sent[0].payload.toString('utf8', 0, 4)).toBe('new\0');
    expect(sent[0].h.flags).toBe(0);
    expect(sent[1].payload.toString('utf8', 0, 7)).toBe('UUID-1\0');
    expect(sent[1].h.flags).toBe(Flag.UUID);
    await expect(dm.rename('new', { name: 'a/b' })).rejects.toThrow(UsageError);
  });

  test('remove reports a deferred removal', async () => {
    const { dm } = fake((s) => reply(s, { flags: s.h.flags & Flag.DEFERRED_REMOVE }));
    expect(await dm.remove('busy', { deferred: true })).toEqual({ deferred: true });
    expect(await dm.remove('idle')).toEqual({ deferred: false });
  });

  test('listDevices asks for uuids with DM_UUID_FLAG', async () => {
    const { dm, sent } = fake((s) => reply(s, { results: Buffer.alloc(16) }));
    expect(await dm.listDevices({ uuid: true })).toEqual([]);
    expect(sent[0].h.flags).toBe(Flag.UUID);
  });

  test('deps', async () => {
    const r = Buffer.alloc(24);
    r.writeUInt32LE(2, 0);
    r.writeBigUInt64LE(encodeDev({ major: 8, minor: 16 }), 8);
    r.writeBigUInt64LE(encodeDev({ major: 259, minor: 1 }), 16);
    const { dm } = fake((s) => reply(s, { results: r }));
    expect(await dm.deps('pool')).toEqual([
      { major: 8, minor: 16 },
      { major: 259, minor: 1 },
    ]);
  });
});

describe('errors', () => {
  test('a failed target message is a DmIoctlError with errno, ioctl, device and the message', async () => {
    const { dm } = fake(() => errnoError('EEXIST', -17));
    const err = await dm.targetMessage('pool', sectors(0), PoolMessage.createThin(5)).catch((e) => e);
    expect(err).toBeInstanceOf(DmIoctlError);
    expect(err).toBeInstanceOf(SystemCallError);
    expect(err).toBeInstanceOf(DmthinError);
    expect(err).toMatchObject({ name: 'DmIoctlError', code: 'EEXIST', errno: -17, syscall: 'ioctl', ioctl: 'DM_TARGET_MSG', device: 'pool', targetMessage: 'create_thin 5' });
    expect(err.message).toMatch(/DM_TARGET_MSG 'pool' "create_thin 5" failed: EEXIST/);
  });

  test('device label for uuid and dev lookups', async () => {
    const { dm } = fake(() => errnoError('ENXIO', -6));
    await expect(dm.info({ uuid: 'U-1' })).rejects.toMatchObject({ code: 'ENXIO', ioctl: 'DM_DEV_STATUS', device: 'U-1' });
    await expect(dm.status({ dev: { major: 253, minor: 4 } })).rejects.toMatchObject({ ioctl: 'DM_TABLE_STATUS', device: '253:4' });
  });

  // The control node did not open: nothing reached the kernel, so the error
  // says what the machine lacks and names no ioctl (it used to read
  // "DM_DEV_STATUS 'p' failed: ENOENT", as if there were no such pool).
  const openFailure = (code: string, errno: number) => Object.assign(errnoError(code, errno, 'open'), { path: '/dev/mapper/control' });
  const asUser = (uid: number) => jest.spyOn(process, 'getuid').mockReturnValue(uid);
  afterEach(() => jest.restoreAllMocks());

  test.each([
    ['ENOENT', -2, "device-mapper is not available: /dev/mapper/control does not exist; load it as root with 'modprobe dm_thin_pool' (which loads dm_mod too), then check that /dev/mapper/control exists ('dmsetup mknodes' creates it)"],
    ['ENODEV', -19, "device-mapper is not available: /dev/mapper/control exists but the kernel has no device-mapper driver; load it as root with 'modprobe dm_thin_pool' (which loads dm_mod too)"],
    ['ENXIO', -6, "device-mapper is not available: /dev/mapper/control exists but the kernel has no device-mapper driver; load it as root with 'modprobe dm_thin_pool' (which loads dm_mod too)"],
  ])('open of the control node fails with %s: SetupError no-device-mapper', async (code, errno, message) => {
    const { dm } = fake(() => openFailure(code, errno));
    const err = await dm.info('p').catch((e) => e);
    expect(err).toBeInstanceOf(SetupError);
    expect(err).not.toBeInstanceOf(DmIoctlError);
    expect(err).toMatchObject({ name: 'SetupError', kind: 'no-device-mapper', code, errno, syscall: 'open', path: '/dev/mapper/control', device: 'p' });
    expect(err.ioctl).toBeUndefined();
    expect(err.message).toBe(message);
  });

  test.each([
    ['EACCES', -13, 'permission denied'],
    ['EPERM', -1, 'operation not permitted'],
  ])('open of the control node fails with %s as a user: needs root', async (code, errno, text) => {
    asUser(1000);
    const { dm } = fake(() => openFailure(code, errno));
    const err = await dm.version().catch((e) => e);
    expect(err).toBeInstanceOf(SetupError);
    expect(err).toMatchObject({ kind: 'needs-root', code, errno, syscall: 'open', path: '/dev/mapper/control' });
    expect(err.message).toBe(`needs root (CAP_SYS_ADMIN): cannot open /dev/mapper/control: ${text}; run as root (e.g. with sudo)`);
  });

  test('EACCES as uid 0 (a container without CAP_SYS_ADMIN): no advice to use sudo', async () => {
    asUser(0);
    const { dm } = fake(() => openFailure('EACCES', -13));
    const err = await dm.version().catch((e) => e);
    expect(err).toMatchObject({ kind: 'needs-root', code: 'EACCES' });
    expect(err.message).toBe('needs root (CAP_SYS_ADMIN): cannot open /dev/mapper/control: permission denied; this process is root but lacks that privilege (a container or security policy?)');
  });

  test("the ioctl's capability check (EACCES) is needs-root, keeping ioctl and device", async () => {
    asUser(1000);
    const { dm } = fake(() => errnoError('EACCES', -13));
    const err = await dm.targetMessage('pool', sectors(0), PoolMessage.createThin(5)).catch((e) => e);
    expect(err).toBeInstanceOf(SetupError);
    expect(err).toMatchObject({ kind: 'needs-root', code: 'EACCES', errno: -13, syscall: 'ioctl', ioctl: 'DM_TARGET_MSG', device: 'pool', targetMessage: 'create_thin 5' });
    expect(err.message).toBe("needs root (CAP_SYS_ADMIN): the kernel refused DM_TARGET_MSG 'pool': permission denied; run as root (e.g. with sudo)");
  });

  test('other open failures stay DmIoctlError with syscall and path', async () => {
    const { dm } = fake(() => openFailure('EMFILE', -24));
    await expect(dm.version()).rejects.toMatchObject({ name: 'DmIoctlError', code: 'EMFILE', syscall: 'open', path: '/dev/mapper/control', ioctl: 'DM_VERSION' });
  });

  test('BUFFER_FULL reaching TypeScript is ENOBUFS, not a half list', async () => {
    const { dm } = fake((s) => reply(s, { flags: Flag.BUFFER_FULL, results: Buffer.alloc(16) }));
    await expect(dm.listDevices()).rejects.toMatchObject({ code: 'ENOBUFS', ioctl: 'DM_LIST_DEVICES' });
  });

  test('programming errors pass through untouched', async () => {
    const te = new TypeError('bad');
    const { dm } = fake(() => te);
    await expect(dm.version()).rejects.toBe(te);
  });
});

describe('/dev/mapper nodes', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'dmthin-nodes-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  function nodeDm(devDir: string, handler: Reply = (s) => reply(s, { dev: { major: 253, minor: 77 } })) {
    const sent: Sent[] = [];
    const dm = new DeviceMapper({
      nodes: 'always',
      devDir,
      transport: async (cmd, req) => {
        const s = { cmd, h: decodeHeader(req), payload: req.subarray(IOCTL.size) };
        sent.push(s);
        const r = handler(s);
        if (r instanceof Error) throw r;
        return r;
      },
    });
    return { dm, sent };
  }

  testAsRoot('create makes the node (mode 0600, right dev), remove takes it away', async () => {
    const devDir = join(dir, 'mapper');
    const { dm } = nodeDm(devDir);
    await dm.create('pool');
    const st = lstatSync(join(devDir, 'pool'));
    expect(st.isBlockDevice()).toBe(true);
    expect(st.mode & 0o7777).toBe(0o600);
    expect(st.rdev).toBe(Number(encodeDev({ major: 253, minor: 77 })));
    await dm.remove('pool');
    expect(existsSync(join(devDir, 'pool'))).toBe(false);
  });

  testAsRoot('a stale node is replaced; a non-node (udev symlink) is left alone', async () => {
    const { dm } = nodeDm(dir);
    const { native } = await import('../../src/native/binding');
    native().mknodBlock(join(dir, 'pool'), 253, 1, 0o600);
    await dm.create('pool');
    expect(lstatSync(join(dir, 'pool')).rdev).toBe(Number(encodeDev({ major: 253, minor: 77 })));
    writeFileSync(join(dir, 'other'), 'not a node');
    await dm.create('other');
    expect(lstatSync(join(dir, 'other')).isFile()).toBe(true);
    await dm.remove('other');
    expect(lstatSync(join(dir, 'other')).isFile()).toBe(true);
  });

  test('if the node cannot be made the device is removed again', async () => {
    const file = join(dir, 'file');
    writeFileSync(file, '');
    const { dm, sent } = nodeDm(join(file, 'mapper')); // mkdir under a file: ENOTDIR
    await expect(dm.create('pool')).rejects.toMatchObject({ code: 'ENOTDIR' });
    expect(sent.map((s) => [s.cmd, s.h.name])).toEqual([
      [Cmd.DEV_CREATE, 'pool'],
      [Cmd.DEV_REMOVE, 'pool'],
    ]);
  });

  test("nodes: 'never' touches nothing", async () => {
    const { dm } = fake((s) => reply(s));
    await dm.create('pool');
    expect(existsSync(join('/dev/mapper', 'pool'))).toBe(false);
  });
});
