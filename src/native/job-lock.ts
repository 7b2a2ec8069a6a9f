/**
 * The flock(2) locks that keep one receive, restore or merge per target:
 * `<state file>.lock` (the state file itself is replaced by rename, so it
 * cannot carry the lock) and, for a regular-file target, the file itself
 * (whatever path or link named it). flock locks belong to the open file:
 * the kernel drops them when the descriptor closes, also when the process
 * is killed, so no stale lock ever needs cleaning up. A `.lock` file is
 * removed when its job ends (a killed job leaves it: harmless, reused). A
 * process that opened it before that removal would lock a file no path
 * names any more, so a lock counts only once the path still names the
 * locked file. The wording of each refusal is the caller's: it knows what is
 * running.
 */
import { closeSync, constants, fstatSync, mkdirSync, openSync, statSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { DmthinError, SetupError, UsageError } from '../errors';
import { native } from './binding';

/** The locks one job holds, all dropped by release(). */
export class JobLock {
  private readonly held: { fd: number; removeOnRelease?: string }[] = [];

  /** `job` names the work in messages: "cannot lock PATH for the JOB". */
  constructor(private readonly job: string) {}

  /** Creates (if needed) and locks `<stateFile>.lock`; `busy` is the message when another process holds it. */
  lockStateFile(stateFile: string, busy: (lockFile: string) => string): void {
    // "st/" would lock "st/.lock", making a directory where a file was meant.
    if (stateFile.endsWith('/')) throw new UsageError(`the ${this.job} state file ${stateFile} ends in /, which names a directory: give the path of a file for it`, { path: stateFile });
    const lockFile = `${stateFile}.lock`;
    const dir = dirname(lockFile);
    try {
      mkdirSync(dir, { recursive: true, mode: 0o755 });
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw new DmthinError(err.code ?? 'EIO', `cannot create the ${this.job} state directory ${dir}: ${err.message}`, { path: dir, syscall: 'mkdir', cause: e });
    }
    this.take(lockFile, true, busy);
  }

  /** Locks an existing file (a regular-file target). */
  lockFile(path: string, busy: (path: string) => string): void {
    this.take(path, false, busy);
  }

  private take(path: string, create: boolean, busy: (path: string) => string): void {
    // A lock file removed by its holder between our open and our flock: open it again.
    for (let attempt = 0; attempt < 100; attempt++) {
      const fd = this.takeOnce(path, create, busy);
      if (!create) {
        this.held.push({ fd });
        return;
      }
      const now = statSync(path, { throwIfNoEntry: false });
      const locked = fstatSync(fd);
      if (now && now.ino === locked.ino && now.dev === locked.dev) {
        this.held.push({ fd, removeOnRelease: path });
        return;
      }
      closeSync(fd);
    }
    throw new DmthinError('EBUSY', busy(path), { path, syscall: 'flock' });
  }

  private takeOnce(path: string, create: boolean, busy: (path: string) => string): number {
    // The addon first: without it no lock can be taken, and a lock file
    // created before finding that out was left behind (outside hunt S).
    // Its SetupError is kept (the type a missing build always has).
    let addon: ReturnType<typeof native>;
    try {
      addon = native();
    } catch (e) {
      if (e instanceof SetupError) e.message = `cannot lock ${path} for the ${this.job}: ${e.message}`;
      throw e;
    }
    let fd: number;
    try {
      fd = openSync(path, constants.O_RDONLY | (create ? constants.O_CREAT : 0), 0o644);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw new DmthinError(err.code ?? 'EIO', `cannot lock ${path} for the ${this.job}: ${err.message}`, { path, syscall: 'open', cause: e });
    }
    let got: boolean;
    try {
      // An addon built before flock was added: never run unlocked.
      if (typeof addon.flockNonBlocking !== 'function') throw new DmthinError('ENOSYS', 'the native addon has no flock (it predates this code): rebuild it');
      got = addon.flockNonBlocking(fd, true);
    } catch (e) {
      closeSync(fd);
      const err = e as NodeJS.ErrnoException;
      throw new DmthinError(err.code ?? 'EIO', `cannot lock ${path} for the ${this.job}: ${err.message}`, { path, syscall: 'flock', cause: e });
    }
    if (!got) {
      closeSync(fd);
      throw new DmthinError('EBUSY', busy(path), { path, syscall: 'flock' });
    }
    return fd;
  }

  /** Drops every lock (idempotent); a `.lock` file is removed while still locked. */
  release(): void {
    for (const { fd, removeOnRelease } of this.held.splice(0)) {
      try {
        if (removeOnRelease !== undefined) unlinkSync(removeOnRelease);
      } catch {
        // gone already, or a read-only directory: the next job reuses it
      }
      try {
        closeSync(fd);
      } catch {
        // already closed
      }
    }
  }
}
