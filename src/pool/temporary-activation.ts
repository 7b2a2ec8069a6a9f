/**
 * A thin device activated under a temporary name (read-only unless asked
 * otherwise) for as long as a reader or writer needs it, and removed afterwards. It is marked for deferred removal
 * as soon as the reader has it open, so the kernel removes it when the last
 * descriptor closes, even if the process is killed.
 */
import { parseThinTable, THIN_TARGET } from '../dm/targets/thin';
import { SystemCallError } from '../errors';
import { native } from '../native/binding';
import { type Sectors } from '../units';
import { ThinDevice } from './thin-device';
import type { ThinPool } from './thin-pool';

export interface TemporaryActivation<T> {
  /** What `open` returned for the device's path. */
  readonly handle: T;
  /** Closes the handle, then removes the device (or only its node, once the kernel has). */
  dispose(): Promise<void>;
  /**
   * An IO error on the temporary device, told as one on the thin and its
   * pool (the temporary name means nothing to a user), with what the pool's
   * state says about it; any other error is returned as it is.
   */
  explain(e: unknown): Promise<unknown>;
}

export interface TemporaryActivationOptions {
  devId: number;
  length: Sectors;
  /** dm name prefix; the pid, the id and a random suffix follow. */
  prefix: string;
  /** Activate read-write (default read-only): a merge writes into its origin. */
  writable?: boolean;
}

/** Activates thin `devId` under a temporary name (read-only unless `writable`) and opens it with `open`. */
export async function activateTemporarily<T extends { close(): Promise<void> | void }>(
  pool: ThinPool,
  o: TemporaryActivationOptions,
  open: (path: string) => Promise<T>,
): Promise<TemporaryActivation<T>> {
  const name = `${o.prefix}-${process.pid}-${o.devId}-${Math.random().toString(36).slice(2, 8)}`;
  const dev = await ThinDevice.activate(pool, { name, devId: o.devId, length: o.length, readOnly: o.writable !== true });
  let handle: T | undefined;
  let deferred = false;
  const dispose = async (): Promise<void> => {
    await handle?.close();
    if (!deferred) {
      await removeWithRetry(dev);
    } else {
      // Gone with our last descriptor; a node we may have made stays behind without udev.
      try {
        native().unlinkNode(dev.path, dev.dev.major, dev.dev.minor);
      } catch {
        // udev's node, or already gone
      }
    }
  };
  try {
    handle = await open(dev.path);
    try {
      deferred = (await pool.dm.remove(name, { deferred: true })).deferred;
    } catch {
      deferred = false; // old kernel: removed explicitly in dispose()
    }
    return { handle, dispose, explain: (e) => explainDeviceError(pool, o.devId, dev.path, e) };
  } catch (e) {
    await dispose().catch(() => undefined);
    throw e;
  }
}

/**
 * Removes the temporary devices (`${prefix}-PID-ID-xxxxxx`) of dmthin
 * processes that are gone, when no one has them open: one killed between
 * creating a device and marking it for deferred removal leaves it behind,
 * with its thin active (which refuses a merge or a delete of that thin) or,
 * killed before the table was loaded, with no table at all (outside hunt
 * AC: a send killed during a replicate cycle, 2 of 28). Only devices with
 * no table or whose table is a thin of `pool`; anything else is left alone.
 * Returns the names removed.
 */
export async function removeStaleTemporaries(pool: ThinPool, prefix: string): Promise<string[]> {
  const named = new RegExp(`^${prefix}-(\\d+)-\\d+-[a-z0-9]+$`);
  const removed: string[] = [];
  for (const d of await pool.dm.listDevices()) {
    const m = named.exec(d.name);
    if (!m || Number(m[1]) === process.pid || alive(Number(m[1]))) continue;
    try {
      const info = await pool.dm.info(d.name);
      if (info.openCount !== 0) continue;
      if (info.targetCount !== 0) {
        const [t, ...more] = await pool.dm.table(d.name);
        if (more.length > 0 || t?.type !== THIN_TARGET || parseThinTable(t.params).poolDev !== pool.devString) continue;
      }
      await pool.dm.remove(d.name);
      removed.push(d.name);
    } catch {
      // gone meanwhile, or busy: a merge then refuses it as an active thin
    }
  }
  return removed;
}

/** Whether process `pid` exists (one of another user's counts). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Deactivates `dev`, retrying while udev still holds the new device open for a moment (EBUSY). */
async function removeWithRetry(dev: ThinDevice): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      await dev.deactivate();
      return;
    } catch (e) {
      if ((e as { code?: string }).code !== 'EBUSY' || i >= 20) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/**
 * Rewrites an error of a read or write on `path`, the temporary device of
 * thin `devId`: the thin and the pool are named, and where the pool's
 * status explains the error (out of data space, read-only, failed) it says
 * so. The original error stays as the cause.
 */
async function explainDeviceError(pool: ThinPool, devId: number, path: string, e: unknown): Promise<unknown> {
  const err = e as { code?: unknown; path?: unknown; message?: unknown; syscall?: string; errno?: number; offset?: number };
  if (!(e instanceof Error) || err.path !== path || typeof err.code !== 'string') return e;
  let why = '';
  try {
    const s = await pool.status({ noflush: true });
    if (s.kind === 'fail') why = `: pool ${pool.name} has failed (see dmesg; its metadata needs thin_check/thin_repair)`;
    else if (s.kind === 'error') why = `: pool ${pool.name} reports Error (see dmesg)`;
    else if (s.mode === 'out_of_data_space') why = `: pool ${pool.name} is out of data space (extend its data device, or free space in it)`;
    else if (s.mode === 'ro') why = `: pool ${pool.name} is read-only (see dmesg)`;
  } catch {
    // the pool itself cannot be asked: name the thin all the same
  }
  const what = `thin ${devId} of pool ${pool.name} (through temporary device ${path})`;
  const text = String(err.message);
  const message = (text.includes(`'${path}'`) ? text.split(`'${path}'`).join(what) : text.split(path).join(what)) + why;
  return new SystemCallError(err.code, message, {
    ...(err.errno !== undefined ? { errno: err.errno } : {}),
    syscall: err.syscall,
    path,
    device: pool.name,
    devId,
    ...(err.offset !== undefined ? { offset: err.offset } : {}),
    cause: e,
  });
}
