/**
 * Every pool message's failure mode with the errno the kernel returns, as a
 * DmIoctlError (code, errno, ioctl 'DM_TARGET_MSG', device, targetMessage);
 * DeviceMapper's own failures (ENXIO, EBUSY, ...); the BUFFER_FULL retry on
 * big results; O_EXCL on a live pool's metadata; and the same errors through
 * the CLI (`dmthin pool`, `dmthin message`), with `dmthin pool status` and
 * `dmthin devices` checked against dmsetup.
 */
import { closeSync, openSync, statSync } from 'node:fs';
import { DeviceMapper } from '../../src/dm/device-mapper';
import type { DmTarget } from '../../src/dm/ioctl';
import { MetadataSnapError, NameLookupError } from '../../src/errors';
import { ThinDevice } from '../../src/pool/thin-device';
import { ThinPool } from '../../src/pool/thin-pool';
import { ThinMetadata } from '../../src/thin/metadata';
import { sectors } from '../../src/units';
import { MiB, describeVm, run, useDmSandbox } from './helpers';
import { CLI, createTestPool, dmsetupFields, expectIoctlError, oneTarget, sh, waitFor } from './pool-helpers';

describeVm('pool messages and dm ioctls: failures and their errnos on a real kernel', () => {
  const sandbox = useDmSandbox('messages');

  test('every pool message failure: EEXIST, ENODATA, EBUSY, EINVAL, as DmIoctlError with the message text', async () => {
    const sb = sandbox();
    const { pool, name } = await createTestPool(sb, { dataBytes: 16 * MiB });
    const fails = (p: Promise<unknown>, code: string, text: string) =>
      expectIoctlError(p, { code, ioctl: 'DM_TARGET_MSG', device: name, targetMessage: text });

    await pool.createThin(1);
    await fails(pool.createThin(1), 'EEXIST', 'create_thin 1');
    await pool.createSnap(2, 1); // origin not active: nothing to suspend
    await fails(pool.createSnap(2, 1), 'EEXIST', 'create_snap 2 1');
    await fails(pool.createSnap(3, 9), 'ENODATA', 'create_snap 3 9');
    await fails(pool.delete(9), 'ENODATA', 'delete 9');

    // delete of an active thin, and of one also held open by a process.
    const t1 = await ThinDevice.activate(pool, { name: sb.adopt('t1'), devId: 1, length: sectors(4096) });
    await fails(pool.delete(1), 'EBUSY', 'delete 1');
    const fd = openSync(t1.path, 'r');
    try {
      await fails(pool.delete(1), 'EBUSY', 'delete 1');
      expect((await pool.dm.info(t1.name)).openCount).toBe(1);
    } finally {
      closeSync(fd);
    }
    // create_snap of an active origin the caller has suspended: it stays suspended.
    await t1.suspend();
    await pool.createSnap(10, 1);
    expect((await pool.dm.info(t1.name)).suspended).toBe(true);
    await t1.resume();
    await pool.delete(10);

    await t1.deactivate();
    await pool.delete(1); // inactive now: allowed
    await fails(pool.delete(1), 'ENODATA', 'delete 1');

    // A second reserve fails and leaves the first one alone: the kernel's EBUSY
    // (the raw message), and through reserveMetadataSnap the library's error
    // naming the held root, with the kernel's as its cause.
    const snap = await pool.reserveMetadataSnap();
    await fails(pool.message('reserve_metadata_snap'), 'EBUSY', 'reserve_metadata_snap');
    const second = await pool.reserveMetadataSnap().then(
      () => null,
      (e: unknown) => e,
    );
    expect(second).toBeInstanceOf(MetadataSnapError);
    expect(second).toMatchObject({ code: 'EBUSY', message: expect.stringMatching(new RegExp(`^thin-pool ${name} already holds a metadata snapshot \\(root ${snap.root}\\), reserved by `)) });
    await expectIoctlError(Promise.reject((second as Error).cause), { code: 'EBUSY', ioctl: 'DM_TARGET_MSG', device: name, targetMessage: 'reserve_metadata_snap' });
    expect((await pool.workingStatus()).heldMetadataRoot).toBe(snap.root);
    await snap.release();
    await fails(pool.releaseMetadataSnap(), 'EINVAL', 'release_metadata_snap');
    // Reading a pool's snapshot when none is held is the library's error, not the kernel's.
    await expect(pool.metadata()).rejects.toBeInstanceOf(MetadataSnapError);

    // set_transaction_id is a compare-and-swap.
    await pool.setTransactionId(0n, 5n);
    await fails(pool.setTransactionId(0n, 6n), 'EINVAL', 'set_transaction_id 0 6');
    await fails(pool.setTransactionId(4n, 6n), 'EINVAL', 'set_transaction_id 4 6');
    expect((await pool.workingStatus()).transactionId).toBe(5n);

    // Raw messages the builders would refuse to write: the kernel says EINVAL.
    await fails(pool.message('create_thin 16777216'), 'EINVAL', 'create_thin 16777216');
    await fails(pool.message('create_thin'), 'EINVAL', 'create_thin');
    await fails(pool.message('frobnicate 1'), 'EINVAL', 'frobnicate 1');
    // Names are matched case-insensitively by the kernel.
    await pool.message('CREATE_THIN 7');
    await fails(pool.createThin(7), 'EEXIST', 'create_thin 7');
  });

  test('DeviceMapper: ENXIO for a missing device by name and by number, EBUSY removing an open one, deferred remove, duplicate names, bad tables', async () => {
    const sb = sandbox();
    const dm = new DeviceMapper();
    const ghost = sb.name('ghost');
    const missing: [() => Promise<unknown>, string, string?][] = [
      [() => dm.info(ghost), 'DM_DEV_STATUS'],
      [() => dm.status(ghost), 'DM_TABLE_STATUS'],
      [() => dm.table(ghost), 'DM_TABLE_STATUS'],
      [() => dm.deps(ghost), 'DM_TABLE_DEPS'],
      [() => dm.suspend(ghost), 'DM_DEV_SUSPEND'],
      [() => dm.resume(ghost), 'DM_DEV_SUSPEND'],
      [() => dm.remove(ghost), 'DM_DEV_REMOVE'],
      [() => dm.loadTable(ghost, oneTarget(8, 'zero', '')), 'DM_TABLE_LOAD'],
      [() => dm.clearTable(ghost), 'DM_TABLE_CLEAR'],
      [() => dm.rename(ghost, { name: `${ghost}2` }), 'DM_DEV_RENAME'],
      [() => dm.wait(ghost, 0), 'DM_DEV_STATUS'],
      [() => dm.targetMessage(ghost, sectors(0), 'create_thin 1'), 'DM_TARGET_MSG', 'create_thin 1'],
      [() => ThinDevice.open(ghost), 'DM_DEV_STATUS'],
    ];
    for (const [call, ioctl, targetMessage] of missing) await expectIoctlError(call(), { code: 'ENXIO', ioctl, device: ghost, targetMessage });
    // A pool name is resolved first (dm name, VG/LV, device node): a name that finds nothing is a NameLookupError, ENXIO.
    const lookup = await ThinPool.open(ghost).then(
      () => null,
      (e: unknown) => e,
    );
    expect(lookup).toBeInstanceOf(NameLookupError);
    expect(lookup).toMatchObject({ code: 'ENXIO', reason: 'not-found', given: ghost });
    await expectIoctlError(dm.info({ dev: { major: 254, minor: 0xffff } }), { code: 'ENXIO', ioctl: 'DM_DEV_STATUS', device: '254:65535' });
    await expectIoctlError(dm.info({ uuid: `${ghost}-uuid` }), { code: 'ENXIO', ioctl: 'DM_DEV_STATUS', device: `${ghost}-uuid` });

    // A zero device; a second one with the same name or uuid is refused.
    const z = sb.adopt('z');
    const info = await dm.createWithTable(z, oneTarget(8192, 'zero', ''), { uuid: `${z}-uuid` });
    expect(info).toMatchObject({ name: z, uuid: `${z}-uuid`, activeTable: true, suspended: false, openCount: 0, targetCount: 1 });
    await expectIoctlError(dm.create(z), { code: 'EBUSY', ioctl: 'DM_DEV_CREATE', device: z });
    const z2 = sb.adopt('z2');
    await expectIoctlError(dm.create(z2, { uuid: `${z}-uuid` }), { code: 'EBUSY', ioctl: 'DM_DEV_CREATE', device: z2 });
    expect((await dm.info({ uuid: `${z}-uuid` })).name).toBe(z);

    // A table the target refuses: the reason goes to dmesg, the caller gets the errno.
    await expectIoctlError(dm.loadTable(z, oneTarget(8192, 'linear', '/nonexistent 0')), { code: 'ENODEV', ioctl: 'DM_TABLE_LOAD', device: z });
    await expectIoctlError(dm.loadTable(z, oneTarget(8192, 'no-such-target', '')), { code: 'EINVAL', ioctl: 'DM_TABLE_LOAD', device: z });

    // EBUSY: removing an open device; a deferred remove happens at the last close.
    const fd = openSync(`${dm.devDir}/${z}`, 'r');
    try {
      await expectIoctlError(dm.remove(z), { code: 'EBUSY', ioctl: 'DM_DEV_REMOVE', device: z });
      expect(await dm.remove(z, { deferred: true })).toEqual({ deferred: true });
      expect((await dm.info(z)).deferredRemove).toBe(true);
    } finally {
      closeSync(fd);
    }
    // The kernel runs the deferred removal from a work queue after the last close.
    await waitFor(`${z} removed after its last close`, () => dm.info(z).then(() => false, () => true), 5_000, 50);
    await expectIoctlError(dm.info(z), { code: 'ENXIO', ioctl: 'DM_DEV_STATUS', device: z });
  });

  test('results larger than the first 16 KiB buffer come back whole (BUFFER_FULL retry): 1000-target table, 120 long names', async () => {
    const sb = sandbox();
    const dm = new DeviceMapper();
    const loop = sb.loop(4 * MiB, 'backing');
    const { major, minor } = await import('../../src/dm/block-devices').then((m) => m.devNumOf(loop.path));
    const targets: DmTarget[] = Array.from({ length: 1000 }, (_, i) => ({ start: i * 8, length: 8, type: 'linear', params: `${major}:${minor} ${i * 8}` }) as DmTarget);
    const many = sb.adopt('many');
    await dm.createWithTable(many, targets);
    expect(await dm.table(many)).toEqual(targets);
    const st = await dm.status(many);
    expect(st).toHaveLength(1000);
    expect(st[999]).toEqual({ start: 7992, length: 8, type: 'linear', params: '' });
    expect(await dm.deps(many)).toEqual([{ major, minor }]);
    expect(dmsetupFields(run('dmsetup', ['table', many]).stdout.split('\n')[999])).toEqual([`${major}:${minor}`, '7992']);

    // 120 names of ~120 bytes: 17 KiB of dm_name_list without uuids, 32 KiB with.
    // Not adopted by the sandbox (its teardown spawns dmsetup per name): removed here, also on failure.
    // No /dev/mapper nodes for these (nodes: 'never'): two ioctls per device.
    const bare = new DeviceMapper({ nodes: 'never' });
    const names = Array.from({ length: 120 }, (_, i) => sb.name(`${'n'.repeat(105)}${i}`));
    try {
      for (const n of names) await bare.create(n, { uuid: `${n}-u` });
      const listed = await dm.listDevices({ uuid: true });
      for (const n of names) expect(listed.find((d) => d.name === n)).toMatchObject({ name: n, uuid: `${n}-u` });
      const plain = await dm.listDevices();
      expect(plain.map((d) => d.name).sort()).toEqual(listed.map((d) => d.name).sort());
      const dmsetupLs = run('dmsetup', ['ls']).stdout.trim().split('\n').length;
      expect(plain).toHaveLength(dmsetupLs);
    } finally {
      for (const n of names) await bare.remove(n).catch(() => undefined);
    }
    expect((await dm.listDevices()).filter((d) => names.includes(d.name))).toEqual([]);

    const versions = await dm.listVersions();
    expect(versions.map((v) => v.name)).toEqual(expect.arrayContaining(['thin-pool', 'thin', 'linear', 'zero']));
    expect((await dm.targetVersion('thin-pool')).version).toEqual(versions.find((v) => v.name === 'thin-pool')!.version);
    expect((await dm.version())[0]).toBe(4);
  });

  test('DeviceMapper on a real kernel: message output (DATA_OUT, a 100+ KiB reply through the BUFFER_FULL retry), inactive table, clear, rename, geometry, fixed minor', async () => {
    const sb = sandbox();
    const dm = new DeviceMapper();
    const s = sb.adopt('s');
    const created = await dm.createWithTable(s, oneTarget(8192, 'zero', ''), { minor: 4321, readOnly: true });
    expect(created).toMatchObject({ dev: { major: created.dev.major, minor: 4321 }, readOnly: true, activeTable: true });
    expect(run('dmsetup', ['info', '-c', '--noheadings', '-o', 'minor,attr', s]).stdout.trim()).toMatch(/^4321:L-sr|^4321:L--r/);

    // dm core messages (@stats_*) return text: DATA_OUT.
    // 4096 areas of 2 sectors: @stats_print answers with one line per area.
    expect(await dm.targetMessage(s, sectors(0), '@stats_create - /4096')).toBe('0');
    expect(await dm.targetMessage(s, sectors(0), '@stats_list')).toMatch(/^0: 0\+8192 \d+ /);
    const printed = (await dm.targetMessage(s, sectors(0), '@stats_print 0'))!;
    const lines = printed.trim().split('\n');
    expect(lines).toHaveLength(4096);
    expect(printed.length).toBeGreaterThan(64 * 1024); // well past the first 16 KiB buffer
    expect(lines[0]).toMatch(/^0\+2 0 0 0 0 /);
    expect(lines[4095]).toMatch(/^8190\+2 0 0 0 0 /);
    expect(await dm.targetMessage(s, sectors(0), '@stats_delete 0')).toBeUndefined();

    // Inactive table: loaded, seen with inactive: true, cleared.
    await dm.loadTable(s, oneTarget(4096, 'error', ''));
    expect(await dm.info(s)).toMatchObject({ activeTable: true, inactiveTable: true });
    expect(await dm.table(s, { inactive: true })).toEqual([{ start: 0, length: 4096, type: 'error', params: '' }]);
    expect(await dm.table(s)).toEqual([{ start: 0, length: 8192, type: 'zero', params: '' }]);
    expect(await dm.clearTable(s)).toMatchObject({ inactiveTable: false });
    await dm.remove(s);

    // Rename moves the /dev/mapper node we made; then a uuid for a device that had none.
    // (On a fresh device: Debian's 6.1 kernel double-frees dm-ima data when a
    // device whose inactive table was cleared is renamed and then removed.)
    const r0 = sb.adopt('r');
    await dm.createWithTable(r0, oneTarget(8192, 'zero', ''), { minor: 4321 });
    const renamed = sb.adopt('r-renamed');
    await dm.rename(r0, { name: renamed });
    expect((await dm.info(renamed)).dev.minor).toBe(4321);
    expect(statSync(`${dm.devDir}/${renamed}`).rdev).toBe(statSync(`/dev/dm-4321`).rdev);
    expect(() => statSync(`${dm.devDir}/${r0}`)).toThrow();
    await dm.rename(renamed, { uuid: `${renamed}-uuid` });
    expect((await dm.info({ uuid: `${renamed}-uuid` })).name).toBe(renamed);

    await dm.setGeometry(renamed, { cylinders: 2, heads: 64, sectors: 32, start: sectors(0) });
    await expectIoctlError(dm.setGeometry(renamed, { cylinders: 1e6, heads: 255, sectors: 63, start: sectors(0) }), {
      code: 'EINVAL',
      ioctl: 'DM_DEV_SET_GEOMETRY',
      device: renamed,
    });
    await dm.remove(renamed);
    expect(() => statSync(`${dm.devDir}/${renamed}`)).toThrow();
  });

  test('live metadata is O_EXCL-busy without -m; the CLI: message errors, pool status and devices against dmsetup', async () => {
    const sb = sandbox();
    const { pool, name, metaPath } = await createTestPool(sb, { dataBytes: 16 * MiB, features: ['skip_block_zeroing'] });
    await pool.createThin(1);
    const thin = await ThinDevice.activate(pool, { name: sb.adopt('t1'), devId: 1, length: sectors(8192) });
    await expect(ThinMetadata.open(metaPath)).rejects.toMatchObject({ code: 'EBUSY' });

    // Five CLI runs at once (none changes the pool): node's start-up is the cost here.
    const script = `
      cli=$1 pool=$2 meta=$3 d=$4
      node "$cli" pool create-thin "$pool" 1 > "$d/1" 2>&1 & p1=$!
      node "$cli" message "$pool" 0 frobnicate > "$d/2" 2>&1 & p2=$!
      node "$cli" dump "$meta" 2> "$d/3" >/dev/null & p3=$!
      { dmsetup status "$pool"; node "$cli" pool status --json "$pool"; } > "$d/4" 2>&1 & p4=$!
      { dmsetup table; node "$cli" devices --json; } > "$d/5" 2>&1 & p5=$!
      rcs=; for p in $p1 $p2 $p3 $p4 $p5; do wait $p; rcs="$rcs $?"; done
      i=1; for rc in $rcs; do cat "$d/$i"; echo "@rc=$rc"; i=$((i + 1)); done
    `;
    const parts = sh(script, [CLI, name, metaPath, sb.dir], { timeoutMs: 120_000 }).stdout.split(/@rc=(\d+)\n/);
    const [createOut, createRc, msgOut, msgRc, dumpOut, dumpRc, statusOut, statusRc, devOut, devRc] = parts;
    expect([createRc, msgRc, dumpRc, statusRc, devRc]).toEqual(['1', '1', '1', '0', '0']);
    expect(createOut).toMatch(/^dmthin pool create-thin: .*"create_thin 1".*EEXIST/);
    expect(msgOut).toMatch(/^dmthin message: .*"frobnicate".*EINVAL/);
    expect(dumpOut).toMatch(/^dmthin dump: .*EBUSY/);

    const [dmsetupLine, json] = [statusOut.slice(0, statusOut.indexOf('\n')), statusOut.slice(statusOut.indexOf('\n') + 1)];
    const f = dmsetupFields(dmsetupLine);
    expect(JSON.parse(json)).toEqual({
      pool: name,
      kind: 'working',
      transactionId: f[0], // a u64: a decimal string (docs/json.md)
      usedMetadata: Number(f[1].split('/')[0]),
      totalMetadata: Number(f[1].split('/')[1]),
      usedData: Number(f[2].split('/')[0]),
      totalData: Number(f[2].split('/')[1]),
      heldMetadataRoot: null,
      mode: f[4],
      discard: f[5],
      noSpacePolicy: 'queue',
      needsCheck: false,
      metadataLowWatermark: Number(f[8]),
      extra: [],
    });

    const jsonStart = devOut.indexOf('[');
    const tables = new Map(
      devOut
        .slice(0, jsonStart)
        .trim()
        .split('\n')
        .map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 2).trim()] as [string, string]),
    );
    const devices = JSON.parse(devOut.slice(jsonStart)) as { name: string; dev: string; targets: DmTarget[] }[];
    for (const n of [name, thin.name]) {
      const d = devices.find((x) => x.name === n)!;
      expect(d.targets.map((t) => `${t.start} ${t.length} ${t.type} ${t.params}`.trim())).toEqual([tables.get(n)]);
    }
    expect(devices.find((x) => x.name === thin.name)!.dev).toBe(`${thin.dev.major}:${thin.dev.minor}`);
  });
});
