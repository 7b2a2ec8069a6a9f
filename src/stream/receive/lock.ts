/**
 * One receive per target at a time. Two receives writing one target would
 * interleave their records and both record a state; the second is refused
 * as soon as it starts instead.
 *
 *  - the state file: an flock(2) on `<state file>.lock` (the state file
 *    itself is replaced by rename, so it cannot carry the lock);
 *  - a regular-file target: an flock on the file itself, whatever path
 *    (link, symlink) it was named by;
 *  - a block-device target: the writer's O_EXCL open, which the kernel
 *    grants once per device whatever node names it (taken when the receive
 *    starts, held until it ends).
 *
 * flock locks belong to the open file: the kernel drops them when the
 * descriptor closes, also when the process is killed, so no stale lock ever
 * needs cleaning up.
 */
import { closeSync, constants, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import { DmthinError } from '../../errors';
import { native } from '../../native/binding';

export class ReceiveLock {
  private readonly fds: number[] = [];

  private constructor(private readonly target: string) {}

  /** Locks the state file (creating its directory and lock file) and, if it exists as a regular file, the target. */
  static acquire(target: string, stateFile: string, targetIsFile: boolean): ReceiveLock {
    const l = new ReceiveLock(target);
    try {
      const lockFile = `${stateFile}.lock`;
      try {
        mkdirSync(dirname(lockFile), { recursive: true, mode: 0o755 });
      } catch (e) {
        const err = e as NodeJS.ErrnoException;
        throw new DmthinError(err.code ?? 'EIO', `cannot create the receive state directory ${dirname(lockFile)}: ${err.message}`, {
          path: dirname(lockFile),
          syscall: 'mkdir',
          cause: e,
        });
      }
      l.take(lockFile, true, `its receive state ${stateFile} is locked`);
      if (targetIsFile) l.lockTarget();
      return l;
    } catch (e) {
      l.release();
      throw e;
    }
  }

  /** Holds nothing (a receive that cannot write). */
  static none(target: string): ReceiveLock {
    return new ReceiveLock(target);
  }

  /** Locks the target file (after it was created by this receive). */
  lockTarget(): void {
    this.take(this.target, false, 'the file is locked');
  }

  private take(path: string, create: boolean, what: string): void {
    let fd: number;
    try {
      fd = openSync(path, constants.O_RDONLY | (create ? constants.O_CREAT : 0), 0o644);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw new DmthinError(err.code ?? 'EIO', `cannot lock ${path} for the receive: ${err.message}`, { path, syscall: 'open', cause: e });
    }
    let got: boolean;
    try {
      const addon = native();
      // An addon built before flock was added: never run unlocked.
      if (typeof addon.flockNonBlocking !== 'function') throw new DmthinError('ENOSYS', 'the native addon has no flock (it predates this code): rebuild it');
      got = addon.flockNonBlocking(fd, true);
    } catch (e) {
      closeSync(fd);
      const err = e as NodeJS.ErrnoException;
      throw new DmthinError(err.code ?? 'EIO', `cannot lock ${path} for the receive: ${err.message}`, { path, syscall: 'flock', cause: e });
    }
    if (!got) {
      closeSync(fd);
      throw new DmthinError('EBUSY', `another receive is writing to ${this.target} (${what}): wait for it to finish`, { path, syscall: 'flock' });
    }
    this.fds.push(fd);
  }

  release(): void {
    for (const fd of this.fds.splice(0)) {
      try {
        closeSync(fd);
      } catch {
        // already closed
      }
    }
  }
}
