/**
 * DMTHIN_TEST_KILL_AT, the crash tests' one seam (test-only; docs/testing.md,
 * docs/backup.md): the process SIGKILLs itself at a named point of a
 * replication cycle, or once a backup or restore has done N chunks. Nothing
 * but the tests sets it.
 */

/** The count N of DMTHIN_TEST_KILL_AT=N, or undefined. */
export function killAfterCount(): number | undefined {
  const v = process.env.DMTHIN_TEST_KILL_AT;
  return v !== undefined && /^[0-9]+$/.test(v) ? Number(v) : undefined;
}

/** SIGKILLs the process when DMTHIN_TEST_KILL_AT names this point. */
export function killAtPoint(name: string): void {
  if (process.env.DMTHIN_TEST_KILL_AT === name) process.kill(process.pid, 'SIGKILL');
}
