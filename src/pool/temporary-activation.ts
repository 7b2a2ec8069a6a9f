/**
 * A thin device activated under a temporary name (read-only unless asked
 * otherwise) for as long as a reader or writer needs it, and removed afterwards. It is marked for deferred removal
 * as soon as the reader has it open, so the kernel removes it when the last
 * descriptor closes, even if the process is killed.
 */
import { native } from '../native/binding';
import { type Sectors } from '../units';
import { ThinDevice } from './thin-device';
import type { ThinPool } from './thin-pool';

export interface TemporaryActivation<T> {
  /** What `open` returned for the device's path. */
  readonly handle: T;
  /** Closes the handle, then removes the device (or only its node, once the kernel has). */
  dispose(): Promise<void>;
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
    return { handle, dispose };
  } catch (e) {
    await dispose().catch(() => undefined);
    throw e;
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
