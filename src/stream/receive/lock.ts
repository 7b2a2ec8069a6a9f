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
import { JobLock } from '../../native/job-lock';

export class ReceiveLock {
  private readonly locks = new JobLock('receive');

  private constructor(private readonly target: string) {}

  /** Locks the state file (creating its directory and lock file) and, if it exists as a regular file, the target. */
  static acquire(target: string, stateFile: string, targetIsFile: boolean): ReceiveLock {
    const l = new ReceiveLock(target);
    try {
      l.locks.lockStateFile(stateFile, () => l.busy(`its receive state ${stateFile} is locked`));
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
    // A restore locks a file target the same way: either may hold it.
    this.locks.lockFile(this.target, () => this.busy('the file is locked', 'receive or restore'));
  }

  private busy(what: string, job = 'receive'): string {
    return `another ${job} is writing to ${this.target} (${what}): wait for it to finish`;
  }

  release(): void {
    this.locks.release();
  }
}
