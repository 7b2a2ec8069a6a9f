/**
 * Compiles the C oracles in test/dm/oracle against this machine's
 * <linux/dm-ioctl.h>, once per test file, into a temp dir.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const ORACLE_DIR = join(__dirname, '..', 'oracle');

export class Scratch {
  readonly dir = mkdtempSync(join(tmpdir(), 'dmthin-dm-'));
  path(name: string): string {
    return join(this.dir, name);
  }
  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** cc -o <scratch>/<out> oracle/<src>; returns the output path. */
export function compile(scratch: Scratch, src: string, out: string, extra: string[] = []): string {
  const dest = scratch.path(out);
  execFileSync('cc', ['-std=gnu11', '-O1', '-Wall', '-Werror', '-o', dest, join(ORACLE_DIR, src), ...extra], { stdio: 'pipe' });
  return dest;
}

export function run(bin: string, args: string[]): string {
  return execFileSync(bin, args, { encoding: 'utf8' });
}
