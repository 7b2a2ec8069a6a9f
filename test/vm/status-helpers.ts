/** Shared by the status suites (status.vm.test.ts and status-failure.isolated.vm.test.ts). */
import { type ChildProcess, spawn } from 'node:child_process';
import { PoolMessage, type ThinPoolFeature, thinPoolTarget } from '../../src/dm/targets/thin-pool';
import { parseThinTable } from '../../src/dm/targets/thin';
import { ThinDevice } from '../../src/pool/thin-device';
import { dataBlocks, sectors } from '../../src/units';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { type DmSandbox, MiB, run } from './helpers';
import { REPO, type TestPool, createTestPool, ddCmd, dmsetupStatus, expectIoctlError, expectedPoolStatus, expectedThinStatus, swapTable } from './pool-helpers';

export const BLOCK = 64 * 1024;

/** Reloads the pool's table (same devices) with other features and/or length, and resumes. */
export async function reloadPool(tp: TestPool, o: { features?: ThinPoolFeature[]; blocks?: number; lowWaterMark?: number }): Promise<void> {
  const t = await tp.pool.table();
  const length = o.blocks !== undefined ? o.blocks * tp.blockSectors : t.length;
  await swapTable(tp.dm, tp.name, [
    thinPoolTarget(sectors(length), {
      metadataDev: t.metadataDev,
      dataDev: t.dataDev,
      dataBlockSize: t.dataBlockSize,
      lowWaterMark: dataBlocks(o.lowWaterMark ?? t.lowWaterMark),
      features: o.features ?? t.features,
    }),
  ]);
}

/** Typed status of the pool and of its thin devices vs one `dmsetup status` of each. */
export async function expectStatusMatches(tp: TestPool, thins: ThinDevice[] = []) {
  const lines = dmsetupStatus(tp.name, ...thins.map((t) => t.name));
  const typed = await tp.pool.status();
  expect(typed).toEqual(expectedPoolStatus(lines.get(tp.name)!));
  for (const t of thins) expect({ thin: t.name, status: await t.status() }).toEqual({ thin: t.name, status: expectedThinStatus(lines.get(t.name)!) });
  return typed;
}

/** The six pool messages, each refused with EOPNOTSUPP (errno 95, code ENOTSUP). */
export async function expectMessagesRefused(tp: TestPool) {
  for (const text of [
    PoolMessage.createThin(9),
    PoolMessage.createSnap(9, 1),
    PoolMessage.delete(1),
    PoolMessage.setTransactionId(0, 1),
    PoolMessage.reserveMetadataSnap(),
    PoolMessage.releaseMetadataSnap(),
  ]) {
    // errno 95: the kernel's EOPNOTSUPP, which Node (libuv) names ENOTSUP.
    await expectIoctlError(tp.pool.message(text), { code: 'ENOTSUP', ioctl: 'DM_TARGET_MSG', device: tp.name, targetMessage: text });
  }
}

/** A pool on a `zero` data device with thin 1 active (`thinBlocks` long). */
export async function poolWithThin(sb: DmSandbox, o: Parameters<typeof createTestPool>[1] & { thinBlocks?: number } = {}) {
  const tp = await createTestPool(sb, { data: 'zero', dataBytes: 64 * MiB, ...o });
  await tp.pool.createThin(1);
  const thin = await ThinDevice.activate(tp.pool, { name: sb.adopt(`${o.label ?? 'pool'}-t1`), devId: 1, length: sectors((o.thinBlocks ?? 1024) * tp.blockSectors) });
  return { tp, thin };
}

/** O_DIRECT writes of zeros at [offset, length] byte pairs, in one process (the fixtures' helper). */
export function directWrite(dev: string, writes: [number, number][], allowFail = false) {
  const script = join(REPO, 'scripts', 'fixtures', 'kernel', 'direct-write.py');
  // The system's python: a pyenv shim first on PATH (a developer's machine)
  // runs a dozen processes per start, 10-14 s each under emulation.
  return run(existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3', [script, dev], { input: writes.map(([o, n]) => `${o} ${n}`).join('\n') + '\n', allowFail, timeoutMs: 120_000 });
}

export function spawnDd(dev: string, seekBlocks: number, countBlocks: number): { child: ChildProcess; exit: Promise<number | null> } {
  const child = spawn('sh', ['-c', ddCmd(dev, { bs: BLOCK, seek: seekBlocks, count: countBlocks, src: '/dev/zero' })], { stdio: 'ignore' });
  return { child, exit: new Promise((res) => child.on('exit', (code) => res(code))) };
}

/** maj:min of the external origin device named in a thin device's table. */
export async function t3Origin(t: ThinDevice): Promise<string | undefined> {
  const [kt] = await t.dm.table(t.name);
  return parseThinTable(kt.params).externalOriginDev;
}

