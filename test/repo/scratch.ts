/**
 * Scratch directories for the repository tests: on tmpfs where there is one.
 * The local backend fsyncs every object and its directory; on a busy disk
 * those waits, not the code under test, would set the suite's time. What
 * the tests check (atomic rename, SIGKILL of a writer, content) does not
 * depend on fsync: a killed process loses no page cache.
 */
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A new empty directory for one test. */
export function scratchDir(prefix: string): string {
  return mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), prefix));
}
